"""Viewpoints: accumulated map, viewpoint poses, renders against real (ray-cast) scans, frustum grids."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from scmpr_ros.config import CameraConfig, LidarConfig, MapConfig
from scmpr_ros.errors import InputError
from scmpr_ros.lidar.range_image import RangeProjector
from scmpr_ros.lidar.viewpoints import (
    MapAccumulator,
    ViewpointRenderer,
    frustum_grid,
    offset_pose,
    place_frames,
    plan_viewpoints,
    render_agreement,
)
from scmpr_ros.semantics import CLASS_ID, IGNORE_ID

PIXEL_PITCH = math.radians(26.8 / 64)
HELD_OUT = 12  # frame left out of the map for the leave-one-out render


@pytest.fixture(scope="module")
def drive(lidar_scene):
    xs = np.arange(0.0, 72.0, 2.0)
    poses = np.stack([lidar_scene.pose(x, 0.3 * math.sin(x / 20), 2 * math.sin(x / 30)) for x in xs])
    scans = [lidar_scene.scan(T, seed=i) for i, T in enumerate(poses)]
    return poses, scans


@pytest.fixture(scope="module")
def held_out_map(drive):
    poses, scans = drive
    proj = RangeProjector(LidarConfig())
    acc = MapAccumulator(0.2)
    for i, (T, (p, l)) in enumerate(zip(poses, scans)):
        if i != HELD_OUT:
            acc.add_range_image(proj.project(p, l), T)
    return acc.finish()


def test_place_frames_and_viewpoint_plan():
    x = np.r_[np.arange(0, 10, 0.5), np.full(5, 10.0), np.arange(10.5, 20, 0.5)]
    poses = np.tile(np.eye(4), (len(x), 1, 1))
    poses[:, 0, 3] = x
    valid = np.ones(len(x), bool)
    valid[3] = False
    frames = place_frames(poses, valid, 2.0)
    assert frames[0] == 0 and 3 not in frames
    np.testing.assert_allclose(poses[frames, 0, 3], [0, 2, 4, 6, 8, 10, 12, 14, 16, 18])  # the pause adds none
    # frames 1.5 m apart, places every 2 m of path: the first frame past each multiple of 2 m
    sparse = np.tile(np.eye(4), (13, 1, 1))
    sparse[:, 0, 3] = np.arange(13) * 1.5
    got = sparse[place_frames(sparse, np.ones(13, bool), 2.0), 0, 3]
    np.testing.assert_allclose(got, [0, 3, 4.5, 6, 9, 10.5, 12, 15, 16.5, 18])
    cfg = MapConfig(place_spacing_m=2.0, yaw_offsets_deg=[0.0, 30.0], lateral_offsets_m=[-1.0, 0.0, 1.0])
    vps = plan_viewpoints(poses, valid, cfg)
    assert len(vps) == 10 * 2 * 3
    assert [v.viewpoint_id for v in vps] == list(range(60))
    v = next(v for v in vps if v.place == 1 and v.lateral_offset_m == 1.0 and v.yaw_offset_deg == 30.0)
    # lateral = along the place's left (y) axis, then yaw about the viewpoint's z
    np.testing.assert_allclose(v.T_world_velo[:3, 3], [2.0, 1.0, 0.0], atol=1e-12)
    assert math.degrees(math.atan2(v.T_world_velo[1, 0], v.T_world_velo[0, 0])) == pytest.approx(30.0)
    with pytest.raises(InputError, match="place_spacing_m"):
        place_frames(poses, valid, 0.0)
    with pytest.raises(InputError, match="yaw_offsets_deg"):
        plan_viewpoints(poses, valid, MapConfig(yaw_offsets_deg=[]))


def test_accumulated_map_is_voxelised_and_labelled(drive, held_out_map):
    poses, scans = drive
    m = held_out_map
    raw = sum(len(p) for p in (s[0] for s in scans))
    assert 0 < len(m) < raw / 4
    keys = np.floor(m.points / 0.2).astype(np.int64)
    # means of points of one voxel stay inside that voxel: one point per voxel
    # (two voxels on either side of a face lying exactly on a voxel boundary may share a floor)
    assert len(np.unique(keys, axis=0)) >= 0.99 * len(m)
    assert (m.labels != IGNORE_ID).mean() > 0.99
    road = m.labels == CLASS_ID["road"]
    assert np.abs(m.points[road, 2] + 1.73).max() < 0.15
    assert m.normals[road, 2].mean() > 0.95
    # tile lookup returns every point within the radius
    c = poses[10, :3, 3]
    near = m.indices_near(c, 20.0)
    d = np.linalg.norm(m.points[:, :2] - c[:2], axis=1)
    assert set(np.flatnonzero(d <= 20.0)) <= set(near.tolist())


def test_map_render_at_held_out_pose_agrees_with_real_scan(drive, held_out_map, capsys):
    poses, scans = drive
    proj = RangeProjector(LidarConfig())
    r = ViewpointRenderer(proj, MapConfig(render_mode="map"), held_out_map)
    t0 = time.perf_counter()
    ri = r.render_map(poses[HELD_OUT])
    ms = (time.perf_counter() - t0) * 1e3
    real = proj.project(*scans[HELD_OUT])
    agree = render_agreement(ri, real, pixel_rad=PIXEL_PITCH)
    with capsys.disabled():
        print(
            "\n[viewpoints] map render at a held-out mapped pose vs its real scan: "
            + ", ".join(f"{k} {v:.3f}" for k, v in agree.items())
            + f" ({ms:.0f} ms, 360 deg)"
        )
    assert agree["valid_iou"] > 0.95
    assert agree["range_agree"] > 0.95
    assert agree["label_agree"] > 0.95
    assert agree["median_abs_range_err_m"] < 0.05


def test_lateral_offset_map_render_beats_nearest_scan(lidar_scene, drive, held_out_map, capsys):
    """At a pose never scanned (1.5 m to the side, 20 deg turned) compare both render modes with
    the scan the scene really gives there."""
    poses, scans = drive
    proj = RangeProjector(LidarConfig())
    vp_T = offset_pose(poses[20], 1.5, 20.0)
    truth = proj.project(*lidar_scene.scan(vp_T, seed=99))
    from scmpr_ros.lidar.viewpoints import Viewpoint

    vp = Viewpoint(0, 20, 20, 20.0, 1.5, vp_T)
    loader = lambda i: scans[i]  # noqa: E731
    by_map = ViewpointRenderer(proj, MapConfig(render_mode="map"), held_out_map).render(vp)
    by_scan = ViewpointRenderer(proj, MapConfig(render_mode="scan"), None, loader, poses).render(vp)
    a_map = render_agreement(by_map, truth, pixel_rad=PIXEL_PITCH)
    a_scan = render_agreement(by_scan, truth, pixel_rad=PIXEL_PITCH)
    with capsys.disabled():
        print(
            "\n[viewpoints] 1.5 m lateral + 20 deg viewpoint vs true scan: map render "
            + ", ".join(f"{k} {v:.3f}" for k, v in a_map.items())
            + " | nearest scan "
            + ", ".join(f"{k} {v:.3f}" for k, v in a_scan.items())
        )
    assert a_map["valid_iou"] > 0.95 and a_map["range_agree"] > 0.9
    # the re-projected scan is accurate where it has points but leaves parallax holes
    assert a_map["valid_iou"] > a_scan["valid_iou"]
    assert a_map["truth_recovered"] > a_scan["truth_recovered"]


def test_scan_render_with_yaw_offset_is_a_column_shift(drive):
    poses, scans = drive
    proj = RangeProjector(LidarConfig())
    shift = 37  # whole columns
    vp = plan_viewpoints(
        poses,
        np.ones(len(poses), bool),
        MapConfig(place_spacing_m=1000.0, yaw_offsets_deg=[shift * 360.0 / 1024], lateral_offsets_m=[0.0]),
    )[0]
    ri = ViewpointRenderer(proj, MapConfig(render_mode="scan"), None, lambda i: scans[i], poses).render(vp)
    real = proj.project(*scans[vp.source_frame])
    # turning the sensor left by k columns moves the image k columns to the right
    rolled = np.roll(real.range, shift, axis=1)
    same = np.isclose(ri.range, rolled, atol=1e-3) | (~ri.valid & (rolled == 0))
    assert same.mean() > 0.99
    assert np.array_equal(np.roll(real.labels, shift, axis=1)[same & ri.valid], ri.labels[same & ri.valid])


def test_auto_mode_and_missing_inputs(drive, held_out_map):
    poses, scans = drive
    proj = RangeProjector(LidarConfig())
    vps = plan_viewpoints(
        poses,
        np.ones(len(poses), bool),
        MapConfig(place_spacing_m=30.0, yaw_offsets_deg=[0.0], lateral_offsets_m=[0.0, 2.0]),
    )
    r = ViewpointRenderer(proj, MapConfig(render_mode="auto"), held_out_map, lambda i: scans[i], poses)
    assert [r.mode_for(v) for v in vps[:2]] == ["scan", "map"]
    with pytest.raises(InputError, match="needs the accumulated map"):
        ViewpointRenderer(proj, MapConfig(render_mode="map")).render(vps[0])
    with pytest.raises(InputError, match="needs the mapping pass scans"):
        ViewpointRenderer(proj, MapConfig(render_mode="scan")).render(vps[0])
    with pytest.raises(InputError, match="render_mode 'mesh' unknown"):
        ViewpointRenderer(proj, MapConfig(render_mode="mesh"))


def test_frustum_grid_of_a_street_view(drive, held_out_map):
    poses, scans = drive
    proj = RangeProjector(LidarConfig())
    cam = CameraConfig()
    T_cam_velo = np.eye(4)
    T_cam_velo[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]  # camera looking along the LiDAR x axis
    real = proj.project(*scans[HELD_OUT])
    g = frustum_grid(real, T_cam_velo, cam, 4, 8, min_fraction=0.02)
    assert g.shape == (4, 8, 11)
    assert g[3, 2:6, CLASS_ID["road"]].all()  # road ahead in the bottom row
    assert not g[0, :, CLASS_ID["road"]].any()  # ... never above the horizon
    assert g[:, [0, 7], CLASS_ID["building"]].any()  # facades on the sides
    # the grid of the map render of the same pose (leave-one-out) is nearly the same
    ri = ViewpointRenderer(proj, MapConfig(render_mode="map"), held_out_map).render_map(poses[HELD_OUT])
    g2 = frustum_grid(ri, T_cam_velo, cam, 4, 8, min_fraction=0.02)
    iou = (g & g2).sum() / (g | g2).sum()
    assert iou > 0.8, iou


def test_render_throughput(drive, held_out_map, capsys):
    poses, scans = drive
    proj = RangeProjector(LidarConfig())
    yaw_hfov = (0.0, math.radians(81.6))
    out = {}
    for mode in ("scan", "map"):
        r = ViewpointRenderer(proj, MapConfig(render_mode=mode), held_out_map, lambda i: scans[i], poses)
        vps = plan_viewpoints(poses, np.ones(len(poses), bool), MapConfig(place_spacing_m=6.0))
        r.render(vps[0], yaw_hfov)
        t0 = time.perf_counter()
        for v in vps:
            r.render(v, yaw_hfov)
        out[mode] = len(vps) / (time.perf_counter() - t0)
    with capsys.disabled():
        print(f"\n[viewpoints] camera-FOV renders per second: scan {out['scan']:.0f}/s, map {out['map']:.0f}/s")
    assert out["scan"] > 5 and out["map"] > 2


# -- segmentation ---------------------------------------------------------------------------------
def test_learned_segmenter_trains_and_round_trips(drive, tmp_path):
    from scmpr_ros.lidar.segmentation import RangeImageSegmenter, segmentation_miou, train_range_segmenter

    poses, scans = drive
    cfg = LidarConfig()
    proj = RangeProjector(cfg)
    train = [proj.project(*scans[i]) for i in range(0, 24, 3)]
    seg = train_range_segmenter(train, cfg, steps=300, batch=2048, seed=0)
    held = [scans[i] for i in range(25, 36, 5)]
    pred = np.concatenate([seg.segment_points(p) for p, _ in held])
    truth = np.concatenate([l for _, l in held])
    miou, per = segmentation_miou(pred, truth)
    print(
        f"\n[segmentation] learned range-image segmenter on held-out frames: mIoU {miou:.3f} "
        + ", ".join(f"{k} {v:.2f}" for k, v in per.items())
    )
    assert miou > 0.6 and per["road"] > 0.6 and per["building"] > 0.8
    path = tmp_path / "seg.npz"
    seg.save(path)
    again = RangeImageSegmenter.load(path, cfg)
    np.testing.assert_array_equal(again.segment_points(held[0][0]), seg.segment_points(held[0][0]))
    path.write_bytes(b"junk")
    from scmpr_ros.errors import DatasetError

    with pytest.raises(DatasetError, match="not a segmenter weights file"):
        RangeImageSegmenter.load(path, cfg)


def test_make_segmenter_choices(tmp_path):
    from types import SimpleNamespace

    from scmpr_ros.errors import DatasetError
    from scmpr_ros.lidar.segmentation import GroundTruthSegmenter
    from scmpr_ros.mapping.segmenters import make_segmenter

    labelled = SimpleNamespace(
        root="r", name="00", has_labels=True, load_labels=lambda i: np.array([1, 2, 3], np.uint8)
    )
    seg = make_segmenter(LidarConfig(), labelled)
    assert isinstance(seg, GroundTruthSegmenter)
    assert list(seg.segment(labelled, 0, np.zeros((3, 4), np.float32))) == [1, 2, 3]
    with pytest.raises(DatasetError, match="do not belong together"):
        seg.segment(labelled, 0, np.zeros((4, 4), np.float32))
    unlabelled = SimpleNamespace(root="r", name="07", has_labels=False)
    with pytest.raises(DatasetError, match="no per-point labels.*train-segmenter"):
        make_segmenter(LidarConfig(), unlabelled)
    with pytest.raises(DatasetError, match="segmenter weights not found"):
        make_segmenter(LidarConfig(segmentation="learned", segmenter_weights=str(tmp_path / "none.npz")), unlabelled)
    with pytest.raises(DatasetError, match="segmenter_weights is empty"):
        make_segmenter(LidarConfig(segmentation="learned"), labelled)


def test_shipped_segmenter_weights_load_and_segment(drive, repo_root):
    """models/range_segmenter.npz (trained on synthetic town seed 3, held-out town mIoU 0.555) works
    on another scene: cars and poles are recognised from geometry alone."""
    from scmpr_ros.lidar.segmentation import RangeImageSegmenter, segmentation_miou

    poses, scans = drive
    seg = RangeImageSegmenter.load(repo_root / "models" / "range_segmenter.npz", LidarConfig())
    pts, truth = scans[5]
    pred = seg.segment_points(pts)
    assert pred.shape == truth.shape and pred.dtype == np.uint8
    _, per = segmentation_miou(pred, truth)
    assert per["car"] > 0.6 and per["road"] > 0.4
