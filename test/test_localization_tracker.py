"""DriveTracker: odometry and frames on their own clocks (late, out of order, interpolated), no ROS."""

from __future__ import annotations

import numpy as np
import pytest

from scmpr_ros.config import FilterConfig
from scmpr_ros.errors import InputError
from scmpr_ros.localization.tracker import DriveTracker

SPACING_M = 2.0
SPEED_MPS = 10.0
FRAME_NS = 100_000_000  # 10 Hz camera
ODOM_NS = 20_000_000  # 50 Hz odometry


def _road(length_m: float = 400.0) -> np.ndarray:
    """Viewpoints every 2 m along the x axis, heading +x (and the opposite lane heading -x, 3 m left)."""
    x = np.arange(0.0, length_m, SPACING_M)
    east = np.column_stack(
        [x, np.zeros_like(x), np.zeros_like(x), np.zeros((len(x), 2)), np.zeros_like(x), np.ones_like(x)]
    )
    west = east.copy()
    west[:, 1], west[:, 5], west[:, 6] = 3.0, 1.0, 0.0  # yaw pi
    return np.concatenate([east, west])


def _hypotheses(road: np.ndarray, x_true: float, rng: np.random.Generator, k: int = 10):
    """The viewpoint under the vehicle at a random rank among random others (scores 1.2-1.6)."""
    ids = rng.choice(len(road), size=k, replace=False)
    ids[rng.integers(0, 3)] = int(round(x_true / SPACING_M))
    return ids, np.sort(rng.uniform(1.2, 1.6, size=k))[::-1]


def _drive(tracker: DriveTracker, road: np.ndarray, frames: int, odom_lag_frames: int = 0, seed: int = 0):
    """Drive east at 10 m/s; odometry (the true path here, offset by 5 m in its own frame) may lag the
    camera by ``odom_lag_frames`` frames.  Returns the position error per frame (NaN when no estimate)."""
    rng = np.random.default_rng(seed)
    errors = []
    odom_sent = 0
    for f in range(frames):
        stamp = (f + 1) * FRAME_NS
        odom_until = stamp - odom_lag_frames * FRAME_NS
        while odom_sent * ODOM_NS <= odom_until:
            t = odom_sent * ODOM_NS
            tracker.add_odometry(t, 5.0 + SPEED_MPS * t / 1e9, -2.0, 0.0)
            odom_sent += 1
        x_true = 20.0 + SPEED_MPS * stamp / 1e9
        est = tracker.on_frame(stamp, *_hypotheses(road, x_true, rng))
        errors.append(np.nan if est is None else float(np.hypot(est.pose[0] - x_true, est.pose[1])))
    return np.array(errors)


def test_odometry_is_integrated_up_to_each_image_stamp():
    road = _road()
    tracker = DriveTracker(road, FilterConfig(seed=1), use_odometry=True)
    errors = _drive(tracker, road, 60)
    assert np.nanmean(errors[10:] <= 5.0) == 1.0
    assert tracker.counts.frames_without_odometry == 0 and tracker.counts.odometry_refused == 0


def test_late_odometry_is_integrated_when_it_arrives():
    """Odometry three frames behind the camera: the motion is applied late but none is lost."""
    road = _road()
    tracker = DriveTracker(road, FilterConfig(seed=2), use_odometry=True)
    errors = _drive(tracker, road, 60, odom_lag_frames=3)
    assert np.nanmean(errors[10:] <= 5.0) == 1.0
    newest_odometry = (60 - 3) * FRAME_NS  # every sample up to it has been integrated by the last frame
    assert tracker.integrated_until_ns == newest_odometry
    assert tracker.counts.frames_without_odometry == 2  # frames 2 and 3 came before any odometry had arrived


def test_out_of_order_inputs_are_refused_and_counted():
    road = _road()
    tracker = DriveTracker(road, FilterConfig(seed=3), use_odometry=True)
    _drive(tracker, road, 20)
    assert not tracker.add_odometry(5 * FRAME_NS, 0.0, 0.0, 0.0)  # long integrated already
    assert tracker.counts.odometry_refused == 1
    assert tracker.on_frame(10 * FRAME_NS, np.array([0]), np.array([1.0])) is None  # older than the last frame
    assert tracker.counts.frames_refused == 1
    with pytest.raises(InputError, match="not finite"):
        tracker.add_odometry(10**12, np.nan, 0.0, 0.0)


def test_image_only_tracker_moves_along_the_road():
    road = _road()
    tracker = DriveTracker(road, FilterConfig(seed=4), use_odometry=False)
    errors = _drive(tracker, road, 60)
    assert np.nanmean(errors[10:] <= 5.0) >= 0.9


def test_reset_starts_again_from_the_next_frame():
    road = _road()
    tracker = DriveTracker(road, FilterConfig(seed=5), use_odometry=True)
    _drive(tracker, road, 10)
    tracker.reset()
    assert not tracker.filter.initialized
    est = tracker.on_frame(11 * FRAME_NS, np.array([30]), np.array([1.5]))
    assert est is not None and abs(est.pose[0] - 60.0) < 5.0


@pytest.mark.parametrize("use_odometry", [True, False])
def test_tracker_weighs_the_configured_number_of_hypotheses(use_odometry):
    """The node hands over all the recognizer's hypotheses; the filter sees the first hypothesis_count."""
    cfg = FilterConfig(seed=6, hypotheses=3, hypotheses_image_only=7)
    tracker = DriveTracker(_road(), cfg, use_odometry=use_odometry)
    seen = []
    update = tracker.filter.update
    tracker.filter.update = lambda ids, scores: seen.append(len(ids)) or update(ids, scores)
    ids, scores = np.arange(20), np.linspace(1.6, 1.2, 20)
    for f in range(3):
        tracker.add_odometry(f * FRAME_NS, 2.0 * f, 0.0, 0.0)
        tracker.on_frame(f * FRAME_NS + 1, ids + f, scores)
    assert seen == [3 if use_odometry else 7] * 3
    assert cfg.hypothesis_count(image_only=not use_odometry) == seen[0]
