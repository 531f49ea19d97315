"""The ablation study over matching thresholds and anchor scales: the grid and its cell names
(:mod:`~pipeline.ablation.grid`), one cell trained and scored (:mod:`~pipeline.ablation.cell`), the report with
paired bootstrap differences (:mod:`~pipeline.ablation.report`) and the anchors stage's coverage statistics
and figures (:mod:`~pipeline.ablation.anchor_stats`, :mod:`~pipeline.ablation.anchor_figures`)."""
