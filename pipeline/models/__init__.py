"""The networks: the ResNet-FPN trunk both architectures share (:mod:`~pipeline.models.backbone`), priors and
their matching to ground truth (:mod:`~pipeline.models.priors`), YOLACT itself (:mod:`~pipeline.models.yolact`),
torchvision's Mask R-CNN on the same trunk (:mod:`~pipeline.models.mask_rcnn`), the detections both return
(:mod:`~pipeline.models.detections`), the per-architecture interface the training and evaluation code call
(:mod:`~pipeline.models.networks`) and rebuilding a trained model from its file (:mod:`~pipeline.models.loading`)."""
