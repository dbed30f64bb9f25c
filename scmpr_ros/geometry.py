"""Poses, rotations and headings: the one place for this maths (no rclpy, no torch).

Quaternions are always (x, y, z, w) here (ROS order); 7-vectors are x y z qx qy qz qw; 4x4 matrices
are homogeneous transforms T_a_b.

tf_transformations is used when importable; otherwise transforms3d, whose quaternions are
(w, x, y, z) — the reordering happens in this module only.  Quaternions are returned unit-norm
with w >= 0 (one canonical sign).
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


# -- stacks of poses ---------------------------------------------------------------------------
def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (or a stack of them)."""
    T = np.asarray(T, dtype=np.float64)
    R = T[..., :3, :3]
    t = T[..., :3, 3]
    out = np.zeros_like(T)
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1.0
    return out


def matrices_to_poses(T: np.ndarray) -> np.ndarray:
    """(N, 4, 4) homogeneous -> (N, 7) x y z qx qy qz qw (qw >= 0)."""
    T = np.asarray(T, dtype=np.float64)
    R = T[:, :3, :3]
    tr = np.trace(R, axis1=1, axis2=2)
    q = np.empty((len(T), 4))
    cands = np.stack([tr, R[:, 0, 0], R[:, 1, 1], R[:, 2, 2]], axis=1)
    case = np.argmax(cands, axis=1)
    for k in range(4):
        m = case == k
        if not m.any():
            continue
        r = R[m]
        if k == 0:
            s = np.sqrt(1.0 + tr[m]) * 2
            q[m] = np.stack(
                [(r[:, 2, 1] - r[:, 1, 2]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s, (r[:, 1, 0] - r[:, 0, 1]) / s, 0.25 * s],
                1,
            )
        elif k == 1:
            s = np.sqrt(1.0 + r[:, 0, 0] - r[:, 1, 1] - r[:, 2, 2]) * 2
            q[m] = np.stack(
                [0.25 * s, (r[:, 0, 1] + r[:, 1, 0]) / s, (r[:, 0, 2] + r[:, 2, 0]) / s, (r[:, 2, 1] - r[:, 1, 2]) / s],
                1,
            )
        elif k == 2:
            s = np.sqrt(1.0 + r[:, 1, 1] - r[:, 0, 0] - r[:, 2, 2]) * 2
            q[m] = np.stack(
                [(r[:, 0, 1] + r[:, 1, 0]) / s, 0.25 * s, (r[:, 1, 2] + r[:, 2, 1]) / s, (r[:, 0, 2] - r[:, 2, 0]) / s],
                1,
            )
        else:
            s = np.sqrt(1.0 + r[:, 2, 2] - r[:, 0, 0] - r[:, 1, 1]) * 2
            q[m] = np.stack(
                [(r[:, 0, 2] + r[:, 2, 0]) / s, (r[:, 1, 2] + r[:, 2, 1]) / s, 0.25 * s, (r[:, 1, 0] - r[:, 0, 1]) / s],
                1,
            )
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    q[q[:, 3] < 0] *= -1
    return np.concatenate([T[:, :3, 3], q], axis=1)


def poses_to_matrices(p: np.ndarray) -> np.ndarray:
    """(N, 7) x y z qx qy qz qw -> (N, 4, 4)."""
    p = np.asarray(p, dtype=np.float64)
    x, y, z, w = (p[:, 3 + i] for i in range(4))
    n = np.sqrt(x * x + y * y + z * z + w * w)
    x, y, z, w = x / n, y / n, z / n, w / n
    T = np.zeros((len(p), 4, 4))
    T[:, 0, 0] = 1 - 2 * (y * y + z * z)
    T[:, 0, 1] = 2 * (x * y - z * w)
    T[:, 0, 2] = 2 * (x * z + y * w)
    T[:, 1, 0] = 2 * (x * y + z * w)
    T[:, 1, 1] = 1 - 2 * (x * x + z * z)
    T[:, 1, 2] = 2 * (y * z - x * w)
    T[:, 2, 0] = 2 * (x * z - y * w)
    T[:, 2, 1] = 2 * (y * z + x * w)
    T[:, 2, 2] = 1 - 2 * (x * x + y * y)
    T[:, :3, 3] = p[:, :3]
    T[:, 3, 3] = 1
    return T


def positions_of(poses: np.ndarray, what: str = "poses") -> np.ndarray:
    """(N,3) positions from (N,4,4) homogeneous poses, (N,7) x y z qx qy qz qw, or (N,3)/(N,2)."""
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim == 3 and poses.shape[1:] == (4, 4):
        return poses[:, :3, 3].copy()
    if poses.ndim == 2 and poses.shape[1] in (7, 3):
        return poses[:, :3].copy()
    if poses.ndim == 2 and poses.shape[1] == 2:
        return np.concatenate([poses, np.zeros((len(poses), 1))], axis=1)
    raise InputError(f"{what}: expected (N,4,4), (N,7), (N,3) or (N,2), got shape {poses.shape}")


def heading_of(poses: np.ndarray, forward_axis: int = 0, what: str = "poses") -> np.ndarray:
    """(N,) heading in radians (atan2 of the forward axis in the world x-y plane).

    ``forward_axis`` is the body axis that points forward: 0 for a LiDAR/base frame (x forward,
    REP-103), 2 for a camera optical frame (z forward).  (N,7) poses are quaternions x y z w.
    """
    poses = np.asarray(poses, dtype=np.float64)
    if poses.ndim == 3 and poses.shape[1:] == (4, 4):
        fwd = poses[:, :3, forward_axis]
    elif poses.ndim == 2 and poses.shape[1] == 7:
        qx, qy, qz, qw = poses[:, 3], poses[:, 4], poses[:, 5], poses[:, 6]
        # Column `forward_axis` of the rotation matrix of a unit quaternion.
        cols = {
            0: np.stack([1 - 2 * (qy**2 + qz**2), 2 * (qx * qy + qz * qw), 2 * (qx * qz - qy * qw)], 1),
            1: np.stack([2 * (qx * qy - qz * qw), 1 - 2 * (qx**2 + qz**2), 2 * (qy * qz + qx * qw)], 1),
            2: np.stack([2 * (qx * qz + qy * qw), 2 * (qy * qz - qx * qw), 1 - 2 * (qx**2 + qy**2)], 1),
        }
        fwd = cols[forward_axis]
    else:
        raise InputError(f"{what}: heading needs (N,4,4) or (N,7) poses, got shape {poses.shape}")
    return np.arctan2(fwd[:, 1], fwd[:, 0])


def angle_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Absolute wrapped difference of angles in radians, in [0, pi]."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    return np.abs((d + np.pi) % (2 * np.pi) - np.pi)
