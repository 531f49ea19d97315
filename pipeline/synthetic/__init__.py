"""The embedded synthetic shapes dataset the CPU default trains on, rendered in COCO layout by the generate
stage (:mod:`~pipeline.synthetic.shapes`): deterministic from ``seed`` and ``data.synthetic``."""
