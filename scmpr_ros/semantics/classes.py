"""The common semantic class set shared by the camera and LiDAR branches.

One class set for both modalities (DESIGN.md): road, sidewalk, building, fence/wall, pole,
traffic sign, vegetation, terrain, car (any vehicle), person/rider, other.  Dataset label ids
are mapped into it here and nowhere else:

* SemanticKITTI ``.label`` files: uint32 per point, class id in the low 16 bits
  (ids from semantic-kitti.yaml, including the ``moving-*`` ids 252-259).
* KITTI-360: the cityscapes-style label ids of kitti360scripts ``labels.py``.

Pixels / points with no common class (unlabeled, outlier, sky, ego vehicle, ...) get
``IGNORE_ID`` and are excluded from losses and metrics.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

CLASS_NAMES: tuple[str, ...] = (
    "road",
    "sidewalk",
    "building",
    "fence",  # fence / wall / guard rail
    "pole",
    "traffic_sign",  # signs and traffic lights
    "vegetation",  # incl. trunks
    "terrain",
    "car",  # any vehicle, parked two-wheelers included
    "person",  # person / rider
    "other",
)
NUM_CLASSES: int = len(CLASS_NAMES)
IGNORE_ID: int = 255
CLASS_ID: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}

# RGB colour per class for plots (roughly the SemanticKITTI / cityscapes palette).
CLASS_COLORS: np.ndarray = np.array(
    [
        [128, 64, 128],  # road
        [244, 35, 232],  # sidewalk
        [70, 70, 70],  # building
        [190, 153, 153],  # fence
        [153, 153, 153],  # pole
        [220, 220, 0],  # traffic_sign
        [107, 142, 35],  # vegetation
        [152, 251, 152],  # terrain
        [0, 0, 142],  # car
        [220, 20, 60],  # person
        [255, 128, 0],  # other
    ],
    dtype=np.uint8,
)
IGNORE_COLOR: tuple[int, int, int] = (0, 0, 0)

# SemanticKITTI raw id -> common class name (semantic-kitti.yaml). Absent ids are ignored.
SEMANTIC_KITTI_TO_COMMON: dict[int, str] = {
    10: "car",
    11: "car",
    13: "car",
    15: "car",
    16: "car",
    18: "car",
    20: "car",
    30: "person",
    31: "person",
    32: "person",
    40: "road",
    44: "road",
    60: "road",
    48: "sidewalk",
    49: "terrain",
    72: "terrain",
    50: "building",
    51: "fence",
    52: "other",
    99: "other",
    70: "vegetation",
    71: "vegetation",
    80: "pole",
    81: "traffic_sign",
    252: "car",
    256: "car",
    257: "car",
    258: "car",
    259: "car",
    253: "person",
    254: "person",
    255: "person",
}
# Inverse used by the synthetic town, which writes real SemanticKITTI ids.
COMMON_TO_SEMANTIC_KITTI: dict[str, int] = {
    "road": 40,
    "sidewalk": 48,
    "building": 50,
    "fence": 51,
    "pole": 80,
    "traffic_sign": 81,
    "vegetation": 70,
    "terrain": 72,
    "car": 10,
    "person": 30,
    "other": 99,
}

# KITTI-360 label id (kitti360scripts/helpers/labels.py) -> common class name.
KITTI360_TO_COMMON: dict[int, str] = {
    6: "terrain",
    7: "road",
    8: "sidewalk",
    9: "road",
    10: "other",
    11: "building",
    12: "fence",
    13: "fence",
    14: "fence",
    15: "building",
    16: "building",
    17: "pole",
    18: "pole",
    19: "traffic_sign",
    20: "traffic_sign",
    21: "vegetation",
    22: "terrain",
    24: "person",
    25: "person",
    26: "car",
    27: "car",
    28: "car",
    29: "car",
    30: "car",
    31: "car",
    32: "car",
    33: "car",
    34: "building",
    35: "fence",
    36: "traffic_sign",
    37: "pole",
    38: "pole",
    4: "other",
    5: "other",
    39: "other",
    40: "other",
    41: "other",
    42: "other",
    43: "car",
    44: "other",
}


def _lookup_table(mapping: Mapping[int, str], size: int) -> np.ndarray:
    table = np.full(size, IGNORE_ID, dtype=np.uint8)
    for raw, name in mapping.items():
        table[raw] = CLASS_ID[name]
    return table


_SK_TABLE = _lookup_table(SEMANTIC_KITTI_TO_COMMON, 1 << 16)
_K360_TABLE = _lookup_table(KITTI360_TO_COMMON, 1 << 16)


def semantic_kitti_to_common(raw_labels: np.ndarray) -> np.ndarray:
    """Map SemanticKITTI uint32 labels (instance in the high 16 bits) to common ids (uint8)."""
    raw = np.asarray(raw_labels)
    if raw.dtype.kind not in "iu":
        raise TypeError(f"SemanticKITTI labels must be integers, got dtype {raw.dtype}")
    return _SK_TABLE[raw.astype(np.uint32) & 0xFFFF]


def kitti360_to_common(raw_labels: np.ndarray) -> np.ndarray:
    """Map KITTI-360 semantic ids to common ids (uint8); negative ids are ignored."""
    raw = np.asarray(raw_labels)
    if raw.dtype.kind not in "iu":
        raise TypeError(f"KITTI-360 labels must be integers, got dtype {raw.dtype}")
    raw = raw.astype(np.int64)
    out = np.full(raw.shape, IGNORE_ID, dtype=np.uint8)
    ok = (raw >= 0) & (raw < (1 << 16))
    out[ok] = _K360_TABLE[raw[ok]]
    return out


def colorize(labels: np.ndarray) -> np.ndarray:
    """Common-id label image (H, W) -> RGB uint8 (H, W, 3); ignored pixels are black."""
    labels = np.asarray(labels)
    palette = np.zeros((256, 3), dtype=np.uint8)
    palette[:NUM_CLASSES] = CLASS_COLORS
    palette[IGNORE_ID] = IGNORE_COLOR
    return palette[labels.astype(np.uint8)]
