"""The localization filter run along each query sequence, scored frame by frame (``evaluate --filter mcl``).

Per sequence, in time order: the motion update (drift odometry simulated from the ground truth, NOT the
ground truth itself, or image-only motion along the map's road graph), then the measurement update with
the frame's re-ranked hypotheses (the same ones the single-frame figures score).  Figures per condition:

- ``R@1``: share of frames whose filtered position is within the threshold of the ground truth;
- ``R@1_after_5``: the same over frames 6, 7, ... (the filter needs a few frames to lock on);
- ``confident_wrong_rate``: share of all frames flagged converged whose position is more than the
  threshold off (a confident wrong pose sent to Nav2 is the worst outcome);
- ``frames_to_converge_median``: frames until the first converged estimate (median over sequences).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scmpr_ros.config import FilterConfig
from scmpr_ros.errors import ScmprError
from scmpr_ros.geometry import heading_of
from scmpr_ros.localization.filter import DriftOdometry, MapLocalizationFilter

FILTER_MODES = ("none", "mcl")
ODOMETRY_MODES = ("drift", "none")
WARMUP_FRAMES = 5


@dataclass
class FilteredRun:
    """The filter's output for one query sequence, one row per queried frame."""

    xy: np.ndarray  # (Q, 2) filtered position in the map frame
    converged: np.ndarray  # (Q,) bool


def check_modes(filter_mode: str, odometry: str) -> None:
    if filter_mode not in FILTER_MODES:
        raise ScmprError(f"--filter {filter_mode!r}: use one of {', '.join(FILTER_MODES)}")
    if odometry not in ODOMETRY_MODES:
        raise ScmprError(f"--odometry {odometry!r}: use one of {', '.join(ODOMETRY_MODES)}")


def filter_sequence(
    map_poses7: np.ndarray,
    ranked: np.ndarray,
    scores: np.ndarray,
    truth_T: np.ndarray,
    times: np.ndarray,
    cfg: FilterConfig,
    odometry: str = "drift",
    seed: int = 0,
) -> FilteredRun:
    """Run a fresh filter over one sequence's frames (rows of ``ranked`` / ``scores``, in time order).

    ``truth_T`` (Q, 4, 4) only feeds the simulated drift odometry; ``times`` (Q,) the image-only motion."""
    flt = MapLocalizationFilter(map_poses7, cfg)
    xyyaw = np.column_stack([truth_T[:, 0, 3], truth_T[:, 1, 3], heading_of(truth_T, 0)])
    deltas = DriftOdometry(seed=seed).deltas(xyyaw) if odometry == "drift" else None
    count = cfg.hypothesis_count(image_only=deltas is None)  # the first this many of each frame's, as the node
    xy = np.full((len(ranked), 2), np.nan)
    converged = np.zeros(len(ranked), dtype=bool)
    for q in range(len(ranked)):
        ok = ranked[q] >= 0
        ids, frame_scores = ranked[q][ok][:count], scores[q][ok][:count]
        if q > 0 and flt.initialized:
            if deltas is not None:
                flt.predict_odometry(deltas[q])
            else:
                flt.predict_graph(max(float(times[q] - times[q - 1]), 0.0))
        if not flt.initialized and len(ids) == 0:
            continue  # nothing to start from yet: the frame counts as a miss (NaN position)
        estimate = flt.update(ids, frame_scores)  # the first update initialises the filter from the hypotheses
        xy[q], converged[q] = estimate.pose[:2], estimate.converged
    return FilteredRun(xy, converged)


def filtered_figures(runs: list[FilteredRun], truths_xy: list[np.ndarray], threshold_m: float) -> dict[str, float]:
    """R@1, R@1_after_5, confident_wrong_rate and frames_to_converge_median over several sequences."""
    hits, late, confident_wrong, to_converge = [], [], [], []
    for run, truth in zip(runs, truths_xy, strict=True):
        error = np.linalg.norm(run.xy - truth[:, :2], axis=1)
        hit = error <= threshold_m
        hits.append(hit)
        late.append(hit[WARMUP_FRAMES:])
        confident_wrong.append(run.converged & ~hit)
        first = np.flatnonzero(run.converged)
        to_converge.append(float(first[0] + 1) if first.size else float("nan"))
    late_all = np.concatenate(late)
    return {
        "R@1": float(np.concatenate(hits).mean()),
        "R@1_after_5": float(late_all.mean()) if late_all.size else float("nan"),
        "confident_wrong_rate": float(np.concatenate(confident_wrong).mean()),
        "frames_to_converge_median": float(np.nanmedian(to_converge)) if np.isfinite(to_converge).any() else None,
        "num_frames": int(sum(len(h) for h in hits)),
    }
