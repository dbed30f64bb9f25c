"""The .scmpr-map file: bit-exact round trip and every corruption refused with its message."""

from __future__ import annotations

import hashlib
import struct

import numpy as np
import pytest

from scmpr_ros.config import CameraConfig
from scmpr_ros.errors import MapFileError
from scmpr_ros.geometry import matrices_to_poses, poses_to_matrices
from scmpr_ros.mapping.map_file import (
    FORMAT_VERSION,
    PREAMBLE_SIZE,
    MapData,
    PackedGrids,
    camera_dict,
    describe_map,
    read_header,
    read_map,
    write_map,
)
from scmpr_ros.semantics import NUM_CLASSES


def random_rotations(n, rng):
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    T = poses_to_matrices(np.concatenate([rng.normal(size=(n, 3)) * 50, q], 1))
    return T


def make_map(n=300, dim=64, dtype=np.float16, seed=0) -> MapData:
    rng = np.random.default_rng(seed)
    d = rng.normal(size=(n, dim)).astype(np.float32)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    return MapData(
        descriptors=d.astype(dtype),
        poses=matrices_to_poses(random_rotations(n, rng)),
        viewpoint_ids=np.arange(n, dtype=np.int64) * 3 + 7,
        source_frames=np.arange(n, dtype=np.int64) // 3,
        semantic_grids=rng.random((n, 4, 8, NUM_CLASSES)) < 0.2,
        prototypes=rng.normal(size=(NUM_CLASSES, 32)).astype(np.float32),
        camera=camera_dict(CameraConfig(), np.eye(4)),
        model_config={"backbone": "nano", "descriptor_dim": dim},
        model_checksum="ab" * 32,
        metadata={"dataset": "unit-test", "sequence": "00"},
        grid_min_fraction=0.05,
    )


@pytest.fixture()
def map_path(tmp_path):
    m = make_map()
    p = tmp_path / "t.scmpr-map"
    write_map(p, m)
    return p, m


def _assert_same(a: MapData, b: MapData):
    for name in ("descriptors", "poses", "viewpoint_ids", "source_frames", "prototypes"):
        x, y = np.asarray(getattr(a, name)), np.asarray(getattr(b, name))
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert x.tobytes() == y.tobytes(), f"{name} differs"
    assert np.array_equal(np.asarray(a.semantic_grids), np.asarray(b.semantic_grids))
    assert a.model_checksum == b.model_checksum and a.model_config == b.model_config
    assert a.camera == b.camera and a.grid_min_fraction == b.grid_min_fraction


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
@pytest.mark.parametrize("mmap_arrays", [True, False])
def test_write_read_bit_exact(tmp_path, dtype, mmap_arrays):
    m = make_map(dtype=dtype)
    p = tmp_path / "m.scmpr-map"
    size = write_map(p, m)
    assert p.stat().st_size == size
    r = read_map(p, expected_dim=64, expected_model_checksum="ab" * 32, mmap_arrays=mmap_arrays)
    _assert_same(m, r)
    assert r.metadata["dataset"] == "unit-test" and "created_unix" in r.metadata
    if mmap_arrays:
        assert isinstance(r.descriptors, np.memmap) and not r.descriptors.flags.writeable
    # the grids are unpacked lazily, row by row
    assert isinstance(r.semantic_grids, PackedGrids)
    np.testing.assert_array_equal(r.semantic_grids[[5, 2]], np.asarray(m.semantic_grids)[[5, 2]])
    np.testing.assert_array_equal(r.semantic_grids[7], np.asarray(m.semantic_grids)[7])
    # rewriting what was read gives the same bytes except the creation time
    p2 = tmp_path / "m2.scmpr-map"
    write_map(p2, r)
    _assert_same(r, read_map(p2))
    info = describe_map(r, p)
    assert info["viewpoints"] == 300 and info["descriptor_dim"] == 64 and info["bytes_per_1k_viewpoints"] > 0


def test_pose_quaternion_round_trip():
    rng = np.random.default_rng(1)
    T = random_rotations(500, rng)
    # include the branches of the conversion: identity and 180 degree turns about each axis
    special = np.tile(np.eye(4), (4, 1, 1))
    special[1, :3, :3] = np.diag([1, -1, -1])
    special[2, :3, :3] = np.diag([-1, 1, -1])
    special[3, :3, :3] = np.diag([-1, -1, 1])
    T = np.concatenate([T, special])
    p = matrices_to_poses(T)
    np.testing.assert_allclose(np.linalg.norm(p[:, 3:], axis=1), 1.0, atol=1e-12)
    np.testing.assert_allclose(poses_to_matrices(p), T, atol=1e-9)


def test_empty_map_round_trip(tmp_path):
    m = make_map(n=0)
    p = tmp_path / "e.scmpr-map"
    write_map(p, m)
    r = read_map(p)
    assert r.num_viewpoints == 0 and r.descriptor_dim == 64


def test_truncated_file_is_refused(map_path):
    p, _ = map_path
    data = p.read_bytes()
    p.write_bytes(data[:-100])
    with pytest.raises(MapFileError, match="truncated"):
        read_map(p)
    p.write_bytes(data[:40])
    with pytest.raises(MapFileError, match="truncated"):
        read_map(p)


@pytest.mark.parametrize("where", ["header", "descriptors", "grids"])
def test_flipped_byte_fails_the_checksum(map_path, where):
    p, m = map_path
    data = bytearray(p.read_bytes())
    header, start = read_header(p)
    if where == "header":
        pos = PREAMBLE_SIZE + 10
    else:
        name = "descriptors" if where == "descriptors" else "semantic_grids"
        pos = start + header["arrays"][name]["offset"] + 123
    data[pos] ^= 0x01
    p.write_bytes(bytes(data))
    with pytest.raises(MapFileError, match="checksum mismatch"):
        read_map(p)


def test_wrong_magic_and_version(map_path):
    p, _ = map_path
    data = bytearray(p.read_bytes())
    bad = bytearray(data)
    bad[:8] = b"NOTAMAP!"
    p.write_bytes(bytes(bad))
    with pytest.raises(MapFileError, match="not a .scmpr-map file"):
        read_map(p)
    bad = bytearray(data)
    struct.pack_into("<I", bad, 8, FORMAT_VERSION + 1)
    p.write_bytes(bytes(bad))
    with pytest.raises(MapFileError, match=f"format version {FORMAT_VERSION + 1}.*rebuild"):
        read_map(p)


def _rewrite_with_checksum(p, data: bytearray):
    """Re-seal a deliberately edited file so that only the later checks can catch the edit."""
    data[32:64] = hashlib.sha256(bytes(data[PREAMBLE_SIZE:])).digest()
    p.write_bytes(bytes(data))


def test_nan_descriptor_is_refused(map_path):
    p, m = map_path
    header, start = read_header(p)
    data = bytearray(p.read_bytes())
    pos = start + header["arrays"]["descriptors"]["offset"] + 2 * 64 * 5  # row 5, first element (f16)
    data[pos : pos + 2] = np.array([np.nan], dtype=np.float16).tobytes()
    _rewrite_with_checksum(p, data)
    with pytest.raises(MapFileError, match="descriptors contain NaN or inf"):
        read_map(p)


def test_inf_pose_is_refused(map_path):
    p, m = map_path
    header, start = read_header(p)
    data = bytearray(p.read_bytes())
    pos = start + header["arrays"]["poses"]["offset"] + 8 * 7 * 3
    data[pos : pos + 8] = np.array([np.inf]).tobytes()
    _rewrite_with_checksum(p, data)
    with pytest.raises(MapFileError, match="poses contain NaN or inf"):
        read_map(p)


def test_shape_disagreement_is_refused(map_path):
    p, m = map_path
    header, start = read_header(p)
    data = bytearray(p.read_bytes())
    hlen = struct.unpack_from("<Q", data, 16)[0]
    text = data[PREAMBLE_SIZE : PREAMBLE_SIZE + hlen].decode()
    # claim one viewpoint fewer in the source_frames table (same length string, so offsets hold)
    old = '"shape": [300]}, "source_frames"'
    assert text.count('"shape": [300]') == 2
    i = text.index('"source_frames"')
    j = text.index('"shape": [300]', i)
    text = text[:j] + '"shape": [299]' + text[j + len('"shape": [300]') :]
    assert len(text.encode()) == hlen and old
    data[PREAMBLE_SIZE : PREAMBLE_SIZE + hlen] = text.encode()
    _rewrite_with_checksum(p, data)
    with pytest.raises(MapFileError, match="does not fit the file|source_frames has shape"):
        read_map(p)


def test_dimension_and_model_mismatch(map_path):
    p, _ = map_path
    with pytest.raises(MapFileError, match="dimension 64 but the model produces 256"):
        read_map(p, expected_dim=256)
    with pytest.raises(MapFileError, match="model checksum .*rebuild the map with this model"):
        read_map(p, expected_model_checksum="cd" * 32)


def test_missing_file_and_invalid_writes(tmp_path):
    with pytest.raises(MapFileError, match="map file not found"):
        read_map(tmp_path / "nope.scmpr-map")
    m = make_map()
    m.descriptors = np.asarray(m.descriptors).copy()
    m.descriptors[3, 3] = np.inf
    with pytest.raises(MapFileError, match="descriptors contain NaN or inf"):
        write_map(tmp_path / "x.scmpr-map", m)
    m = make_map()
    m.poses = m.poses[:-1]
    with pytest.raises(MapFileError, match="poses has shape"):
        write_map(tmp_path / "x.scmpr-map", m)
    assert not (tmp_path / "x.scmpr-map").exists()


def test_write_is_atomic(tmp_path, monkeypatch):
    p = tmp_path / "a.scmpr-map"
    write_map(p, make_map(seed=1))
    before = p.read_bytes()
    bad = make_map(seed=2)
    bad.metadata = {"not_json": object()}
    with pytest.raises(MapFileError, match="not plain JSON"):
        write_map(p, bad)
    assert p.read_bytes() == before
    assert [q.name for q in tmp_path.iterdir()] == ["a.scmpr-map"]


# -- build-map / map-info end to end on a ray-cast street written in the KITTI layout ------------
def test_build_map_cli_writes_a_valid_map(built_map, small_model_file, capsys):
    from scmpr_ros.cli import main
    from scmpr_ros.model.checkpoint import load_checkpoint, model_checksum

    model, _, _ = load_checkpoint(small_model_file)
    m = read_map(built_map, expected_dim=64, expected_model_checksum=model_checksum(model))
    # 24 frames 2 m apart, a place every 4 m -> 12 places x 2 lateral x 2 yaw
    assert m.num_viewpoints == 12 * 4 and m.descriptors.dtype == np.float16
    assert m.metadata["render_modes"] == {"map": 24, "scan": 24}
    assert m.metadata["segmentation"] == "ground_truth" and m.metadata["sequence"] == "00"
    np.testing.assert_allclose(np.linalg.norm(np.asarray(m.descriptors, np.float32), axis=1), 1.0, atol=2e-3)
    grids = np.asarray(m.semantic_grids)
    assert grids.shape == (48, 4, 8, NUM_CLASSES) and grids.any(axis=(1, 2, 3)).all()
    assert m.prototypes.shape == (NUM_CLASSES, 32) and np.isfinite(m.prototypes).all()
    assert sorted(set(np.asarray(m.source_frames))) == list(range(0, 24, 2))
    # poses: the lateral viewpoint sits 1.5 m left of its place, yaw viewpoint turned by 20 degrees
    T = m.pose_matrices()
    place = T[0]
    lat = T[2]  # ids: place x lateral x yaw -> (0, 0), (0, 20), (1.5, 0), (1.5, 20)
    np.testing.assert_allclose(np.linalg.inv(place) @ lat[:, 3], [0, 1.5, 0, 1], atol=1e-6)
    rel = np.linalg.inv(T[0]) @ T[1]
    assert np.degrees(np.arctan2(rel[1, 0], rel[0, 0])) == pytest.approx(20.0, abs=1e-4)
    assert m.camera["width"] == 1241 and np.allclose(m.T_cam_velo()[:3, :3], [[0, -1, 0], [0, 0, -1], [1, 0, 0]])
    capsys.readouterr()
    assert main(["map-info", str(built_map), "--model", str(small_model_file)]) == 0
    text = capsys.readouterr().out
    assert "valid .scmpr-map" in text and "48 from 12 frames" in text and "matches --model" in text


def test_map_info_refuses_a_corrupt_map(built_map, tmp_path, capsys):
    from scmpr_ros.cli import main

    bad = tmp_path / "bad.scmpr-map"
    data = bytearray(built_map.read_bytes())
    data[-5] ^= 0xFF
    bad.write_bytes(bytes(data))
    assert main(["map-info", str(bad)]) == 2
    assert "checksum mismatch" in capsys.readouterr().err


def test_build_map_without_labels_or_segmenter_is_refused(scene_kitti_dir, small_model_file, tmp_path, capsys):
    import shutil

    from scmpr_ros.cli import main

    root = tmp_path / "nolabels"
    shutil.copytree(scene_kitti_dir, root)
    shutil.rmtree(root / "sequences" / "00" / "labels")
    rc = main(
        [
            "build-map",
            str(root),
            "--sequence",
            "00",
            "--model",
            str(small_model_file),
            "--out",
            str(tmp_path / "x.scmpr-map"),
        ]
    )
    err = capsys.readouterr().err
    assert rc == 2 and "no per-point labels" in err and "train-segmenter" in err
    assert not (tmp_path / "x.scmpr-map").exists()
