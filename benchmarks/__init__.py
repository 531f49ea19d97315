"""Speed benchmarks (``python -m benchmarks.run``): our YOLACT against torchvision's Mask R-CNN, the batched
matcher against the reference loop, and the data loader against training, written to ``reports/bench.*``."""
