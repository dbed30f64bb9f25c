"""Scoring a ROS replay: the hypotheses the localizer published, per image stamp, against ground truth.

Pure data in, numbers out (no rclpy, no bag reading): nodes/replay.py records the results and reads
the bag's ground truth, this module scores them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from scmpr_ros.errors import ScmprError
from scmpr_ros.evaluation.filtering import WARMUP_FRAMES
from scmpr_ros.mapping.map_file import read_map
from scmpr_ros.retrieval.metrics import recall_at_n


def score_replay(
    results: dict[int, dict[str, Any]],
    ground_truth: dict[int, tuple[float, float, float]],
    map_file: str | Path,
    threshold_m: float = 5.0,
    ns: tuple[int, ...] = (1, 5),
) -> dict[str, Any]:
    """Recall@N of published hypotheses (image stamp ns -> {"hypotheses": HYPOTHESIS_DTYPE rows}) against
    ground-truth positions with the same stamps; R@1 of a random ranking as ``chance_r1``."""
    m = read_map(map_file, verify_checksum=False)
    index_of = {int(v): i for i, v in enumerate(np.asarray(m.viewpoint_ids))}
    stamps = sorted(s for s in results if s in ground_truth)
    if not stamps:
        raise ScmprError(
            "no published result has a ground-truth pose with the same stamp: is the bag's ground truth missing?"
        )
    k = max(len(results[s]["hypotheses"]) for s in stamps)
    ranked = np.full((len(stamps), k), -1, dtype=np.int64)
    for j, s in enumerate(stamps):
        ids = [index_of[int(v)] for v in results[s]["hypotheses"]["viewpoint_id"]]
        ranked[j, : len(ids)] = ids
    q_xyz = np.array([ground_truth[s] for s in stamps])
    ns = tuple(n for n in ns if n <= k) or (1,)
    db_xyz = np.asarray(m.poses)[:, :3]
    rr = recall_at_n(ranked, q_xyz, db_xyz, threshold_m, ns)
    # R@1 of a random ranking: mean fraction of viewpoints within the threshold (small maps make it large)
    near = (np.linalg.norm(q_xyz[:, None, :] - db_xyz[None, :, :], axis=-1) <= threshold_m).mean(axis=1)
    chance = float(near[rr.evaluated].mean()) if rr.evaluated.any() else float("nan")
    filtered = filtered_pose_figures(results, ground_truth, threshold_m)
    return ({"filtered": filtered} if filtered else {}) | {
        "recall": {f"R@{n}": rr.recall[n] for n in rr.ns},
        "chance_r1": chance,
        "num_scored": rr.num_evaluated,
        "num_results": len(results),
        "threshold_m": threshold_m,
        "_detail": {
            "stamps": stamps,
            "query_xyz": q_xyz,
            "db_xyz": np.asarray(m.poses)[:, :3].copy(),
            "hits": rr.hits_at(1),
            "evaluated": rr.evaluated,
            "top1": rr.top1_ids,
        },
    }


def filtered_pose_figures(
    results: dict[int, dict[str, Any]], ground_truth: dict[int, tuple[float, float, float]], threshold_m: float
) -> dict[str, Any] | None:
    """The localization filter's published positions (``filtered_xyz``) against ground truth, in stamp
    order: R@1 = share within the threshold (x, y), R@1_after_5 the same from the 6th filtered frame on."""
    stamps = sorted(s for s in results if s in ground_truth and "filtered_xyz" in results[s])
    if not stamps:
        return None
    error = np.array([np.linalg.norm(results[s]["filtered_xyz"][:2] - np.asarray(ground_truth[s])[:2]) for s in stamps])
    hits = error <= threshold_m
    late = hits[WARMUP_FRAMES:]
    return {
        "R@1": float(hits.mean()),
        "R@1_after_5": float(late.mean()) if late.size else float("nan"),
        "num_frames": len(stamps),
    }
