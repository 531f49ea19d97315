"""Anchor coverage of every ablation cell on the prepared train set (no training), and the GT box sizes
against the anchor scales."""
from pathlib import Path

from pipeline.tracking.stage import run_stage

PREPARED = Path("data/prepared")
OUT_DIR = Path("reports/anchors")


def check(params, args):
    """The prepared data must be there."""
    from pipeline.utils.errors import require

    require(PREPARED, "prepare")


def main(params, run, args):
    """Best possible recall, positives per GT and prior counts for each ablation cell; box-size histogram."""
    from pipeline.ablation.anchor_stats import anchor_statistics, feature_sizes, read_image_boxes
    from pipeline.models.priors.anchors import make_priors
    from pipeline.prepare.annotations import read_annotations
    from pipeline.data.layout import annotations_path
    from pipeline.ablation.anchor_figures import anchor_stats_figure, box_sizes_figure
    from pipeline.analysis.figures import write_csv

    images = read_image_boxes(annotations_path(PREPARED, "train"))
    sizes = feature_sizes(params)
    rows = []
    for name in params.ablation.anchor_scales:
        scales = params.ablation.scale_sets[name]
        priors = make_priors(params.input.size, sizes, scales, params.anchors.aspect_ratios, params.anchors.square)
        for pos_iou, neg_iou in params.ablation.thresholds:
            stats = anchor_statistics(images, priors, pos_iou, neg_iou, params.loss.crowd_iou)
            rows.append({"pos_iou": pos_iou, "neg_iou": neg_iou, "anchor_scales": name,
                         "num_priors": len(priors), **stats})
            print(f"{name:>10} pos {pos_iou:.2f} neg {neg_iou:.2f}: "
                  f"best possible recall {stats['best_possible_recall']:.3f}, "
                  f"force-only {stats['force_only_share']:.3f}")
    table = write_csv(rows, OUT_DIR / "anchor_stats.csv")
    anchor_stats_figure(table, OUT_DIR / "anchor_stats.png")
    datasets = {role: read_annotations(annotations_path(PREPARED, role)) for role in ("train", "val")}
    box_sizes_figure(datasets, params.input.size, params.anchors.scales, OUT_DIR / "box_sizes.png")
    run.log_artifact(OUT_DIR, "anchors")


if __name__ == "__main__":
    run_stage("anchors", main, check=check)
