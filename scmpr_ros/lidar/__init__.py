"""scmpr_ros.lidar."""
