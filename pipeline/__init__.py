"""YOLACT-style instance segmentation: a library the DVC stages in `stages/` call."""
