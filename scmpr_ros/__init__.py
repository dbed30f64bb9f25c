"""scmpr_ros: SCM-PR cross-modal (camera image -> LiDAR map) place recognition for ROS 2.

Library packages (model, lidar, retrieval, datasets, training) are plain Python/torch and
never import rclpy; only ``scmpr_ros.nodes`` does.
"""

__version__ = "0.1.0"
