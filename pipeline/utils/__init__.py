"""Helpers every other package may use and that know nothing of the pipeline's concepts: atomic file
writes (:mod:`~pipeline.utils.io`), the one error type a stage reports as a line (:mod:`~pipeline.utils.errors`)
and the device, precision and DDP process-group set-up (:mod:`~pipeline.utils.distributed`). Nothing here
imports another package of the pipeline."""
