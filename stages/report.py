"""The ablation report: reports/ablation.{csv,md} and figures, logged to the ablation's MLflow parent run."""
from pathlib import Path

from pipeline.tracking.stage import Tracking, run_stage

ANCHOR_STATS = Path("reports/anchors/anchor_stats.csv")
OUT = Path("reports")
FIGURES = ("ablation_heatmap.png", "ablation/curves.png", "ablation/tide.png")


def derive(params, args):
    from pipeline.ablation.grid import group_key

    return params, Tracking(experiment=f"{params.mlflow.experiment}-ablation", parent=(group_key(params), "ablation"))


def main(params, run, args):
    """Every cell with its interval, paired difference to the baseline, convergence and error types."""
    import pandas as pd

    from pipeline.ablation.grid import CELLS_DIR
    from pipeline.ablation.report import (
        ablation_heatmap,
        ablation_markdown,
        ablation_table,
        load_cells,
        tide_comparison_figure,
        validation_curves_figure,
    )
    from pipeline.config import grid_cell_name
    from pipeline.utils.io import atomic_write_text

    abl = params.ablation
    baseline = abl.baseline or grid_cell_name(*abl.thresholds[0], abl.anchor_scales[0])
    cells = load_cells(CELLS_DIR, abl)
    anchor_stats = pd.read_csv(ANCHOR_STATS) if ANCHOR_STATS.is_file() else None
    table = ablation_table(cells, baseline, params.eval.bootstrap_resamples, params.seed, anchor_stats)
    atomic_write_text(OUT / "ablation.csv", table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text(OUT / "ablation.md", ablation_markdown(table, baseline, params.eval.bootstrap_resamples))
    ablation_heatmap(table, OUT / FIGURES[0])
    validation_curves_figure(cells, OUT / FIGURES[1])
    tide_comparison_figure(table, OUT / FIGURES[2])
    artifacts = [(str(OUT / name), "ablation") for name in ("ablation.csv", "ablation.md", *FIGURES)]
    if run.parent_run_id:
        run.log_to(run.parent_run_id, {}, artifacts)
        run.end_other(run.parent_run_id, "FINISHED")
    print(table[["cell", "bbox_AP", "segm_AP", "segm_AP_lo", "segm_AP_hi", "d_segm_AP", "significant",
                 "converged"]].to_string(index=False))


if __name__ == "__main__":
    run_stage("report", main, derive=derive)
