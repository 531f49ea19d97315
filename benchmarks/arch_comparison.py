"""YOLACT against Mask R-CNN, each trained and evaluated by the pipeline in its own project copy.

    python -m benchmarks.arch_comparison --run yolact=. --run mask_rcnn=../exp-mask-rcnn

Each ``NAME=DIR`` is a project whose train and evaluate stages ran (``models/model.pt``,
``reports/eval_results``, ``data/prepared`` and ``params.yaml``); both must be scored on the same test
ground truth. What each side does, identically:

- accuracy: its evaluate stage's test results re-scored with COCOeval, image-bootstrap 95% intervals and
  the paired bootstrap interval of the difference (the same resampled images for both);
- training: the train stage's loop (``pipeline.training.loop.train``) for ``--warmup + --steps`` iterations from
  the run's own initialisation (its ``model.backbone.pretrained``), fp32, its own params and batch, data
  loading included; images/s is the median over the steps after the warm-up, pooled over ``--rounds``
  rounds run in turn (A, B, A, B, ...);
- inference: the evaluate stage's ``predict`` (forward, post-processing to boolean masks at the original
  size and RLE encoding; data loading excluded) on the first ``--images`` test images, fp32, after one
  warm-up pass; images/s is 1 / the median over ``--rounds`` passes run in turn.

Writes ``reports/arch_comparison.{json,md}`` and logs them with the figures to the MLflow experiment
``yolact-comparison`` (offline: a warning, the files are still written).
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset

from pipeline.analysis.bootstrap import bootstrap_ap, paired_bootstrap_difference
from pipeline.config import Params, load, portable_uri, replace
from pipeline.data.layout import ground_truth_path
from pipeline.evaluation.coco import IOU_TYPES, coco_evaluate
from pipeline.data.coco import load_coco
from pipeline.analysis.evaluation_report import read_results
from pipeline.models.loading import load_model
from pipeline.evaluation.inference import predict, split_loader
from pipeline.utils.io import atomic_write_json, atomic_write_text
from pipeline.training.loop import TrainOutputs, train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", action="append", required=True, metavar="NAME=DIR",
                        help="a project whose train and evaluate stages ran (twice: the two sides)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed training steps per round")
    parser.add_argument("--images", type=int, default=200, help="test images per timed inference pass")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=Path("reports/arch_comparison"))
    args = parser.parse_args()
    runs = dict(_named_dir(text) for text in args.run)
    if len(runs) != 2:
        sys.exit("error: --run: give exactly two NAME=DIR runs")
    (a, dir_a), (b, dir_b) = runs.items()
    gt_a, gt_b = (ground_truth_path(d / "data/prepared", "test") for d in (dir_a, dir_b))
    if _sha(gt_a) != _sha(gt_b):
        sys.exit(f"error: {gt_a} and {gt_b} differ: the two runs were not scored on the same test split")

    params = {name: load(d / "params.yaml") for name, d in runs.items()}
    accuracy = _accuracy(runs, gt_a, params[a].eval.bootstrap_resamples, params[a].seed)
    training = _training_speed(runs, params, args.warmup, args.steps, args.rounds)
    inference = _inference_speed(runs, params, args.images, args.rounds)
    report = {"runs": {name: portable_uri(str(d.resolve())) for name, d in runs.items()}, "accuracy": accuracy,
              "training": training, "inference": inference, "threads": torch.get_num_threads(),
              "settings": {"steps": args.steps, "warmup": args.warmup, "images": args.images, "rounds": args.rounds}}
    atomic_write_json(args.out.with_suffix(".json"), report)
    atomic_write_text(args.out.with_suffix(".md"), markdown(report, a, b))
    print(markdown(report, a, b))
    _log_to_mlflow(report, params[a], args.out, a, b)


def _named_dir(text: str) -> tuple[str, Path]:
    name, sep, directory = text.partition("=")
    if not sep or not name or not Path(directory, "models/model.pt").is_file():
        sys.exit(f"error: --run {text}: expected NAME=DIR with DIR/models/model.pt")
    return name, Path(directory)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _accuracy(runs: dict[str, Path], gt_path: Path, resamples: int, seed: int) -> dict[str, Any]:
    """Test AP with intervals per run, and the paired difference of the first run minus the second."""
    gt = load_coco(gt_path)
    image_ids = sorted(gt.getImgIds())
    out: dict[str, Any] = {}
    for t in IOU_TYPES:
        matches = {name: coco_evaluate(gt, read_results(d / "reports/eval_results" / f"{t}.json.gz"), t,
                                       image_ids=image_ids).matches for name, d in runs.items()}
        per_run = {name: bootstrap_ap(m, resamples, seed=seed)["AP"] for name, m in matches.items()}
        (name_a, ma), (name_b, mb) = matches.items()
        diff = paired_bootstrap_difference(ma, mb, resamples, seed=seed)["AP"]
        out[t] = {**{name: {"AP": i.estimate, "lo": i.lo, "hi": i.hi} for name, i in per_run.items()},
                  "difference": {"estimate": diff.estimate, "lo": diff.lo, "hi": diff.hi,
                                 "significant": diff.significant}}
    out["num_images"] = len(image_ids)
    return out


def _training_speed(runs: dict[str, Path], params: dict[str, Params], warmup: int, steps: int,
                    rounds: int) -> dict[str, Any]:
    speeds: dict[str, list[float]] = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as scratch:
        for k in range(rounds):
            for name, directory in runs.items():
                run_params = replace(params[name], **{
                    "train.iterations": warmup + steps, "train.eval_every": 0, "train.log_every": 1,
                    "train.checkpoint_every": warmup + steps, "train.precision": "fp32", "train.keep_best": False,
                })
                out = Path(scratch, f"{name}-{k}")
                rows: list[dict[str, float]] = []
                train(run_params, directory / "data/prepared",
                      TrainOutputs(out / "model.pt", out / "log.csv", out / "checkpoints"),
                      on_log=rows.append, progress=False)
                speeds[name] += [row["images_per_s"] for row in rows if row["iteration"] > warmup]
                print(f"training round {k + 1}/{rounds} {name}: {statistics.median(speeds[name]):.1f} img/s")
    return {name: {"images_per_s": statistics.median(v), "steps": len(v), "precision": "fp32",
                   "batch_size": params[name].train.batch_size, "input_size": params[name].input.size}
            for name, v in speeds.items()}


def _inference_speed(runs: dict[str, Path], params: dict[str, Params], images: int, rounds: int) -> dict[str, Any]:
    device = torch.device("cpu")
    setups = {}
    for name, directory in runs.items():
        trained = load_model(directory / "models/model.pt", device)
        full = split_loader(directory / "data/prepared", "test", trained.params.input,
                            params[name].eval.batch_size, 0)
        subset = Subset(full.dataset, range(min(images, len(full.dataset))))
        loader = DataLoader(subset, batch_size=full.batch_size, shuffle=False, collate_fn=full.collate_fn)
        warm = DataLoader(Subset(full.dataset, range(full.batch_size)), batch_size=full.batch_size,
                          collate_fn=full.collate_fn)
        setups[name] = (trained, loader, warm)

    def run(name: str, loader: DataLoader) -> float:
        trained = setups[name][0]
        return predict(trained.model, loader, params[name].eval, trained.params.loss.use_focal_loss,
                       trained.category_ids, device, progress=False).seconds_per_image

    for name in runs:
        run(name, setups[name][2])
    seconds: dict[str, list[float]] = {name: [] for name in runs}
    for k in range(rounds):
        for name in runs:
            seconds[name].append(run(name, setups[name][1]))
            print(f"inference round {k + 1}/{rounds} {name}: {1 / seconds[name][-1]:.1f} img/s")
    return {name: {"images_per_s": 1 / statistics.median(s), "seconds_per_image": s, "images": len(setups[name][1].dataset),
                   "precision": "fp32", "batch_size": params[name].eval.batch_size}
            for name, s in seconds.items()}


def markdown(report: dict[str, Any], a: str, b: str) -> str:
    acc, tr, inf = report["accuracy"], report["training"], report["inference"]
    lines = [
        f"# {a} against {b} (test split: {acc['num_images']} images)", "",
        f"| | {a} | {b} | {a} − {b} (paired 95% interval) |", "|---|---:|---:|---:|",
    ]
    for t in IOU_TYPES:
        d = acc[t]["difference"]
        cell = lambda n: f"{acc[t][n]['AP']:.3f} [{acc[t][n]['lo']:.3f}, {acc[t][n]['hi']:.3f}]"  # noqa: E731
        flag = " (significant)" if d["significant"] else " (not significant)"
        lines.append(f"| {t} AP | {cell(a)} | {cell(b)} | {d['estimate']:+.3f} [{d['lo']:+.3f}, {d['hi']:+.3f}]{flag} |")
    lines += [
        f"| training images/s | {tr[a]['images_per_s']:.1f} | {tr[b]['images_per_s']:.1f} | "
        f"{tr[a]['images_per_s'] / tr[b]['images_per_s']:.2f}x |",
        f"| inference images/s | {inf[a]['images_per_s']:.1f} | {inf[b]['images_per_s']:.1f} | "
        f"{inf[a]['images_per_s'] / inf[b]['images_per_s']:.2f}x |",
        "",
        f"Both sides fp32 on {report['threads']} CPU threads. Training: the train stage's loop from each run's own initialisation at batch "
        f"{tr[a]['batch_size']} / {tr[b]['batch_size']} and {tr[a]['input_size']} px, data loading included, median over "
        f"{tr[a]['steps']} / {tr[b]['steps']} steps after {report['settings']['warmup']} warm-up steps per round, rounds in turn. "
        f"Inference: the evaluate stage's predict (forward, post-processing, masks at the original size, RLE) on "
        f"{inf[a]['images']} test images at batch {inf[a]['batch_size']}, data loading excluded, warmed, median of "
        f"{report['settings']['rounds']} passes in turn. AP: the evaluate stages' results re-scored, image-bootstrap "
        "intervals; the difference's interval resamples the same images for both.",
    ]
    return "\n".join(lines) + "\n"


def _log_to_mlflow(report: dict[str, Any], params: Params, out: Path, a: str, b: str) -> None:
    """One run in experiment ``yolact-comparison`` with each side's figures and the table."""
    try:
        import mlflow

        from pipeline.tracking.store import resolve_tracking_uri, set_experiment

        mlflow.set_tracking_uri(resolve_tracking_uri(params.mlflow.tracking_uri))
        set_experiment("yolact-comparison")
        with mlflow.start_run(run_name=f"{a} vs {b}"):
            metrics = {}
            for name in (a, b):
                for t in IOU_TYPES:
                    metrics[f"{name}.test_{t}_AP"] = report["accuracy"][t][name]["AP"]
                metrics[f"{name}.train_images_per_s"] = report["training"][name]["images_per_s"]
                metrics[f"{name}.inference_images_per_s"] = report["inference"][name]["images_per_s"]
            mlflow.log_metrics(metrics)
            mlflow.log_params({f"run.{name}": d for name, d in report["runs"].items()} | report["settings"])
            mlflow.log_artifact(str(out.with_suffix(".md")))
            mlflow.log_artifact(str(out.with_suffix(".json")))
    except Exception as err:  # the files are written; tracking is best effort here
        print(f"WARNING: comparison not logged to MLflow: {type(err).__name__}: {err}".splitlines()[0], file=sys.stderr)


if __name__ == "__main__":
    main()
