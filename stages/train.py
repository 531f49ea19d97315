"""Train the model on data/prepared: writes models/model.pt and reports/train/{log.csv,curves.png}."""
from pathlib import Path

from pipeline.tracking.stage import run_stage

PREPARED = Path("data/prepared")
OUTPUTS = dict(model_path=Path("models/model.pt"), log_path=Path("reports/train/log.csv"),
               checkpoint_dir=Path("models/checkpoints"))
CURVES = Path("reports/train/curves.png")


def check(params, args):
    """The prepared data must be there."""
    from pipeline.utils.errors import require

    require(PREPARED, "prepare")


def main(params, run, args):
    """Train the model (model.arch) on the prepared train split, validating on the val split (resumes an interrupted run)."""
    from pipeline.data.layout import read_label_map
    from pipeline.utils.distributed import resolve_precision, select_device
    from pipeline.evaluation.inference import validation_scorer
    from pipeline.analysis.figures import training_curves_figure
    from pipeline.training.loop import VALIDATION_COLUMNS, TrainOutputs, train
    from pipeline.tracking.fingerprint import fingerprint

    device = select_device(params.train.device)
    run.set_tags({"data_fingerprint": fingerprint(PREPARED.glob("*.json")), "device": str(device),
                  "precision": resolve_precision(params.train.precision, device)})
    outputs = TrainOutputs(**OUTPUTS)
    category_ids = [entry["category_id"] for entry in read_label_map(PREPARED)]
    validate = validation_scorer(params, PREPARED, category_ids, device) if params.train.eval_every else None

    def log(row):
        metrics = {(k if k in VALIDATION_COLUMNS else f"train/{k}"): v for k, v in row.items() if k != "iteration"}
        run.log_metrics(metrics, step=int(row["iteration"]))

    train(params, PREPARED, outputs, on_log=log, validate=validate,
          extra_payload={"mlflow_run_id": run.ref} if run.ref else None)
    training_curves_figure(outputs.log_path, CURVES)
    run.log_artifact(outputs.log_path, "train")
    run.log_artifact(CURVES, "train")
    run.log_artifact("reports/data", "data")
    run.log_model(outputs.model_path)


if __name__ == "__main__":
    run_stage("train", main, check=check)
