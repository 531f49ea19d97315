"""How many synthetic test images make the reported AP stable: one trained model scored on several
independently seeded test sets of each size; the spread over those test sets is the test-set noise.

    python -m benchmarks.test_split_spread --model models/model.pt --sizes 250 500 1000 --test-sets 5
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.config import load
from pipeline.utils.distributed import select_device
from pipeline.evaluation.coco import IOU_TYPES, coco_evaluate
from pipeline.data.coco import load_coco
from pipeline.models.loading import load_model
from pipeline.evaluation.inference import predict, split_loader
from pipeline.utils.io import atomic_write_json
from pipeline.synthetic.shapes import generate_split

FIRST_SEED = 1000  # far from the seed of the pipeline's own test split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--sizes", type=int, nargs="+", default=[250, 500, 1000])
    parser.add_argument("--test-sets", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("reports/test_split_spread.json"))
    args = parser.parse_args()
    params = load(args.params)
    device = select_device(params.train.device)
    trained = load_model(args.model, device)
    aps: dict[str, dict[int, list[float]]] = {t: {n: [] for n in args.sizes} for t in IOU_TYPES}
    with tempfile.TemporaryDirectory() as scratch:
        for k in range(args.test_sets):
            root = Path(scratch) / str(k)
            gt_path = generate_split(root, "test", max(args.sizes), params.data.synthetic, seed=FIRST_SEED + k)
            prepared = root / "prepared"
            prepared.mkdir()
            (prepared / "test.json").write_text(gt_path.read_text())
            (prepared / "image_dirs.json").write_text(json.dumps({"test": str(root / "test")}))
            loader = split_loader(prepared, "test", trained.params.input, params.eval.batch_size, 0)
            predictions = predict(trained.model, loader, params.eval, trained.params.loss.use_focal_loss,
                                  trained.category_ids, device, progress=False)
            gt = load_coco(gt_path)
            for n in args.sizes:
                ids = set(predictions.image_ids[:n])
                for t in IOU_TYPES:
                    results = [r for r in predictions.results[t] if r["image_id"] in ids]
                    aps[t][n].append(float(coco_evaluate(gt, results, t, image_ids=sorted(ids)).stats[0]))
            print(f"test set {k + 1}/{args.test_sets}: " + ", ".join(
                f"{t} AP@{n} {aps[t][n][-1]:.4f}" for t in IOU_TYPES for n in args.sizes))
    summary = {t: {str(n): {"mean": float(np.mean(v)), "std": float(np.std(v, ddof=1)), "values": v}
                   for n, v in by_size.items()} for t, by_size in aps.items()}
    summary["test_sets"] = args.test_sets
    summary["model"] = str(args.model)
    atomic_write_json(args.out, summary)
    for t in IOU_TYPES:
        for n in args.sizes:
            print(f"{t} {n:5d} images: AP {summary[t][str(n)]['mean']:.4f} ± {summary[t][str(n)]['std']:.4f} "
                  f"(std over {args.test_sets} test sets)")


if __name__ == "__main__":
    torch.set_grad_enabled(False)
    main()
