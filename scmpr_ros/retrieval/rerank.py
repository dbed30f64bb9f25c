"""Second stage of matching (paper eq. 10): Sim = alpha * cos(D_RGB, D_v) + beta * psi(S_RGB, S_v).

The top ``rerank_k`` candidates of the vector index are re-scored; ties keep the cosine order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from scmpr_ros.errors import InputError
from scmpr_ros.semantics.grid import semantic_overlap


@dataclass(frozen=True)
class Hypothesis:
    viewpoint_id: int
    pose: np.ndarray  # (7,) x y z qx qy qz qw in the map frame
    cosine: float
    psi: float
    score: float
    index: int = -1  # row of the viewpoint in the map arrays


def rerank(
    cosines: np.ndarray,
    ids: np.ndarray,
    query_grid: np.ndarray | None,
    map_grids,
    alpha: float,
    beta: float,
    top_k: int,
    *,
    poses: np.ndarray | None = None,
    viewpoint_ids: np.ndarray | None = None,
) -> list[Hypothesis]:
    """Order candidates (row ``ids`` of the map, their ``cosines``) by alpha*cos + beta*psi, best first.

    ``map_grids[rows]`` must give (k, rows, cols, N_S) bool (an array or PackedGrids). ``query_grid``
    None (no semantics) gives psi = 0. Ids < 0 (index padding) are dropped.
    """
    cos = np.asarray(cosines, dtype=np.float64).ravel()
    rows = np.asarray(ids, dtype=np.int64).ravel()
    if cos.shape != rows.shape:
        raise InputError(f"cosines {cos.shape} and ids {rows.shape} must have the same length")
    if top_k < 1:
        raise InputError(f"top_k must be >= 1, got {top_k}")
    keep = rows >= 0
    cos, rows = cos[keep], rows[keep]
    if query_grid is not None and len(rows):
        psi = semantic_overlap(query_grid, map_grids[rows]).astype(np.float64)
    else:
        psi = np.zeros(len(rows))
    score = alpha * cos + beta * psi
    # primary: score desc; ties: cosine desc, then map row asc (deterministic)
    order = np.lexsort((rows, -cos, -score))[:top_k]
    out = []
    for i in order:
        r = int(rows[i])
        out.append(
            Hypothesis(
                viewpoint_id=int(viewpoint_ids[r]) if viewpoint_ids is not None else r,
                pose=np.array(poses[r], dtype=np.float64) if poses is not None else np.full(7, np.nan),
                cosine=float(cos[i]),
                psi=float(psi[i]),
                score=float(score[i]),
                index=r,
            )
        )
    return out
