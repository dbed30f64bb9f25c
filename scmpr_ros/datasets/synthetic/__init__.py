"""scmpr_ros.datasets.synthetic."""
