"""Tables and figures of the anchor analysis and of training (pandas, matplotlib)."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd

from pipeline.utils.io import atomic_file, atomic_write_text


def write_csv(rows: Sequence[dict], path: Path) -> pd.DataFrame:
    table = pd.DataFrame(list(rows))
    atomic_write_text(path, table.to_csv(index=False, float_format="%.6g"))
    return table


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def training_curves_figure(log_csv: Path, path: Path) -> None:
    """The loss and its terms, whichever the architecture logs (log scale, so the warm-up spike does not
    flatten the rest) and, when validation ran, val box and mask AP against the iteration."""
    plt = _figure()
    log = pd.read_csv(log_csv)
    validated = [c for c in ("val_bbox_AP", "val_segm_AP") if c in log and log[c].notna().any()]
    fig, axes = plt.subplots(1, 2 if validated else 1, figsize=(11 if validated else 6, 4), squeeze=False)
    loss_ax = axes[0][0]
    columns = list(log.columns)
    for column in columns[columns.index("loss"):columns.index("images_per_s")]:  # the log's loss columns
        loss_ax.plot(log["iteration"], log[column].clip(lower=1e-6), label=column, linewidth=1)
    loss_ax.set_yscale("log")
    loss_ax.set_xlabel("iteration")
    loss_ax.set_title("training loss")
    loss_ax.legend(fontsize=8)
    if validated:
        ax = axes[0][1]
        for column in validated:
            rows = log[log[column].notna()]
            ax.plot(rows["iteration"], rows[column], marker="o", label=column)
        ax.set_xlabel("iteration")
        ax.set_ylim(0, 1)
        ax.set_title("validation AP (val split)")
        ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110)
    plt.close(fig)
