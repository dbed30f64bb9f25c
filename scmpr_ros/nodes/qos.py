"""QoS profiles shared by the nodes (one place, so publishers and subscribers agree; topic names: msgs/topics.py).

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
# Odometry: best effort keeps up with any publisher (reliable ones included); 50 samples = 1 s at 50 Hz.
ODOMETRY_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=50,
    reliability=ReliabilityPolicy.BEST_EFFORT,
    durability=DurabilityPolicy.VOLATILE,
)
OUTPUT_QOS = QoSProfile(
    history=HistoryPolicy.KEEP_LAST,
    depth=10,
    reliability=ReliabilityPolicy.RELIABLE,
    durability=DurabilityPolicy.VOLATILE,
)


def image_qos(reliability: str) -> QoSProfile:
    """Sensor-data QoS for images, best effort (default) or reliable (parameter image_reliability)."""
    if reliability == "best_effort":
        return SENSOR_QOS
    if reliability == "reliable":
        return QoSProfile(
            history=HistoryPolicy.KEEP_LAST,
            depth=5,
            reliability=ReliabilityPolicy.RELIABLE,
            durability=DurabilityPolicy.VOLATILE,
        )
    raise ValueError(f"image_reliability {reliability!r}: use best_effort or reliable")
