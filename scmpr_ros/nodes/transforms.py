"""Rotations and poses for the ROS surface: quaternions are always (x, y, z, w) here (ROS order).

tf_transformations is used when importable; otherwise transforms3d, whose quaternions are
(w, x, y, z) — the reordering happens in this module only.  Quaternions are returned unit-norm
with w >= 0 (one canonical sign).  No rclpy import: the bag writer uses these helpers too.
"""
from __future__ import annotations

import numpy as np

from scmpr_ros.errors import InputError

try:  # the ROS package, when a ROS install provides it
    import tf_transformations as _tft  # type: ignore[import-not-found]
except Exception:  # noqa: BLE001 - any import failure means "not available"
    _tft = None

if _tft is None:
    from transforms3d import quaternions as _t3q

BACKEND = "tf_transformations" if _tft is not None else "transforms3d"


def _canonical(q: np.ndarray) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    n = float(np.linalg.norm(q))
    if not np.isfinite(n) or n < 1e-12:
        raise InputError(f"quaternion {q.tolist()} has zero or non-finite norm; give a unit quaternion (x, y, z, w)")
    q = q / n
    return -q if q[3] < 0 else q


def quat_from_matrix(T: np.ndarray) -> np.ndarray:
    """(x, y, z, w) of the rotation part of a (3,3) or (4,4) matrix."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape not in ((3, 3), (4, 4)) or not np.all(np.isfinite(T)):
        raise InputError(f"expected a finite (3,3) or (4,4) matrix, got shape {T.shape}")
    R = T[:3, :3]
    if _tft is not None:
        M = np.eye(4)
        M[:3, :3] = R
        q = np.asarray(_tft.quaternion_from_matrix(M), dtype=np.float64)
    else:
        w, x, y, z = _t3q.mat2quat(R)
        q = np.array([x, y, z, w])
    return _canonical(q)


def matrix_from_quat(q_xyzw) -> np.ndarray:
    """(3,3) rotation matrix of a quaternion given as (x, y, z, w); normalised first."""
    q = _canonical(np.asarray(q_xyzw, dtype=np.float64).reshape(4))
    if _tft is not None:
        return np.asarray(_tft.quaternion_matrix(q), dtype=np.float64)[:3, :3]
    x, y, z, w = q
    return _t3q.quat2mat([w, x, y, z])


def pose7_from_matrix(T: np.ndarray) -> np.ndarray:
    """(7,) x y z qx qy qz qw of a (4,4) homogeneous transform."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise InputError(f"expected a (4,4) homogeneous matrix, got shape {T.shape}")
    return np.concatenate([T[:3, 3], quat_from_matrix(T)])


def matrix_from_pose7(p) -> np.ndarray:
    """(4,4) homogeneous transform of x y z qx qy qz qw."""
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if p.shape != (7,) or not np.all(np.isfinite(p)):
        raise InputError(f"expected 7 finite numbers x y z qx qy qz qw, got {p.tolist()}")
    T = np.eye(4)
    T[:3, :3] = matrix_from_quat(p[3:])
    T[:3, 3] = p[:3]
    return T


def yaw_from_quat(q_xyzw) -> float:
    """Heading (rotation about z, REP-103) of a quaternion (x, y, z, w), in radians."""
    R = matrix_from_quat(q_xyzw)
    return float(np.arctan2(R[1, 0], R[0, 0]))


def quat_from_yaw(yaw: float) -> np.ndarray:
    return np.array([0.0, 0.0, np.sin(yaw / 2.0), np.cos(yaw / 2.0)])


def quat_angle(q1_xyzw, q2_xyzw) -> float:
    """Angle in radians of the rotation between two orientations (0..pi)."""
    a = _canonical(np.asarray(q1_xyzw, dtype=np.float64))
    b = _canonical(np.asarray(q2_xyzw, dtype=np.float64))
    d = min(1.0, abs(float(np.dot(a, b))))
    return 2.0 * float(np.arccos(d))


def wrap_angle(a):
    """Wrap radians to (-pi, pi]."""
    return -((-np.asarray(a) + np.pi) % (2.0 * np.pi) - np.pi)
