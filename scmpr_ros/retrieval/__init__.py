"""scmpr_ros.retrieval."""
