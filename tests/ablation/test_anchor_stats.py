"""Anchor statistics against a hand-worked case, and the ablation report helpers."""
import json
import math

import torch

from pipeline import config
from pipeline.ablation.anchor_stats import ImageBoxes, anchor_statistics, feature_sizes, read_image_boxes

# Four priors tiling the unit square (cx, cy, w, h).
PRIORS = torch.tensor([[0.25, 0.25, 0.5, 0.5], [0.75, 0.25, 0.5, 0.5], [0.25, 0.75, 0.5, 0.5], [0.75, 0.75, 0.5, 0.5]])


def test_statistics_equal_a_hand_worked_case():
    images = [
        ImageBoxes(
            boxes=torch.tensor([[0.0, 0.0, 0.5, 0.5],     # A: IoU 1 with prior 0
                                [0.5, 0.5, 0.8, 0.8]]),   # B: IoU 0.09/0.25 = 0.36 with prior 3, forced
            areas=torch.tensor([500.0, 5000.0]),          # small, medium
            crowd_boxes=torch.tensor([[0.5, 0.0, 1.0, 0.5]]),  # covers prior 1 -> neutral
        ),
        ImageBoxes(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, 4)),  # 4 background priors
    ]
    stats = anchor_statistics(images, PRIORS, pos_iou=0.5, neg_iou=0.4, crowd_iou=0.7)
    assert stats["num_gts"] == 2
    assert stats["best_possible_recall"] == 0.5       # only A has a prior at IoU >= 0.5
    assert stats["force_only_share"] == 0.5           # B is positive only through force-matching
    assert stats["pos_per_gt_small"] == 1.0 and stats["pos_per_gt_medium"] == 1.0
    assert math.isnan(stats["pos_per_gt_large"])
    assert stats["pos_priors_per_image"] == 1.0       # (2 + 0) / 2
    assert stats["neutral_priors_per_image"] == 0.5   # (1 + 0) / 2
    assert stats["neg_priors_per_image"] == 2.5       # (1 + 4) / 2


def test_lower_threshold_covers_more_ground_truth():
    images = [ImageBoxes(torch.tensor([[0.5, 0.5, 0.8, 0.8]]), torch.tensor([5000.0]), torch.zeros(0, 4))]
    assert anchor_statistics(images, PRIORS, 0.3, 0.2, 0.7)["best_possible_recall"] == 1.0
    assert anchor_statistics(images, PRIORS, 0.5, 0.4, 0.7)["best_possible_recall"] == 0.0


def test_image_boxes_are_read_normalised_with_crowds_apart(tmp_path):
    coco = {
        "images": [{"id": 1, "width": 200, "height": 100, "file_name": "a.png"}],
        "annotations": [
            {"id": 1, "image_id": 1, "bbox": [20, 10, 100, 50], "area": 4000, "iscrowd": 0, "category_id": 1},
            {"id": 2, "image_id": 1, "bbox": [0, 0, 50, 50], "area": 2000, "iscrowd": 1, "category_id": 1},
        ],
        "categories": [{"id": 1, "name": "x"}],
    }
    path = tmp_path / "train.json"
    path.write_text(json.dumps(coco))
    (image,) = read_image_boxes(path)
    assert torch.allclose(image.boxes, torch.tensor([[0.1, 0.1, 0.6, 0.6]]))
    assert torch.allclose(image.crowd_boxes, torch.tensor([[0.0, 0.0, 0.25, 0.5]]))
    assert image.areas.tolist() == [4000.0]


def test_feature_sizes_follow_the_network():
    params = config.load(overrides=["input.size=550", "model.backbone.depth=50"])
    assert feature_sizes(params) == [(69, 69), (35, 35), (18, 18), (9, 9), (5, 5)]
