"""Priors (anchors) and boxes: prior generation per FPN level (:mod:`~pipeline.models.priors.anchors`), box
encoding and IoU (:mod:`~pipeline.models.priors.boxes`) and YOLACT's matching of priors to ground truth
(:mod:`~pipeline.models.priors.matching`, ``match`` is public API)."""
