"""Range-image projection: round trip, fill ratio, nearest-wins, normals, crops, encoder input."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from scmpr_ros.config import CameraConfig, LidarConfig
from scmpr_ros.errors import InputError
from scmpr_ros.lidar.range_image import (
    RANGE_CHANNELS,
    RangeProjector,
    camera_fov,
    crop_to_fov,
    encoder_input,
)
from scmpr_ros.semantics import CLASS_ID, IGNORE_ID


@pytest.fixture(scope="module")
def scan(lidar_scene):
    return lidar_scene.scan(lidar_scene.pose(10.0, 0.5, 3.0))


def test_round_trip_and_fill_ratio(scan):
    pts, lab = scan
    proj = RangeProjector(LidarConfig())
    ri = proj.project(pts, lab)
    H, W = 64, 1024
    assert ri.range.shape == (H, W) and ri.xyz.shape == (H, W, 3) and ri.normals.shape == (H, W, 3)
    # the scene is cast with one ray per pixel (jittered inside it): every hit owns its pixel
    assert ri.valid.sum() == len(pts)
    assert ri.fill_ratio == pytest.approx(len(pts) / (H * W))
    assert ri.fill_ratio > 0.9, f"fill ratio {ri.fill_ratio:.3f}"
    # inverse: pixel -> point is exact
    idx = ri.point_index[ri.valid]
    assert np.array_equal(np.sort(idx), np.arange(len(pts)))
    np.testing.assert_array_equal(ri.points(), pts[idx, :3])
    np.testing.assert_array_equal(ri.reflectance[ri.valid], pts[idx, 3])
    np.testing.assert_array_equal(ri.labels[ri.valid], lab[idx])
    assert np.all(ri.labels[~ri.valid] == IGNORE_ID) and np.all(ri.point_index[~ri.valid] == -1)
    np.testing.assert_allclose(ri.range[ri.valid], np.linalg.norm(pts[idx, :3], axis=1), rtol=1e-6)
    # point -> pixel -> point: re-projecting the stored points lands on the same pixels
    rows, cols = ri.pixels()
    r2, c2, _, ok = proj.pixel_coords(ri.points())
    assert ok.all() and np.array_equal(r2, rows) and np.array_equal(c2, cols)


def test_nearest_point_wins():
    proj = RangeProjector(LidarConfig())
    # three points on one ray (same pixel) and one on another ray
    d = np.array([1.0, 0.2, -0.1])
    d /= np.linalg.norm(d)
    pts = np.array([d * 20, d * 5, d * 12, [0.0, 10.0, -1.0]], dtype=np.float32)
    labels = np.array([1, 2, 3, 4], dtype=np.uint8)
    ri = proj.project(pts, labels)
    assert ri.valid.sum() == 2
    r, c, _, _ = proj.pixel_coords(pts[:1])
    assert ri.point_index[r[0], c[0]] == 1 and ri.labels[r[0], c[0]] == 2
    assert ri.range[r[0], c[0]] == pytest.approx(5.0, rel=1e-6)


def test_out_of_view_points_are_dropped():
    proj = RangeProjector(LidarConfig(min_range_m=1.0, max_range_m=50.0))
    pts = np.array([[0.5, 0, 0], [60, 0, -1], [10, 0, 5], [10, 0, -10], [10, 0, -1], [np.nan, 0, 0]], dtype=np.float32)
    ri = proj.project(pts)
    # too near, too far, above +2 deg, below -24.8 deg, NaN are dropped; only index 4 remains
    assert ri.valid.sum() == 1 and set(ri.point_index[ri.valid]) == {4}


def test_bad_inputs_are_refused():
    proj = RangeProjector()
    with pytest.raises(InputError, match="points must be"):
        proj.project(np.zeros((10, 5), np.float32))
    with pytest.raises(InputError, match="labels must be"):
        proj.project(np.zeros((10, 4), np.float32), np.zeros(9, np.uint8))
    with pytest.raises(InputError, match="fov_up_deg"):
        RangeProjector(LidarConfig(fov_up_deg=-30.0))


def test_normals_follow_surfaces(scan):
    pts, lab = scan
    ri = RangeProjector().project(pts, lab)
    known = np.linalg.norm(ri.normals, axis=-1) > 0.5
    assert known[ri.valid].mean() > 0.95
    road = ri.valid & (ri.labels == CLASS_ID["road"]) & known
    assert ri.normals[road][:, 2].mean() > 0.97  # road faces up
    wall = ri.valid & (ri.labels == CLASS_ID["building"]) & known
    assert np.abs(ri.normals[wall][:, 2]).mean() < 0.15  # facades are vertical
    # oriented towards the sensor
    assert np.all(np.sum(ri.normals[known] * ri.xyz[known], axis=-1) <= 1e-4)


def test_crop_to_camera_fov(scan):
    pts, lab = scan
    proj = RangeProjector()
    ri = proj.project(pts, lab)
    yaw, hfov = camera_fov(CameraConfig())
    assert math.degrees(hfov) == pytest.approx(81.6, abs=0.2)
    crop = crop_to_fov(ri, yaw, hfov)
    assert crop.width == round(hfov / (2 * math.pi) * 1024) and crop.height == 64
    pix_yaw = 2 * math.pi / 1024
    yaws = np.arctan2(crop.xyz[..., 1], crop.xyz[..., 0])[crop.valid]
    assert np.all(np.abs(yaws - yaw) <= hfov / 2 + pix_yaw)
    np.testing.assert_array_equal(crop.range, ri.range[:, crop.col_offset : crop.col_offset + crop.width])
    # wrap-around: looking backwards the crop spans the +-pi seam
    back = crop_to_fov(ri, math.pi, hfov)
    yb = np.arctan2(back.xyz[..., 1], back.xyz[..., 0])[back.valid]
    assert np.all(np.abs(yb) >= math.pi - hfov / 2 - pix_yaw)
    assert (yb > 0).any() and (yb < 0).any()
    with pytest.raises(InputError, match="already cropped"):
        crop_to_fov(crop, 0.0, hfov)


def test_camera_fov_uses_extrinsics():
    cam = CameraConfig(width=1000, cx=500, fx=500)
    # KITTI-like extrinsics: camera z = LiDAR x, rotated 30 degrees to the left
    c, s = math.cos(math.radians(30)), math.sin(math.radians(30))
    R_velo_cam = np.array([[0, 0, 1], [-1, 0, 0], [0, -1, 0]], dtype=float)  # columns: cam axes in velo
    Rz = np.array([[c, -s, 0], [s, c, 0], [0, 0, 1]])
    T_cam_velo = np.eye(4)
    T_cam_velo[:3, :3] = (Rz @ R_velo_cam).T
    yaw, hfov = camera_fov(cam, T_cam_velo)
    assert math.degrees(yaw) == pytest.approx(30.0, abs=1e-6)
    assert math.degrees(hfov) == pytest.approx(90.0, abs=1e-6)


def test_encoder_input(scan):
    pts, lab = scan
    ri = RangeProjector().project(pts, lab)
    x = encoder_input(ri)
    assert x.shape == (RANGE_CHANNELS, 64, 1024) and x.dtype == np.float32
    assert np.isfinite(x).all()
    assert np.all(x[:, ~ri.valid] == 0)
    np.testing.assert_array_equal(x[-1], ri.valid.astype(np.float32))
    assert 0 < x[0][ri.valid].max() <= 1.0


def test_projection_speed(scan, capsys):
    pts, lab = scan
    proj = RangeProjector()
    proj.project(pts, lab)
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        proj.project(pts, lab)
        times.append(time.perf_counter() - t0)
    ms = 1e3 * float(np.median(times))
    with capsys.disabled():
        print(f"\n[range image] {len(pts)} points -> 64x1024 incl. normals: {ms:.1f} ms per scan")
    assert ms < 1000
