"""The ablation report: every cell with a bootstrap interval, its paired difference to the baseline cell,
a convergence flag and TIDE's error types, as a table, markdown and figures.

Intervals are basic bootstrap intervals (:func:`pipeline.bootstrap.basic_interval`) over image resamples of the test split, shared by all cells (so a
difference is paired); with several seeds a cell's AP is the mean over its seeds under each resample,
and the spread over seeds is reported beside it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pipeline.ablation.grid import CellOutputs, cell_name
from pipeline.analysis.bootstrap import AP_RANGE, DIFFERENCE_RANGE, basic_interval, resample_counts, weighted_ap
from pipeline.config import AblationParams, grid_cell_name
from pipeline.analysis.error_analysis import ERROR_TYPES
from pipeline.evaluation.coco import IOU_TYPES
from pipeline.evaluation.matches import ImageMatches, load_image_matches
from pipeline.utils.errors import PipelineError
from pipeline.utils.io import atomic_file

CONFIDENCE = 0.95
LAST_QUARTER = 0.75


@dataclass(frozen=True)
class Cell:
    """One grid cell over its seeds: the cell JSON rows and per-image matches of each seed."""

    name: str
    rows: list[dict[str, Any]]
    matches: dict[str, list[ImageMatches]]


def load_cells(cells_dir: Path, ablation: AblationParams) -> list[Cell]:
    """The cells of the grid in grid order; a missing cell raises :class:`PipelineError` naming it."""
    cells, missing = [], []
    for pos, neg in ablation.thresholds:
        for scales in ablation.anchor_scales:
            rows, matches = [], {t: [] for t in IOU_TYPES}
            for seed in ablation.seeds:
                outputs = CellOutputs(cells_dir / f"{cell_name(pos, neg, scales, seed)}.json")
                if not outputs.result.is_file():
                    missing.append(str(outputs.result))
                    continue
                rows.append(json.loads(outputs.result.read_text()))
                for t in IOU_TYPES:
                    matches[t].append(load_image_matches(outputs.matches(t)))
            cells.append(Cell(grid_cell_name(pos, neg, scales), rows, matches))
    if missing:
        raise PipelineError(f"ablation cells not run yet: {', '.join(missing)} (run dvc repro)")
    return cells


def ablation_table(cells: Sequence[Cell], baseline: str, resamples: int, seed: int,
                   anchor_stats: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per grid cell: AP with interval and seed spread, paired difference to ``baseline``,
    ``significant`` (the mask-AP difference interval excludes 0), ``learned`` (the mask-AP interval excludes 0),
    ``converged`` (None for a cell that learned nothing: a flat curve at zero is not convergence), TIDE dAP,
    anchor statistics."""
    by_name = {cell.name: cell for cell in cells}
    if baseline not in by_name:
        raise PipelineError(f"ablation.baseline: {baseline!r} is not a cell of the grid ({', '.join(by_name)})")
    num_images = len(cells[0].matches["segm"][0].image_ids)
    counts = resample_counts(num_images, resamples, seed)
    ones = np.ones((1, num_images), dtype=np.int64)
    resampled = {(c.name, t): np.mean([weighted_ap(m, counts)["AP"] for m in c.matches[t]], axis=0)
                 for c in cells for t in IOU_TYPES}
    per_seed = {(c.name, t): np.array([weighted_ap(m, ones)["AP"][0] for m in c.matches[t]])
                for c in cells for t in IOU_TYPES}

    rows = []
    for cell in cells:
        first = cell.rows[0]
        row: dict[str, Any] = {"cell": cell.name, "pos_iou": first["pos_iou"], "neg_iou": first["neg_iou"],
                               "anchor_scales": first["anchor_scales"], "seeds": len(cell.rows),
                               "iterations": first["iterations"], "test_images": num_images}
        for t in IOU_TYPES:
            estimate = float(per_seed[cell.name, t].mean())
            lo, hi = basic_interval(estimate, resampled[cell.name, t], CONFIDENCE, AP_RANGE)
            spread = float(per_seed[cell.name, t].std(ddof=1)) if len(cell.rows) > 1 else float("nan")
            difference = estimate - float(per_seed[baseline, t].mean())
            d_lo, d_hi = basic_interval(difference, resampled[cell.name, t] - resampled[baseline, t], CONFIDENCE,
                                        DIFFERENCE_RANGE)
            row.update({f"{t}_AP": estimate, f"{t}_AP_lo": lo, f"{t}_AP_hi": hi, f"{t}_AP_seed_std": spread,
                        f"d_{t}_AP": difference,
                        f"d_{t}_AP_lo": d_lo, f"d_{t}_AP_hi": d_hi,
                        f"{t}_significant": cell.name != baseline and (d_lo > 0 or d_hi < 0)})
        row["significant"] = row["segm_significant"]
        row["learned"] = row["segm_AP_lo"] > 0
        row["converged"] = converged(cell.rows, (row["segm_AP_hi"] - row["segm_AP_lo"]) / 2) if row["learned"] else None
        for t in IOU_TYPES:
            for error in ERROR_TYPES:
                key = f"tide_{t}_dAP_{error}"
                row[key] = float(np.mean([r[key] for r in cell.rows]))
        row["baseline"] = cell.name == baseline
        row["mlflow_run_id"] = " ".join(r["mlflow_run_id"] for r in cell.rows)
        row["mlflow_tracking_uri"] = first.get("mlflow_tracking_uri", "")
        rows.append(row)
    table = pd.DataFrame(rows)
    if anchor_stats is not None and len(anchor_stats):
        keep = ["pos_iou", "neg_iou", "anchor_scales", "best_possible_recall", "force_only_share",
                "pos_priors_per_image"]
        table = table.merge(anchor_stats[keep], on=["pos_iou", "neg_iou", "anchor_scales"], how="left")
    return table


def converged(rows: Sequence[dict[str, Any]], half_width: float) -> bool | None:
    """False when, for any seed, val mask AP rose in the last quarter of training by more than
    ``half_width``; None when a cell has no validation curve reaching into its last quarter."""
    verdicts = []
    for row in rows:
        curve = [p for p in row.get("val_curve", []) if p.get("val_segm_AP") is not None]
        start = [p for p in curve if p["iteration"] <= LAST_QUARTER * row["iterations"]]
        if not start or curve[-1]["iteration"] <= start[-1]["iteration"]:
            return None
        verdicts.append(curve[-1]["val_segm_AP"] - start[-1]["val_segm_AP"] <= half_width)
    return all(verdicts)


def ablation_markdown(table: pd.DataFrame, baseline: str, resamples: int) -> str:
    """The table as markdown: AP [95% interval], difference to the baseline (n.s. when the interval holds 0)."""
    lines = [
        "# Ablation: matching thresholds x anchor scales",
        "",
        f"Test split ({table['test_images'].iloc[0]} images), {table['iterations'].iloc[0]} training iterations per "
        f"cell, {table['seeds'].iloc[0]} seed(s). AP [95% basic bootstrap interval over {resamples} image resamples]; "
        f"difference to the baseline cell `{baseline}` with its paired interval; **bold** = significant (interval "
        "excludes 0), n.s. = not significant. Converged: val mask AP rose in the last quarter of training by no "
        "more than the half-width of the cell's mask-AP interval (blank: no validation curve; \"nothing learned\": the "
        "mask-AP interval reaches 0, so there is no convergence to judge). TIDE dAP (mask): AP50 "
        "gained by fixing each error type. Anchor statistics: anchors stage, train split, before training.",
        "",
    ]
    columns = ["cell", "bbox AP", "d bbox AP", "mask AP", "d mask AP", "converged",
               *(f"dAP {e}" for e in ERROR_TYPES), "best possible recall", "mlflow run"]
    lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in table.itertuples(index=False):
        r = r._asdict()
        cells = [f"`{r['cell']}`" + (" (baseline)" if r["baseline"] else "")]
        for t in IOU_TYPES:
            spread = f" ± {r[f'{t}_AP_seed_std']:.3f} (seeds)" if r["seeds"] > 1 else ""
            cells.append(f"{r[f'{t}_AP']:.3f} [{r[f'{t}_AP_lo']:.3f}, {r[f'{t}_AP_hi']:.3f}]{spread}")
            cells.append(_difference(r, t))
        cells.append({True: "yes", False: "**no**", None: ""}[_flag(r["converged"])] if r["learned"] else "nothing learned")
        cells += [f"{r[f'tide_segm_dAP_{e}']:.3f}" for e in ERROR_TYPES]
        cells.append(f"{r['best_possible_recall']:.3f}" if "best_possible_recall" in r and pd.notna(r["best_possible_recall"]) else "")
        cells.append(str(r["mlflow_run_id"]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _flag(value: Any) -> bool | None:
    return None if value is None or (isinstance(value, float) and np.isnan(value)) else bool(value)


def _difference(r: dict[str, Any], iou_type: str) -> str:
    if r["baseline"]:
        return "—"
    text = f"{r[f'd_{iou_type}_AP']:+.3f} [{r[f'd_{iou_type}_AP_lo']:+.3f}, {r[f'd_{iou_type}_AP_hi']:+.3f}]"
    return f"**{text}**" if r[f"{iou_type}_significant"] else f"{text} n.s."


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> None:
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def ablation_heatmap(table: pd.DataFrame, path: Path) -> None:
    """Mask AP over threshold pairs (rows) x anchor-scale sets (columns), with interval and difference;
    a difference that is not significant is written in grey."""
    plt = _pyplot()
    rows = sorted({(p, n) for p, n in zip(table["pos_iou"], table["neg_iou"])})
    columns = list(dict.fromkeys(table["anchor_scales"]))
    values = np.full((len(rows), len(columns)), np.nan)
    fig, ax = plt.subplots(figsize=(2.0 + 2.2 * len(columns), 1.6 + 1.1 * len(rows)))
    for r in table.itertuples(index=False):
        i, j = rows.index((r.pos_iou, r.neg_iou)), columns.index(r.anchor_scales)
        values[i, j] = r.segm_AP
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    for r in table.itertuples(index=False):
        i, j = rows.index((r.pos_iou, r.neg_iou)), columns.index(r.anchor_scales)
        half = (r.segm_AP_hi - r.segm_AP_lo) / 2
        ax.text(j, i - 0.12, f"{r.segm_AP:.3f} ±{half:.3f}", ha="center", va="center", color="white", fontsize=9)
        label = "baseline" if r.baseline else f"Δ {r.d_segm_AP:+.3f}" + ("" if r.significant else " n.s.")
        ax.text(j, i + 0.18, label, ha="center", va="center", fontsize=8,
                color="white" if r.baseline or r.significant else "#aaaaaa")
    ax.set_xticks(range(len(columns)), columns)
    ax.set_yticks(range(len(rows)), [f"{p:g}/{n:g}" for p, n in rows])
    ax.set_xlabel("anchor scales")
    ax.set_ylabel("pos_iou / neg_iou")
    fig.colorbar(image, ax=ax, label="mask AP (test)")
    ax.set_title("mask AP ± half 95% interval, Δ to baseline")
    _save(plt, fig, path)


def validation_curves_figure(cells: Sequence[Cell], path: Path) -> None:
    """Val mask AP against iteration for every cell and seed, in one figure."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4))
    for cell in cells:
        for row in cell.rows:
            curve = [p for p in row.get("val_curve", []) if p.get("val_segm_AP") is not None]
            if curve:
                label = cell.name + (f" s{row['seed']}" if len(cell.rows) > 1 else "")
                ax.plot([p["iteration"] for p in curve], [p["val_segm_AP"] for p in curve], marker="o", label=label)
    if cells and cells[0].rows:
        ax.axvline(LAST_QUARTER * cells[0].rows[0]["iterations"], color="grey", linestyle="--", linewidth=1)
    ax.set_xlabel("iteration")
    ax.set_ylabel("val mask AP")
    ax.set_title("validation during training (dashed: start of the last quarter)")
    ax.legend(fontsize=8)
    _save(plt, fig, path)


def tide_comparison_figure(table: pd.DataFrame, path: Path) -> None:
    """Grouped bars: the mask dAP of each TIDE error type, one bar per cell."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    width = 0.8 / max(len(table), 1)
    for k, r in enumerate(table.itertuples(index=False)):
        heights = [getattr(r, f"tide_segm_dAP_{e}") for e in ERROR_TYPES]
        ax.bar([i + (k - (len(table) - 1) / 2) * width for i in range(len(ERROR_TYPES))], heights, width, label=r.cell)
    ax.set_xticks(range(len(ERROR_TYPES)), ERROR_TYPES)
    ax.set_ylabel("mask dAP (AP50 gained by fixing)")
    ax.set_title("TIDE error types per ablation cell (test split)")
    ax.legend(fontsize=8)
    _save(plt, fig, path)
