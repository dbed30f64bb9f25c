"""PNG plots for evaluation: Recall@N curves and a top-down trajectory with hits/misses.

matplotlib with the non-interactive Agg backend; files are written atomically.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from scmpr_ros.io_utils import pyplot_agg, write_figure_png

CONDITION_COLORS = {"day": "#1f77b4", "night": "#2c2c54", "winter": "#17becf", "all": "#ff7f0e"}


def plot_recall_curve(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]],
    path: str | Path,
    title: str = "Recall@N",
    threshold_m: float | None = None,
) -> Path:
    """One line per label: Recall@N (percent) against N."""
    plt = pyplot_agg()
    fig, ax = plt.subplots(figsize=(5.5, 4.0))
    for i, (label, (ns, rec)) in enumerate(curves.items()):
        color = CONDITION_COLORS.get(label, f"C{i}")
        ax.plot(list(ns), [100.0 * r for r in rec], marker="o", label=f"{label} (R@1 {100 * rec[0]:.1f}%)", color=color)
    ax.set_xlabel("N (number of retrieved viewpoints)")
    ax.set_ylabel("Recall@N (%)")
    ax.set_ylim(0, 101)
    all_ns = sorted({int(n) for ns, _ in curves.values() for n in ns})
    if all_ns:
        ax.set_xticks(all_ns)
    suffix = f" (correct within {threshold_m:g} m)" if threshold_m is not None else ""
    ax.set_title(title + suffix, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    out = write_figure_png(fig, path)
    plt.close(fig)
    return out


def plot_trajectory(
    db_xy: np.ndarray,
    query_xy: np.ndarray,
    hits: np.ndarray,
    path: str | Path,
    title: str = "Queries: hits and misses",
    evaluated: np.ndarray | None = None,
    top1_xy: np.ndarray | None = None,
) -> Path:
    """Top-down view: map viewpoints grey, queries green (hit at 1) / red (miss), grey x = no true match.

    With ``top1_xy`` a thin red line joins each missed query to its wrong top-1 viewpoint.
    """
    plt = pyplot_agg()
    db_xy = np.asarray(db_xy, dtype=np.float64)[:, :2]
    query_xy = np.asarray(query_xy, dtype=np.float64)[:, :2]
    hits = np.asarray(hits, dtype=bool)
    evaluated = np.ones(len(query_xy), dtype=bool) if evaluated is None else np.asarray(evaluated, dtype=bool)
    fig, ax = plt.subplots(figsize=(6.5, 6.5))
    ax.scatter(db_xy[:, 0], db_xy[:, 1], s=6, c="#b0b0b0", label=f"map viewpoints ({len(db_xy)})", zorder=1)
    miss = evaluated & ~hits
    if top1_xy is not None:
        top1_xy = np.asarray(top1_xy, dtype=np.float64)[:, :2]
        for q in np.flatnonzero(miss):
            if np.isfinite(top1_xy[q]).all():
                ax.plot(
                    [query_xy[q, 0], top1_xy[q, 0]],
                    [query_xy[q, 1], top1_xy[q, 1]],
                    color="#d62728",
                    lw=0.5,
                    alpha=0.35,
                    zorder=2,
                )
    n_eval = max(int(evaluated.sum()), 1)
    ax.scatter(
        query_xy[evaluated & hits, 0],
        query_xy[evaluated & hits, 1],
        s=14,
        c="#2ca02c",
        label=f"hit@1 ({int((evaluated & hits).sum())}/{n_eval})",
        zorder=3,
    )
    ax.scatter(
        query_xy[miss, 0], query_xy[miss, 1], s=14, c="#d62728", label=f"miss@1 ({int(miss.sum())}/{n_eval})", zorder=4
    )
    if (~evaluated).any():
        ax.scatter(
            query_xy[~evaluated, 0],
            query_xy[~evaluated, 1],
            s=14,
            c="#7f7f7f",
            marker="x",
            label=f"no true match in map ({int((~evaluated).sum())})",
            zorder=3,
        )
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("x (m)")
    ax.set_ylabel("y (m)")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.2)
    ax.legend(loc="best", fontsize=8, markerscale=1.5)
    out = write_figure_png(fig, path)
    plt.close(fig)
    return out
