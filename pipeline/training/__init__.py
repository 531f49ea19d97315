"""Training: the loop (:mod:`~pipeline.training.loop`), optimiser and learning-rate schedule
(:mod:`~pipeline.training.schedule`), seeded sampling that makes augmentation independent of workers and resumes
(:mod:`~pipeline.training.sampling`) and checkpoints that only the run that wrote them can resume
(:mod:`~pipeline.training.checkpoints`)."""
