"""scmpr_ros.commands."""
