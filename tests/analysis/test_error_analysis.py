import json

import numpy as np
import pytest

from pipeline.analysis.error_analysis import ERROR_TYPES, confusion_figure, confusion_matrix, tide_errors, tide_figure
from pipeline.utils.errors import PipelineError
from pipeline.evaluation.coco import coco_evaluate, size_metrics
from tests.detection_cases import coco_index, dataset, random_case, results

CAT, DOG = 1, 2
A = (10, 10, 40, 40)  # a cat
B = (80, 50, 40, 40)  # a dog
C = (110, 5, 40, 30)  # another cat
CROWD_OF_CATS = (100, 0, 60, 45)
FAR_AWAY = (125, 95, 20, 20)  # overlaps no object
HALF_OFF_A = (30, 10, 40, 40)  # IoU 1/3 with A


def tide(objects, detections, iou_type):
    return tide_errors(dataset(objects), results(detections, iou_type), iou_type)


def only(**counts):
    return {name: counts.get(name, 0) for name in ERROR_TYPES}


@pytest.fixture(params=["bbox", "segm"])
def iou_type(request):
    return request.param


def test_a_perfect_detector_has_no_errors(iou_type):
    breakdown = tide({1: [(CAT, A), (DOG, B)], 2: [(CAT, C)]}, [(1, CAT, 0.9, A), (1, DOG, 0.8, B), (2, CAT, 0.7, C)], iou_type)
    assert breakdown["AP50"] == 1.0
    assert breakdown["dAP"] == dict.fromkeys(ERROR_TYPES, 0.0)
    assert breakdown["counts"] == only()


def test_a_wrong_class_at_iou_one_is_a_class_error_and_fixing_it_restores_ap(iou_type):
    breakdown = tide({1: [(CAT, A), (DOG, B)]}, [(1, DOG, 0.9, A), (1, DOG, 0.8, B)], iou_type)
    assert breakdown["counts"] == only(Cls=1)  # the cat it should have found is not also a miss
    assert breakdown["AP50"] == pytest.approx(0.25)  # cat: 0; dog: its one true positive ranks second
    assert breakdown["AP50"] + breakdown["dAP"]["Cls"] == pytest.approx(1.0)
    assert all(breakdown["dAP"][name] == 0 for name in ERROR_TYPES if name != "Cls")


def test_a_duplicate(iou_type):
    objects = {1: [(CAT, A), (DOG, B), (CAT, C)]}
    detections = [(1, CAT, 0.9, A), (1, CAT, 0.8, (12, 10, 40, 40)), (1, CAT, 0.7, C), (1, DOG, 0.6, B)]
    breakdown = tide(objects, detections, iou_type)
    assert breakdown["counts"] == only(Dupe=1)
    cat_ap = (51 * 1.0 + 50 * 2 / 3) / 101  # TP, duplicate, TP: precision 2/3 beyond recall 1/2
    assert breakdown["AP50"] == pytest.approx((cat_ap + 1.0) / 2)
    assert breakdown["AP50"] + breakdown["dAP"]["Dupe"] == pytest.approx(1.0)


def test_a_background_detection(iou_type):
    breakdown = tide({1: [(CAT, A), (DOG, B)]}, [(1, CAT, 0.95, FAR_AWAY), (1, CAT, 0.9, A), (1, DOG, 0.8, B)], iou_type)
    assert breakdown["counts"] == only(Bkg=1)
    assert breakdown["AP50"] == pytest.approx(0.75)
    assert breakdown["dAP"]["Bkg"] == pytest.approx(0.25)


def test_a_class_detected_but_absent_scores_zero():
    """Unlike COCOeval, which leaves out classes without ground truth, as tidecv does."""
    breakdown = tide({1: [(CAT, A)]}, [(1, CAT, 0.9, A), (1, DOG, 0.8, FAR_AWAY)], "bbox")
    assert breakdown["counts"] == only(Bkg=1)
    assert breakdown["AP50"] == pytest.approx(0.5)
    assert breakdown["dAP"]["Bkg"] == pytest.approx(0.5)


def test_iou_of_exactly_one_half_matches_and_also_bounds_loc(iou_type):
    half_of_a = (10, 10, 40, 20)  # IoU 800 / 1600 with A
    breakdown = tide({1: [(CAT, A)]}, [(1, CAT, 0.9, half_of_a), (1, CAT, 0.8, (10, 30, 40, 20))], iou_type)
    assert breakdown["counts"] == only(Loc=1)  # not Dupe: tidecv's Loc range [0.1, 0.5] includes 0.5
    assert breakdown["AP50"] == 1.0


def test_a_poorly_localised_detection(iou_type):
    breakdown = tide({1: [(CAT, A), (DOG, B)]}, [(1, CAT, 0.9, HALF_OFF_A), (1, DOG, 0.8, B)], iou_type)
    assert breakdown["counts"] == only(Loc=1)
    assert breakdown["AP50"] == pytest.approx(0.5)
    assert breakdown["dAP"]["Loc"] == pytest.approx(0.5)


def test_only_the_best_of_several_errors_on_one_object_is_fixed(iou_type):
    detections = [
        (1, CAT, 0.9, HALF_OFF_A),
        (1, DOG, 0.85, A),
        (1, CAT, 0.8, FAR_AWAY),
        (1, CAT, 0.7, (25, 10, 40, 40)),
        (1, DOG, 0.6, B),
    ]
    breakdown = tide({1: [(CAT, A), (DOG, B)]}, detections, iou_type)
    assert breakdown["counts"] == only(Loc=2, Cls=1, Bkg=1)
    # Fixing Loc makes the 0.9 box the cat's true positive, ahead of the background box, and drops the
    # 0.7 one; the dog keeps its false positive (the misclassified cat) ranked first. Fixing Cls cannot:
    # the 0.9 Loc error outranks it.
    assert breakdown["AP50"] + breakdown["dAP"]["Loc"] == pytest.approx((1.0 + 0.5) / 2)
    assert breakdown["AP50"] + breakdown["dAP"]["Cls"] == pytest.approx((0.0 + 1.0) / 2)


def test_a_missed_object(iou_type):
    breakdown = tide({1: [(CAT, A), (DOG, B)]}, [(1, DOG, 0.8, B)], iou_type)
    assert breakdown["counts"] == only(Miss=1)
    assert breakdown["AP50"] == pytest.approx(0.5)
    assert breakdown["dAP"]["Miss"] == pytest.approx(0.5)


def test_wrong_class_and_poorly_localised_is_both(iou_type):
    breakdown = tide({1: [(CAT, A), (DOG, B)]}, [(1, DOG, 0.9, HALF_OFF_A), (1, DOG, 0.8, B)], iou_type)
    assert breakdown["counts"] == only(Both=1, Miss=1)
    assert breakdown["AP50"] == pytest.approx(0.25)
    assert breakdown["dAP"]["Both"] == pytest.approx(0.25)
    assert breakdown["dAP"]["Miss"] == pytest.approx(0.25)


def test_crowd_regions_hide_detections_of_their_class_only(iou_type):
    objects = {1: [(CAT, A), (DOG, B), (DOG, (20, 70, 30, 30)), (CAT, CROWD_OF_CATS, "crowd")]}
    inside_crowd = (110, 5, 20, 20)
    hidden = tide(objects, [(1, CAT, 0.95, inside_crowd), (1, CAT, 0.9, A), (1, DOG, 0.8, B)], iou_type)
    dog_ap = 51 / 101  # one of two dogs found
    assert hidden["AP50"] == pytest.approx((1.0 + dog_ap) / 2)
    assert hidden["counts"] == only(Bkg=1, Miss=1)  # the hidden detection is still typed, as tidecv does
    assert hidden["dAP"]["Bkg"] == 0.0
    assert hidden["AP50"] + hidden["dAP"]["Miss"] == pytest.approx(1.0)  # nor scored once the miss is fixed
    mislocated_dog = (1, DOG, 0.85, (35, 70, 30, 30))  # IoU 1/3 with the dog that was missed
    fixable = tide(objects, [(1, CAT, 0.95, inside_crowd), (1, CAT, 0.9, A), mislocated_dog, (1, DOG, 0.8, B)], iou_type)
    assert fixable["counts"] == only(Bkg=1, Loc=1)
    assert fixable["AP50"] + fixable["dAP"]["Loc"] == pytest.approx(1.0)  # nor once the Loc error is fixed
    dog_in_crowd = tide(objects, [(1, DOG, 0.95, inside_crowd), (1, CAT, 0.9, A), (1, DOG, 0.8, B)], iou_type)
    dog_ap_behind_a_false_positive = 51 / 101 / 2
    assert dog_in_crowd["AP50"] == pytest.approx((1.0 + dog_ap_behind_a_false_positive) / 2)
    assert dog_in_crowd["AP50"] + dog_in_crowd["dAP"]["Bkg"] == pytest.approx(hidden["AP50"])


def test_at_most_100_detections_per_image():
    clutter = [(1, DOG, 0.99, FAR_AWAY)] * 100
    breakdown = tide({1: [(CAT, A), (DOG, B)]}, clutter + [(1, CAT, 0.5, A), (1, DOG, 0.4, B)], "bbox")
    assert breakdown["counts"] == only(Bkg=100, Miss=2)
    assert breakdown["AP50"] == 0.0


@pytest.mark.parametrize("seed", [1, 5, 9])
def test_tide_ap_agrees_with_cocoeval_ap50_where_their_definitions_meet(seed):
    """Without crowd regions, classes detected but absent, or over 100 detections per image."""
    data, detections = random_case(seed, score_decimals=12)
    data["annotations"] = [a for a in data["annotations"] if not a["iscrowd"]]
    present = {a["category_id"] for a in data["annotations"]}
    detections = [d for d in detections if d[1] in present]
    records = results(detections, "bbox")
    evaluation = coco_evaluate(coco_index(data), records, "bbox")
    assert tide_errors(data, records, "bbox")["AP50"] == pytest.approx(evaluation.stats[1], abs=1e-12)


def test_detections_without_any_ground_truth_are_background():
    breakdown = tide({1: [], 2: []}, [(1, CAT, 0.9, A), (2, DOG, 0.8, HALF_OFF_A)], "segm")
    assert breakdown["counts"] == only(Bkg=2)
    assert breakdown["AP50"] == 0.0 and breakdown["dAP"]["Bkg"] == 0.0
    with pytest.raises(PipelineError, match="no images to analyse"):
        tide_errors(dataset({1: []}), [], "bbox", image_ids=[5])


def test_image_ids_restrict_and_bad_records_are_named():
    objects = {1: [(CAT, A)], 2: [(DOG, B)]}
    detections = [(1, CAT, 0.9, A)]
    assert tide(objects, detections, "bbox")["counts"] == only(Miss=1)
    restricted = tide_errors(dataset(objects), results(detections, "bbox"), "bbox", image_ids=[1])
    assert restricted["counts"] == only() and restricted["AP50"] == 1.0
    with pytest.raises(PipelineError, match=r"result 0 \(image 9, category 1\)"):
        tide_errors(dataset(objects), results([(9, CAT, 0.9, A)], "bbox"), "bbox")
    with pytest.raises(PipelineError, match=r"result 0 .*'segmentation'"):
        tide_errors(dataset(objects), results(detections, "bbox"), "segm")


def test_tide_figure(tmp_path):
    objects = {1: [(CAT, A), (DOG, B)]}
    detections = [(1, DOG, 0.9, HALF_OFF_A), (1, DOG, 0.8, B)]
    breakdowns = {t: tide(objects, detections, t) for t in ("bbox", "segm")}
    path = tmp_path / "tide.png"
    tide_figure(breakdowns, path)
    assert path.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["tide.png"]


def test_confusion_matrix_counts_classes_misses_and_background(iou_type):
    objects = {1: [(7, A), (3, B), (7, C)], 2: [(3, A), (7, CROWD_OF_CATS, "crowd")]}
    detections = [
        (1, 7, 0.9, A),  # right
        (1, 7, 0.8, B),  # a 3 taken for a 7
        (1, 7, 0.85, (12, 10, 40, 40)),  # duplicate of A: background
        (1, 3, 0.3, C),  # below the score threshold; C is missed
        (2, 3, 0.9, A),  # right
        (2, 3, 0.9, (110, 5, 20, 20)),  # inside the crowd region: not counted
        (2, 3, 0.7, FAR_AWAY),  # background
    ]
    data = dataset(objects, categories=((7, "seven"), (3, "three")))
    matrix = confusion_matrix(data, results(detections, iou_type), iou_type, iou=0.5, score_threshold=0.5)
    # rows: ground truth 3, 7, background; columns: detected 3, 7, background (category ids in order)
    expected = np.array([[1, 1, 0], [0, 1, 1], [1, 1, 0]])
    np.testing.assert_array_equal(matrix, expected)
    everything = confusion_matrix(coco_index(data), results(detections, iou_type), iou_type, score_threshold=0.0)
    assert everything[1, 0] == 1 and everything[1, 2] == 0  # C found, by a 3


@pytest.mark.parametrize("num_classes", [3, 80])
def test_confusion_figure(tmp_path, num_classes):
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 5, size=(num_classes + 1, num_classes + 1))
    matrix[-1, -1] = 0
    path = tmp_path / "confusion.png"
    confusion_figure(matrix, [f"class {k}" for k in range(num_classes)], path)
    assert path.read_bytes().startswith(b"\x89PNG")
    with pytest.raises(ValueError, match="does not fit"):
        confusion_figure(matrix, ["one"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_size_metrics_count_ground_truth_and_null_empty_sizes():
    small, boundary, large = (5, 5, 10, 10), (40, 40, 32, 32), (0, 0, 100, 100)
    objects = {1: [(CAT, small), (CAT, large), (DOG, boundary)], 2: [(CAT, small), (DOG, CROWD_OF_CATS, "crowd")]}
    detections = [(1, CAT, 0.9, small), (1, CAT, 0.8, large), (2, CAT, 0.7, small)]
    evaluation = coco_evaluate(coco_index(dataset(objects)), results(detections, "bbox"), "bbox")
    metrics = size_metrics(evaluation)
    # COCOeval counts an area of exactly 32^2 as small and as medium; the crowd region not at all.
    assert metrics == {
        "APs": pytest.approx(0.5), "APm": 0.0, "APl": pytest.approx(1.0), "num_gt_small": 3, "num_gt_medium": 1, "num_gt_large": 1
    }

    without_large = {1: [(CAT, small)], 2: [(DOG, boundary)]}
    evaluation = coco_evaluate(coco_index(dataset(without_large)), results([(1, CAT, 0.9, small)], "bbox"), "bbox")
    assert evaluation.stats[5] == -1
    metrics = size_metrics(evaluation)
    assert metrics["APl"] is None and metrics["num_gt_large"] == 0
    assert json.loads(json.dumps(metrics))["APl"] is None


def test_coco_tiny_ground_truth_as_detections_is_perfect(coco_tiny):
    """Real annotations: polygons, RLE crowd regions, 80 categories."""
    gt = coco_index(json.loads((coco_tiny / "annotations" / "instances_val2017.json").read_text()))
    plain = [a for a in gt.dataset["annotations"] if not a["iscrowd"]]
    assert len(plain) < len(gt.dataset["annotations"])
    def record(ann, **region):
        return {"image_id": ann["image_id"], "category_id": ann["category_id"], "score": 1.0, **region}

    records = {
        "bbox": [record(a, bbox=a["bbox"]) for a in plain],
        "segm": [record(a, segmentation=gt.annToRLE(a)) for a in plain],
    }
    for iou_type, recs in records.items():
        breakdown = tide_errors(gt, recs, iou_type)
        assert breakdown["AP50"] == 1.0
        assert breakdown["counts"] == only()
        matrix = confusion_matrix(gt, recs, iou_type)
        assert matrix[:-1, -1].sum() == matrix[-1, :-1].sum() == 0
        assert np.trace(matrix) == len(plain)
