"""Score a trained model on a prepared split: COCO box and mask AP with intervals, error analysis, results files.

`dvc repro` scores models/model.pt on the test split into reports/; any other model or split goes to
evaluations/<model>-<split>/ unless --out says otherwise, so DVC's outputs are never overwritten.
"""
from pathlib import Path

from pipeline.tracking.stage import run_stage

PREPARED = Path("data/prepared")
DEFAULT_MODEL = Path("models/model.pt")
DEFAULT_SPLIT = "test"


def configure(parser):
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"a trained model (default {DEFAULT_MODEL})")
    parser.add_argument("--split", choices=("val", "test"), default=DEFAULT_SPLIT,
                        help=f"the prepared split to score (default {DEFAULT_SPLIT})")
    parser.add_argument("--out", type=Path, default=None,
                        help="output directory (default: reports/ for the default model and split)")


def outputs_for(args):
    from pipeline.analysis.evaluation_report import EvaluationOutputs

    if args.out is None and args.model == DEFAULT_MODEL and args.split == DEFAULT_SPLIT:
        return EvaluationOutputs(Path("reports/eval"), Path("reports/metrics.json"), Path("reports/eval_results"))
    out = args.out or Path("evaluations") / f"{args.model.stem}-{args.split}"
    return EvaluationOutputs(out, out / "metrics.json", out / "results")


def check(params, args):
    """The prepared data and the model must be there."""
    from pipeline.utils.errors import require

    require(PREPARED, "prepare")
    require(args.model, "train")


def main(params, run, args):
    """COCO box/mask AP with bootstrap intervals, TIDE errors, per-class AP, PR curves, results files."""
    from pipeline.utils.distributed import select_device
    from pipeline.analysis.evaluation_report import evaluate_model
    from pipeline.data.layout import ground_truth_path
    from pipeline.models.loading import load_model
    from pipeline.tracking.fingerprint import fingerprint
    from pipeline.tracking.provenance import directory_digest

    device = select_device(params.train.device)
    trained = load_model(args.model, device)
    parent = trained.payload.get("mlflow_run_id")
    gt_md5 = directory_digest(ground_truth_path(PREPARED, args.split))  # what the champion is compared on
    run.set_tags({"data_fingerprint": fingerprint(PREPARED.glob("*.json")), "device": str(device),
                  "model": str(args.model), "split": args.split, "ground_truth_md5": gt_md5,
                  **({"mlflow.parentRunId": parent} if parent else {})})
    outputs = outputs_for(args)
    flat = evaluate_model(trained, args.model, PREPARED, args.split, params, outputs, device)
    run.log_metrics(flat)
    if parent and args.split == DEFAULT_SPLIT:
        run.log_to(parent, {f"test_{k}": v for k, v in flat.items()},
                   [(str(outputs.metrics_path), "eval"), (str(outputs.report_dir), "eval")])
    for path, artifact_dir in ((outputs.metrics_path, "eval"), (outputs.report_dir, "eval"), (outputs.results_dir, "results")):
        run.log_artifact(path, artifact_dir)
    print(f"{args.split} split: bbox AP {flat['bbox_AP']:.4f} [{flat['bbox_AP_lo']:.4f}, {flat['bbox_AP_hi']:.4f}], "
          f"segm AP {flat['segm_AP']:.4f} [{flat['segm_AP_lo']:.4f}, {flat['segm_AP_hi']:.4f}] -> {outputs.metrics_path}")
    if args.split == DEFAULT_SPLIT:
        print(run.model_evaluated(parent, {f"test_{k}": v for k, v in flat.items()}, gt_md5))


if __name__ == "__main__":
    run_stage("evaluate", main, configure=configure, check=check)
