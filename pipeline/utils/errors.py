"""Errors a stage reports as one line and a non-zero exit."""
from pathlib import Path


class PipelineError(Exception):
    """Bad input data or state: the message names the offending file, key or annotation."""


def require(path: str | Path, stage: str) -> None:
    """Raise :class:`PipelineError` unless ``path``, an output of ``stage``, exists: the line says to run it first."""
    if not Path(path).exists():
        raise PipelineError(f"{path}: not found; run `python -m stages.{stage}` (or `dvc repro {stage}`) first")
