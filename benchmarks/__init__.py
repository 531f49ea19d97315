"""Speed benchmarks (``python -m benchmarks.run``), measured like for like: our YOLACT against torchvision's
Mask R-CNN (same end product, same precision, same step), the batched matcher against the seed's loop, the
training input path against training, and where evaluation time goes; written to ``reports/bench.*``."""
