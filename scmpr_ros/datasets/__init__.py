"""scmpr_ros.datasets."""
