"""Warm start: train the ResNet trunk once on semantic segmentation of the train masks; writes models/pretrain/."""
from pathlib import Path

from pipeline.tracking.stage import run_stage

PREPARED = Path("data/prepared")
OUT_DIR = Path("models/pretrain")
REPORT_DIR = Path("reports/pretrain")


def check(params, args):
    """The prepared data must be there, unless the stage is bypassed."""
    from pipeline.config import PRETRAINED_BY_STAGE
    from pipeline.utils.errors import require

    if params.model.backbone.pretrained == PRETRAINED_BY_STAGE:
        require(PREPARED, "prepare")


def main(params, run, args):
    """Train the trunk of model.backbone and model.fpn on dense semantic segmentation (pretrain.*); with
    model.backbone.pretrained other than 'pretrain' (ImageNet weights, or none) the stage only records that
    it was bypassed."""
    import json

    from pipeline.config import PRETRAINED_BY_STAGE, PRETRAIN_WEIGHTS
    from pipeline.training.pretrain import LOG_COLUMNS, pretrain, save_weights
    from pipeline.utils.io import atomic_write_json, atomic_write_text

    weights = Path(PRETRAIN_WEIGHTS)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    REPORT_DIR.mkdir(parents=True, exist_ok=True)
    if params.model.backbone.pretrained != PRETRAINED_BY_STAGE:
        for stale in OUT_DIR.iterdir():
            stale.unlink()
        reason = {"bypassed": True, "model.backbone.pretrained": params.model.backbone.pretrained}
        atomic_write_text(OUT_DIR / "bypassed.json", json.dumps(reason, indent=2) + "\n")
        atomic_write_json(REPORT_DIR / "metrics.json", reason)
        atomic_write_text(REPORT_DIR / "log.csv", ",".join(LOG_COLUMNS) + "\n")
        run.set_tags({"pretrain": "bypassed"})
        print(f"pretrain bypassed: model.backbone.pretrained is {params.model.backbone.pretrained!r}, not "
              f"'{PRETRAINED_BY_STAGE}'")
        return

    rows = []

    def log(row):
        rows.append(row)
        run.log_metrics({f"pretrain/{k}": v for k, v in row.items() if k != "iteration"}, step=int(row["iteration"]))

    state_dict = pretrain(params, PREPARED, on_log=log)
    (OUT_DIR / "bypassed.json").unlink(missing_ok=True)
    save_weights(weights, state_dict)
    last = rows[-1]
    metrics = {"val_mIoU": last["val_mIoU"], "iterations": int(last["iteration"]), "train_seconds": last["seconds"]}
    atomic_write_json(REPORT_DIR / "metrics.json", metrics)
    atomic_write_text(REPORT_DIR / "log.csv", "\n".join(
        [",".join(LOG_COLUMNS), *(",".join(str(row[c]) for c in LOG_COLUMNS) for row in rows)]) + "\n")
    run.log_metrics({"val_mIoU": metrics["val_mIoU"], "train_seconds": metrics["train_seconds"]})
    run.log_artifact(REPORT_DIR / "log.csv", "pretrain")


if __name__ == "__main__":
    run_stage("pretrain", main, check=check)
