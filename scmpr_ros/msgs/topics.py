"""Topic names, in one place, so publishers, subscribers, the bag writer and the tests agree.

Node topics are relative (a namespace applies); /initialpose and /diagnostics are absolute by
convention.  Bag topics are what ``scmpr kitti-to-bag`` writes and ``bag_player`` replays.
"""

from __future__ import annotations

# --- nodes ---------------------------------------------------------------------------------
MAP_TOPIC = "scmpr/map"  # std_msgs/String, JSON announcement (msgs/map_announcement.py)
MAP_POSES_TOPIC = "scmpr/map_viewpoints"  # geometry_msgs/PoseArray
MAP_MARKERS_TOPIC = "scmpr/map_markers"  # visualization_msgs/MarkerArray
HYPOTHESES_TOPIC = "scmpr/hypotheses"  # geometry_msgs/PoseArray, best first
SCORES_TOPIC = "scmpr/hypothesis_scores"  # sensor_msgs/PointCloud2, conversions.HYPOTHESIS_DTYPE
BEST_POSE_TOPIC = "scmpr/best_pose"  # geometry_msgs/PoseWithCovarianceStamped
FILTERED_POSE_TOPIC = "localizer/filtered_pose"  # the localizer's ~/filtered_pose (filter along the drive)
INITIALPOSE_TOPIC = "/initialpose"  # geometry_msgs/PoseWithCovarianceStamped (Nav2 AMCL)
DIAGNOSTICS_TOPIC = "/diagnostics"  # diagnostic_msgs/DiagnosticArray

# --- bags (kitti-to-bag output) --------------------------------------------------------------
IMAGE_TOPIC = "/camera/image_raw"
CAMERA_INFO_TOPIC = "/camera/camera_info"
CLOUD_TOPIC = "/velodyne_points"
GROUND_TRUTH_TOPIC = "/ground_truth/odometry"  # nav_msgs/Odometry, for scoring only
ODOM_TOPIC = "/odom"  # nav_msgs/Odometry: simulated drifting odometry (NOT ground truth), for the filter
TF_TOPIC = "/tf"
TF_STATIC_TOPIC = "/tf_static"
