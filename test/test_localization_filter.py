"""Monte Carlo localization filter (scmpr_ros.localization.filter) on a simulated road graph.

The town: a 120 m x 80 m loop (400 m) with a cross street between the middles of its long sides,
mapped by driving the loop both ways and through the cross street in four turns; viewpoints every
2 m in the right-hand lane of each drive (so the two directions of a road are 3 m apart and
opposite).  A vehicle drives loop + cross street + loop the other way (~960 m, 4-14 m/s, frames
every 0.5 s).  The simulated recognizer returns 10 hypotheses: the true nearest viewpoint on top
with probability 0.5, otherwise a random far viewpoint on top and the true one at ranks 2-10 with
probability 0.6 or not at all.  Odometry is DriftOdometry (2 % scale error, 0.01 deg/m heading bias).
Seeds 101-103 are used here; the filter's defaults were chosen on seeds 0-19.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import pytest

from scmpr_ros.config import ConfigError, FilterConfig
from scmpr_ros.errors import InputError
from scmpr_ros.geometry import wrap_angle
from scmpr_ros.localization.filter import DriftOdometry, MapLocalizationFilter, ViewpointIndex, body_delta

DT_S = 0.5  # seconds between frames
LANE_OFFSET_M = 1.5  # right-hand traffic: driven paths lie this far right of the road's centre line
VIEWPOINT_SPACING_M = 2.0
SMOOTHING_WINDOW_M = 12.0  # moving-average window that rounds the corners of the driven paths
LOOP = [(0, 0), (120, 0), (120, 80), (0, 80), (0, 0)]
MAPPING_DRIVES = [[(0, 0), (60, 0), (60, 80), (120, 80)], [(120, 0), (60, 0), (60, 80), (0, 80)]]
ROUTE = LOOP + [(60, 0), (60, 80), (120, 80), (120, 0), (60, 0), (60, 80), (0, 80), (0, 0)]
SETTLE_FRAMES = 5  # frames the filter is given before accuracy counts
# The simulated recognizer scores in [0, 1] with a wide top-1 margin; the shipped defaults were chosen on
# validation towns where re-rank scores span ~1.2-1.6 with narrow margins (config.FilterConfig).  These
# values were tuned on simulated seeds 0-19 (the tests use seeds 101-103).
SIM_SETTINGS = {
    "temperature": 0.1,
    "likelihood_floor": 0.05,
    "likelihood_floor_image_only": 0.05,
    "recovery_share": 0.03,
    "recovery_share_image_only": 0.03,
    "recovery_share_unconverged": 0.15,
    "converge_frames": 3,
    "converge_frames_image_only": 3,
    "converge_mode_weight": 0.6,
}


def sim_config(**changes) -> FilterConfig:
    return dataclasses.replace(FilterConfig(), **(SIM_SETTINGS | changes))


GOOD_M = 5.0  # an estimate within this distance of the truth is correct


def _driven_path(waypoints, closed: bool = False) -> np.ndarray:
    """(M,3) x, y, yaw every 0.5 m along the polyline, corners rounded, shifted into the right-hand lane."""
    corners = np.asarray(waypoints, dtype=np.float64)
    seg = np.diff(corners, axis=0)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
    s = np.arange(0.0, arc[-1], 0.5)
    dense = np.stack([np.interp(s, arc, corners[:, 0]), np.interp(s, arc, corners[:, 1])], axis=1)
    half = int(SMOOTHING_WINDOW_M / 0.5 / 2)
    padded = (
        np.concatenate([dense[-half:], dense, dense[:half]])
        if closed
        else np.pad(dense, ((half, half), (0, 0)), mode="edge")
    )
    kernel = np.ones(2 * half + 1) / (2 * half + 1)
    smooth = np.stack([np.convolve(padded[:, i], kernel, mode="valid") for i in range(2)], axis=1)
    step = np.gradient(smooth, axis=0)
    yaw = np.arctan2(step[:, 1], step[:, 0])
    right = np.stack([np.sin(yaw), -np.cos(yaw)], axis=1)
    return np.column_stack([smooth + LANE_OFFSET_M * right, yaw])


def _resample(path: np.ndarray, distances: np.ndarray) -> np.ndarray:
    """Poses of ``path`` at arc lengths ``distances`` (yaw interpolated unwrapped)."""
    seg = np.diff(path[:, :2], axis=0)
    arc = np.concatenate([[0.0], np.cumsum(np.hypot(seg[:, 0], seg[:, 1]))])
    yaw = np.interp(distances, arc, np.unwrap(path[:, 2]))
    return np.column_stack(
        [np.interp(distances, arc, path[:, 0]), np.interp(distances, arc, path[:, 1]), wrap_angle(yaw)]
    )


def _town_poses7(rng) -> np.ndarray:
    """(N,7) viewpoint poses: each mapping drive both ways, a viewpoint every 2 m, 0.2 m lateral jitter."""
    drives = [_driven_path(LOOP, closed=True), _driven_path(LOOP[::-1], closed=True)]
    for drive in MAPPING_DRIVES:
        drives += [_driven_path(drive), _driven_path(drive[::-1])]
    poses = []
    for path in drives:
        length = np.sum(np.hypot(*np.diff(path[:, :2], axis=0).T))
        poses.append(_resample(path, np.arange(rng.uniform(0, VIEWPOINT_SPACING_M), length, VIEWPOINT_SPACING_M)))
    xyyaw = np.concatenate(poses)
    xyyaw[:, :2] += rng.normal(0.0, 0.2, (len(xyyaw), 2))
    half = xyyaw[:, 2] / 2
    return np.column_stack(
        [xyyaw[:, :2], rng.normal(0.0, 0.1, len(xyyaw)), np.zeros((len(xyyaw), 2)), np.sin(half), np.cos(half)]
    )


def _vehicle_poses(rng) -> np.ndarray:
    """(T,3) true poses every DT_S seconds along ROUTE, speed a bounded random walk in 4-14 m/s."""
    path = _driven_path(ROUTE)
    length = np.sum(np.hypot(*np.diff(path[:, :2], axis=0).T))
    speeds, travelled = [9.0], [0.0]
    while travelled[-1] + speeds[-1] * DT_S < length:
        travelled.append(travelled[-1] + speeds[-1] * DT_S)
        speeds.append(float(np.clip(speeds[-1] + rng.normal(0.0, 0.5), 4.0, 14.0)))
    return _resample(path, np.asarray(travelled))


@dataclass
class Hypotheses:
    ids: list  # per frame (k,) map rows, best first
    scores: list  # per frame (k,) scores in [0, 1], descending
    top1_correct: np.ndarray  # (T,) bool: the top hypothesis is within GOOD_M of the truth


def _recognize(truth: np.ndarray, index: ViewpointIndex, rng, k: int = 10) -> Hypotheses:
    """A noisy recognizer: true nearest same-direction viewpoint on top half the time, else far ones on top."""
    ids, scores, top1 = [], [], []
    for x, y, yaw in truth:
        dist = np.hypot(index.xy[:, 0] - x, index.xy[:, 1] - y)
        same_direction = np.cos(index.yaw - yaw) > np.cos(np.radians(45))
        true_id = int(np.argmin(np.where(same_direction, dist, np.inf)))
        frame_ids = rng.choice(np.flatnonzero(dist > 20.0), k, replace=False)
        if rng.random() < 0.5:
            frame_ids[0] = true_id
        elif rng.random() < 0.6:
            frame_ids[rng.integers(1, k)] = true_id
        ids.append(frame_ids)
        scores.append(np.clip(rng.uniform(0.55, 0.9) - np.cumsum(np.r_[0.0, rng.uniform(0.0, 0.06, k - 1)]), 0, 1))
        top1.append(dist[frame_ids[0]] <= GOOD_M)
    return Hypotheses(ids, scores, np.asarray(top1))


@dataclass
class Run:
    error_m: np.ndarray  # (T,) distance of the estimate to the truth
    yaw_error: np.ndarray  # (T,) |wrapped yaw error| (rad)
    converged: np.ndarray  # (T,) bool


def _localize(poses7, truth, hyps: Hypotheses, odometry=None, seed: int = 0) -> Run:
    """Run the filter over a sequence: odometry (T,3) body increments, or None for image-only motion."""
    filt = MapLocalizationFilter(poses7, sim_config(seed=seed))
    errors, yaw_errors, converged = [], [], []
    for t in range(len(truth)):
        if odometry is not None:
            filt.predict_odometry(odometry[t])
        else:
            filt.predict_graph(DT_S)
        est = filt.update(hyps.ids[t], hyps.scores[t])
        errors.append(np.hypot(*(est.pose[:2] - truth[t, :2])))
        yaw_errors.append(abs(wrap_angle(est.pose[2] - truth[t, 2])))
        converged.append(est.converged)
    return Run(np.asarray(errors), np.asarray(yaw_errors), np.asarray(converged))


@pytest.fixture(scope="module")
def town():
    rng = np.random.default_rng(7)
    return _town_poses7(rng)


@dataclass
class Sequence:
    truth: np.ndarray  # (T,3) true x, y, yaw
    hyps: Hypotheses
    odometry: np.ndarray  # (T,3) DriftOdometry body increments (row 0 zero)


def _sequence(town, seed: int) -> Sequence:
    rng = np.random.default_rng(seed)
    truth = _vehicle_poses(rng)
    return Sequence(truth, _recognize(truth, ViewpointIndex(town), rng), DriftOdometry(seed=seed).deltas(truth))


def _kidnapped_sequence(town, seed: int, kidnap_frame: int) -> tuple[Sequence, float]:
    """The vehicle is moved (> 60 m, odometry unaware) at ``kidnap_frame``; returns the sequence and the jump (m)."""
    rng = np.random.default_rng(seed)
    drive = _vehicle_poses(rng)
    from_old = np.hypot(*(drive[:, :2] - drive[kidnap_frame - 1, :2]).T)
    resume = int(np.flatnonzero((np.arange(len(drive)) > kidnap_frame + 20) & (from_old > 60.0))[0])
    truth = np.concatenate([drive[:kidnap_frame], drive[resume:]])
    odometry = np.concatenate(
        [DriftOdometry(seed=seed).deltas(drive[:kidnap_frame]), DriftOdometry(seed=seed + 1).deltas(drive[resume:])]
    )
    return Sequence(truth, _recognize(truth, ViewpointIndex(town), rng), odometry), float(from_old[resume])


TEST_SEEDS = (101, 102, 103)


@pytest.fixture(scope="module")
def sequences(town):
    return [_sequence(town, seed) for seed in TEST_SEEDS]


def _pooled(town, sequences, image_only: bool):
    runs = [
        _localize(town, seq.truth, seq.hyps, None if image_only else seq.odometry, seed=seed)
        for seq, seed in zip(sequences, TEST_SEEDS)
    ]
    settled = slice(SETTLE_FRAMES, None)
    error = np.concatenate([run.error_m[settled] for run in runs])
    converged = np.concatenate([run.converged[settled] for run in runs])
    yaw_error = np.concatenate([run.yaw_error[settled] for run in runs])
    top1 = np.concatenate([seq.hyps.top1_correct[settled] for seq in sequences])
    return error, converged, yaw_error, top1


def test_odometry_filter_is_far_more_accurate_than_single_frames(town, sequences):
    # Measured on seeds 101-103 (729 frames after frame 5): 100 % within 5 m, converged on 99.6 %,
    # converged-but-wrong 0 %, median error 0.51 m, yaw error p95 1.6 deg; single-frame top-1 49.4 %.
    # Tuning seeds 0-19: 99.9 % within 5 m (worst seed 98.4 %, its misses in frames 5-9 while locking
    # on), 0 % converged-but-wrong.
    error, converged, yaw_error, top1 = _pooled(town, sequences, image_only=False)
    within = error <= GOOD_M
    assert within.mean() >= 0.99
    assert np.mean(converged & ~within) <= 0.005
    assert converged.mean() >= 0.9
    assert top1.mean() <= 0.6 and within.mean() - top1.mean() >= 0.3
    assert np.median(error) < 1.5 and np.degrees(np.percentile(yaw_error, 95)) < 5.0


def test_image_only_filter_follows_the_road_graph(town, sequences):
    # Measured on seeds 101-103: 99.9 % within 5 m after frame 5 (single-frame top-1: 49.4 %), converged
    # on 98.1 %, converged-but-wrong 0.14 % (1 frame), median error 0.56 m.  Tuning seeds 0-19: 99.4 %
    # (worst seed 96.9 %), 0.14 % converged-but-wrong; the misses are branch choices at junctions.
    error, converged, _, top1 = _pooled(town, sequences, image_only=True)
    within = error <= GOOD_M
    assert within.mean() >= 0.95
    assert within.mean() - top1.mean() >= 0.3
    assert np.mean(converged & ~within) <= 0.02


@pytest.mark.parametrize("seed", TEST_SEEDS)
def test_kidnapped_vehicle_is_found_again(town, seed):
    kidnap = 80
    seq, jump_m = _kidnapped_sequence(town, seed, kidnap)
    assert jump_m > 60.0
    run = _localize(town, seq.truth, seq.hyps, seq.odometry, seed=seed)
    right = run.converged & (run.error_m <= GOOD_M)
    wrong = run.converged & (run.error_m > GOOD_M)
    assert right[kidnap - 10 : kidnap].all()  # locked on before the kidnap
    # Measured (seeds 101 / 102 / 103): converged at the new place 5 / 5 / 8 frames after the kidnap, the
    # old place still reported converged for 1 / 1 / 5 frames.  Seeds 0-19: 4-14 frames (median 6) and
    # 0-4; the slow ones are those where the recognizer misses the new place for several frames in a row.
    assert right[kidnap : kidnap + 15].any()
    assert not wrong[kidnap + 15 :].any()


def _two_lane_road(length_m: float = 200.0, z_m: float = 0.0) -> np.ndarray:
    """(2N,7) viewpoints every 2 m of a straight road along x: rows 0..N-1 eastbound at y = -1.5,
    rows N..2N-1 westbound at y = +1.5 (row N + i at the same x as row i)."""
    x = np.arange(0.0, length_m, VIEWPOINT_SPACING_M)
    east = np.column_stack([x, np.full_like(x, -1.5), np.zeros_like(x)])
    west = np.column_stack([x, np.full_like(x, 1.5), np.full_like(x, np.pi)])
    xyyaw = np.concatenate([east, west])
    half = xyyaw[:, 2] / 2
    return np.column_stack(
        [xyyaw[:, :2], np.full(len(xyyaw), z_m), np.zeros((len(xyyaw), 2)), np.sin(half), np.cos(half)]
    )


def test_reset_initialises_from_hypotheses_and_clears():
    road = _two_lane_road()
    filt = MapLocalizationFilter(road, sim_config(num_particles=500, seed=1))
    assert not filt.initialized
    filt.predict_odometry([1.0, 0.0, 0.0])  # nothing to move yet: no error
    filt.predict_graph(0.5)
    with pytest.raises(InputError, match="not initialised"):
        filt.update([], [])
    est = filt.update([10, 60], [0.9, 0.2])  # initialises; the clear winner takes the weight
    assert filt.initialized and filt.particles.shape == (500, 3)
    assert filt.weights.shape == (500,) and filt.weights.sum() == pytest.approx(1.0)
    assert np.hypot(*(est.pose[:2] - road[10, :2])) < 1.5 and est.mode_weight > 0.9
    assert not est.converged and est.frames_converged == 1
    filt.reset()
    assert not filt.initialized and filt.particles.shape == (0, 3)
    filt.reset([160], [0.5])
    assert filt.initialized
    assert np.all(np.hypot(*(filt.particles[:, :2] - road[160, :2]).T) < 10.0)
    assert np.all(np.cos(filt.particles[:, 2] - np.pi) > np.cos(np.radians(45)))


def test_heading_gate_separates_the_two_driving_directions():
    road = _two_lane_road()
    east, west = 50, 150  # same x, opposite lanes 3 m apart: both within match_radius_m
    filt = MapLocalizationFilter(road, sim_config(num_particles=1000, seed=2))
    filt.reset([east, west], [0.5, 0.5])
    for step in range(1, 6):
        filt.predict_odometry([2.0, 0.0, 0.0])
        est = filt.update([west + step, east + step], [0.9, 0.85])  # the westbound lane scores higher ...
    # ... but the particles drive east, so only the eastbound candidates (within the heading gate) fit
    assert abs(est.pose[1] - (-1.5)) < 1.0 and abs(wrap_angle(est.pose[2])) < np.radians(10)
    assert est.converged


def test_odometry_and_image_only_motion_have_their_own_convergence_streaks():
    """The same steady evidence converges after converge_frames frames behind odometry updates and after
    converge_frames_image_only frames behind road-graph ones (no motion here: zero increments, dt 0)."""
    road = _two_lane_road()
    cfg = sim_config(num_particles=1000, seed=3, converge_frames=2, converge_frames_image_only=6)
    first_converged = {}
    for image_only in (False, True):
        filt = MapLocalizationFilter(road, cfg)
        filt.reset([50], [0.9])
        for _ in range(11):
            if image_only:
                filt.predict_graph(0.0)
            else:
                filt.predict_odometry([0.0, 0.0, 0.0])
            est = filt.update([50, 150], [0.9, 0.2])
            if est.converged:
                first_converged[image_only] = est.frames_converged
                break
    assert first_converged == {False: 2, True: 6}


def test_covariance_is_symmetric_psd_and_yaw_wrapped():
    road = _two_lane_road(z_m=3.0)
    filt = MapLocalizationFilter(road, sim_config(num_particles=1000, seed=3))
    start = 100 + 60  # westbound, yaw = pi: particle headings straddle +-pi
    filt.reset([start], [1.0])
    for step in range(1, 8):
        filt.predict_odometry([2.0, 0.0, 0.0])
        est = filt.update([start - step, 30], [0.9, 0.7])
    assert -np.pi < est.pose[2] <= np.pi
    assert abs(wrap_angle(est.pose[2] - np.pi)) < np.radians(5)
    assert est.covariance.shape == (6, 6)
    np.testing.assert_allclose(est.covariance, est.covariance.T)
    assert np.linalg.eigvalsh(est.covariance).min() >= 0.0
    assert est.covariance[5, 5] < np.radians(10) ** 2  # a wrapped spread, not one of ~2 pi
    assert est.covariance[0, 0] < 4.0 and est.spread_m < 10.0
    assert est.z == pytest.approx(3.0)


def test_input_errors_say_what_is_wrong():
    road = _two_lane_road()
    with pytest.raises(InputError, match=r"shape \(N,7\)"):
        MapLocalizationFilter(road[:, :6])
    bad = road.copy()
    bad[3, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        MapLocalizationFilter(bad)
    bad = road.copy()
    bad[4, 3:] = 0.0
    with pytest.raises(InputError, match="zero quaternion"):
        MapLocalizationFilter(bad)
    for field in ({"num_particles": 0}, {"temperature": -1.0}, {"recovery_share": 1.5}):
        with pytest.raises(ConfigError, match="filter"):
            FilterConfig(**field)
    filt = MapLocalizationFilter(road, sim_config(num_particles=100))
    with pytest.raises(InputError, match="equal length"):
        filt.update([1, 2], [0.5])
    with pytest.raises(InputError, match="NaN"):
        filt.update([1, 2], [0.5, np.nan])
    with pytest.raises(InputError, match="rows of the map"):
        filt.update([1, len(road)], [0.5, 0.4])
    with pytest.raises(InputError, match="integer rows"):
        filt.update([1.5], [0.5])
    with pytest.raises(InputError, match="dt must be"):
        filt.predict_graph(-0.1)
    with pytest.raises(InputError, match="dt must be"):
        filt.predict_graph(float("nan"))
    with pytest.raises(InputError, match=r"shape \(3,\)"):
        filt.predict_odometry([1.0, 2.0])
    with pytest.raises(InputError, match=r"\(4,4\)"):
        body_delta(np.eye(3), np.eye(4))
    with pytest.raises(InputError, match=r"\(T,3\)"):
        DriftOdometry().deltas(np.zeros((5, 2)))


def _integrate(start: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    poses = [np.asarray(start, dtype=np.float64)]
    for dx, dy, dyaw in deltas[1:]:
        x, y, yaw = poses[-1]
        poses.append(
            np.array(
                [
                    x + np.cos(yaw) * dx - np.sin(yaw) * dy,
                    y + np.sin(yaw) * dx + np.cos(yaw) * dy,
                    wrap_angle(yaw + dyaw),
                ]
            )
        )
    return np.asarray(poses)


def test_body_delta_and_drifting_odometry():
    np.testing.assert_allclose(body_delta([0.0, 0.0, np.pi / 2], [0.0, 1.0, np.pi / 2]), [1.0, 0.0, 0.0], atol=1e-12)
    np.testing.assert_allclose(body_delta([1.0, 1.0, 3.0], [1.0, 1.0, -3.0]), [0.0, 0.0, 2 * np.pi - 6.0], atol=1e-12)
    prev, now = np.eye(4), np.eye(4)
    now[:3, :3] = [[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    now[:2, 3] = [3.0, 4.0]
    np.testing.assert_allclose(body_delta(prev, now), body_delta([0, 0, 0], [3.0, 4.0, np.pi / 2]))
    truth = _vehicle_poses(np.random.default_rng(0))[:100]
    exact = DriftOdometry(scale_error=0.0, heading_bias_deg_per_m=0.0, noise_trans=0.0, noise_rot_deg=0.0)
    integrated = _integrate(truth[0], exact.deltas(truth))
    np.testing.assert_allclose(integrated[:, :2], truth[:, :2], atol=1e-9)
    np.testing.assert_allclose(wrap_angle(integrated[:, 2] - truth[:, 2]), 0.0, atol=1e-9)
    straight = np.column_stack([np.arange(0.0, 101.0, 5.0), np.zeros(21), np.zeros(21)])
    drifting = DriftOdometry(scale_error=0.02, heading_bias_deg_per_m=0.01, noise_trans=0.0, noise_rot_deg=0.0)
    increments = drifting.deltas(straight)
    assert np.hypot(increments[:, 0], increments[:, 1]).sum() == pytest.approx(102.0)
    assert np.degrees(increments[:, 2].sum()) == pytest.approx(1.0)
    noisy = _integrate(truth[0], DriftOdometry(seed=5).deltas(truth))
    assert 0.5 < np.hypot(*(noisy[-1, :2] - truth[-1, :2])) < 50.0  # drifts, but stays odometry


def test_viewpoint_index_agrees_with_brute_force():
    rng = np.random.default_rng(4)
    xy = rng.uniform(-150.0, 150.0, (3000, 2))
    yaw = rng.uniform(-np.pi, np.pi, 3000)
    poses = np.column_stack([xy, np.zeros(3000), np.zeros((3000, 2)), np.sin(yaw / 2), np.cos(yaw / 2)])
    index = ViewpointIndex(poses, cell_m=8.0)
    np.testing.assert_allclose(index.yaw, yaw, atol=1e-12)
    queries, query_yaw = rng.uniform(-160.0, 160.0, (300, 2)), rng.uniform(-np.pi, np.pi, 300)
    dist = np.hypot(*(queries[:, None, :] - xy[None]).transpose(2, 0, 1))
    query, viewpoint = index.near(queries, 7.0)
    assert sorted(zip(query.tolist(), viewpoint.tolist())) == sorted(zip(*np.nonzero(dist <= 7.0)))
    gate = np.radians(60)
    allowed = (dist <= 8.0) & (np.cos(query_yaw[:, None] - yaw[None]) >= np.cos(gate))
    expected = np.where(allowed.any(axis=1), np.argmin(np.where(allowed, dist, np.inf), axis=1), -1)
    exact = index.nearest_along(queries, query_yaw, 8.0, gate, resolution_m=1e-3)  # a cell per query: exact
    np.testing.assert_array_equal(exact, expected)
    assert (expected == -1).any() and (expected >= 0).any()


@pytest.mark.parametrize("lane_y, heading", [(-1.5, 0.0), (1.5, np.pi)])
def test_graph_motion_keeps_particles_on_the_road_in_their_direction(town, lane_y, heading):
    index = ViewpointIndex(town)
    start = int(
        np.argmin(np.hypot(index.xy[:, 0] - 100.0, index.xy[:, 1] - lane_y) + 10.0 * (np.cos(index.yaw - heading) < 0))
    )
    filt = MapLocalizationFilter(town, sim_config(num_particles=1000, seed=6, graph_uturn_rate_hz=0.0))
    filt.reset([start], [1.0])
    before = filt.particles
    for _ in range(4):
        filt.predict_graph(DT_S)
    after = filt.particles
    # the particles are on the road graph: near a viewpoint of a compatible direction (measured: all but
    # one of the 2 x 1000, a westbound one that took the junction at x = 60 at 17 m/s and got lost)
    dist = np.hypot(*(after[:, None, :2] - index.xy[None]).transpose(2, 0, 1))
    compatible = np.cos(after[:, 2][:, None] - index.yaw[None]) >= np.cos(np.radians(60))
    on_road = np.min(np.where(compatible, dist, np.inf), axis=1) <= FilterConfig().graph_lateral_m + 2.0
    assert on_road.mean() >= 0.99
    # ... and has driven forward along its lane: east from x=100 reaches the corner at x=120 and turns north
    forward = (after[:, 0] - before[:, 0]) * np.cos(heading) + np.maximum(after[:, 1] - before[:, 1], 0)
    assert np.mean(forward > 0) > 0.9 and np.median(forward) > 5.0
    past_corner = after[:, 1] > 10.0
    if heading == 0.0:
        assert past_corner.sum() > 20
        assert np.mean(np.cos(after[past_corner, 2] - np.pi / 2) > np.cos(np.radians(20))) > 0.99
        assert np.all(np.abs(after[past_corner, 0] - 121.5) < FilterConfig().graph_lateral_m + 1.0)
    # nobody drives against its lane: headings lie between the lane's and north (the turns on the way)
    between = np.abs(wrap_angle(after[:, 2] - (heading + np.pi / 2) / 2)) <= np.pi / 4 + np.radians(10)
    assert between.mean() > 0.99


def test_graph_motion_turns_the_expected_share_around_onto_the_other_lane(town):
    """U-turns: each step a particle turns around with probability rate * dt, so after n steps the share
    heading against its start is (1 - (1 - 2 p)^n) / 2; turned particles drive on in the other lane."""
    index = ViewpointIndex(town)
    start = int(np.argmin(np.hypot(index.xy[:, 0] - 100.0, index.xy[:, 1] + 1.5) + 10.0 * (np.cos(index.yaw) < 0)))
    rate_hz, steps, dt = 0.4, 3, 0.25
    filt = MapLocalizationFilter(town, sim_config(num_particles=4000, seed=8, graph_uturn_rate_hz=rate_hz))
    filt.reset([start], [1.0])
    for _ in range(steps):
        filt.predict_graph(dt)
    after = filt.particles
    against = np.cos(after[:, 2]) < 0
    expected = (1 - (1 - 2 * rate_hz * dt) ** steps) / 2
    assert abs(against.mean() - expected) < 4 * np.sqrt(expected * (1 - expected) / len(after))
    # the turned ones were put onto the westbound lane (y = +1.5), the others stay eastbound (y = -1.5)
    assert np.median(after[against, 1]) > 0.5 and np.median(after[~against, 1]) < -0.5


def test_measurement_kernel_agrees_with_the_dense_formula():
    """The numba loop of the measurement update against the (P, k) formula written out in numpy."""
    from scmpr_ros.localization.filter import _best_log_likelihood

    rng = np.random.default_rng(8)
    px, py, pyaw = rng.uniform(0, 40, 500), rng.uniform(0, 40, 500), rng.uniform(-np.pi, np.pi, 500)
    cx, cy, cyaw = rng.uniform(0, 40, 50), rng.uniform(0, 40, 50), rng.uniform(-np.pi, np.pi, 50)
    clog = rng.uniform(-3, 0, 50)
    radius, gate, sigma = 6.0, np.radians(45.0), 3.0
    dist2 = (px[:, None] - cx) ** 2 + (py[:, None] - cy) ** 2
    near = (dist2 <= radius**2) & (np.cos(pyaw[:, None] - cyaw) >= np.cos(gate))
    expected = np.where(near, clog - dist2 / (2 * sigma**2), -np.inf).max(axis=1)
    got = _best_log_likelihood(
        px,
        py,
        np.cos(pyaw),
        np.sin(pyaw),
        cx,
        cy,
        np.cos(cyaw),
        np.sin(cyaw),
        clog,
        radius**2,
        np.cos(gate),
        1.0 / (2 * sigma**2),
    )
    np.testing.assert_allclose(got, expected, rtol=1e-12, atol=1e-12)
    assert np.isinf(expected).any() and np.isfinite(expected).any()  # both cases occur
