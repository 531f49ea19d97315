"""Errors a stage reports as one line and a non-zero exit."""


class PipelineError(Exception):
    """Bad input data or state: the message names the offending file, key or annotation."""
