"""scmpr_ros.semantics: the common class set (``classes``) and the frustum semantic grid with its
overlap score psi (``grid``), shared by the camera and the LiDAR side.

The class table is re-exported here: ``from scmpr_ros.semantics import IGNORE_ID, NUM_CLASSES``.
"""

from scmpr_ros.semantics.classes import (
    CLASS_COLORS,
    CLASS_ID,
    CLASS_NAMES,
    COMMON_TO_SEMANTIC_KITTI,
    IGNORE_COLOR,
    IGNORE_ID,
    NUM_CLASSES,
    SEMANTIC_KITTI_TO_COMMON,
    colorize,
    kitti360_to_common,
    semantic_kitti_to_common,
)

__all__ = [
    "CLASS_COLORS",
    "CLASS_ID",
    "CLASS_NAMES",
    "COMMON_TO_SEMANTIC_KITTI",
    "IGNORE_COLOR",
    "IGNORE_ID",
    "NUM_CLASSES",
    "SEMANTIC_KITTI_TO_COMMON",
    "colorize",
    "kitti360_to_common",
    "semantic_kitti_to_common",
]
