"""The slow reference of :mod:`pipeline.models.priors.matching` lives with the benchmark that times it."""
from benchmarks.reference_match import reference_match

__all__ = ["reference_match"]
