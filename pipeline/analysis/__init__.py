"""What is made of scores: bootstrap intervals (:mod:`~pipeline.analysis.bootstrap`), TIDE-style error analysis
(:mod:`~pipeline.analysis.error_analysis`), the evaluate stage's report (:mod:`~pipeline.analysis.evaluation_report`),
qualitative figures (:mod:`~pipeline.analysis.visualize`) and the training curves and shared figure helpers
(:mod:`~pipeline.analysis.figures`)."""
