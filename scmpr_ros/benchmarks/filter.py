"""`scmpr benchmark filter`: one localization-filter step (motion + measurement + estimate) per map size.

The map is a synthetic road grid (viewpoints every 2 m along both directions of each road) grown to
the requested number of viewpoints; a vehicle drives one road and each frame's hypotheses are its
nearest viewpoint plus random ones (scores in [0, 1]), as the recognizer would give.  The filter's
cost should not depend on the map's size: the step time at 10k and at 1M viewpoints is the figure.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

from scmpr_ros.benchmarks.common import timing_stats
from scmpr_ros.config import FilterConfig
from scmpr_ros.localization.filter import MapLocalizationFilter

SPACING_M = 2.0
MOTIONS = ("odometry", "image_only")
ROAD_GAP_M = 100.0


def road_grid_viewpoints(count: int) -> np.ndarray:
    """(count, 7) viewpoint poses on a square grid of two-way roads ROAD_GAP_M apart, SPACING_M along."""
    per_road = int(ROAD_GAP_M / SPACING_M)
    roads = max(1, int(np.ceil(np.sqrt(count / (4 * per_road)))))
    side = roads * ROAD_GAP_M
    along = np.arange(0.0, side, SPACING_M)
    rows = []
    for r in range(roads):
        c = r * ROAD_GAP_M
        for yaw, xs, ys in ((0.0, along, np.full_like(along, c)), (np.pi / 2, np.full_like(along, c), along)):
            for heading in (yaw, yaw + np.pi):
                rows.append(np.column_stack([xs, ys, np.full_like(xs, heading)]))
    xyyaw = np.concatenate(rows)[:count]
    poses = np.zeros((len(xyyaw), 7))
    poses[:, :2] = xyyaw[:, :2]
    poses[:, 5], poses[:, 6] = np.sin(xyyaw[:, 2] / 2), np.cos(xyyaw[:, 2] / 2)
    return poses


def _frames(poses: np.ndarray, steps: int, k: int, rng: np.random.Generator):
    """Hypotheses along the first road (x axis, heading 0): the true viewpoint at a random rank, others random."""
    along = np.flatnonzero((poses[:, 1] == 0.0) & (poses[:, 6] > 0.99))
    for s in range(steps):
        true = along[min(s, len(along) - 1)]
        ids = rng.choice(len(poses), size=k, replace=False)
        ids[rng.integers(0, k)] = true
        yield ids, np.sort(rng.uniform(0.3, 0.9, size=k))[::-1]


def filter_step_benchmark(
    sizes: tuple[int, ...] = (10_000, 1_000_000), particles: int = 2000, steps: int = 200, seed: int = 0
) -> dict[str, Any]:
    """Median / p95 ms per filter step (motion + measurement + estimate) at each map size, with odometry
    and image only (road-graph motion at 10 Hz), each with the default number of hypotheses per frame
    the filter weighs in that mode (``FilterConfig.hypothesis_count``)."""
    rng = np.random.default_rng(seed)
    cfg = FilterConfig(num_particles=particles, seed=seed)
    counts = {motion: cfg.hypothesis_count(image_only=motion == "image_only") for motion in MOTIONS}
    result: dict[str, Any] = {"particles": particles, "steps": steps, "hypotheses": counts, "sizes": {}}
    result["loadavg_start"] = list(os.getloadavg())
    for size in sizes:
        poses = road_grid_viewpoints(size)
        row: dict[str, Any] = {}
        for motion in MOTIONS:
            t0 = time.perf_counter()
            flt = MapLocalizationFilter(poses, cfg)
            row["index_build_ms"] = (time.perf_counter() - t0) * 1e3
            row[motion] = timing_stats(_time_steps(flt, poses, steps, counts[motion], rng, motion)[5:])
        result["sizes"][str(len(poses))] = row
    result["loadavg_end"] = list(os.getloadavg())
    return result


def _time_steps(flt, poses, steps: int, k: int, rng: np.random.Generator, motion: str) -> list[float]:
    times = []
    for n, (ids, scores) in enumerate(_frames(poses, steps, k, rng)):
        t0 = time.perf_counter()
        if n == 0:
            flt.reset(ids, scores)
        elif motion == "odometry":
            flt.predict_odometry(np.array([SPACING_M, 0.0, 0.0]))
        else:
            flt.predict_graph(0.1)
        flt.update(ids, scores)
        times.append((time.perf_counter() - t0) * 1e3)
    return times


def format_filter_table(result: dict[str, Any]) -> str:
    lines = [
        f"filter step ({result['particles']} particles, {result['steps']} steps)",
        f"{'viewpoints':>12}{'motion':>12}{'hypotheses':>12}{'median ms':>11}{'p95 ms':>9}{'index build ms':>16}",
    ]
    for size, row in result["sizes"].items():
        for motion in MOTIONS:
            r, k = row[motion], result["hypotheses"][motion]
            lines.append(
                f"{int(size):>12}{motion:>12}{k:>12}{r['median_ms']:>11.2f}{r['p95_ms']:>9.2f}"
                f"{row['index_build_ms']:>16.0f}"
            )
    la = ", ".join(f"{v:.2f}" for v in result["loadavg_start"])
    lines.append(f"load average at start {la}")
    return "\n".join(lines)
