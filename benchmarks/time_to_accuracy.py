"""Val mask AP against training wall-clock seconds, one curve per project whose train stage ran.

    python -m benchmarks.time_to_accuracy --run "YOLACT, warm start=." \
        --run "YOLACT, from scratch=../exp-scratch" --run "Mask R-CNN, warm start=../exp-mask-rcnn"

Each ``NAME=DIR`` is a project (a copy of this tree with other params) whose ``train`` stage ran: its
``reports/train/log.csv`` gives the val AP at every validation and the training seconds up to it
(validation excluded). A run that starts from the pretrain stage's weights (``model.backbone.pretrained:
pretrain``) starts its curve at the pretrain stage's own training seconds (``reports/pretrain/metrics.json``),
so a warm start is charged what it cost. All runs must share the val ground truth (checked) and should run on
one machine, alone, for the seconds to compare.

Writes ``reports/time_to_accuracy.{csv,png}`` and logs both to the MLflow experiment ``<mlflow.experiment>-time``.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import pandas as pd

from pipeline.config import PRETRAINED_BY_STAGE, load
from pipeline.data.layout import ground_truth_path

COLUMNS = ("run", "arch", "warm_start", "iteration", "train_seconds", "seconds", "val_bbox_AP", "val_segm_AP")


def curve(name: str, project: Path) -> pd.DataFrame:
    """The validation rows of ``project``'s training log, with the pretrain seconds added where it starts warm."""
    params = load(project / "params.yaml")
    log = project / "reports/train/log.csv"
    if not log.is_file():
        sys.exit(f"error: {log}: not found; run the train stage in {project} first")
    rows = pd.read_csv(log).dropna(subset=["val_segm_AP"])
    if "seconds" not in rows or rows.empty:
        sys.exit(f"error: {log}: no validation rows with training seconds (train.eval_every > 0, current code)")
    warm = params.model.backbone.pretrained == PRETRAINED_BY_STAGE
    offset = 0.0
    if warm:
        pretrain_metrics = project / "reports/pretrain/metrics.json"
        if not pretrain_metrics.is_file():
            sys.exit(f"error: {pretrain_metrics}: not found; the run starts from the pretrain stage, run it there first")
        offset = json.loads(pretrain_metrics.read_text())["train_seconds"]
    return pd.DataFrame({
        "run": name, "arch": params.model.arch, "warm_start": warm, "iteration": rows["iteration"],
        "train_seconds": rows["seconds"], "seconds": rows["seconds"] + offset,
        "val_bbox_AP": rows["val_bbox_AP"], "val_segm_AP": rows["val_segm_AP"],
    }, columns=COLUMNS)


def figure(table: pd.DataFrame, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, rows in table.groupby("run", sort=False):
        ax.plot(rows["seconds"] / 60, rows["val_segm_AP"], marker="o", label=name)
    offsets = (table["seconds"] - table["train_seconds"]).round(1).unique()
    for offset in offsets[offsets > 0]:
        ax.axvline(offset / 60, color="grey", linestyle=":", linewidth=1)
        ax.annotate("pretrain done", (offset / 60, 0), rotation=90, va="bottom", ha="right", fontsize=8, color="grey")
    ax.set_xlabel("training wall-clock (minutes; warm starts include the pretrain stage)")
    ax.set_ylabel("val mask AP")
    ax.set_title("Time to accuracy (val split)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR")
    parser.add_argument("--out", type=Path, default=Path("reports/time_to_accuracy"))
    args = parser.parse_args()
    runs = []
    for text in args.run:
        name, sep, directory = text.rpartition("=")
        if not sep or not name:
            sys.exit(f"error: --run {text!r}: expected NAME=DIR")
        runs.append((name, Path(directory)))
    digests = {hashlib.sha256(ground_truth_path(d / "data/prepared", "val").read_bytes()).hexdigest() for _, d in runs}
    if len(digests) != 1:
        sys.exit("error: the runs were validated on different val ground truth; compare runs of the same data")
    table = pd.concat([curve(name, directory) for name, directory in runs], ignore_index=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    csv_path, png_path = args.out.with_suffix(".csv"), args.out.with_suffix(".png")
    table.to_csv(csv_path, index=False, float_format="%.4f")
    figure(table, png_path)
    print(table.groupby("run", sort=False).last()[["iteration", "seconds", "val_bbox_AP", "val_segm_AP"]].to_string())
    _log(table, csv_path, png_path)


def _log(table: pd.DataFrame, *artifacts: Path) -> None:
    """One MLflow run with each curve's last point as metrics and both files as artifacts (offline: a warning)."""
    try:
        import mlflow

        from pipeline.tracking.store import resolve_tracking_uri, set_experiment

        params = load("params.yaml")
        mlflow.set_tracking_uri(resolve_tracking_uri(params.mlflow.tracking_uri))
        set_experiment(f"{params.mlflow.experiment}-time")
        with mlflow.start_run(run_name="time to accuracy"):
            for name, rows in table.groupby("run", sort=False):
                key = "".join(c if c.isalnum() else "_" for c in name).strip("_")
                mlflow.log_metrics({f"{key}.val_segm_AP": float(rows["val_segm_AP"].iloc[-1]),
                                    f"{key}.seconds": float(rows["seconds"].iloc[-1])})
            for path in artifacts:
                mlflow.log_artifact(str(path))
    except Exception as err:  # noqa: BLE001 - the files are written; tracking is best effort here
        print(f"warning: not logged to MLflow ({type(err).__name__}: {err})", file=sys.stderr)


if __name__ == "__main__":
    main()
