import numpy as np
import pytest

from pipeline.analysis.bootstrap import basic_interval, bootstrap_ap, paired_bootstrap_difference, resample_counts, weighted_ap
from pipeline.evaluation.coco import coco_evaluate
from pipeline.data.coco import load_coco
from pipeline.evaluation.matches import load_image_matches, save_image_matches
from tests.detection_cases import coco_index, dataset, random_case, results


def evaluate(data, detections, iou_type):
    return coco_evaluate(coco_index(data), results(detections, iou_type), iou_type)


def unit_weights(matches):
    return np.ones((1, len(matches.image_ids)), dtype=np.int64)


def replicate(data, detections, counts):
    """The dataset with image ``i`` copied ``counts[i]`` times under new ids, and its detections with it."""
    images, annotations, copied = [], [], []
    for image, count in zip(data["images"], counts):
        for _ in range(count):
            new_id = len(images) + 1
            images.append({**image, "id": new_id})
            for ann in (a for a in data["annotations"] if a["image_id"] == image["id"]):
                annotations.append({**ann, "id": len(annotations) + 1, "image_id": new_id})
            copied += [(new_id, *det[1:]) for det in detections if det[0] == image["id"]]
    return {**data, "images": images, "annotations": annotations}, copied


# Random cases with crowd regions; in case 8 a class is detected that has no ground truth.
SEEDS = (0, 2, 3, 4, 6, 8)


def test_random_cases_cover_a_detected_class_without_ground_truth():
    def detected_without_ground_truth(data, detections):
        return {d[1] for d in detections} - {a["category_id"] for a in data["annotations"] if not a["iscrowd"]}

    assert any(detected_without_ground_truth(*random_case(seed)) for seed in SEEDS)


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
@pytest.mark.parametrize("seed", SEEDS)
def test_unit_weights_reproduce_cocoeval_exactly(iou_type, seed):
    data, detections = random_case(seed)
    # The cases exercise what accumulate handles specially: crowd regions, tied scores, images without objects.
    assert any(a["iscrowd"] for a in data["annotations"])
    scores = [(d[1], d[2]) for d in detections]
    assert len(set(scores)) < len(scores)
    assert {i["id"] for i in data["images"]} - {a["image_id"] for a in data["annotations"]}

    evaluation = evaluate(data, detections, iou_type)
    assert 0.05 < evaluation.stats[0] < 0.95
    ap = weighted_ap(evaluation.matches, unit_weights(evaluation.matches))
    assert ap["AP"][0] == evaluation.stats[0]
    assert ap["AP50"][0] == evaluation.stats[1]


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_weights_score_like_copied_images(iou_type):
    data, detections = random_case(seed=11, score_decimals=12)  # distinct scores: copies do not interleave
    evaluation = evaluate(data, detections, iou_type)
    counts = resample_counts(len(data["images"]), 3, seed=5)
    assert (counts == 0).any() and (counts > 1).any()
    ap = weighted_ap(evaluation.matches, counts)
    for row, count in enumerate(counts):
        copied = evaluate(*replicate(data, detections, count), iou_type)
        assert ap["AP"][row] == pytest.approx(copied.stats[0], abs=1e-15)
        assert ap["AP50"][row] == pytest.approx(copied.stats[1], abs=1e-15)


def test_rows_without_ground_truth_are_undefined():
    data, detections = random_case(seed=1)
    matches = evaluate(data, detections, "bbox").matches
    with_objects = np.isin(matches.image_ids, [a["image_id"] for a in data["annotations"] if not a["iscrowd"]])
    ap = weighted_ap(matches, np.stack([~with_objects, with_objects]).astype(np.int64))
    assert np.isnan(ap["AP"][0]) and np.isfinite(ap["AP"][1])
    with pytest.raises(ValueError, match="weights must be"):
        weighted_ap(matches, np.ones((2, len(matches.image_ids) + 1)))


def test_one_image_gives_a_zero_width_interval():
    data = dataset({1: [(1, (10, 10, 40, 30)), (2, (60, 50, 30, 30)), (1, (100, 20, 30, 60))]})
    detections = [(1, 1, 0.9, (12, 11, 40, 30)), (1, 2, 0.8, (70, 55, 30, 30)), (1, 1, 0.7, (5, 80, 20, 20))]
    matches = evaluate(data, detections, "bbox").matches
    intervals = bootstrap_ap(matches, num_resamples=1000, seed=0)
    for interval in intervals.values():
        assert 0 < interval.estimate < 1
        assert interval.lo == interval.hi == interval.estimate


def test_identical_images_give_a_zero_width_interval():
    objects = [(1, (10, 10, 40, 30)), (2, (60, 50, 30, 30)), (1, (100, 20, 30, 60))]
    data = dataset({i: objects for i in range(1, 11)})
    per_image = [(1, 0.9, (12, 11, 40, 30)), (2, 0.8, (70, 55, 30, 30)), (1, 0.7, (5, 80, 20, 20)), (1, 0.6, (100, 25, 30, 60))]
    detections = [(i, *det) for i in range(1, 11) for det in per_image]
    intervals = bootstrap_ap(evaluate(data, detections, "bbox").matches, num_resamples=1000, seed=0)
    for interval in intervals.values():
        assert 0 < interval.estimate < 1
        assert interval.hi - interval.lo < 1e-12
        assert interval.lo - 1e-12 <= interval.estimate <= interval.hi + 1e-12


def two_detectors(num_images=40, seed=0):
    """Objects on ``num_images`` images, a perfect detector and one whose boxes are shifted by 10-35%."""
    rng = np.random.default_rng(seed)
    objects, perfect, noisy = {}, [], []
    for image_id in range(1, num_images + 1):
        objects[image_id] = []
        for _ in range(rng.integers(1, 4)):
            w, h = rng.uniform(15, 60, size=2)
            box = (rng.uniform(0, 160 - w), rng.uniform(0, 120 - h), w, h)
            category_id = int(rng.integers(1, 3))
            objects[image_id].append((category_id, box))
            score = rng.uniform(0.3, 1.0)
            perfect.append((image_id, category_id, score, box))
            shift = rng.uniform(0.1, 0.35) * w
            noisy.append((image_id, category_id, score, (box[0] + shift, box[1], w, h)))
    return dataset(objects), perfect, noisy


@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_a_clearly_better_detector_is_significant(iou_type):
    data, perfect, noisy = two_detectors()
    better, worse = evaluate(data, perfect, iou_type).matches, evaluate(data, noisy, iou_type).matches
    differences = paired_bootstrap_difference(better, worse, num_resamples=1000, seed=0)
    assert differences["AP"].significant and differences["AP"].lo > 0.1
    assert differences["AP"].lo <= differences["AP"].estimate <= differences["AP"].hi
    reversed_ = paired_bootstrap_difference(worse, better, num_resamples=1000, seed=0)["AP"]
    assert reversed_.significant and reversed_.hi < -0.1


def test_an_evaluation_against_itself_differs_by_exactly_zero():
    data, detections = random_case(seed=3, num_images=30)
    matches = evaluate(data, detections, "segm").matches
    intervals = bootstrap_ap(matches, num_resamples=1000, seed=0)
    assert intervals["AP"].hi - intervals["AP"].lo > 0.01  # the resamples do differ
    for difference in paired_bootstrap_difference(matches, matches, num_resamples=1000, seed=0).values():
        assert (difference.estimate, difference.lo, difference.hi) == (0.0, 0.0, 0.0)
        assert not difference.significant


def test_different_image_sets_are_refused():
    data, detections = random_case(seed=3)
    matches = evaluate(data, detections, "bbox").matches
    fewer = coco_evaluate(coco_index(data), results(detections, "bbox"), "bbox", image_ids=[1, 2, 3]).matches
    with pytest.raises(ValueError, match="same images: 12 vs 3 images, 9 only in a, 0 only in b"):
        paired_bootstrap_difference(matches, fewer)


def test_intervals_are_seeded():
    data, detections = random_case(seed=4, num_images=30)
    matches = evaluate(data, detections, "bbox").matches
    first, again = bootstrap_ap(matches, seed=7), bootstrap_ap(matches, seed=7)
    other = bootstrap_ap(matches, seed=8)
    assert first == again
    assert first["AP"].estimate == other["AP"].estimate
    assert (first["AP"].lo, first["AP"].hi) != (other["AP"].lo, other["AP"].hi)
    assert first["AP"].lo < first["AP"].estimate < first["AP"].hi
    counts = resample_counts(30, 1000, seed=7)
    assert counts.shape == (1000, 30) and (counts.sum(axis=1) == 30).all()


def test_no_detections_give_zero(recwarn):
    data, _ = random_case(seed=2)
    matches = coco_evaluate(coco_index(data), [], "bbox").matches
    assert bootstrap_ap(matches, num_resamples=1000)["AP"] == bootstrap_ap(matches)["AP"]
    assert bootstrap_ap(matches)["AP"].hi == 0.0


def test_image_matches_round_trip(tmp_path):
    data, detections = random_case(seed=5)
    matches = evaluate(data, detections, "segm").matches
    path = tmp_path / "cell" / "segm_matches.npz"
    save_image_matches(path, matches)
    loaded = load_image_matches(path)
    assert [p.name for p in path.parent.iterdir()] == [path.name]
    assert loaded.area_names == matches.area_names
    for name in ("image_ids", "category_ids", "num_gt", "det_category", "det_image", "det_score", "det_matched", "det_ignored"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(matches, name))
        assert getattr(loaded, name).dtype == getattr(matches, name).dtype
    assert bootstrap_ap(loaded) == bootstrap_ap(matches)


def test_unit_weights_reproduce_cocoeval_on_coco_tiny(coco_tiny):
    """Real annotations: 80 categories, crowd regions, many images per category."""
    gt = load_coco(coco_tiny / "annotations" / "instances_val2017.json")
    rng = np.random.default_rng(0)
    records = []
    for ann in gt.dataset["annotations"]:
        x, y, w, h = ann["bbox"]
        for _ in range(2):
            dx, dy = rng.normal(0, 0.15, 2) * [w, h]
            box = [x + dx, y + dy, w, h]
            records.append({"image_id": ann["image_id"], "category_id": ann["category_id"], "bbox": box, "score": round(rng.random(), 2)})
    evaluation = coco_evaluate(gt, records, "bbox")
    ap = weighted_ap(evaluation.matches, unit_weights(evaluation.matches))
    assert (ap["AP"][0], ap["AP50"][0]) == (evaluation.stats[0], evaluation.stats[1])


def test_basic_interval_covers_the_mean_of_normal_samples_at_its_level():
    """The sample mean of n N(mu, 1) draws is N(mu, 1/n): the interval's half-width is about 1.96/sqrt(n),
    it is centred on the estimate, and over many data sets it covers mu about 95% of the time."""
    rng = np.random.default_rng(0)
    n, mu, covered, widths = 100, 3.0, 0, []
    for _ in range(400):
        x = rng.normal(mu, 1.0, size=n)
        means = (resample_counts(n, 400, seed=int(rng.integers(1 << 30))) @ x) / n
        lo, hi = basic_interval(float(x.mean()), means, 0.95)
        covered += lo <= mu <= hi
        widths.append(hi - lo)
    assert abs(np.mean(widths) / 2 - 1.96 / np.sqrt(n)) < 0.01
    assert 0.91 <= covered / 400 <= 0.98


def test_basic_interval_reflects_a_resampling_bias_a_percentile_interval_follows():
    """Resampled values shifted up by b around the estimate (as duplicated images raise interpolated AP):
    the basic interval is [est - b - z s, est - b + z s], the percentile one would be est + b +- z s."""
    rng = np.random.default_rng(1)
    estimate, bias, spread = 0.40, 0.02, 0.01
    values = rng.normal(estimate + bias, spread, size=200_000)
    lo, hi = basic_interval(estimate, values, 0.95)
    assert lo == pytest.approx(estimate - bias - 1.96 * spread, abs=1e-3)
    assert hi == pytest.approx(estimate - bias + 1.96 * spread, abs=1e-3)
    assert basic_interval(0.0, np.abs(values - estimate), 0.95, bounds=(0.0, 1.0))[0] == 0.0  # clipped to AP's range
    with pytest.raises(ValueError, match="confidence"):
        basic_interval(estimate, values, 1.0)
