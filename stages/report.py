"""The ablation report: reports/ablation.csv, reports/ablation.md and the mask-AP heatmap."""
from pathlib import Path

from pipeline.stage import Tracking, run_stage
from stages.ablate import CELLS, cell_name

ANCHOR_STATS = Path("reports/anchors/anchor_stats.csv")


def main(params, run, args):
    """Join every ablation cell of the current grid with the anchor statistics."""
    import pandas as pd

    from pipeline.errors import PipelineError
    from pipeline.io import atomic_write_text
    from pipeline.reports import ablation_heatmap, ablation_markdown, ablation_table

    abl = params.ablation
    files = [CELLS / f"{cell_name(p, n, s)}.json" for p, n in abl.thresholds for s in abl.anchor_scales]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise PipelineError(f"ablation cells not run yet: {', '.join(missing)} (run dvc repro)")
    table = ablation_table(files, pd.read_csv(ANCHOR_STATS) if ANCHOR_STATS.is_file() else None)
    table.insert(0, "cell", [cell_name(p, n, s) for p, n, s in
                             zip(table["pos_iou"], table["neg_iou"], table["anchor_scales"])])
    baseline_scales = next((name for name, scales in abl.scale_sets.items() if scales == params.anchors.scales),
                           abl.anchor_scales[0])
    atomic_write_text("reports/ablation.csv", table.to_csv(index=False, float_format="%.6g"))
    atomic_write_text("reports/ablation.md",
                      ablation_markdown(table, (params.loss.pos_iou, params.loss.neg_iou, baseline_scales)))
    ablation_heatmap(table, Path("reports/ablation_heatmap.png"))
    for path in ("reports/ablation.csv", "reports/ablation.md", "reports/ablation_heatmap.png"):
        run.log_artifact(path, "ablation")
    print(table.to_string(index=False, max_cols=8))


if __name__ == "__main__":
    run_stage("report", main,
              derive=lambda params, args: (params, Tracking(experiment=f"{params.mlflow.experiment}-ablation")))
