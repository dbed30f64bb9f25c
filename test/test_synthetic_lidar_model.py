"""The synthetic town's LiDAR sensor models (datasets/synthetic/lidar_model.py, TownRenderer.scan).

Small hand-built scenes (a ground plane, walls, a glass pane) rendered with the HDL-64E model check each effect
against its geometry: the beam table recovered from the points, the link budget's dark / far losses, glass,
the ego car's blind zone, the rolling shutter and its de-skew.  The ``uniform`` sensor is checked byte for
byte against the code it replaced (kept verbatim below).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from scmpr_ros.datasets.synthetic import SyntheticTown, generate_town, read_manifest
from scmpr_ros.datasets.synthetic import _kernels as kern
from scmpr_ros.datasets.synthetic import lidar_model as lm
from scmpr_ros.datasets.synthetic.mesh import SK, MeshBuilder, Tex
from scmpr_ros.datasets.synthetic.render import TownRenderer

K = np.array([[40.0, 0.0, 32.0], [0.0, 40.0, 16.0], [0.0, 0.0, 1.0]])
GREY = (0.5, 0.5, 0.5)
H = 1.73  # sensor height above the ground plane (KITTI)
NO_CAR = replace(lm.HDL64E, ego_boxes=())


def _renderer(mb: MeshBuilder, lidar, azimuth_steps: int = 720) -> TownRenderer:
    return TownRenderer(mb.arrays(), np.zeros((0, 3)), K, (64, 32), azimuth_steps, np.array([0.3, 0.2, 1.0]), 0, lidar)


def _wall(mb: MeshBuilder, x0, y0, x1, y1, z0, z1, refl=0.5, tex=Tex.CONCRETE, param=(0, 0, 0, 0, 0, 0)) -> None:
    corners = [(x0, y0, z0), (x1, y1, z0), (x1, y1, z1), (x0, y0, z1)]
    mb.quad(corners, sk=SK["building"], tex=tex, color=GREY, refl=refl, param=param)


def _ground_and_ring(radius: float = 30.0) -> MeshBuilder:
    """Ground plane 1.73 m below the sensor and a 24-sided wall ring around it (every beam hits something)."""
    mb = MeshBuilder()
    mb.rect(-200, -200, 200, 200, -H, tile=20.0, sk=SK["road"], tex=Tex.CONCRETE, color=GREY, refl=0.5)
    a = np.linspace(0, 2 * np.pi, 25)
    for a0, a1 in zip(a[:-1], a[1:]):
        _wall(mb, radius * np.cos(a0), radius * np.sin(a0), radius * np.cos(a1), radius * np.sin(a1), -H, 20.0)
    return mb


def _pose(x=0.0, y=0.0, z=0.0) -> np.ndarray:
    T = np.eye(4)
    T[:3, 3] = (x, y, z)
    return T


def _elevation_deg(pts: np.ndarray) -> np.ndarray:
    return np.degrees(np.arcsin(pts[:, 2] / np.linalg.norm(pts[:, :3], axis=1)))


def _azimuth(pts: np.ndarray) -> np.ndarray:
    return np.arctan2(pts[:, 1], pts[:, 0])


# --- the beam table ------------------------------------------------------------------------------
def test_hdl64e_beam_table_has_two_blocks():
    el = np.asarray(lm.HDL64E.elevations_deg)
    assert el.shape == (64,) and np.all(np.diff(el) < 0)
    assert el[0] == pytest.approx(2.0) and el[-1] == pytest.approx(-24.8)
    assert el[31] == pytest.approx(-8.333, abs=1e-3) and el[32] == pytest.approx(-8.833, abs=1e-3)
    np.testing.assert_allclose(np.diff(el[:32]), -1 / 3, atol=1e-9)  # upper block
    np.testing.assert_allclose(np.diff(el[32:]), -(24.8 - 8.8333333) / 31, atol=1e-6)  # lower block, ~1/2 deg
    uniform = np.asarray(lm.UNIFORM.elevations_deg)
    np.testing.assert_allclose(np.diff(uniform), -26.8 / 63, atol=1e-9)


def test_beam_elevations_recovered_from_a_rendered_scan():
    """Each point of a still scan lies on its beam: the elevations of the points are the HDL-64E table."""
    r = _renderer(_ground_and_ring(), NO_CAR, azimuth_steps=360)
    pts, _ = r.scan(_pose(), np.random.default_rng(0))
    el = _elevation_deg(pts)
    table = np.asarray(lm.HDL64E.elevations_deg)
    nearest = np.abs(el[:, None] - table[None, :]).argmin(axis=1)
    assert np.abs(el - table[nearest]).max() < 1e-3
    counts = np.bincount(nearest, minlength=64)
    assert counts.min() > 0.75 * 360  # every beam answers (ground rings at glancing incidence lose some)
    # the table is not the uniform one: the upper block is denser than 26.8 / 63 deg, the lower sparser
    centres = np.array([np.median(el[nearest == k]) for k in range(64)])
    np.testing.assert_allclose(np.diff(centres[:32]), -1 / 3, atol=1e-3)
    np.testing.assert_allclose(np.diff(centres[32:]), -0.515, atol=1e-3)


def test_town_scan_at_rest_uses_the_beam_table():
    town = _small_town()
    pts, _ = town.renderer.scan(town.map_pass.T_town_velo[3], np.random.default_rng(1))
    el = _elevation_deg(pts)
    table = np.asarray(lm.HDL64E.elevations_deg)
    assert np.abs(el[:, None] - table[None, :]).min(axis=1).max() < 1e-3
    assert len(np.unique(np.abs(el[:, None] - table[None, :]).argmin(axis=1))) >= 56  # the car hides the lowest


# --- link budget, glancing incidence, glass ------------------------------------------------------
def test_link_budget_anchors_and_monotonic():
    m = lm.HDL64E
    np.testing.assert_allclose(lm.half_detection_range(m, np.array([0.10, 0.80, 1.0])), [50.0, 120.0, 120.0])
    r = np.array([10.0, 40.0, 60.0, 100.0])
    dark = lm.detection_probability(m, r, np.full(4, 0.1), np.ones(4))
    bright = lm.detection_probability(m, r, np.full(4, 0.8), np.ones(4))
    assert np.all(np.diff(dark) < 0) and np.all(np.diff(bright) <= 0) and np.all(bright >= dark)
    assert dark[0] > 0.99 and dark[3] < 0.01 and bright[3] > 0.85
    glancing = lm.detection_probability(m, np.full(3, 10.0), np.full(3, 0.5), np.array([1.0, 0.1, 0.01]))
    assert glancing[0] > glancing[1] > glancing[2] and glancing[2] < 0.3
    assert lm.glass_return_probability(m, np.array([1.0]))[0] == pytest.approx(1.0)
    assert lm.glass_return_probability(m, np.array([np.cos(np.radians(30))]))[0] < 0.06


def _return_share(r: TownRenderer, pts: np.ndarray, az0: float, dist: float) -> tuple[float, np.ndarray]:
    """Share of the rays within +-15 deg azimuth of ``az0`` and elevation -8..+2 deg that came back from the
    wall at ``dist`` (points within 1 m of it), and those points."""
    sector = lambda d: (
        (np.abs(np.angle(np.exp(1j * (_azimuth(d) - az0)))) < np.radians(15))
        & (np.abs(_elevation_deg(d) + 3.0) <= 5.0 + 1e-3)
    )
    rays = int(sector(r.lidar_dirs).sum())
    on_wall = sector(pts) & (np.abs(np.linalg.norm(pts[:, :2], axis=1) * np.cos(_azimuth(pts) - az0) - dist) < 1.0)
    return on_wall.sum() / rays, pts[on_wall]


def test_dark_and_far_walls_lose_returns():
    """Four walls facing the sensor: dark (10 %) and bright (80 %) at 30 m and at 100 m."""
    mb = MeshBuilder()
    walls = {(0.0, 30.0): 0.1, (np.pi / 2, 100.0): 0.1, (np.pi, 30.0): 0.8, (-np.pi / 2, 100.0): 0.8}
    for (az, dist), refl in walls.items():
        c, s, half = np.cos(az), np.sin(az), dist * 0.6
        _wall(mb, c * dist - s * half, s * dist + c * half, c * dist + s * half, s * dist - c * half, -25, 12, refl)
    r = _renderer(mb, NO_CAR)
    pts, _ = r.scan(_pose(), np.random.default_rng(2))
    share = {key: _return_share(r, pts, *key)[0] for key in walls}
    dark30, dark100, bright30, bright100 = (share[k] for k in walls)
    assert dark30 > 0.95 and bright30 > 0.95  # well inside the range of both
    assert dark100 < 0.02  # 10 % reflectivity: R50 ~ 50 m
    assert 0.6 < bright100 < 0.97  # 80 %: R50 = 120 m, p ~ 0.9 at 100 m
    uniform = _renderer(mb, lm.UNIFORM)
    pts_u, _ = uniform.scan(_pose(), np.random.default_rng(2))
    assert _return_share(uniform, pts_u, np.pi / 2, 100.0)[0] > 0.95  # the idealised sensor sees it all


def test_ground_returns_thin_out_with_range():
    """Rings of a 50 % reflective ground: complete near the car, thinner at glancing incidence far away."""
    r = _renderer(_ground_and_ring(radius=150.0), NO_CAR, azimuth_steps=360)
    pts, labels = r.scan(_pose(), np.random.default_rng(3))
    el = _elevation_deg(pts[(labels & 0xFFFF) == SK["road"]])
    beams = np.asarray(lm.HDL64E.elevations_deg)[[63, 40, 20, 12, 9]]  # ground at 3.7, 7.5, 21, 50, 99 m
    share = [(np.abs(el - b) < 1e-3).sum() / 360 for b in beams]
    assert share[0] > 0.95 and share[1] > 0.95
    assert share[4] < share[3] < share[2] < share[1]  # glancing incidence and the link budget
    assert share[4] < 0.05


def test_glass_passes_most_pulses_through():
    """A glass pane (car-window material) at 10 m before a wall at 20 m: returns from the pane near normal
    incidence only, the others from the wall behind it."""
    mb = MeshBuilder()
    _wall(mb, 10, 12, 10, -12, -12, 12, refl=0.3, tex=Tex.CARPAINT, param=(-100, 100))
    _wall(mb, 20, 30, 20, -30, -30, 30, refl=0.5)
    r = _renderer(mb, NO_CAR)
    pts, _ = r.scan(_pose(), np.random.default_rng(4))
    window = lambda d: (np.abs(_azimuth(d)) < np.radians(40)) & (np.abs(_elevation_deg(d)) < 20) & (d[:, 0] > 0)
    front = pts[window(pts)]
    cos_pts = front[:, 0] / np.linalg.norm(front[:, :3], axis=1)  # incidence on both planes (normal x)
    dirs = r.lidar_dirs[window(r.lidar_dirs)]
    on_glass = np.abs(front[:, 0] - 10) < 0.2
    behind = np.abs(front[:, 0] - 20) < 0.2
    assert on_glass.sum() + behind.sum() == len(front)
    assert 0.75 < behind.sum() / len(dirs) < 0.97 and on_glass.sum() / len(dirs) < 0.2

    def glass_share(lo_deg, hi_deg):
        ray = (dirs[:, 0] <= np.cos(np.radians(lo_deg))) & (dirs[:, 0] > np.cos(np.radians(hi_deg)))
        pt = on_glass & (cos_pts <= np.cos(np.radians(lo_deg))) & (cos_pts > np.cos(np.radians(hi_deg)))
        return pt.sum() / ray.sum()

    assert glass_share(0, 4) > 0.75  # specular: the pane answers near normal incidence
    assert glass_share(25, 60) < 0.1  # only the 5 % floor further out


# --- the ego car ---------------------------------------------------------------------------------
def test_ego_car_blind_zone():
    """No point inside the car, a small object inside its outline is never seen, and the nearest ground
    returns form a ring larger than the field of view alone allows (3.75 m), longest behind the roof."""
    mb = _ground_and_ring()
    mb.box(
        -1.0, 0.0, -1.5, 0.2, 0.2, 1.2, sk=SK["other_object"], tex=Tex.CONCRETE, color=GREY, refl=0.9
    )  # in the cabin
    pts, labels = _renderer(mb, lm.HDL64E).scan(_pose(), np.random.default_rng(5))
    pts_free, labels_free = _renderer(mb, NO_CAR).scan(_pose(), np.random.default_rng(5))
    for box in lm.HDL64E.ego_boxes:
        inside = np.all((pts[:, :3] >= np.asarray(box.lo)) & (pts[:, :3] <= np.asarray(box.hi)), axis=1)
        assert not inside.any()
    assert ((labels & 0xFFFF) == SK["other_object"]).sum() == 0
    assert ((labels_free & 0xFFFF) == SK["other_object"]).sum() > 0  # visible without the car

    def nearest_ground(p, lab, sector):
        g = p[(lab & 0xFFFF) == SK["road"]]
        az = np.degrees(_azimuth(g))
        return np.linalg.norm(g[sector(az), :2], axis=1).min()

    side = lambda az: np.abs(np.abs(az) - 90) < 10
    back = lambda az: np.abs(az) > 170
    front = lambda az: np.abs(az) < 10
    assert nearest_ground(pts_free, labels_free, back) < 3.9  # FOV only: 1.73 / tan(24.8 deg) = 3.75 m
    assert nearest_ground(pts, labels, side) > 3.7
    assert nearest_ground(pts, labels, front) > 4.0  # the bonnet
    assert nearest_ground(pts, labels, back) > 6.0  # the roof
    assert len(pts) < 0.9 * len(pts_free)


# --- motion during the sweep -------------------------------------------------------------------
def _room(half: float = 15.0, cx: float = 0.0, cy: float = 0.0) -> MeshBuilder:
    mb = MeshBuilder()
    c = [(half, half), (-half, half), (-half, -half), (half, -half), (half, half)]
    for (x0, y0), (x1, y1) in zip(c[:-1], c[1:]):
        _wall(mb, cx + x0, cy + y0, cx + x1, cy + y1, -12.0, 12.0)
    return mb


@pytest.mark.parametrize("speed", [0.0, 20.0])
def test_rolling_shutter_skews_a_raw_scan(speed):
    """Driving +x at ``speed`` towards the wall ahead, away from the wall behind: the first column (behind,
    t = -0.05 s) and the last column (behind, t = +0.05 s) see that wall ``speed * 0.1 s`` apart."""
    n = 360
    raw = replace(NO_CAR, deskewed=False)
    r = _renderer(_room(), raw, azimuth_steps=n)
    pts, _ = r.scan(_pose(), np.random.default_rng(6), motion=((speed, 0.0, 0.0), (0.0, 0.0, 0.0)))
    col = np.round((np.pi - _azimuth(pts)) / (2 * np.pi / n)).astype(int) % n
    first, last = pts[col == 0], pts[col == n - 1]
    assert len(first) > 60 and len(last) > 60
    skew = first[:, 0].mean() - last[:, 0].mean()
    assert skew == pytest.approx(speed * 0.1 * (n - 1) / n, abs=0.02)
    # the raw points of column k lie on the back wall as seen from the sensor at t_k
    t_first = lm.column_times(n, 0.1)[0]
    np.testing.assert_allclose(first[:, 0], -15.0 - speed * t_first, atol=0.1)


def test_raw_columns_are_cast_from_the_pose_at_their_time():
    """Moving 5 m/s forward and turning left at 2 rad/s: each raw point's range is the distance from the sensor
    origin at its column's time, along its direction rotated by the yaw reached then, to the room's walls."""
    n, v, w = 360, 5.0, 2.0
    r = _renderer(_room(), replace(NO_CAR, deskewed=False), azimuth_steps=n)
    pts, _ = r.scan(_pose(), np.random.default_rng(8), motion=((v, 0.0, 0.0), (0.0, 0.0, w)))
    col = np.round((np.pi - _azimuth(pts)) / (2 * np.pi / n)).astype(int) % n
    t = lm.column_times(n, 0.1)[col]
    rng_m = np.linalg.norm(pts[:, :3], axis=1)
    d = pts[:, :3] / rng_m[:, None]
    yaw = w * t
    dx, dy = np.cos(yaw) * d[:, 0] - np.sin(yaw) * d[:, 1], np.sin(yaw) * d[:, 0] + np.cos(yaw) * d[:, 1]
    ox = v * t
    with np.errstate(divide="ignore"):
        to_x = np.where(dx > 0, (15.0 - ox) / dx, (-15.0 - ox) / dx)
        to_y = 15.0 / np.abs(dy)
    np.testing.assert_allclose(rng_m, np.minimum(to_x, to_y), atol=0.1)


def test_deskewed_scan_puts_a_moving_turning_sweep_back_on_the_walls():
    """Moving 10 m/s and turning 1 rad/s: the de-skewed points (KITTI odometry) lie on the walls of the room
    in the frame-time sensor frame; the raw ones do not."""
    T = _pose(100.0, -50.0, 0.0)
    T[:2, :2] = [[np.cos(0.7), -np.sin(0.7)], [np.sin(0.7), np.cos(0.7)]]
    motion = (T[:3, :3] @ [10.0, 0.0, 0.0], (0.0, 0.0, 1.0))
    off_wall = {}
    for deskewed in (True, False):
        r = _renderer(_room(cx=100.0, cy=-50.0), replace(NO_CAR, deskewed=deskewed), azimuth_steps=360)
        pts, _ = r.scan(T, np.random.default_rng(7), motion=motion)
        world = pts[:, :3].astype(np.float64) @ T[:3, :3].T + T[:3, 3]
        off_wall[deskewed] = np.abs(np.maximum(np.abs(world[:, 0] - 100.0), np.abs(world[:, 1] + 50.0)) - 15.0)
    assert np.percentile(off_wall[True], 99) < 0.08  # range noise only
    assert np.percentile(off_wall[False], 90) > 0.3


def test_ego_motion_from_neighbouring_poses():
    """A car on a 20 m circle at 10 m/s: v = 10 m/s along the heading, yaw rate 0.5 rad/s."""
    times = np.arange(5) * 0.1
    ang = 0.5 * times
    T = np.tile(np.eye(4), (5, 1, 1))
    T[:, 0, 3], T[:, 1, 3] = 20 * np.sin(ang), 20 * (1 - np.cos(ang))
    T[:, 0, 0], T[:, 0, 1], T[:, 1, 0], T[:, 1, 1] = np.cos(ang), -np.sin(ang), np.sin(ang), np.cos(ang)
    v, w = lm.ego_motion(T, times, 2)
    np.testing.assert_allclose(w, [0.0, 0.0, 0.5], atol=1e-9)
    assert np.linalg.norm(v) == pytest.approx(10.0, rel=1e-3)
    np.testing.assert_allclose(v / np.linalg.norm(v), T[2, :3, 0], atol=1e-9)
    v0, _ = lm.ego_motion(T, times, 0)  # one-sided at the ends
    assert np.linalg.norm(v0) == pytest.approx(10.0, rel=1e-2)
    assert np.all(lm.ego_motion(T[:1], times[:1], 0)[0] == 0)


# --- the town: uniform = the old code, byte for byte; the manifest records the model -------------
_TOWN = {}


def _small_town() -> SyntheticTown:
    if "town" not in _TOWN:
        _TOWN["town"] = SyntheticTown(seed=9, frames=6, image_size=(64, 32), azimuth_steps=256)
    return _TOWN["town"]


def _old_scan(r: TownRenderer, T_town_velo: np.ndarray, rng: np.random.Generator):
    """TownRenderer.scan before the sensor models (verbatim but for the names of its constants)."""
    elev = np.deg2rad(np.linspace(2.0, -24.8, 64))
    az = np.pi - 2 * np.pi * np.arange(r.azimuth_steps) / r.azimuth_steps
    el, a = np.meshgrid(elev, az)
    lidar_dirs = (
        np.stack([np.cos(el) * np.cos(a), np.cos(el) * np.sin(a), np.sin(el)], -1).reshape(-1, 3).astype(np.float32)
    )
    res = r._cast(T_town_velo, np.ascontiguousarray(lidar_dirs.T, dtype=np.float32))
    t = res["t"]
    keep = (res["tri"] >= 0) & (t > 0.9) & (t < 120.0)
    keep &= rng.random(len(t)) > 0.004
    idx = np.nonzero(keep)[0]
    tri = res["tri"][idx]
    rng_m = t[idx] + rng.normal(0.0, 0.012, len(idx)).astype(np.float32)
    d_w = res["dirs"][idx]
    n = res["normal"][idx]
    cos_inc = np.abs(np.einsum("ij,ij->i", n, d_w))
    p_w = res["origin"] + d_w * t[idx, None]
    m = r.mesh
    factor = kern.lidar_reflectance_factor(
        tri, p_w, m["tex"], m["param"], m["color"], n, r.noise.tables[0], r.noise.tables[1]
    )
    refl = m["refl"][tri] * factor * (0.45 + 0.55 * cos_inc)
    refl = np.clip(refl + rng.normal(0.0, 0.02, len(idx)), 0.0, 0.99).astype(np.float32)
    pts = np.empty((len(idx), 4), dtype=np.float32)
    pts[:, :3] = lidar_dirs[idx] * rng_m[:, None]
    pts[:, 3] = refl
    labels = r.mesh["sk"][tri].astype(np.uint32) | (r.mesh["inst"][tri].astype(np.uint32) << 16)
    return pts, labels


def test_uniform_sensor_writes_the_old_scans_byte_for_byte(tmp_path):
    town = _small_town()
    uniform = TownRenderer(
        town.mesh, town.lamps, town.calib.K, town.image_size, 256, town.sun_dir, town.seed, lidar="uniform"
    )
    kw = {"frames": 6, "conditions": "day", "image_size": (64, 32), "azimuth_steps": 256}
    manifest = generate_town(tmp_path / "u", seed=9, lidar="uniform", **kw)
    assert manifest["lidar"] == "uniform" and read_manifest(tmp_path / "u")["lidar"] == "uniform"
    for name, seq in (("map", "00"), ("query", "01")):
        for i in (0, len(town.drive(name)) - 1):
            pts, labels = _old_scan(uniform, town.drive(name).T_town_velo[i], town.frame_rng(name, i, 1))
            stem = tmp_path / "u" / "sequences" / seq
            assert (stem / "velodyne" / f"{i:06d}.bin").read_bytes() == pts.astype("<f4").tobytes()
            assert (stem / "labels" / f"{i:06d}.label").read_bytes() == labels.astype("<u4").tobytes()
    # the default sensor differs, and says so
    generate_town(tmp_path / "h", seed=9, **kw)
    assert read_manifest(tmp_path / "h")["lidar"] == "hdl64e"
    bin_u = (tmp_path / "u" / "sequences" / "00" / "velodyne" / "000004.bin").read_bytes()
    assert (tmp_path / "h" / "sequences" / "00" / "velodyne" / "000004.bin").read_bytes() != bin_u


def test_town_scans_keep_out_of_the_car_and_are_deterministic():
    town = _small_town()
    for i in (0, 3, 5):
        pts, labels = town.scan("map", i)
        again, labels_again = town.scan("map", i)
        assert pts.tobytes() == again.tobytes() and labels.tobytes() == labels_again.tobytes()
        for box in lm.HDL64E.ego_boxes:
            assert not np.all((pts[:, :3] >= np.asarray(box.lo)) & (pts[:, :3] <= np.asarray(box.hi)), axis=1).any()
    v, _ = town.ego_motion("map", 3)
    assert 9.0 < np.linalg.norm(v) < 21.0  # 1-2 m per 0.1 s frame


def test_synth_cli_lidar_option(tmp_path, capsys):
    from scmpr_ros.cli import main

    base = ["--frames", "2", "--conditions", "day", "--image-size", "64x32", "--azimuth-steps", "32"]
    assert main(["synth", str(tmp_path / "a"), "--lidar", "uniform", *base]) == 0
    assert read_manifest(tmp_path / "a")["lidar"] == "uniform"
    assert "uniform sensor" in capsys.readouterr().out
    assert main(["synth", str(tmp_path / "b"), *base]) == 0
    assert read_manifest(tmp_path / "b")["lidar"] == "hdl64e"
    assert main(["synth", str(tmp_path / "c"), "--lidar", "hdl32", *base]) != 0
    assert not (tmp_path / "c" / "synth_manifest.yaml").exists()
    # a manifest written before the option existed: the idealised sensor
    path = tmp_path / "a" / "synth_manifest.yaml"
    path.write_text("\n".join(line for line in path.read_text().splitlines() if not line.startswith("lidar:")))
    assert read_manifest(tmp_path / "a")["lidar"] == "uniform"
