"""The synthetic town: written in the KITTI layout, read back by the KITTI loader, geometry agrees."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest

from scmpr_ros.datasets import open_sequence
from scmpr_ros.datasets.synthetic import SyntheticTown, generate_town, read_manifest
from scmpr_ros.errors import DatasetError
from scmpr_ros.semantics import CLASS_ID, IGNORE_ID, semantic_kitti_to_common

SEED = 5
FRAMES = 8
SIZE = (320, 100)
AZIMUTH = 512


@pytest.fixture(scope="module")
def town_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("town")
    generate_town(
        out,
        seed=SEED,
        frames=FRAMES,
        conditions="day,night,winter",
        image_size=SIZE,
        azimuth_steps=AZIMUTH,
        class_images=True,
    )
    return out


@pytest.fixture(scope="module")
def town() -> SyntheticTown:
    """An independent in-memory town with the same seed: the generator's ground truth."""
    return SyntheticTown(seed=SEED, frames=FRAMES, image_size=SIZE, azimuth_steps=AZIMUTH)


def test_manifest_lists_passes_and_conditions(town_dir, town):
    m = read_manifest(town_dir)
    assert m["seed"] == SEED
    seqs = m["sequences"]
    assert {k: (v["pass"], v["condition"]) for k, v in seqs.items()} == {
        "00": ("map", "day"),
        "01": ("query", "day"),
        "02": ("query", "night"),
        "03": ("query", "winter"),
    }
    assert seqs["00"]["frames"] == FRAMES and seqs["01"]["frames"] == len(town.query_pass) >= 3
    assert m["image_size"] == list(SIZE) and m["azimuth_steps"] == AZIMUTH


def test_loader_reads_back_the_ground_truth(town_dir, town):
    for name, pass_name in (("00", "map"), ("01", "query"), ("02", "query"), ("03", "query")):
        seq = open_sequence(town_dir, name)
        drive = town.drive(pass_name)
        assert seq.kind == "kitti" and seq.num_frames == len(drive)
        assert seq.has_images and seq.has_labels and seq.has_poses and seq.pose_valid.all() and seq.has_image_labels
        assert seq.calib.image_size == SIZE
        np.testing.assert_allclose(seq.poses_velo, town.poses_map(pass_name), atol=1e-6)
        np.testing.assert_allclose(seq.calib.T_cam_velo, town.calib.T_cam_velo, atol=1e-9)
        np.testing.assert_allclose(seq.calib.K, town.calib.K, atol=1e-9)
        T_cam = town.T_map_town @ np.stack([town.T_town_cam(T) for T in drive.T_town_velo])
        np.testing.assert_allclose(seq.poses_cam, T_cam, atol=1e-6)
        np.testing.assert_allclose(seq.times, drive.times, atol=1e-6)
        for i in (0, seq.num_frames - 1):
            pts, raw = town.scan(pass_name, i)
            np.testing.assert_array_equal(seq.load_scan(i), pts)
            np.testing.assert_array_equal(seq.load_raw_labels(i), raw)
            np.testing.assert_array_equal(seq.load_labels(i), semantic_kitti_to_common(raw))
            img = seq.load_image(i)
            assert img.shape == (SIZE[1], SIZE[0], 3)
            np.testing.assert_array_equal(
                img, town.render_image(pass_name, i, read_manifest(town_dir)["sequences"][name]["condition"])
            )
    # map frame 0 is the map origin; the LiDAR is 1.73 m above flat ground
    seq = open_sequence(town_dir, "00")
    np.testing.assert_allclose(seq.poses_velo[0], np.eye(4), atol=1e-9)
    ground = seq.load_scan(0)[seq.load_labels(0) == CLASS_ID["road"]]
    assert np.median(ground[:, 2]) == pytest.approx(-1.73, abs=0.05)


def test_query_conditions_share_scans_and_poses(town_dir):
    seqs = {k: town_dir / "sequences" / k for k in ("01", "02", "03")}
    for k in ("02", "03"):
        for sub in ("velodyne", "labels"):
            for f in sorted((seqs["01"] / sub).iterdir()):
                g = seqs[k] / sub / f.name
                assert os.path.samefile(f, g) or f.read_bytes() == g.read_bytes()
        for txt in ("poses.txt", "times.txt", "calib.txt"):
            assert (seqs[k] / txt).read_text() == (seqs["01"] / txt).read_text()
    day, night, winter = (open_sequence(town_dir, k).load_image(1).astype(float) for k in ("01", "02", "03"))
    lum = [im.mean(axis=2) for im in (day, night, winter)]
    assert lum[1].mean() < 0.5 * lum[0].mean()  # night is dark
    assert lum[2].std() < lum[0].std()  # winter: low contrast
    assert lum[2].mean() > lum[0].mean()  # snow and overcast sky are bright
    assert not np.array_equal(day, night) and not np.array_equal(day, winter)


def test_lidar_points_project_onto_pixels_of_their_class(town_dir):
    """Projecting each LiDAR point with the loader's calibration hits a pixel rendered with its class."""
    for name in ("00", "01"):
        seq = open_sequence(town_dir, name)
        agree = total = 0
        for i in range(seq.num_frames):
            pts, lab = seq.load_scan(i), seq.load_labels(i)
            uv, depth = seq.calib.project(pts)
            u, v = np.round(uv[:, 0]).astype(int), np.round(uv[:, 1]).astype(int)
            vis = (depth > 1.0) & (u >= 0) & (u < SIZE[0]) & (v >= 0) & (v < SIZE[1]) & (lab != IGNORE_ID)
            cls = seq.load_image_labels(i)
            assert cls.shape == (SIZE[1], SIZE[0])
            agree += int((cls[v[vis], u[vis]] == lab[vis]).sum())
            total += int(vis.sum())
        assert total > 1000 * seq.num_frames
        assert agree / total >= 0.95, f"sequence {name}: only {agree / total:.3f} of visible points agree"


def test_class_image_in_memory_matches_disk(town_dir, town):
    cls = cv2.imread(str(town_dir / "sequences" / "01" / "semantic_2" / "000002.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(town.class_image("query", 2), cls)
    present = set(np.unique(cls)) - {IGNORE_ID}
    assert {CLASS_ID["road"], CLASS_ID["building"]} <= present or len(present) >= 4


def test_deterministic_for_a_seed(tmp_path):
    kw = {"frames": 3, "conditions": "day,night", "image_size": (96, 32), "azimuth_steps": 64}
    a = generate_town(tmp_path / "a", seed=11, **kw)
    generate_town(tmp_path / "b", seed=11, **kw)
    generate_town(tmp_path / "c", seed=12, **kw)
    assert set(a["sequences"]) == {"00", "01", "02"}  # no winter asked, no 03
    files = sorted(
        p.relative_to(tmp_path / "a")
        for p in (tmp_path / "a").rglob("*")
        if p.is_file() and p.name != "synth_manifest.yaml"
    )
    assert len(files) > 20
    for rel in files:
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel
    assert (tmp_path / "a" / "sequences/00/velodyne/000000.bin").read_bytes() != (
        tmp_path / "c" / "sequences/00/velodyne/000000.bin"
    ).read_bytes()


def test_route_passes_and_scene_content():
    town = SyntheticTown(seed=3, frames=150, image_size=(64, 32), azimuth_steps=64)
    mp, qp = town.map_pass, town.query_pass
    # frames 1-2 m apart
    for drive in (mp, qp):
        step = np.linalg.norm(np.diff(drive.T_town_velo[:, :2, 3], axis=0), axis=1)
        assert step.min() >= 0.95 and step.max() <= 2.05
    assert 0.85 * len(mp) <= len(qp) <= 1.2 * len(mp)
    # every query frame has a true place: the mapping path passes within 1-2 m (+ half a frame step)
    map_xy = mp.T_town_velo[:, :2, 3]
    q_xy = qp.T_town_velo[:, :2, 3]
    nearest = np.linalg.norm(q_xy[:, None] - map_xy[None], axis=2).min(axis=1)
    assert nearest.max() < 2.0 + 1.1
    lateral = np.abs(qp.c - np.interp(qp.s, mp.s, mp.c))
    # frames outside the U-turns: heading parallel to the street
    yaw_q = np.arctan2(qp.T_town_velo[:, 1, 0], qp.T_town_velo[:, 0, 0])
    _, street = town.layout.route.at(qp.s, np.zeros(len(qp)))
    off = np.abs(np.angle(np.exp(1j * (yaw_q - street))))
    straight = np.minimum(off, np.pi - off) < np.deg2rad(10)
    assert straight.mean() > 0.8
    assert np.median(lateral[straight]) >= 1.0 and np.percentile(lateral[straight], 90) <= 2.1
    # part of the query drive goes against the mapping direction
    idx = np.linalg.norm(q_xy[:, None] - map_xy[None], axis=2).argmin(axis=1)
    yaw_m = np.arctan2(mp.T_town_velo[idx, 1, 0], mp.T_town_velo[idx, 0, 0])
    opposite = np.abs(np.angle(np.exp(1j * (yaw_q - yaw_m)))) > np.deg2rad(150)
    assert 0.1 <= opposite.mean() <= 0.6
    np.testing.assert_array_equal(opposite[straight], qp.reverse[straight])
    # all classes of the common set are in the scene, buildings vary
    present = set(semantic_kitti_to_common(town.mesh["sk"].astype(np.uint32)).tolist())
    assert present == set(range(len(CLASS_ID)))
    walls = town.mesh["tex"] == 3
    assert len(np.unique(town.mesh["color"][walls], axis=0)) >= 20
    assert len(np.unique(town.mesh["param"][walls][:, 1])) >= 20  # window spacings


def test_writer_refuses_to_clobber_and_bad_input(tmp_path):
    kw = {"frames": 2, "conditions": "day", "image_size": (64, 32), "azimuth_steps": 32}
    generate_town(tmp_path, seed=1, **kw)
    with pytest.raises(DatasetError, match="already holds a synthetic town.*--overwrite"):
        generate_town(tmp_path, seed=1, **kw)
    generate_town(tmp_path, seed=2, overwrite=True, **kw)
    assert read_manifest(tmp_path)["seed"] == 2
    with pytest.raises(DatasetError, match="unknown condition.*dusk"):
        generate_town(tmp_path / "x", conditions="day,dusk", frames=2)
    (tmp_path / "synth_manifest.yaml").unlink()
    with pytest.raises(DatasetError, match="synth_manifest.yaml: not found"):
        read_manifest(tmp_path)


def test_synth_cli(tmp_path, capsys):
    from scmpr_ros.cli import main

    out = tmp_path / "t"
    assert (
        main(
            [
                "synth",
                str(out),
                "--seed",
                "4",
                "--frames",
                "3",
                "--conditions",
                "winter",
                "--image-size",
                "96x32",
                "--azimuth-steps",
                "64",
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "frames/s" in text and "03 (query/winter" in text
    assert sorted(p.name for p in (out / "sequences").iterdir()) == ["00", "03"]
    assert main(["dataset-info", str(out), "--sequence", "03", "--check"]) == 0
    assert "frames:" in capsys.readouterr().out
    assert main(["synth", str(out), "--frames", "3", "--image-size", "96"]) != 0
