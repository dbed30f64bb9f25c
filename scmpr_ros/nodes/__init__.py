"""scmpr_ros.nodes."""
