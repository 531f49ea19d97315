"""Prepare the data: data/prepared (cleaned COCO json, label map, image dirs), reports/data/."""
from pathlib import Path

from pipeline.stage import run_stage

PREPARED = Path("data/prepared")
SUMMARY = Path("reports/data/summary.json")
FIGURE = Path("reports/data/box_sizes.png")


def main(params, run, args):
    """Clean real COCO (data.source: coco) or generate and clean the synthetic shapes dataset."""
    from pipeline.coco import headline_metrics, plot_box_sizes, prepare, read_annotations
    from pipeline.config import resolve_path
    from pipeline.data import annotations_path
    from pipeline.io import atomic_dir, atomic_write_json
    from pipeline.synthetic import generate

    data = params.data
    with atomic_dir(PREPARED) as out_dir:
        if data.source == "synthetic":
            root = out_dir / "synthetic"
            generate(root, data.synthetic, params.seed)
            splits = {"train": "train", "val": "val"}
        else:
            root = resolve_path(data.root)
            splits = {"train": data.train_split, "val": data.val_split}
        summary = prepare(root, splits, out_dir, categories=data.categories, max_images=data.max_images,
                          keep_empty_train=data.keep_empty_train, strict=data.strict)
    root = PREPARED / "synthetic" if data.source == "synthetic" else root
    summary = {"source": data.source, "root": str(root), **summary}

    atomic_write_json(SUMMARY, summary)
    datasets = {role: read_annotations(annotations_path(PREPARED, role)) for role in ("train", "val")}
    plot_box_sizes(datasets, params.input.size, params.anchors.scales, FIGURE)
    metrics = headline_metrics(summary)
    run.log_metrics(metrics)
    run.log_artifact(SUMMARY, "data")
    run.log_artifact(FIGURE, "data")
    print(", ".join(f"{key} {value:g}" for key, value in metrics.items()))


if __name__ == "__main__":
    run_stage("prepare", main)
