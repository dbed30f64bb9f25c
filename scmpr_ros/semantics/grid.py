"""Camera-frustum semantic grids and their overlap psi (paper eq. 10).

A grid is (rows, cols, N_S) bool: class c is present in cell (i, j) when at least
``max(1, min_fraction * labelled pixels of the cell)`` labelled pixels of the cell have class c.
The same binning serves the camera (dense predicted mask) and a LiDAR viewpoint (its visible points
projected into the reference camera).  psi = |Q ∩ V| / |Q ∪ V| over the (cell, class) pairs of the
cells where the viewpoint sees anything (the "overlapping visible region"); 0 if it sees nothing.
"""

from __future__ import annotations

import numpy as np

from scmpr_ros.config import CameraConfig
from scmpr_ros.errors import InputError
from scmpr_ros.semantics import NUM_CLASSES


def _check_grid_shape(rows: int, cols: int) -> None:
    if rows < 1 or cols < 1:
        raise InputError(f"semantic grid rows/cols must be >= 1, got {rows}x{cols} (map.grid_rows / map.grid_cols)")


def grid_from_pixels(
    u: np.ndarray,
    v: np.ndarray,
    labels: np.ndarray,
    width: int,
    height: int,
    rows: int,
    cols: int,
    min_fraction: float = 0.0,
    num_classes: int = NUM_CLASSES,
) -> np.ndarray:
    """Grid of labelled pixel positions u (x, right) and v (y, down) in a width x height image."""
    _check_grid_shape(rows, cols)
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    labels = np.asarray(labels).astype(np.int64, copy=False)
    keep = (labels >= 0) & (labels < num_classes) & (u >= 0) & (u < width) & (v >= 0) & (v < height)
    ci = np.minimum((v[keep] * rows / height).astype(np.int64), rows - 1)
    cj = np.minimum((u[keep] * cols / width).astype(np.int64), cols - 1)
    cell = ci * cols + cj
    counts = np.bincount(cell * num_classes + labels[keep], minlength=rows * cols * num_classes)
    counts = counts.reshape(rows * cols, num_classes)
    total = counts.sum(axis=1, keepdims=True)
    need = np.maximum(1.0, min_fraction * total)
    return (counts >= need).reshape(rows, cols, num_classes)


def grid_from_labels(
    label_image: np.ndarray, rows: int, cols: int, min_fraction: float = 0.0, num_classes: int = NUM_CLASSES
) -> np.ndarray:
    """(rows, cols, N_S) bool grid of a (H, W) label image (common ids; IGNORE_ID / others are skipped)."""
    lab = np.asarray(label_image)
    if lab.ndim != 2 or lab.size == 0:
        raise InputError(f"label image must be a non-empty (H, W) array, got shape {lab.shape}")
    H, W = lab.shape
    vv, uu = np.mgrid[0:H, 0:W]
    # pixel centres, so an image binned at any resolution lands in the same cells
    return grid_from_pixels(
        uu.ravel() + 0.5, vv.ravel() + 0.5, lab.ravel(), W, H, rows, cols, min_fraction, num_classes
    )


def grid_from_points(
    points_velo: np.ndarray,
    labels: np.ndarray,
    T_cam_velo: np.ndarray,
    camera: CameraConfig,
    rows: int,
    cols: int,
    min_fraction: float = 0.0,
    num_classes: int = NUM_CLASSES,
) -> np.ndarray:
    """Grid of labelled LiDAR points (K, 3) projected into the reference camera (pinhole, camera cfg)."""
    pts = np.asarray(points_velo, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] < 3:
        raise InputError(f"points must be (K, 3), got shape {pts.shape}")
    T = np.asarray(T_cam_velo, dtype=np.float64)
    x, y, z = pts[:, 0], pts[:, 1], pts[:, 2]  # elementwise: no BLAS call for a 3x3 product
    pc = np.stack([x * T[k, 0] + y * T[k, 1] + z * T[k, 2] + T[k, 3] for k in range(3)], 1)
    front = pc[:, 2] > 0.1
    pc = pc[front]
    u = camera.fx * pc[:, 0] / pc[:, 2] + camera.cx
    v = camera.fy * pc[:, 1] / pc[:, 2] + camera.cy
    return grid_from_pixels(
        u, v, np.asarray(labels)[front], camera.width, camera.height, rows, cols, min_fraction, num_classes
    )


def semantic_overlap(grid_q: np.ndarray, grids: np.ndarray) -> np.ndarray:
    """psi of one query grid (rows, cols, N_S) against grids (N, rows, cols, N_S) -> (N,) float32 in [0, 1]."""
    q = np.asarray(grid_q, dtype=bool)
    g = np.asarray(grids, dtype=bool)
    if g.ndim == 3:
        g = g[None]
    if g.ndim != 4 or g.shape[1:] != q.shape:
        raise InputError(f"semantic grids {g.shape} do not match the query grid {q.shape} (rows, cols, classes)")
    visible = g.any(axis=3, keepdims=True)  # (N, rows, cols, 1) cells the viewpoint sees
    qv = q[None] & visible
    inter = np.count_nonzero(qv & g, axis=(1, 2, 3))
    union = np.count_nonzero(qv | g, axis=(1, 2, 3))
    return np.divide(inter, union, out=np.zeros(len(g), dtype=np.float64), where=union > 0).astype(np.float32)
