"""scmpr_ros.model."""
