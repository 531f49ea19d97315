"""YOLACT: prediction, prototype and semantic heads (:mod:`~pipeline.models.yolact.heads`), the model
(:mod:`~pipeline.models.yolact.model`, ``build_model`` is public API), its loss (:mod:`~pipeline.models.yolact.loss`),
post-processing to detections (:mod:`~pipeline.models.yolact.postprocess`) and loading the original authors'
released checkpoints (:mod:`~pipeline.models.yolact.released`)."""
