"""Scoring: COCO evaluation with pycocotools and COCO results files (:mod:`~pipeline.evaluation.coco`), the
per-image match records the bootstrap resamples (:mod:`~pipeline.evaluation.matches`) and inference over a
prepared split (:mod:`~pipeline.evaluation.inference`)."""
