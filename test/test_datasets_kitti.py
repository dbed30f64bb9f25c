"""KITTI odometry / SemanticKITTI loader on small hand-made sequences in the real layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from scmpr_ros.datasets import detect_kind, open_sequence
from scmpr_ros.errors import DatasetError
from scmpr_ros.semantics import CLASS_ID, IGNORE_ID

# calib.txt of KITTI odometry sequence 00 (P0..P3, Tr)
CALIB_00 = """P0: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 0.000000000000e+00 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P1: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 -3.861448000000e+02 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 0.000000000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 0.000000000000e+00
P2: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 4.538225000000e+01 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 -1.130887000000e-01 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 3.779761000000e-03
P3: 7.188560000000e+02 0.000000000000e+00 6.071928000000e+02 -3.372877000000e+02 0.000000000000e+00 7.188560000000e+02 1.852157000000e+02 2.369057000000e+00 0.000000000000e+00 0.000000000000e+00 1.000000000000e+00 4.915215000000e-03
Tr: 4.276802385584e-04 -9.999672484946e-01 -8.084491683471e-03 -1.198459927713e-02 -7.210626507497e-03 8.081198471645e-03 -9.999413164504e-01 -5.403984729748e-02 9.999738645903e-01 4.859485810390e-04 -7.206933692422e-03 -2.921968648686e-01
"""
N = 3


def _pose(yaw: float, t) -> np.ndarray:
    T = np.eye(4)
    c, s = np.cos(yaw), np.sin(yaw)
    T[:3, :3] = [[c, 0, s], [0, 1, 0], [-s, 0, c]]  # camera-0 yaw is about its y axis
    T[:3, 3] = t
    return T


POSES = [_pose(0.0, (0, 0, 0)), _pose(0.1, (0.2, 0.01, 1.5)), _pose(0.25, (0.6, 0.02, 3.1))]


def make_kitti(root: Path, seq: str = "00", images: bool = True, labels: bool = True, poses: bool = True) -> Path:
    d = root / "sequences" / seq
    (d / "velodyne").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(N):
        pts = rng.normal(0, 10, (50 + i, 4)).astype(np.float32)
        pts.tofile(d / "velodyne" / f"{i:06d}.bin")
        if labels:
            (d / "labels").mkdir(exist_ok=True)
            sem = np.array([40, 50, 10, 252, 0, 81, 70, 71] * 20, dtype=np.uint32)[: len(pts)]
            inst = np.arange(len(pts), dtype=np.uint32) % 5
            (sem | (inst << 16)).astype(np.uint32).tofile(d / "labels" / f"{i:06d}.label")
        if images:
            (d / "image_2").mkdir(exist_ok=True)
            img = np.zeros((20, 40, 3), np.uint8)
            img[:, :, 2] = 200  # red in BGR order
            img[0, 0] = (i, i, i)
            cv2.imwrite(str(d / "image_2" / f"{i:06d}.png"), img)
    (d / "calib.txt").write_text(CALIB_00)
    (d / "times.txt").write_text("".join(f"{0.1 * i:.6e}\n" for i in range(N)))
    if poses:
        (d / "poses.txt").write_text("".join(" ".join(f"{v:.12e}" for v in T[:3].ravel()) + "\n" for T in POSES))
    return d


def _calib_arrays():
    rows = {l.split(":")[0]: np.array(l.split(":")[1].split(), float) for l in CALIB_00.strip().splitlines()}
    P2 = rows["P2"].reshape(3, 4)
    Tr = np.eye(4)
    Tr[:3] = rows["Tr"].reshape(3, 4)
    return P2, Tr


def test_reads_frames_calibration_and_poses(tmp_path):
    make_kitti(tmp_path)
    assert detect_kind(tmp_path) == "kitti"
    seq = open_sequence(tmp_path, "0")  # "0" normalised to "00"
    assert (seq.name, seq.kind, seq.num_frames) == ("00", "kitti", N)
    assert seq.has_images and seq.has_labels and seq.has_poses
    assert seq.calib.image_size == (40, 20)
    assert seq.calib_keys == ["P0", "P1", "P2", "P3", "Tr"]
    np.testing.assert_allclose(seq.times, [0.0, 0.1, 0.2])

    P2, Tr = _calib_arrays()
    np.testing.assert_allclose(seq.calib.K, P2[:, :3])
    np.testing.assert_allclose(seq.calib.P, P2)
    # T_cam_velo reproduces P2 . Tr for any LiDAR point (this is what ties image_2 to the LiDAR)
    pts = np.random.default_rng(1).normal(0, 20, (100, 3)) + [15, 0, 0]
    h = np.c_[pts, np.ones(len(pts))]
    via_P2 = (P2 @ (Tr @ h.T)).T
    cam = (seq.calib.T_cam_velo @ h.T).T[:, :3]
    via_K = (seq.calib.K @ cam.T).T
    np.testing.assert_allclose(via_K, via_P2, rtol=1e-9, atol=1e-9)
    uv, depth = seq.calib.project(pts)
    np.testing.assert_allclose(uv, via_P2[:, :2] / via_P2[:, 2:], rtol=1e-9)
    # T_cam2_cam0 = K^-1 P2[:, 3] exactly (the fx-only shortcut ignores P2's tz = 3.8 mm): image_2 is ~6 cm left of cam0
    np.testing.assert_allclose(seq.T_cam2_cam0[:3, 3], np.linalg.solve(P2[:, :3], P2[:, 3]), rtol=1e-12)
    assert seq.T_cam2_cam0[0, 3] == pytest.approx(0.0599, abs=5e-4)

    # poses: map = LiDAR frame of the first pose; T_map_velo = Tr^-1 T_w_cam0 Tr
    Tr_inv = np.linalg.inv(Tr)
    for i, T in enumerate(POSES):
        np.testing.assert_allclose(seq.poses_velo[i], Tr_inv @ T @ Tr, atol=1e-9)
        np.testing.assert_allclose(seq.poses_cam[i], Tr_inv @ T @ np.linalg.inv(seq.T_cam2_cam0), atol=1e-9)
        np.testing.assert_allclose(seq.poses_cam[i], seq.poses_velo[i] @ np.linalg.inv(seq.calib.T_cam_velo), atol=1e-9)
    np.testing.assert_allclose(seq.poses_velo[0], np.eye(4), atol=1e-9)
    # cam0 moved along its z (forward) -> LiDAR moves along x (forward), z stays ~0 (up)
    assert seq.poses_velo[2, 0, 3] > 2.5 and abs(seq.poses_velo[2, 2, 3]) < 0.2
    assert seq.pose_valid.all()
    d = seq.describe()
    assert d["frames"] == N and d["labelled_frames"] == N and d["valid_poses"] == N and d["image_size"] == [40, 20]


def test_scans_labels_and_images(tmp_path):
    d = make_kitti(tmp_path)
    seq = open_sequence(tmp_path, "00", kind="kitti")
    scan = seq.load_scan(1)
    assert scan.shape == (51, 4) and scan.dtype == np.float32
    raw = seq.load_raw_labels(1)
    assert (raw >> 16).max() == 4  # instance ids kept in the raw labels
    lab = seq.load_labels(1)
    assert lab.dtype == np.uint8 and lab.shape == (51,)
    expect = {40: "road", 50: "building", 10: "car", 252: "car", 81: "traffic_sign", 70: "vegetation", 71: "vegetation"}
    for sk, name in expect.items():
        assert (lab[(raw & 0xFFFF) == sk] == CLASS_ID[name]).all()
    assert (lab[(raw & 0xFFFF) == 0] == IGNORE_ID).all()
    img = seq.load_image(2)
    assert img.shape == (20, 40, 3) and img.dtype == np.uint8
    assert tuple(img[5, 5]) == (200, 0, 0)  # RGB, not BGR
    assert tuple(img[0, 0]) == (2, 2, 2)
    with pytest.raises(DatasetError, match="out of range"):
        seq.load_scan(N)
    # a label file that does not match its scan
    np.zeros(7, np.uint32).tofile(d / "labels" / "000000.label")
    with pytest.raises(DatasetError, match=r"has 7 labels but 000000.bin has 50 points"):
        seq.load_labels(0)
    (d / "velodyne" / "000002.bin").write_bytes(b"\0" * 30)
    with pytest.raises(DatasetError, match="not a multiple of 16"):
        seq.load_scan(2)


def test_lidar_only_sequence(tmp_path):
    make_kitti(tmp_path, images=False, labels=False)
    seq = open_sequence(tmp_path, "00")
    assert not seq.has_images and not seq.has_labels and seq.has_poses
    assert seq.calib.image_size is None
    assert any("LiDAR-only" in n for n in seq.notes)
    with pytest.raises(DatasetError, match="has no camera images"):
        seq.load_image(0)
    with pytest.raises(DatasetError, match="no labels/ folder"):
        seq.load_labels(0)
    assert not seq.has_image_labels
    with pytest.raises(DatasetError, match="no dense image labels|no semantic_2"):
        seq.load_image_labels(0)


def test_poses_missing_or_in_odometry_layout(tmp_path):
    make_kitti(tmp_path, poses=False)
    seq = open_sequence(tmp_path, "00")
    assert not seq.has_poses and not seq.pose_valid.any() and np.isnan(seq.poses_velo).all()
    assert any("no poses" in n for n in seq.notes)
    # KITTI odometry ground truth: dataset/poses/NN.txt next to sequences/
    (tmp_path / "poses").mkdir()
    (tmp_path / "poses" / "00.txt").write_text("".join(" ".join(map(str, T[:3].ravel())) + "\n" for T in POSES))
    seq = open_sequence(tmp_path, "00")
    assert seq.has_poses and seq.pose_valid.all()
    # a non-finite pose line marks that frame as without pose
    lines = (tmp_path / "poses" / "00.txt").read_text().splitlines()
    lines[1] = " ".join(["nan"] * 12)
    (tmp_path / "poses" / "00.txt").write_text("\n".join(lines) + "\n")
    seq = open_sequence(tmp_path, "00")
    assert seq.pose_valid.tolist() == [True, False, True] and np.isnan(seq.poses_velo[1]).all()


def test_error_messages_name_file_and_expectation(tmp_path):
    d = make_kitti(tmp_path)
    calib = d / "calib.txt"
    calib.write_text("\n".join(l for l in CALIB_00.splitlines() if not l.startswith("Tr")) + "\n")
    with pytest.raises(
        DatasetError, match=r"calib.txt: no 'Tr' line; expected 'Tr: 12 numbers'.*Keys found: P0, P1, P2, P3"
    ):
        open_sequence(tmp_path, "00")
    calib.write_text(CALIB_00.replace("P2: 7.188560000000e+02 ", "P2: "))
    with pytest.raises(DatasetError, match="'P2' has 11 numbers, expected 12"):
        open_sequence(tmp_path, "00")
    calib.write_text(CALIB_00)

    (d / "poses.txt").write_text((d / "poses.txt").read_text().splitlines()[0] + "\n")
    with pytest.raises(DatasetError, match=r"poses.txt: has 1 poses but velodyne/ has 3 scans"):
        open_sequence(tmp_path, "00")
    (d / "poses.txt").unlink()

    (d / "times.txt").write_text("0.0\n0.1\n")
    with pytest.raises(DatasetError, match=r"times.txt: has 2 timestamps but velodyne/ has 3 scans"):
        open_sequence(tmp_path, "00")
    (d / "times.txt").unlink()
    with pytest.raises(DatasetError, match=r"times.txt: file not found; expected one timestamp"):
        open_sequence(tmp_path, "00")
    (d / "times.txt").write_text("0\n0.1\n0.2\n")

    (d / "image_2" / "000001.png").unlink()
    with pytest.raises(
        DatasetError, match=r"image_2: has 2 images but velodyne/ has 3 scans \(first frame without one: 000001\)"
    ):
        open_sequence(tmp_path, "00")
    cv2.imwrite(str(d / "image_2" / "000001.png"), np.zeros((20, 40, 3), np.uint8))
    (d / "labels" / "000002.label").unlink()
    with pytest.raises(DatasetError, match=r"labels: has 2 label files but velodyne/ has 3 scans"):
        open_sequence(tmp_path, "00")

    with pytest.raises(DatasetError, match=r"sequence '07' not found.*Sequences present: 00"):
        open_sequence(tmp_path, "07")
    for p in (d / "velodyne").iterdir():
        p.unlink()
    (d / "velodyne").rmdir()
    with pytest.raises(DatasetError, match=r"velodyne: directory not found; expected velodyne/NNNNNN.bin"):
        open_sequence(tmp_path, "00")


def test_factory_rejects_unknown_inputs(tmp_path):
    with pytest.raises(DatasetError, match="unknown dataset kind"):
        open_sequence(tmp_path, "00", kind="nuscenes")
    with pytest.raises(DatasetError, match="not a KITTI or KITTI-360 dataset"):
        open_sequence(tmp_path, "00")
    with pytest.raises(DatasetError, match="dataset directory not found"):
        open_sequence(tmp_path / "nope", "00")


def test_dataset_info_cli(tmp_path, capsys):
    from scmpr_ros.cli import main

    d = make_kitti(tmp_path)
    assert main(["dataset-info", str(tmp_path), "--sequence", "00", "--check"]) == 0
    out = capsys.readouterr().out
    assert "frames: 3" in out and "has_labels: True" in out and "calib_keys: ['P0', 'P1', 'P2', 'P3', 'Tr']" in out
    assert main(["dataset-info", str(tmp_path)]) == 0
    assert "1 sequence(s): 00" in capsys.readouterr().out
    # bad data: non-zero exit and the loader's message
    (d / "calib.txt").write_text(CALIB_00.replace("Tr:", "Tx:"))
    assert main(["dataset-info", str(tmp_path), "--sequence", "00"]) == 2
    assert "no 'Tr' line" in capsys.readouterr().err
    (d / "calib.txt").write_text(CALIB_00)
    (d / "image_2" / "000002.png").write_bytes(b"not a png")
    assert main(["dataset-info", str(tmp_path), "-s", "00"]) == 0  # only the first frame is read
    assert main(["dataset-info", str(tmp_path), "-s", "00", "--check"]) == 2
    assert "cannot decode image" in capsys.readouterr().err
