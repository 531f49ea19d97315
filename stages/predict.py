"""Predict on new images: an overlay per image and a COCO-style results file (not a DVC stage, not tracked).

    python -m stages.predict --model models/model.pt --source photos/ 'more/*.jpg' --out predictions --score 0.3
"""
import sys
from pathlib import Path

from pipeline.tracking.stage import run_stage

RESULTS = "results.json"  # COCO result records: image_id, category_id, bbox (xywh), segmentation (RLE), score
IMAGES = "images.json"  # the image ids of RESULTS: id, file_name, width, height


def configure(parser):
    parser.add_argument("--model", type=Path, default=Path("models/model.pt"), help="a trained model.pt")
    parser.add_argument("--source", nargs="+", required=True, help="image files, folders or globs")
    parser.add_argument("--out", type=Path, default=Path("predictions"), help="output folder (default: predictions)")
    parser.add_argument("--score", type=float, default=0.3, help="lowest score kept (default 0.3)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--overwrite", action="store_true", help="write into a non-empty --out")


def check(params, args):
    """The model must be there."""
    from pipeline.utils.errors import require

    require(args.model, "train")


def main(params, run, args):
    """Run a trained model on image files, folders or globs: overlays and COCO results under --out."""
    from tqdm import tqdm

    from pipeline.utils.errors import PipelineError
    from pipeline.utils.io import atomic_write_json
    from pipeline.deploy.predict import Predictor, find_images, output_names, to_rgb
    from pipeline.analysis.visualize import save_overlay

    if args.out.exists() and any(args.out.iterdir()) and not args.overwrite:
        raise PipelineError(f"--out {args.out}: exists and is not empty (choose another folder, or --overwrite)")
    paths = find_images(args.source)
    predictor = Predictor.from_checkpoint(args.model, args.device, args.score, params.eval)
    args.out.mkdir(parents=True, exist_ok=True)
    images, records, unreadable = [], [], []
    for image_id, (path, name) in enumerate(zip(tqdm(paths, desc="predict", unit="img", disable=len(paths) < 10),
                                                output_names(paths)), start=1):
        try:
            rgb = to_rgb(path)
        except PipelineError as err:
            unreadable.append(str(path))
            tqdm.write(f"skipped: {err}", file=sys.stderr)
            continue
        prediction = predictor.predict(rgb)
        save_overlay(rgb.permute(1, 2, 0).numpy(), prediction.as_dict(), prediction.class_names, args.out / name,
                     title=f"{path.name}: {len(prediction)} detections")
        height, width = rgb.shape[-2:]
        images.append({"id": image_id, "file_name": str(path), "overlay": name, "width": int(width), "height": int(height)})
        records += predictor.coco_records(image_id, prediction)
    if not images:
        raise PipelineError(f"--source: none of the {len(paths)} files could be read")
    atomic_write_json(args.out / RESULTS, records)
    atomic_write_json(args.out / IMAGES, images)
    print(f"{len(images)} images, {len(records)} detections (score >= {args.score:g}), {len(unreadable)} unreadable "
          f"-> {args.out}/")


if __name__ == "__main__":
    run_stage("predict", main, configure=configure, tracked=False, check=check)
