"""Tables and figures of the anchor analysis and the ablation (pandas, matplotlib)."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import pandas as pd

from .io import atomic_file, atomic_write_text

ABLATION_COLUMNS = ("pos_iou", "neg_iou", "anchor_scales", "bbox_AP", "segm_AP")


def write_csv(rows: Sequence[dict], path: Path) -> pd.DataFrame:
    table = pd.DataFrame(list(rows))
    atomic_write_text(path, table.to_csv(index=False, float_format="%.6g"))
    return table


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def anchor_stats_figure(table: pd.DataFrame, path: Path) -> None:
    """Best possible recall, force-only share and positives per GT by size, one group per cell."""
    plt = _figure()
    labels = [f"{r.anchor_scales}\n{r.pos_iou:g}/{r.neg_iou:g}" for r in table.itertuples()]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    x = range(len(table))
    width = 0.4
    axes[0].bar([i - width / 2 for i in x], table["best_possible_recall"], width, label="best possible recall")
    axes[0].bar([i + width / 2 for i in x], table["force_only_share"], width, label="GTs with only a forced prior")
    axes[0].set_ylim(0, 1)
    axes[0].set_title("GT coverage (pos/neg IoU)")
    for j, bucket in enumerate(("small", "medium", "large")):
        axes[1].bar([i + (j - 1) * 0.27 for i in x], table[f"pos_per_gt_{bucket}"], 0.27, label=bucket)
    axes[1].set_title("positive priors per GT")
    for ax in axes:
        ax.set_xticks(list(x), labels, fontsize=8)
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)


def ablation_table(cell_files: Sequence[Path], anchor_stats: pd.DataFrame | None) -> pd.DataFrame:
    """One row per ablation cell (its metrics JSON), anchor statistics joined on the grid values."""
    rows = [json.loads(Path(f).read_text()) for f in cell_files]
    table = pd.DataFrame(rows)
    if anchor_stats is not None and len(anchor_stats):
        keep = ["pos_iou", "neg_iou", "anchor_scales", "best_possible_recall", "force_only_share",
                "pos_priors_per_image"]
        table = table.merge(anchor_stats[keep], on=["pos_iou", "neg_iou", "anchor_scales"], how="left")
    return table.sort_values(["segm_AP", "bbox_AP"], ascending=False, ignore_index=True)


def ablation_markdown(table: pd.DataFrame, baseline: tuple[float, float, str]) -> str:
    """A sorted table with each cell's AP difference to the baseline cell."""
    pos, neg, scales = baseline
    is_base = (table["pos_iou"] == pos) & (table["neg_iou"] == neg) & (table["anchor_scales"] == scales)
    shown = table.copy()
    if is_base.any():
        base = shown[is_base].iloc[0]
        shown["d_bbox_AP"] = shown["bbox_AP"] - base["bbox_AP"]
        shown["d_segm_AP"] = shown["segm_AP"] - base["segm_AP"]
    shown.insert(0, "baseline", ["**yes**" if b else "" for b in is_base])
    columns = [c for c in ("baseline", "cell", *ABLATION_COLUMNS, "d_bbox_AP", "d_segm_AP", "bbox_AP50", "segm_AP50",
                           "best_possible_recall", "force_only_share", "pos_priors_per_image", "mlflow_run_id")
               if c in shown.columns]
    header = (
        "# Ablation: matching thresholds x anchor scales\n\n"
        f"Baseline: pos_iou {pos:g}, neg_iou {neg:g}, anchor scales `{scales}` (the params.yaml values). "
        "Sorted by mask AP; d_* = difference to the baseline cell. Anchor statistics from the anchors "
        "stage (train set, before training).\n\n"
    )
    return header + _markdown(shown[columns]) + "\n"


def _markdown(table: pd.DataFrame) -> str:
    def cell(column: str, v) -> str:
        if isinstance(v, float):
            return f"{v:+.4f}" if column.startswith("d_") else f"{v:.4f}"
        return str(v)

    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join(cell(c, v) for c, v in zip(table.columns, row)) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines)


def ablation_heatmap(table: pd.DataFrame, path: Path, metric: str = "segm_AP") -> None:
    """Mask AP over threshold pairs (rows) x anchor-scale sets (columns)."""
    plt = _figure()
    grid = table.assign(thresholds=[f"{p:g}/{n:g}" for p, n in zip(table["pos_iou"], table["neg_iou"])])
    pivot = grid.pivot_table(index="thresholds", columns="anchor_scales", values=metric, aggfunc="first")
    fig, ax = plt.subplots(figsize=(1.8 + 1.6 * pivot.shape[1], 1.4 + 0.8 * pivot.shape[0]))
    image = ax.imshow(pivot.values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(pivot.shape[1]), pivot.columns)
    ax.set_yticks(range(pivot.shape[0]), pivot.index)
    ax.set_xlabel("anchor scales")
    ax.set_ylabel("pos_iou / neg_iou")
    for i in range(pivot.shape[0]):
        for j in range(pivot.shape[1]):
            ax.text(j, i, f"{pivot.values[i, j]:.3f}", ha="center", va="center", color="white")
    fig.colorbar(image, ax=ax, label=metric)
    ax.set_title(f"{metric} per ablation cell")
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
