"""Evaluate models/model.pt on the prepared val split: box and mask mAP with pycocotools."""
from pathlib import Path

from pipeline.stage import run_stage

PREPARED = Path("data/prepared")
MODEL = Path("models/model.pt")
OUT = Path("reports/eval")


def main(params, run, args):
    """COCO box/mask AP, per-class AP, PR curves, timing and an example figure."""
    from pipeline.data import InstanceDataset, annotations_path
    from pipeline.evaluation import contract_metrics, detail_metrics, per_class_ap_table, pr_curve_table
    from pipeline.inference import flat_metrics, load_model, predict, score, val_loader
    from pipeline.io import atomic_write_json, atomic_write_text
    from pipeline.distributed import select_device
    from pipeline.tracking import fingerprint
    from pipeline.visualize import save_comparison

    device = select_device(params.train.device)
    model, trained, label_map, payload = load_model(MODEL, device)
    run.set_tags({"data_fingerprint": fingerprint(PREPARED.glob("*.json")), "device": str(device),
                  **({"mlflow.parentRunId": payload["mlflow_run_id"]} if payload.get("mlflow_run_id") else {})})
    # Architecture and input handling come from the trained model; post-processing from this params.yaml.
    predictions = predict(model, val_loader(trained, PREPARED), params.eval, trained.loss.use_focal_loss,
                          [entry["category_id"] for entry in label_map], device, keep_examples=params.eval.num_visualize)
    gt_path = annotations_path(PREPARED, "val")
    evaluations = score(gt_path, predictions)

    metrics = {**contract_metrics(evaluations), "inference_s_per_image": predictions.seconds_per_image,
               "num_images": predictions.num_images}
    names = {entry["category_id"]: entry["name"] for entry in label_map}
    curves = pr_curve_table(evaluations)
    curves["series"] = [f"{t}@{iou:g}" for t, iou in zip(curves["iou_type"], curves["iou"])]
    wide = curves.pivot_table(index="recall", columns="series", values="precision").reset_index()
    atomic_write_json(OUT / "detail.json", {**detail_metrics(evaluations), "device": str(device),
                                            "inference_s_per_image": predictions.seconds_per_image})
    atomic_write_text(OUT / "per_class_ap.csv", per_class_ap_table(evaluations, names).to_csv(index=False, float_format="%.6g"))
    atomic_write_text(OUT / "pr_curves.csv", wide.to_csv(index=False, float_format="%.6g"))
    if predictions.examples:
        dataset = InstanceDataset(PREPARED, "val", transforms=None)
        originals = [dataset.load(image_id) for image_id, _ in predictions.examples]
        targets = [{k: t[k][~t["iscrowd"]] for k in ("boxes", "masks", "labels")} for _, t in originals]
        save_comparison([img.permute(1, 2, 0).numpy() for img, _ in originals], targets,
                        [det for _, det in predictions.examples], [e["name"] for e in label_map], OUT / "examples.png")
    atomic_write_json("reports/metrics.json", metrics)

    flat = {**flat_metrics(evaluations), "inference_s_per_image": predictions.seconds_per_image}
    run.log_metrics(flat)
    if payload.get("mlflow_run_id"):
        run.log_to(payload["mlflow_run_id"], flat, [("reports/metrics.json", "eval"), (str(OUT), "eval")])
    run.log_artifact("reports/metrics.json")
    run.log_artifact(OUT, "eval")
    for iou_type, evaluation in evaluations.items():
        print(f"{iou_type}:\n{evaluation.summary}")


if __name__ == "__main__":
    run_stage("evaluate", main)
