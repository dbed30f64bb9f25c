"""Place-recognition metrics: Recall@N with a distance threshold, a yaw gate and exclude-recent.

A query is correct at N if one of its first N *eligible* retrieved database entries lies within
``threshold_m`` (Euclidean, 3-D) and, with a yaw gate, within ``yaw_gate_deg`` of the query's
heading.  Eligible = not excluded by ``exclude_recent_s`` (|t_q - t_db| < S, used when queries and
database come from the same sequence, the loop-closure protocol).  Queries with no eligible true
match in the database are left out of the denominator (the usual convention) and counted apart.
Pure numpy: no torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scmpr_ros.errors import ScmprError
from scmpr_ros.geometry import angle_difference, positions_of

DEFAULT_NS: tuple[int, ...] = (1, 5, 10)


class MetricsError(ScmprError, ValueError):
    """Inputs to a metric with inconsistent shapes or values."""


@dataclass
class RecallResult:
    """Recall@N for one set of queries."""

    ns: tuple[int, ...]
    recall: dict[int, float]  # N -> fraction of evaluated queries correct at N
    correct: np.ndarray  # (Q, len(ns)) bool; False for queries not evaluated
    evaluated: np.ndarray  # (Q,) bool: the query has an eligible true match in the database
    top1_ids: np.ndarray  # (Q,) int, -1 when nothing eligible was retrieved
    top1_error_m: np.ndarray  # (Q,) distance query -> top-1 (nan when none)
    threshold_m: float
    yaw_gate_deg: float | None = None
    exclude_recent_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def num_queries(self) -> int:
        return int(self.correct.shape[0])

    @property
    def num_evaluated(self) -> int:
        return int(self.evaluated.sum())

    def hits_at(self, n: int) -> np.ndarray:
        """(Q,) bool: correct at N (N must be one of ``ns``)."""
        if n not in self.ns:
            raise MetricsError(f"N={n} was not computed; computed: {list(self.ns)}")
        return self.correct[:, self.ns.index(n)]

    def to_dict(self) -> dict[str, Any]:
        err = self.top1_error_m[self.evaluated]
        err = err[np.isfinite(err)]
        return {
            "recall": {f"R@{n}": float(self.recall[n]) for n in self.ns},
            "num_queries": self.num_queries,
            "num_evaluated": self.num_evaluated,
            "num_without_true_match": self.num_queries - self.num_evaluated,
            "threshold_m": float(self.threshold_m),
            "yaw_gate_deg": None if self.yaw_gate_deg is None else float(self.yaw_gate_deg),
            "exclude_recent_s": None if self.exclude_recent_s is None else float(self.exclude_recent_s),
            "top1_error_m_median": float(np.median(err)) if err.size else None,
            **self.extra,
        }


def _check_1d(name: str, value: np.ndarray | None, length: int) -> np.ndarray | None:
    if value is None:
        return None
    value = np.asarray(value, dtype=np.float64).reshape(-1)
    if value.shape[0] != length:
        raise MetricsError(f"{name}: expected {length} values, got {value.shape[0]}")
    return value


def recall_at_n(
    ranked_ids: np.ndarray,
    query_xyz: np.ndarray,
    db_xyz: np.ndarray,
    threshold_m: float = 5.0,
    ns: Sequence[int] = DEFAULT_NS,
    *,
    query_yaw: np.ndarray | None = None,
    db_yaw: np.ndarray | None = None,
    yaw_gate_deg: float | None = None,
    query_times: np.ndarray | None = None,
    db_times: np.ndarray | None = None,
    exclude_recent_s: float | None = None,
) -> RecallResult:
    """Recall@N of retrieval results against ground-truth positions.

    ranked_ids: (Q, K) database indices best first; -1 pads rows with fewer results.  When
    exclude-recent is used, pass enough candidates (K > max N) so that N remain after exclusion.
    query_xyz (Q,3) and db_xyz (M,3) (or (.,2)) positions in the same frame.
    """
    ranked = np.asarray(ranked_ids)
    if ranked.ndim == 1:
        ranked = ranked[:, None]
    if ranked.ndim != 2 or not np.issubdtype(ranked.dtype, np.integer):
        raise MetricsError(f"ranked_ids: expected (Q,K) integers, got shape {ranked.shape} dtype {ranked.dtype}")
    q_xyz = positions_of(query_xyz, "query_xyz")
    d_xyz = positions_of(db_xyz, "db_xyz")
    nq, nd = q_xyz.shape[0], d_xyz.shape[0]
    if ranked.shape[0] != nq:
        raise MetricsError(f"ranked_ids has {ranked.shape[0]} rows but there are {nq} query positions")
    if nd == 0:
        raise MetricsError("db_xyz: the database is empty")
    if (ranked >= nd).any() or (ranked < -1).any():
        raise MetricsError(f"ranked_ids: ids must lie in [-1, {nd - 1}] (database size {nd})")
    ns = tuple(sorted({int(n) for n in ns}))
    if not ns or ns[0] < 1:
        raise MetricsError(f"ns: expected positive integers, got {ns}")
    if threshold_m <= 0:
        raise MetricsError(f"threshold_m must be > 0, got {threshold_m}")
    if not (np.isfinite(q_xyz).all() and np.isfinite(d_xyz).all()):
        raise MetricsError("query_xyz/db_xyz contain NaN or inf; drop frames without a valid pose first")

    use_yaw = yaw_gate_deg is not None
    if use_yaw:
        if query_yaw is None or db_yaw is None:
            raise MetricsError("yaw_gate_deg needs query_yaw and db_yaw")
        q_yaw = _check_1d("query_yaw", query_yaw, nq)
        d_yaw = _check_1d("db_yaw", db_yaw, nd)
        gate = np.deg2rad(float(yaw_gate_deg))
    use_time = exclude_recent_s is not None
    if use_time:
        if query_times is None or db_times is None:
            raise MetricsError("exclude_recent_s needs query_times and db_times")
        q_t = _check_1d("query_times", query_times, nq)
        d_t = _check_1d("db_times", db_times, nd)

    # Ground truth: which database entries are true matches / eligible for each query.
    dist = np.linalg.norm(q_xyz[:, None, :] - d_xyz[None, :, :], axis=-1)  # (Q, M)
    true_match = dist <= threshold_m
    if use_yaw:
        true_match &= angle_difference(q_yaw[:, None], d_yaw[None, :]) <= gate
    eligible = np.ones((nq, nd), dtype=bool)
    if use_time:
        eligible = np.abs(q_t[:, None] - d_t[None, :]) >= float(exclude_recent_s)
    evaluated = (true_match & eligible).any(axis=1)

    correct = np.zeros((nq, len(ns)), dtype=bool)
    top1 = np.full(nq, -1, dtype=np.int64)
    top1_err = np.full(nq, np.nan)
    max_n = ns[-1]
    for q in range(nq):
        row = ranked[q]
        row = row[row >= 0]
        row = row[eligible[q, row]][:max_n]
        if row.size == 0:
            continue
        top1[q] = row[0]
        top1_err[q] = dist[q, row[0]]
        if not evaluated[q]:
            continue
        hit = true_match[q, row]
        first = int(np.argmax(hit)) if hit.any() else max_n
        correct[q] = [first < n for n in ns]
    denom = max(int(evaluated.sum()), 1)
    recall = {n: float(correct[:, i].sum()) / denom if evaluated.any() else 0.0 for i, n in enumerate(ns)}
    return RecallResult(
        ns=ns,
        recall=recall,
        correct=correct,
        evaluated=evaluated,
        top1_ids=top1,
        top1_error_m=top1_err,
        threshold_m=float(threshold_m),
        yaw_gate_deg=None if yaw_gate_deg is None else float(yaw_gate_deg),
        exclude_recent_s=None if exclude_recent_s is None else float(exclude_recent_s),
    )


def rank_by_similarity(query_desc: np.ndarray, db_desc: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by inner product (descriptors are unit-norm, so cosine): (scores, ids) (Q,k)."""
    q = np.asarray(query_desc, dtype=np.float32)
    d = np.asarray(db_desc, dtype=np.float32)
    if q.ndim != 2 or d.ndim != 2 or q.shape[1] != d.shape[1]:
        raise MetricsError(f"descriptor shapes do not match: queries {q.shape}, database {d.shape}")
    sims = q @ d.T
    k = min(int(k), d.shape[0])
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, axis=1), ids


def recall_curve(result: RecallResult) -> tuple[list[int], list[float]]:
    """(ns, recalls) for plotting a Recall@N curve."""
    return list(result.ns), [result.recall[n] for n in result.ns]
