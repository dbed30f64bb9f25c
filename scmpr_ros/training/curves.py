"""The training log as a PNG: loss per logged step and validation R@1 per epoch."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from scmpr_ros.io_utils import pyplot_agg, write_figure_png


def plot_training_curves(records: Sequence[Mapping], path: str | Path) -> Path:
    """Loss (per logged step) and validation R@1 (per epoch) from the JSONL training log."""
    plt = pyplot_agg()
    steps = [r for r in records if r.get("kind") == "step"]
    vals = [r for r in records if r.get("kind") == "val"]
    fig, ax = plt.subplots(figsize=(6.5, 4.0))
    if steps:
        ax.plot([r["step"] for r in steps], [r["loss"] for r in steps], color="C0", lw=1, label="loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(True, alpha=0.3)
    if vals:
        ax2 = ax.twinx()
        ax2.plot([r["step"] for r in vals], [100 * r["val_r1"] for r in vals], color="C3", marker="o", label="val R@1")
        ax2.set_ylabel("validation R@1 (%)")
        ax2.set_ylim(0, 101)
    ax.set_title("training", fontsize=10)
    out = write_figure_png(fig, path)
    plt.close(fig)
    return out
