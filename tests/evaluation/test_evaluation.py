import copy
import functools
import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from pycocotools.cocoeval import COCOeval

from pipeline.evaluation.coco import (
    CONTRACT_STATS,
    STAT_NAMES,
    bbox_results,
    category_names,
    coco_evaluate,
    coco_results,
    contract_metrics,
    detail_metrics,
    per_class_ap_table,
    pr_curve_table,
    segm_results,
)
from pipeline.data.coco import load_coco

# pycocotools' own mask decoding (annToMask, used to build test detections) trips a numpy 2 deprecation.
pytestmark = pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")

COCO_TINY_VAL = Path(__file__).resolve().parents[3] / "shared/data/coco_tiny/annotations/instances_val2017.json"


def polygon(x, y, w, h):
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def triangle(x, y, w, h):
    return [[x, y + h, x + w / 2, y, x + w, y + h]]


def make_annotation(ann_id, image_id, category_id, segmentation, height, width, iscrowd=0):
    rle = mask_util.merge(mask_util.frPyObjects(segmentation, height, width)) if not iscrowd else segmentation
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": category_id,
        "segmentation": segmentation,
        "area": float(mask_util.area(rle)),
        "bbox": [float(v) for v in mask_util.toBbox(rle)],
        "iscrowd": iscrowd,
    }


@pytest.fixture(scope="module")
def handmade_json(tmp_path_factory):
    """Three images, non-contiguous category ids, small/medium/large objects, a crowd region and an empty image."""
    height, width = 160, 200
    shapes = {
        1: [(3, polygon(10, 10, 20, 15)), (7, triangle(60, 40, 90, 80)), (3, polygon(40, 85, 150, 70))],
        2: [(3, polygon(5, 5, 60, 60)), (3, polygon(50, 50, 40, 30)), (7, polygon(120, 20, 12, 10))],
        3: [],
    }
    anns = []
    for image_id, objects in shapes.items():
        for category_id, segmentation in objects:
            anns.append(make_annotation(len(anns) + 1, image_id, category_id, segmentation, height, width))
    crowd = np.zeros((height, width), dtype=np.uint8, order="F")
    crowd[100:150, 150:195] = 1
    crowd_rle = mask_util.encode(crowd)
    crowd_rle["counts"] = crowd_rle["counts"].decode("ascii")
    anns.append(make_annotation(len(anns) + 1, 2, 7, crowd_rle, height, width, iscrowd=1))
    dataset = {
        "images": [{"id": i, "height": height, "width": width, "file_name": f"{i}.jpg"} for i in shapes],
        "categories": [{"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
        "annotations": anns,
    }
    path = tmp_path_factory.mktemp("coco") / "instances_val.json"
    path.write_text(json.dumps(dataset))
    return path


@pytest.fixture(params=["handmade", "coco_tiny"])
def gt_json(request, handmade_json):
    if request.param == "handmade":
        return handmade_json
    if not COCO_TINY_VAL.is_file():
        pytest.skip(f"coco_tiny not found at {COCO_TINY_VAL}")
    return COCO_TINY_VAL


def ground_truth_detections(coco, shifts=(0.0,)):
    """Every non-crowd annotation as a detection, moved right by a fraction of its width (cycling through ``shifts``).

    Unshifted detections score 1; shifted ones get decreasing scores so that ranking matters.
    """
    shifted = any(shifts)
    category_ids = sorted(coco.getCatIds())
    detections = {}
    for image_id in coco.getImgIds():
        anns = coco.loadAnns(coco.getAnnIds(imgIds=image_id, iscrowd=False))
        info = coco.imgs[image_id]
        boxes, masks = [], []
        for i, ann in enumerate(anns):
            x, y, w, h = ann["bbox"]
            mask = coco.annToMask(ann)
            dx = w * shifts[i % len(shifts)]
            if dx:
                x += dx
                mask = np.roll(mask, round(dx), axis=1)
                mask[:, : round(dx)] = 0
            boxes.append([x, y, x + w, y + h])
            masks.append(mask)
        detections[image_id] = {
            "boxes": torch.tensor(boxes, dtype=torch.float64).reshape(-1, 4),
            "scores": torch.linspace(1.0, 0.5, len(anns)) if shifted else torch.ones(len(anns)),
            "labels": torch.tensor([category_ids.index(a["category_id"]) for a in anns], dtype=torch.long),
            "masks": torch.from_numpy(np.stack(masks)).bool() if masks else torch.zeros(0, info["height"], info["width"], dtype=torch.bool),
        }
    return category_ids, detections


@functools.cache
def cached_detections(gt_path, shifts=(0.0,)):
    """(COCO index, category ids, detections) of :func:`ground_truth_detections`, built once per module run."""
    coco = load_coco(gt_path)
    return (coco, *ground_truth_detections(coco, shifts))


def all_results(category_ids, detections):
    results = {"bbox": [], "segm": []}
    for image_id, det in detections.items():
        for iou_type, records in coco_results(image_id, det, category_ids).items():
            results[iou_type] += records
    return results


def test_result_records_are_coco_format():
    boxes = torch.tensor([[10.0, 20.0, 40.0, 25.0]], dtype=torch.float64)
    masks = torch.zeros(1, 30, 50, dtype=torch.bool)
    masks[0, 20:25, 10:40] = True
    (box,) = bbox_results(4, boxes, torch.tensor([0.25]), torch.tensor([1]), category_ids=[3, 7])
    assert boxes.tolist() == [[10.0, 20.0, 40.0, 25.0]]  # input left as it was
    assert box == {"image_id": 4, "category_id": 7, "bbox": [10.0, 20.0, 30.0, 5.0], "score": 0.25}
    (segm,) = segm_results(4, masks, torch.tensor([0.25]), torch.tensor([0]), category_ids=[3, 7])
    assert "bbox" not in segm and segm["category_id"] == 3 and segm["score"] == 0.25
    assert isinstance(segm["segmentation"]["counts"], str)
    json.dumps(segm)
    decoded = mask_util.decode({**segm["segmentation"], "counts": segm["segmentation"]["counts"].encode()})
    assert np.array_equal(decoded, masks[0].numpy())
    assert segm_results(4, torch.zeros(0, 30, 50, dtype=torch.bool), torch.zeros(0), torch.zeros(0, dtype=torch.long), [3]) == []


def test_ground_truth_as_detections_scores_one(gt_json):
    coco, category_ids, detections = cached_detections(gt_json)
    results = all_results(category_ids, detections)
    evaluations = {t: coco_evaluate(coco, results[t], t) for t in ("bbox", "segm")}

    metrics = contract_metrics(evaluations)
    for iou_type in ("bbox", "segm"):
        assert set(metrics[iou_type]) == set(CONTRACT_STATS)
        assert metrics[iou_type]["AP"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP50"] == pytest.approx(1.0)
        assert metrics[iou_type]["AP75"] == pytest.approx(1.0)
        # An area range without ground truth is -1, as COCOeval reports it.
        assert all(metrics[iou_type][k] == pytest.approx(1.0) or metrics[iou_type][k] == -1 for k in ("APs", "APm", "APl"))

    names = category_names(coco)
    table = per_class_ap_table(evaluations, names)
    assert list(table.columns) == ["category", "bbox_AP", "segm_AP"]
    assert table["category"].tolist() == list(names.values())
    with_gt = {c for c in names if coco.getAnnIds(catIds=c, iscrowd=False)}
    has_gt = table.index.isin([i for i, c in enumerate(names) if c in with_gt])
    assert np.allclose(table.loc[has_gt, ["bbox_AP", "segm_AP"]], 1.0)
    assert table.loc[~has_gt, ["bbox_AP", "segm_AP"]].isna().all().all()

    curves = pr_curve_table(evaluations)
    assert list(curves.columns) == ["recall", "precision", "iou", "iou_type"]
    assert len(curves) == 2 * 2 * 101
    assert np.allclose(curves["precision"], 1.0)


def test_handmade_images_cover_every_area_range(handmade_json):
    coco, category_ids, detections = cached_detections(handmade_json)
    evaluation = coco_evaluate(handmade_json, all_results(category_ids, detections)["segm"], "segm")
    assert [evaluation.metrics[k] for k in ("APs", "APm", "APl")] == pytest.approx([1.0, 1.0, 1.0])


def raw_pycocotools_stats(coco, category_ids, detections, iou_type):
    """The same detections fed to pycocotools directly, without the pipeline's helpers."""
    records = []
    for image_id, det in detections.items():
        for i in range(len(det["scores"])):
            record = {
                "image_id": image_id,
                "category_id": category_ids[int(det["labels"][i])],
                "score": float(det["scores"][i]),
            }
            if iou_type == "bbox":
                x1, y1, x2, y2 = det["boxes"][i].tolist()
                record["bbox"] = [x1, y1, x2 - x1, y2 - y1]
            else:
                record["segmentation"] = mask_util.encode(np.asfortranarray(det["masks"][i].numpy().astype(np.uint8)))
            records.append(record)
    evaluator = COCOeval(coco, coco.loadRes(records), iou_type)
    evaluator.evaluate()
    evaluator.accumulate()
    evaluator.summarize()
    return np.asarray(evaluator.stats)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("shifts", [(0.5,), (0.0, 0.05, 0.15, 0.25, 0.5)], ids=["half-width", "mixed"])
def test_shifted_detections_match_pycocotools(gt_json, iou_type, shifts):
    _, category_ids, detections = cached_detections(gt_json, shifts)
    results = all_results(category_ids, detections)[iou_type]
    evaluation = coco_evaluate(gt_json, results, iou_type)
    reference = raw_pycocotools_stats(load_coco(gt_json), category_ids, detections, iou_type)

    if shifts == (0.5,):
        assert evaluation.stats[0] < 0.1  # boxes shifted by half their width overlap their GT at IoU 1/3
    else:
        assert 0.2 < evaluation.stats[0] < 0.9
    np.testing.assert_allclose(evaluation.stats, reference, rtol=0, atol=1e-12)
    assert list(evaluation.detail) == list(STAT_NAMES)
    assert list(evaluation.detail.values()) == pytest.approx(list(reference))
    # COCO's AP is the mean of the per-class APs over the classes with ground truth.
    assert np.nanmean(list(evaluation.per_class_ap().values())) == pytest.approx(evaluation.stats[0])


def test_no_detections_gives_zero_metrics_and_a_warning(handmade_json):
    evaluations = {}
    for iou_type in ("bbox", "segm"):
        with pytest.warns(RuntimeWarning, match="no .* detections"):
            evaluations[iou_type] = coco_evaluate(handmade_json, [], iou_type)
    metrics = contract_metrics(evaluations)
    assert metrics == {t: dict.fromkeys(CONTRACT_STATS, 0.0) for t in ("bbox", "segm")}
    assert all(v == 0 for d in detail_metrics(evaluations).values() for v in d.values())
    table = per_class_ap_table(evaluations, category_names(load_coco(handmade_json)))
    assert (table[["bbox_AP", "segm_AP"]] == 0).all().all()
    assert (pr_curve_table(evaluations)["precision"] == 0).all()


def test_image_ids_restrict_the_evaluation(handmade_json):
    coco, category_ids, detections = cached_detections(handmade_json)
    only_first = bbox_results(1, *(detections[1][k] for k in ("boxes", "scores", "labels")), category_ids)
    everywhere = coco_evaluate(coco, only_first, "bbox")
    restricted = coco_evaluate(coco, only_first, "bbox", image_ids=[1])
    assert restricted.metrics["AP"] == pytest.approx(1.0)
    assert everywhere.metrics["AP"] < 0.9


def test_results_are_not_mutated(handmade_json):
    coco, category_ids, detections = cached_detections(handmade_json)
    results = all_results(category_ids, detections)["segm"]
    before = copy.deepcopy(results)
    coco_evaluate(coco, results, "segm")
    assert results == before
