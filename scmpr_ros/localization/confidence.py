"""How sure a single frame's answer is: the pose covariance handed to ROS, and when to tell Nav2.

Covariance of the best hypothesis (row-major 6x6, x y z roll pitch yaw):
Sigma_pos = sum_i w_i (p_i - p_0)(p_i - p_0)^T / sum_i w_i + floor_pos^2 I,  w_i = exp(-(s_0 - s_i) / T),
and the yaw variance likewise with wrapped yaw differences, so a large score margin or tightly
clustered hypotheses give a small covariance.

The /initialpose gate fires once per arming when the margin s_0 - s_1 >= min_confidence for
``consistent_frames`` consecutive frames whose best poses stay within ``radius_m``.
"""

from __future__ import annotations

import numpy as np

from scmpr_ros.errors import InputError
from scmpr_ros.geometry import wrap_angle, yaw_from_quat


def pose_covariance(
    poses7: np.ndarray, scores: np.ndarray, temperature: float, pos_floor_m: float, yaw_floor_rad: float
) -> np.ndarray:
    """Row-major 6x6 covariance (x y z roll pitch yaw) of the best hypothesis (module docstring)."""
    poses7 = np.asarray(poses7, dtype=np.float64).reshape(-1, 7)
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if len(poses7) == 0 or len(scores) != len(poses7):
        raise InputError(
            f"pose_covariance needs matching non-empty poses and scores, got {len(poses7)} and {len(scores)}"
        )
    t = max(float(temperature), 1e-9)
    w = np.exp(-(scores[0] - scores) / t)
    w /= w.sum()
    d = poses7[:, :3] - poses7[0, :3]
    cov_p = (w[:, None, None] * (d[:, :, None] * d[:, None, :])).sum(0) + (pos_floor_m**2) * np.eye(3)
    yaws = np.array([yaw_from_quat(q) for q in poses7[:, 3:7]])
    dy = wrap_angle(yaws - yaws[0])
    var_yaw = float((w * dy**2).sum()) + yaw_floor_rad**2
    cov = np.zeros((6, 6))
    cov[:3, :3] = cov_p
    cov[3, 3] = cov[4, 4] = yaw_floor_rad**2
    cov[5, 5] = var_yaw
    return cov.reshape(-1)


class InitialPoseGate:
    """Decides when a result is confident enough to hand to Nav2 (/initialpose), once per arming."""

    def __init__(self, min_confidence: float, consistent_frames: int, radius_m: float) -> None:
        self.min_confidence = float(min_confidence)
        self.consistent_frames = max(1, int(consistent_frames))
        self.radius_m = float(radius_m)
        self.streak = 0
        self.last_position: np.ndarray | None = None
        self.armed = True
        self.sent = 0

    def rearm(self) -> None:
        self.armed = True

    def update(self, best_position: np.ndarray, margin: float) -> bool:
        """Feed one frame's result; True when /initialpose must be published now."""
        p = np.asarray(best_position, dtype=np.float64)
        if not np.isfinite(margin) or margin < self.min_confidence:
            self.streak, self.last_position = 0, None
            return False
        if self.last_position is not None and np.linalg.norm(p - self.last_position) <= self.radius_m:
            self.streak += 1
        else:
            self.streak = 1
        self.last_position = p
        if self.armed and self.streak >= self.consistent_frames:
            self.armed = False
            self.sent += 1
            return True
        return False
