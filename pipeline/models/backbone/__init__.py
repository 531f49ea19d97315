"""The feature trunk: a configurable ResNet (:mod:`~pipeline.models.backbone.resnet`), the FPN on top
(:mod:`~pipeline.models.backbone.fpn`) and the two composed (:mod:`~pipeline.models.backbone.trunk`), shared by
YOLACT, Mask R-CNN and the anchors stage's statistics."""
