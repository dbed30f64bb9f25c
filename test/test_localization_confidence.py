"""The localization core's decision logic (no ROS): covariance from hypothesis spread + score margin,
/initialpose gate."""

from __future__ import annotations

import numpy as np
import pytest

from scmpr_ros.geometry import quat_from_yaw
from scmpr_ros.localization.confidence import InitialPoseGate, pose_covariance


def _poses(xy, yaws):
    p = np.zeros((len(xy), 7))
    p[:, :2] = xy
    p[:, 3:] = [quat_from_yaw(y) for y in yaws]
    return p


def test_covariance_grows_with_spread_and_shrinks_with_margin():
    poses = _poses([[0, 0], [10, 0], [0, 20]], [0.0, 0.5, -0.5])
    floor = 2.0
    tight = pose_covariance(poses, [0.9, 0.2, 0.1], 0.05, floor, np.radians(10)).reshape(6, 6)
    close = pose_covariance(poses, [0.9, 0.89, 0.88], 0.05, floor, np.radians(10)).reshape(6, 6)
    # a large score margin leaves only the floor; near-ties spread the covariance over the hypotheses
    assert tight[0, 0] == pytest.approx(floor**2, rel=1e-3) and tight[1, 1] == pytest.approx(floor**2, rel=1e-3)
    assert close[0, 0] > 10 and close[1, 1] > 50 and close[1, 1] > close[0, 0]
    assert close[5, 5] > tight[5, 5] >= np.radians(10) ** 2
    # symmetric and positive definite
    for c in (tight, close):
        np.testing.assert_allclose(c, c.T)
        assert np.all(np.linalg.eigvalsh(c) > 0)
    # exact value for two equal-score hypotheses: half the squared distance (weights 1/2, 1/2) + floor
    two = pose_covariance(_poses([[0, 0], [4, 0]], [0, 0]), [0.5, 0.5], 0.05, 1.0, 0.1).reshape(6, 6)
    assert two[0, 0] == pytest.approx(0.5 * 16 + 1.0)


def test_covariance_wraps_yaw():
    c = pose_covariance(_poses([[0, 0], [0, 0]], [np.pi - 0.05, -np.pi + 0.05]), [0.5, 0.5], 0.05, 1.0, 0.0)
    assert c.reshape(6, 6)[5, 5] == pytest.approx(0.5 * 0.1**2)


def test_gate_needs_margin_and_consistency_and_fires_once_until_rearmed():
    g = InitialPoseGate(min_confidence=0.1, consistent_frames=3, radius_m=5.0)
    p = np.array([0.0, 0.0, 0.0])
    assert not g.update(p, 0.2) and not g.update(p + 1, 0.2)
    assert not g.update(p + 2, 0.05)  # not confident: streak restarts
    assert not g.update(p, 0.2) and not g.update(p + 1, 0.2)
    assert not g.update(p + 50, 0.3)  # jumped away: inconsistent, streak restarts at 1
    assert not g.update(p + 51, 0.3)
    assert g.update(p + 52, 0.3)  # third consistent confident frame
    assert not g.update(p + 53, 0.3)  # only once
    g.rearm()
    assert g.update(p + 54, 0.3)  # the streak holds: the next confident result goes out
    assert g.sent == 2
    assert not g.update(p, float("nan"))
