"""Train the model on data/prepared: writes models/model.pt and reports/train/log.csv."""
from pathlib import Path

from pipeline.stage import run_stage

PREPARED = Path("data/prepared")
OUTPUTS = dict(model_path=Path("models/model.pt"), log_path=Path("reports/train/log.csv"),
               checkpoint_dir=Path("models/checkpoints"))


def main(params, run, args):
    """Train YOLACT on the prepared train split (resumes from models/checkpoints)."""
    from pipeline.train import TrainOutputs, select_device, train
    from pipeline.tracking import fingerprint

    run.set_tags({"data_fingerprint": fingerprint(PREPARED.glob("*.json")),
                  "device": str(select_device(params.train.device))})
    outputs = TrainOutputs(**OUTPUTS)
    train(
        params, PREPARED, outputs,
        on_log=lambda row: run.log_metrics({f"train/{k}": v for k, v in row.items() if k != "iteration"},
                                           step=int(row["iteration"])),
        extra_payload={"mlflow_run_id": run.run_id} if run.online else None,
    )
    run.log_artifact(outputs.log_path, "train")
    run.log_artifact("reports/data", "data")
    run.log_artifact(outputs.model_path, "model")


if __name__ == "__main__":
    run_stage("train", main)
