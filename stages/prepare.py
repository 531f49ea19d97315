"""Prepare the data: data/prepared (cleaned COCO json and official ground truth per role, label map,
image dirs) and reports/data/summary.json."""
from pathlib import Path

from pipeline.tracking.stage import run_stage

PREPARED = Path("data/prepared")
SUMMARY = Path("reports/data/summary.json")


def check(params, args):
    """The generated dataset, when data.source is synthetic, must be there."""
    from pipeline.config import params_path
    from pipeline.utils.errors import require

    data = params.data
    if data.source == "synthetic":
        for split in (data.train_split, data.val_split, data.test_split):
            require(params_path(data.root) / "annotations" / f"instances_{split}.json", "generate")


def main(params, run, args):
    """Clean the COCO-format data under data.root (real COCO, or the generated synthetic set) into three roles."""
    import os

    from pipeline.config import params_path
    from pipeline.prepare.summary import headline_metrics
    from pipeline.tracking.datasets import overlap_tags
    from pipeline.utils.io import atomic_dir, atomic_write_json
    from pipeline.prepare.roles import prepare

    data = params.data
    repository = Path.cwd().resolve()  # DVC runs every stage at the repository root
    root = params_path(data.root)
    splits = {"train": data.train_split, "val": data.val_split, "test": data.test_split}
    with atomic_dir(PREPARED) as out_dir:
        summary = prepare(root, splits, out_dir, categories=data.categories, max_images=data.max_images,
                          keep_empty_train=data.keep_empty_train, strict=data.strict, val_images=data.val_images,
                          seed=params.seed, repository=repository, allow_overlap=data.allow_overlap)
    root = root.resolve()
    recorded_root = os.path.relpath(root, repository) if root.is_relative_to(repository) else str(root)
    summary = {"source": data.source, "root": recorded_root, **summary}

    atomic_write_json(SUMMARY, summary)
    metrics = headline_metrics(summary)
    run.log_metrics(metrics)
    if "overlap" in summary:
        run.set_tags(overlap_tags(summary["overlap"]))
    run.log_artifact(SUMMARY, "data")
    print(", ".join(f"{key} {value:g}" for key, value in metrics.items()))


if __name__ == "__main__":
    run_stage("prepare", main, check=check)
