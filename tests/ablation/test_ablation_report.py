"""The ablation report's statistics: intervals, paired differences, significance, convergence."""
import numpy as np
import pytest

import pandas as pd

from pipeline.ablation.report import Cell, ablation_markdown, ablation_table, converged
from pipeline.analysis.error_analysis import ERROR_TYPES
from pipeline.evaluation.coco import coco_evaluate
from pycocotools.coco import COCO

NUM_IMAGES = 40


def ground_truth() -> COCO:
    images = [{"id": i, "width": 100, "height": 100, "file_name": f"{i}.png"} for i in range(1, NUM_IMAGES + 1)]
    annotations = [{"id": i, "image_id": i, "category_id": 1, "bbox": [20, 20, 40, 40], "area": 1600.0,
                    "iscrowd": 0} for i in range(1, NUM_IMAGES + 1)]
    coco = COCO()
    coco.dataset = {"images": images, "annotations": annotations, "categories": [{"id": 1, "name": "shape"}]}
    coco.createIndex()
    return coco


def detections(shift: float, rng: np.random.Generator) -> list[dict]:
    """One detection per image, its box moved by up to ``shift`` pixels."""
    return [{"image_id": i, "category_id": 1, "score": float(rng.uniform(0.5, 1.0)),
             "bbox": [20 + float(rng.uniform(-shift, shift)), 20 + float(rng.uniform(-shift, shift)), 40, 40]}
            for i in range(1, NUM_IMAGES + 1)]


def cell(name: str, shift: float, seed: int = 0, curve=None) -> Cell:
    matches = coco_evaluate(ground_truth(), detections(shift, np.random.default_rng(seed)), "bbox").matches
    pos, neg, scales = name.split("-")
    row = {"pos_iou": float(pos[1:]), "neg_iou": float(neg[1:]), "anchor_scales": scales, "seed": seed,
           "iterations": 100, "val_curve": curve or [], "mlflow_run_id": f"run-{name}", "mlflow_tracking_uri": "x",
           **{f"tide_{t}_dAP_{e}": 0.0 for t in ("bbox", "segm") for e in ERROR_TYPES}}
    return Cell(name, [row], {"bbox": [matches], "segm": [matches]})


def test_a_cell_against_itself_has_zero_difference_and_is_not_significant():
    base = cell("p0.5-n0.4-base", shift=6)
    table = ablation_table([base, cell("p0.6-n0.5-base", shift=6)], "p0.5-n0.4-base", 1000, seed=0)
    other = table.iloc[1]
    assert other["d_segm_AP"] == 0 and other["d_segm_AP_lo"] == 0 and other["d_segm_AP_hi"] == 0
    assert not other["significant"]
    assert table.iloc[0]["segm_AP_lo"] <= table.iloc[0]["segm_AP"] <= table.iloc[0]["segm_AP_hi"]


def test_a_clearly_better_detector_is_significant():
    table = ablation_table([cell("p0.5-n0.4-base", shift=12), cell("p0.6-n0.5-base", shift=0.5)],
                           "p0.5-n0.4-base", 1000, seed=0)
    better = table.iloc[1]
    assert better["d_segm_AP"] > 0.2
    assert better["d_segm_AP_lo"] > 0 and better["significant"]
    assert not table.iloc[0]["significant"]  # the baseline is never "significant" against itself


def test_the_baseline_is_named_not_taken_from_the_loss_params():
    cells = [cell("p0.5-n0.4-base", shift=12), cell("p0.6-n0.5-base", shift=0.5)]
    table = ablation_table(cells, "p0.6-n0.5-base", 1000, seed=0)
    assert list(table["baseline"]) == [False, True]
    assert table.iloc[0]["d_segm_AP"] < 0 and table.iloc[0]["significant"]
    with pytest.raises(Exception, match="ablation.baseline"):
        ablation_table(cells, "p0.7-n0.5-base", 1000, seed=0)


def test_seed_spread_is_reported_beside_the_interval():
    first, second = cell("p0.5-n0.4-base", shift=6, seed=0), cell("p0.5-n0.4-base", shift=6, seed=1)
    both = Cell(first.name, first.rows + second.rows,
                {t: first.matches[t] + second.matches[t] for t in ("bbox", "segm")})
    row = ablation_table([both], "p0.5-n0.4-base", 1000, seed=0).iloc[0]
    aps = [coco_evaluate(ground_truth(), detections(6, np.random.default_rng(s)), "bbox").stats[0] for s in (0, 1)]
    assert row["seeds"] == 2
    assert row["segm_AP"] == pytest.approx(np.mean(aps))
    assert row["segm_AP_seed_std"] == pytest.approx(np.std(aps, ddof=1))


def test_convergence_compares_the_last_quarter_rise_with_the_interval_half_width():
    def rows(values):
        return [{"iterations": 400, "val_curve": [{"iteration": i, "val_segm_AP": v}
                                                  for i, v in zip((100, 200, 300, 400), values)]}]

    assert converged(rows([0.1, 0.2, 0.30, 0.31]), half_width=0.02) is True
    assert converged(rows([0.1, 0.2, 0.30, 0.40]), half_width=0.02) is False
    assert converged([{"iterations": 400, "val_curve": []}], half_width=0.02) is None


def test_a_cell_that_learned_nothing_is_not_called_converged():
    flat = [{"iteration": i, "val_segm_AP": 0.0} for i in (25, 50, 75, 100)]
    cells = [cell("p0.5-n0.4-base", shift=0.5), cell("p0.6-n0.5-base", shift=80, curve=flat)]  # boxes off target
    table = ablation_table(cells, "p0.5-n0.4-base", 200, seed=0).set_index("cell")
    assert table.loc["p0.6-n0.5-base", "segm_AP"] == 0.0
    assert not table.loc["p0.6-n0.5-base", "learned"] and table.loc["p0.6-n0.5-base", "converged"] is None
    assert table.loc["p0.5-n0.4-base", "learned"]
    markdown = ablation_markdown(table.reset_index(), "p0.5-n0.4-base", 200)
    assert "nothing learned" in next(line for line in markdown.splitlines() if line.startswith("| `p0.6"))


def test_the_table_joins_anchor_statistics_and_the_markdown_shows_intervals_and_significance():
    cells = [cell("p0.5-n0.4-base", shift=12), cell("p0.6-n0.5-base", shift=0.5), cell("p0.7-n0.5-base", shift=12)]
    stats = pd.DataFrame([{"pos_iou": 0.5, "neg_iou": 0.4, "anchor_scales": "base", "best_possible_recall": 0.9,
                           "force_only_share": 0.1, "pos_priors_per_image": 7.0}])
    table = ablation_table(cells, "p0.5-n0.4-base", 1000, seed=0, anchor_stats=stats)
    assert table.loc[table["pos_iou"] == 0.5, "best_possible_recall"].item() == 0.9
    markdown = ablation_markdown(table, "p0.5-n0.4-base", 1000)
    rows = {line.split(" | ")[0]: line for line in markdown.splitlines() if line.startswith("| `")}
    assert "(baseline)" in rows["| `p0.5-n0.4-base` (baseline)"]
    assert "**+" in rows["| `p0.6-n0.5-base`"]  # significant: bold
    assert "n.s." in rows["| `p0.7-n0.5-base`"]  # the same detector quality: not significant
