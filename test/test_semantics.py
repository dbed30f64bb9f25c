import numpy as np
import pytest

from scmpr_ros import semantics as sem


def test_class_set_matches_design() -> None:
    assert sem.CLASS_NAMES == (
        "road",
        "sidewalk",
        "building",
        "fence",
        "pole",
        "traffic_sign",
        "vegetation",
        "terrain",
        "car",
        "person",
        "other",
    )
    assert sem.CLASS_COLORS.shape == (sem.NUM_CLASSES, 3)
    assert len({tuple(c) for c in sem.CLASS_COLORS}) == sem.NUM_CLASSES
    assert sem.IGNORE_ID >= sem.NUM_CLASSES


def test_semantic_kitti_ids_with_instance_bits() -> None:
    # class in the low 16 bits, instance in the high 16 bits
    raw = np.array(
        [40, 48, 50, 51, 80, 81, 70, 71, 72, 10 | (7 << 16), 30 | (3 << 16), 252, 0, 1, 99, 44], dtype=np.uint32
    )
    got = sem.semantic_kitti_to_common(raw)
    want = [
        "road",
        "sidewalk",
        "building",
        "fence",
        "pole",
        "traffic_sign",
        "vegetation",
        "vegetation",
        "terrain",
        "car",
        "person",
        "car",
        None,
        None,
        "other",
        "road",
    ]
    for g, w in zip(got, want):
        assert g == (sem.IGNORE_ID if w is None else sem.CLASS_ID[w])


def test_synthetic_inverse_map_round_trips() -> None:
    for name, raw in sem.COMMON_TO_SEMANTIC_KITTI.items():
        assert sem.semantic_kitti_to_common(np.array([raw], dtype=np.uint32))[0] == sem.CLASS_ID[name]


def test_kitti360_ids() -> None:
    raw = np.array([7, 8, 11, 13, 17, 20, 21, 22, 26, 24, 23, 0, -1, 41], dtype=np.int32)
    got = sem.kitti360_to_common(raw)
    want = [
        "road",
        "sidewalk",
        "building",
        "fence",
        "pole",
        "traffic_sign",
        "vegetation",
        "terrain",
        "car",
        "person",
        None,
        None,
        None,
        "other",
    ]
    for g, w in zip(got, want):
        assert g == (sem.IGNORE_ID if w is None else sem.CLASS_ID[w])


def test_non_integer_labels_refused() -> None:
    with pytest.raises(TypeError, match="must be integers"):
        sem.semantic_kitti_to_common(np.zeros(3, dtype=np.float32))


def test_colorize() -> None:
    img = sem.colorize(np.array([[0, 255]], dtype=np.uint8))
    assert img.shape == (1, 2, 3)
    assert tuple(img[0, 0]) == tuple(sem.CLASS_COLORS[0]) and tuple(img[0, 1]) == (0, 0, 0)
