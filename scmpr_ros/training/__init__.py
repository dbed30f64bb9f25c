"""scmpr_ros.training."""
