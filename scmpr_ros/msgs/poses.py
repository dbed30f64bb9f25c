"""geometry_msgs poses from the library's (7,) x y z qx qy qz qw vectors (no rclpy import)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from scmpr_ros.geometry import quat_from_yaw, yaw_from_quat


def pose_msg(p7: Sequence[float] | np.ndarray):
    """geometry_msgs/Pose of x y z qx qy qz qw."""
    from geometry_msgs.msg import Pose

    m = Pose()
    m.position.x, m.position.y, m.position.z = (float(v) for v in p7[:3])
    m.orientation.x, m.orientation.y, m.orientation.z, m.orientation.w = (float(v) for v in p7[3:7])
    return m


def pose_array_msg(poses7: np.ndarray, stamp: Any, frame_id: str):
    """geometry_msgs/PoseArray of (N, 7) poses."""
    from geometry_msgs.msg import PoseArray

    msg = PoseArray()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.poses = [pose_msg(p) for p in np.asarray(poses7)]
    return msg


def pose_with_covariance_msg(p7: np.ndarray, covariance: np.ndarray, stamp: Any, frame_id: str):
    """geometry_msgs/PoseWithCovarianceStamped; ``covariance`` is the row-major 6x6 (36 values)."""
    from geometry_msgs.msg import PoseWithCovarianceStamped

    cov = np.asarray(covariance, dtype=np.float64).reshape(-1)
    if cov.shape != (36,):
        raise ValueError(f"covariance must have 36 values (6x6 row-major), got {cov.shape[0]}")
    msg = PoseWithCovarianceStamped()
    msg.header.stamp, msg.header.frame_id = stamp, frame_id
    msg.pose.pose = pose_msg(p7)
    msg.pose.covariance = [float(c) for c in cov]
    return msg


def hypotheses_cloud_msg(hypotheses: Sequence[Any], stamp: Any, frame_id: str):
    """sensor_msgs/PointCloud2 of ranked hypotheses (conversions.HYPOTHESIS_DTYPE: pose, score, cosine,
    psi, viewpoint_id per point, best first); ``read_hypotheses`` reads it back."""
    from scmpr_ros.msgs.conversions import HYPOTHESIS_DTYPE, points_to_cloud_msg

    cloud = np.zeros(len(hypotheses), HYPOTHESIS_DTYPE)
    poses = np.array([np.asarray(h.pose, dtype=np.float64) for h in hypotheses]).reshape(-1, 7)
    for j, name in enumerate(("x", "y", "z", "qx", "qy", "qz", "qw")):
        cloud[name] = poses[:, j]
    cloud["score"] = [float(h.score) for h in hypotheses]
    cloud["cosine"] = [float(h.cosine) for h in hypotheses]
    cloud["psi"] = [float(h.psi) for h in hypotheses]
    cloud["viewpoint_id"] = [int(h.viewpoint_id) for h in hypotheses]
    msg = points_to_cloud_msg(cloud, 0, frame_id)
    msg.header.stamp = stamp
    return msg


def filtered_pose_msg(estimate: Any, stamp: Any, frame_id: str):
    """PoseWithCovarianceStamped of a localization-filter estimate (x, y, yaw, z and its 6x6 covariance)."""
    x, y, yaw = (float(v) for v in estimate.pose)
    p7 = np.array([x, y, float(estimate.z), *quat_from_yaw(yaw)])
    return pose_with_covariance_msg(p7, np.asarray(estimate.covariance), stamp, frame_id)


def odometry_xyyaw(msg: Any) -> tuple[float, float, float]:
    """x, y, yaw of a nav_msgs/Odometry pose (in its own odometry frame)."""
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    return float(p.x), float(p.y), yaw_from_quat([q.x, q.y, q.z, q.w])
