"""QoS profiles and topic names shared by the nodes (one place, so publishers and subscribers agree).

Images: sensor-data QoS (best effort, keep last 5): a slow localizer never builds a backlog.
Map announcement and viewpoint poses: latched (reliable, transient local, keep last 1), the Nav2
map_server -> AMCL pattern, so a localizer started later still receives the active map.
Outputs: reliable, keep last 10.
"""
from __future__ import annotations

from rclpy.qos import (
    DurabilityPolicy,
    HistoryPolicy,
    QoSProfile,
    ReliabilityPolicy,
    qos_profile_sensor_data,
)

SENSOR_QOS = qos_profile_sensor_data
LATCHED_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=1,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.TRANSIENT_LOCAL,
)
OUTPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)

# Topic names (relative, so a namespace applies; /initialpose and /diagnostics are absolute by convention).
MAP_TOPIC = "scmpr/map"  # std_msgs/String, JSON announcement (see map_server.py)
MAP_POSES_TOPIC = "scmpr/map_viewpoints"  # geometry_msgs/PoseArray
MAP_MARKERS_TOPIC = "scmpr/map_markers"  # visualization_msgs/MarkerArray
HYPOTHESES_TOPIC = "scmpr/hypotheses"  # geometry_msgs/PoseArray, best first
SCORES_TOPIC = "scmpr/hypothesis_scores"  # sensor_msgs/PointCloud2, conversions.HYPOTHESIS_DTYPE
BEST_POSE_TOPIC = "scmpr/best_pose"  # geometry_msgs/PoseWithCovarianceStamped
INITIALPOSE_TOPIC = "/initialpose"  # geometry_msgs/PoseWithCovarianceStamped (Nav2 AMCL)
DIAGNOSTICS_TOPIC = "/diagnostics"  # diagnostic_msgs/DiagnosticArray
