"""YOLACT-style instance segmentation: a library the DVC stages in `stages/` call.

One subpackage per concept, imports only downward (``tests/test_layers.py`` checks the order):
``utils`` and ``config`` at the bottom; ``data``, ``synthetic`` and ``prepare`` on them; ``models``; then
``training`` and ``evaluation``; ``analysis``; ``ablation`` and ``deploy``; ``tracking`` (MLflow, the stage
runner) only leans on ``config`` and ``utils``. The names of the public API are re-exported here, imported on
first use so that ``import pipeline`` stays cheap: ``from pipeline import load, build_model, match``.
"""
from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "load": "pipeline.config",
    "build_model": "pipeline.models.yolact.model",
    "match": "pipeline.models.priors.matching",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'pipeline' has no attribute {name!r}")
