"""KITTI-360 loader on small hand-made files in the real directory layout."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from scmpr_ros.datasets import detect_kind, open_sequence
from scmpr_ros.errors import DatasetError
from scmpr_ros.semantics import CLASS_ID, IGNORE_ID

DRIVE = "2013_05_28_drive_0000_sync"
PERSPECTIVE = """calib_time: 09-Jan-2012 13:57:47
corner_dist: 9.950000e-02
S_00: 1.392000e+03 5.120000e+02
K_00: 7.886293e+02 0.000000e+00 6.871584e+02 0.000000e+00 7.863822e+02 3.177522e+02 0.000000e+00 0.000000e+00 1.000000e+00
D_00: -3.443661e-01 1.628685e-01 4.691457e-04 1.906856e-04 -3.459840e-02
R_00: 1.000000e+00 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00
T_00: 0.000000e+00 0.000000e+00 0.000000e+00
S_rect_00: 1.408000e+03 3.760000e+02
R_rect_00: 9.999974e-01 -7.141668e-03 -8.333331e-05 7.141642e-03 9.999745e-01 -3.247011e-04 8.565276e-05 3.241078e-04 9.999999e-01
P_rect_00: 5.528000e+02 0.000000e+00 6.825000e+02 0.000000e+00 0.000000e+00 5.528000e+02 2.385000e+02 0.000000e+00 0.000000e+00 0.000000e+00 1.000000e+00 0.000000e+00
"""
CAM_TO_VELO = np.array(
    [
        [0.04307104361, -0.08829286498, 0.995162929, 0.8043914418],
        [-0.999004371, 0.007784614041, 0.04392796942, 0.2993489574],
        [-0.01162548558, -0.9960641394, -0.08786966659, -0.1770225824],
    ]
)
CAM_TO_POSE = np.array(
    [
        [0.0371783278, -0.0986182135, 0.9944306009, 1.5752681039],
        [0.9992675562, -0.0053553387, -0.0378902567, 0.0043914093],
        [0.0090621821, 0.9951109327, 0.0983468786, -0.7166172100],
    ]
)
SCAN_FRAMES = [0, 1, 2, 3]
IMAGE_FRAMES = [0, 1, 2]


def hom(m):
    T = np.eye(4)
    T[:3] = np.asarray(m).reshape(3, 4)
    return T


def world_pose(f):
    c, s = np.cos(0.2 * f), np.sin(0.2 * f)
    return hom([[c, -s, 0, 1000.0 + 3 * f], [s, c, 0, 3000.0 + f], [0, 0, 1, 115.0]])


def write_ply(path: Path, xyz: np.ndarray, semantic: np.ndarray, with_semantic: bool = True) -> None:
    props = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"), ("red", "u1"), ("green", "u1"), ("blue", "u1")]
    if with_semantic:
        props += [("semantic", "<i4"), ("instanceID", "<i4"), ("isVisible", "u1"), ("confidence", "<f4")]
    data = np.zeros(len(xyz), dtype=props)
    data["x"], data["y"], data["z"] = xyz.T
    if with_semantic:
        data["semantic"] = semantic
        data["confidence"] = 1.0
    type_names = {"<f4": "float", "u1": "uchar", "<i4": "int"}
    header = ["ply", "format binary_little_endian 1.0", f"element vertex {len(xyz)}"]
    header += [f"property {type_names[t]} {n}" for n, t in props]
    header += ["element face 0", "property list uchar int vertex_indices", "end_header"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(("\n".join(header) + "\n").encode() + data.tobytes())


def make_kitti360(root: Path, semantics: bool = True) -> dict:
    cal = root / "calibration"
    cal.mkdir(parents=True)
    (cal / "perspective.txt").write_text(PERSPECTIVE)
    (cal / "calib_cam_to_velo.txt").write_text(" ".join(f"{v:.10f}" for v in CAM_TO_VELO.ravel()) + "\n")
    (cal / "calib_cam_to_pose.txt").write_text(
        "".join(f"image_0{k}: " + " ".join(f"{v:.10f}" for v in CAM_TO_POSE.ravel()) + "\n" for k in range(4))
    )
    velo = root / "data_3d_raw" / DRIVE / "velodyne_points"
    (velo / "data").mkdir(parents=True)
    rng = np.random.default_rng(0)
    scans = {}
    for f in SCAN_FRAMES:
        pts = rng.normal(0, 8, (60, 4)).astype(np.float32)
        pts.tofile(velo / "data" / f"{f:010d}.bin")
        scans[f] = pts
    (velo / "timestamps.txt").write_text(
        "".join(f"2013-05-28 08:46:0{2 + f}.{f * 100000000 + 880340352 % 100000000:09d}\n" for f in SCAN_FRAMES)
    )
    img_dir = root / "data_2d_raw" / DRIVE / "image_00" / "data_rect"
    img_dir.mkdir(parents=True)
    for f in IMAGE_FRAMES:
        cv2.imwrite(str(img_dir / f"{f:010d}.png"), np.full((24, 88, 3), 40 * f, np.uint8))
    pose_dir = root / "data_poses" / DRIVE
    pose_dir.mkdir(parents=True)
    # sparse poses: frames 0 and 2 only; cam0_to_world only for frame 0
    (pose_dir / "poses.txt").write_text(
        "".join(f"{f} " + " ".join(f"{v:.10f}" for v in world_pose(f)[:3].ravel()) + "\n" for f in (0, 2))
    )
    R_rect = np.eye(4)
    R_rect[:3, :3] = np.array(PERSPECTIVE.split("R_rect_00:")[1].split("\n")[0].split(), float).reshape(3, 3)
    cam0_world = world_pose(0) @ hom(CAM_TO_POSE) @ np.linalg.inv(R_rect)
    cam0_world[:3, 3] += [0.01, 0.0, 0.0]  # distinguishable from the derived pose
    (pose_dir / "cam0_to_world.txt").write_text("0 " + " ".join(f"{v:.10f}" for v in cam0_world.ravel()) + "\n")
    if semantics:
        T_w_velo0 = world_pose(0) @ hom(CAM_TO_POSE) @ np.linalg.inv(hom(CAM_TO_VELO))
        pts0 = scans[0][:, :3].astype(np.float64)
        xyz = pts0[:-1] @ T_w_velo0[:3, :3].T + T_w_velo0[:3, 3]
        sem = np.where(np.arange(len(xyz)) < 30, 7, 11)  # KITTI-360 ids: 7 road, 11 building
        write_ply(root / "data_3d_semantics" / "train" / DRIVE / "static" / "0000000000_0000000001.ply", xyz, sem)
    return {"scans": scans, "R_rect": R_rect, "cam0_world": cam0_world}


def test_reads_layout_geometry_and_sparse_poses(tmp_path):
    info = make_kitti360(tmp_path)
    assert detect_kind(tmp_path) == "kitti360"
    seq = open_sequence(tmp_path, "0")
    assert (seq.name, seq.kind, seq.num_frames) == (DRIVE, "kitti360", 3)
    assert seq.frame_ids == ["0000000000", "0000000001", "0000000002"]
    assert any("4 scans and 3 images: using the 3 frames" in n for n in seq.notes)
    assert seq.has_images and seq.calib.image_size == (88, 24)
    P = np.array(PERSPECTIVE.split("P_rect_00:")[1].split(), float).reshape(3, 4)
    np.testing.assert_allclose(seq.calib.P, P)
    np.testing.assert_allclose(seq.calib.K, P[:, :3])
    T_velo_cam0 = hom(CAM_TO_VELO)
    np.testing.assert_allclose(seq.calib.T_cam_velo, info["R_rect"] @ np.linalg.inv(T_velo_cam0), atol=1e-9)
    assert seq.pose_valid.tolist() == [True, False, True]
    for f in (0, 2):
        np.testing.assert_allclose(
            seq.poses_velo[f], world_pose(f) @ hom(CAM_TO_POSE) @ np.linalg.inv(T_velo_cam0), atol=1e-6
        )
    np.testing.assert_allclose(seq.poses_cam[0], info["cam0_world"], atol=1e-6)  # from cam0_to_world.txt
    np.testing.assert_allclose(
        seq.poses_cam[2], world_pose(2) @ hom(CAM_TO_POSE) @ np.linalg.inv(info["R_rect"]), atol=1e-6
    )
    assert np.isnan(seq.poses_velo[1]).all() and np.isnan(seq.poses_cam[1]).all()
    np.testing.assert_allclose(seq.times, [0.0, 1.1, 2.2], atol=1e-6)
    np.testing.assert_array_equal(seq.load_scan(2), info["scans"][2])
    assert seq.load_image(2)[0, 0].tolist() == [80, 80, 80]
    d = seq.describe()
    assert d["frames"] == 3 and d["valid_poses"] == 2 and d["labelled_frames"] == 1
    assert "P_rect_00" in d["calib_keys"] and "calib_cam_to_velo" in d["calib_keys"]


def test_labels_from_data_3d_semantics(tmp_path):
    make_kitti360(tmp_path)
    seq = open_sequence(tmp_path, DRIVE, kind="kitti360")
    assert seq.has_labels and seq.label_valid.tolist() == [True, False, False]
    lab = seq.load_labels(0)
    assert lab.dtype == np.uint8 and lab.shape == (60,)
    assert (lab[:30] == CLASS_ID["road"]).all()
    assert (lab[30:59] == CLASS_ID["building"]).all()
    assert lab[59] == IGNORE_ID  # no labelled map point within 0.3 m
    with pytest.raises(DatasetError, match="frame 0000000001 has no labels \\(no pose\\)"):
        seq.load_labels(1)
    with pytest.raises(DatasetError, match="no data_3d_semantics window covers it"):
        seq.load_labels(2)


def test_without_semantics_or_images(tmp_path):
    make_kitti360(tmp_path, semantics=False)
    import shutil

    shutil.rmtree(tmp_path / "data_2d_raw")
    seq = open_sequence(tmp_path, "0")
    assert not seq.has_labels and not seq.label_valid.any()
    assert not seq.has_images and seq.num_frames == 4 and seq.calib.image_size is None
    with pytest.raises(DatasetError, match="has no camera images"):
        seq.load_image(0)
    with pytest.raises(DatasetError, match="has no labels"):
        seq.load_labels(0)


def test_error_messages(tmp_path):
    make_kitti360(tmp_path)
    cal = tmp_path / "calibration"
    persp = cal / "perspective.txt"
    persp.write_text("\n".join(l for l in PERSPECTIVE.splitlines() if not l.startswith("P_rect_00")))
    with pytest.raises(DatasetError, match=r"perspective.txt: no 'P_rect_00' line; expected 'P_rect_00: 12 numbers'"):
        open_sequence(tmp_path, "0")
    persp.write_text(PERSPECTIVE)
    velo_cal = cal / "calib_cam_to_velo.txt"
    good = velo_cal.read_text()
    velo_cal.write_text(" ".join(good.split()[:11]))
    with pytest.raises(DatasetError, match=r"calib_cam_to_velo.txt: has 11 numbers, expected 12"):
        open_sequence(tmp_path, "0")
    velo_cal.unlink()
    with pytest.raises(DatasetError, match=r"calib_cam_to_velo.txt: file not found"):
        open_sequence(tmp_path, "0")
    velo_cal.write_text(good)

    pose_cal = cal / "calib_cam_to_pose.txt"
    pose_txt = pose_cal.read_text()
    pose_cal.write_text(pose_txt.replace("image_00", "image_0x"))
    with pytest.raises(DatasetError, match=r"calib_cam_to_pose.txt: no 'image_00' line"):
        open_sequence(tmp_path, "0")
    pose_cal.write_text(pose_txt)

    poses = tmp_path / "data_poses" / DRIVE / "poses.txt"
    good_poses = poses.read_text()
    poses.write_text("0 1 2 3\n")
    with pytest.raises(DatasetError, match=r"poses.txt:1: has 4 values, expected 13"):
        open_sequence(tmp_path, "0")
    poses.write_text(good_poses)

    ts = tmp_path / "data_3d_raw" / DRIVE / "velodyne_points" / "timestamps.txt"
    ts.write_text("\n".join(ts.read_text().splitlines()[:2]) + "\n")
    with pytest.raises(DatasetError, match=r"timestamps.txt: has 2 timestamps but the scans go up to frame 2"):
        open_sequence(tmp_path, "0")
    ts.unlink()
    with pytest.raises(DatasetError, match=r"timestamps.txt: file not found"):
        open_sequence(tmp_path, "0")

    with pytest.raises(DatasetError, match=rf"drive '5' not found.*Drives present: {DRIVE}"):
        open_sequence(tmp_path, "5")


def test_bad_semantic_window(tmp_path):
    make_kitti360(tmp_path)
    ply = tmp_path / "data_3d_semantics" / "train" / DRIVE / "static" / "0000000000_0000000001.ply"
    write_ply(ply, np.zeros((3, 3)), np.zeros(3), with_semantic=False)
    seq = open_sequence(tmp_path, "0")
    with pytest.raises(DatasetError, match="PLY vertices have no 'semantic' property"):
        seq.load_labels(0)
    ply.write_bytes(ply.read_bytes()[:-10])
    from scmpr_ros.datasets.kitti360 import read_ply_vertices

    with pytest.raises(DatasetError, match="declares 3 vertices but holds 2"):
        read_ply_vertices(ply)
