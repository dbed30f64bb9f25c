"""Recall@N on tiny hand-made cases whose answers are known by hand."""

from __future__ import annotations

import numpy as np
import pytest

from scmpr_ros.geometry import angle_difference, heading_of, positions_of
from scmpr_ros.retrieval.metrics import MetricsError, rank_by_similarity, recall_at_n

# Database: five places on a line, 10 m apart.
DB = np.array([[0.0, 0, 0], [10, 0, 0], [20, 0, 0], [30, 0, 0], [40, 0, 0]])


def test_recall_by_hand() -> None:
    queries = np.array([[1.0, 0, 0], [19, 0, 0], [33, 0, 0], [41, 0, 0]])
    ranked = np.array(
        [
            [0, 1, 2],  # correct at 1
            [4, 2, 0],  # correct at 2
            [0, 1, 2],  # never within 5 m of (33,0,0): true match is 3 (3 m)
            [3, 2, 1],  # true match 4 never retrieved
        ]
    )
    res = recall_at_n(ranked, queries, DB, threshold_m=5.0, ns=(1, 2, 3))
    assert res.recall == {1: 0.25, 2: 0.5, 3: 0.5}
    assert res.num_evaluated == 4
    assert res.correct.tolist() == [
        [True, True, True],
        [False, True, True],
        [False, False, False],
        [False, False, False],
    ]
    assert res.top1_ids.tolist() == [0, 4, 0, 3]
    np.testing.assert_allclose(res.top1_error_m, [1.0, 21.0, 33.0, 11.0])


def test_threshold_is_inclusive_and_matters() -> None:
    queries = np.array([[5.0, 0, 0]])  # exactly 5 m from place 0 and from place 1
    assert recall_at_n(np.array([[0]]), queries, DB, threshold_m=5.0, ns=(1,)).recall[1] == 1.0
    res = recall_at_n(np.array([[0]]), queries, DB, threshold_m=4.9, ns=(1,))
    assert res.num_evaluated == 0 and res.recall[1] == 0.0  # no true match within 4.9 m at all


def test_queries_without_true_match_are_left_out() -> None:
    queries = np.array([[0.0, 0, 0], [100.0, 0, 0]])  # the second is 60 m from everything
    res = recall_at_n(np.array([[0], [4]]), queries, DB, threshold_m=5.0, ns=(1,))
    assert res.evaluated.tolist() == [True, False]
    assert res.recall[1] == 1.0
    assert res.to_dict()["num_without_true_match"] == 1


def test_padding_minus_one() -> None:
    queries = np.array([[10.0, 0, 0]])
    res = recall_at_n(np.array([[-1, 3, 1]]), queries, DB, ns=(1, 2))
    assert res.recall == {1: 0.0, 2: 1.0}  # -1 skipped: ranks are 3 then 1


def test_yaw_gate() -> None:
    # Query at place 1 facing +x; database place 1 faces -x, place 0 faces +x (but 10 m away).
    queries = np.array([[10.0, 0, 0], [10.0, 0, 0]])
    db_yaw = np.array([0.0, np.pi, 0, 0, 0])
    q_yaw = np.array([0.0, np.deg2rad(170)])
    ranked = np.array([[1, 0], [1, 0]])
    no_gate = recall_at_n(ranked, queries, DB, ns=(1,))
    assert no_gate.recall[1] == 1.0
    gated = recall_at_n(ranked, queries, DB, ns=(1,), query_yaw=q_yaw, db_yaw=db_yaw, yaw_gate_deg=30)
    # Query 0 faces away from its only close place: no true match -> not evaluated.
    # Query 1 (170 deg) is 10 deg from place 1 (180 deg): correct.
    assert gated.evaluated.tolist() == [False, True]
    assert gated.recall[1] == 1.0
    with pytest.raises(MetricsError, match="yaw"):
        recall_at_n(ranked, queries, DB, ns=(1,), yaw_gate_deg=30)


def test_exclude_recent_same_sequence_revisit() -> None:
    # A route that comes back: frames 0..4 at times 0..4 s, frame 4 revisits frame 0's place.
    xyz = np.array([[0.0, 0, 0], [10, 0, 0], [20, 0, 0], [10, 1, 0], [0, 1, 0]])
    times = np.array([0.0, 1, 2, 50, 51])
    # Query = frame 4 (t=51); its own entry (id 4, distance 0) ranks first, the revisit (id 0) second.
    ranked = np.array([[4, 3, 0, 1, 2]])
    q = xyz[[4]]
    plain = recall_at_n(ranked, q, xyz, ns=(1,))
    assert plain.recall[1] == 1.0 and plain.top1_ids[0] == 4  # trivial self-match
    ex = recall_at_n(ranked, q, xyz, ns=(1, 2), query_times=times[[4]], db_times=times, exclude_recent_s=30)
    # ids 4 and 3 are within 30 s: excluded; first eligible is id 0, 1 m away -> correct at 1.
    assert ex.top1_ids[0] == 0 and ex.recall[1] == 1.0
    # Frame 2 (t=2) has no eligible true match (only frames >= 30 s away: 3 and 4 are 10+ m off).
    ex2 = recall_at_n(
        np.array([[2, 1, 3]]), xyz[[2]], xyz, ns=(1,), query_times=times[[2]], db_times=times, exclude_recent_s=30
    )
    assert ex2.num_evaluated == 0


def test_pose_helpers() -> None:
    T = np.tile(np.eye(4), (2, 1, 1))
    T[1, :3, :3] = [[0, -1, 0], [1, 0, 0], [0, 0, 1]]  # 90 deg about z
    T[1, :3, 3] = [1, 2, 3]
    np.testing.assert_allclose(positions_of(T), [[0, 0, 0], [1, 2, 3]])
    np.testing.assert_allclose(heading_of(T), [0, np.pi / 2], atol=1e-12)
    quat = np.array([[1, 2, 3, 0, 0, np.sin(np.pi / 4), np.cos(np.pi / 4)]])  # x y z qx qy qz qw
    np.testing.assert_allclose(heading_of(quat), [np.pi / 2], atol=1e-12)
    # Camera optical frame: forward is z; a camera with z along world +y has heading 90 deg.
    cam = np.eye(4)[None].copy()
    cam[0, :3, :3] = [[1, 0, 0], [0, 0, 1], [0, -1, 0]]
    np.testing.assert_allclose(heading_of(cam, forward_axis=2), [np.pi / 2], atol=1e-12)
    np.testing.assert_allclose(angle_difference(np.array([3.1]), np.array([-3.1])), [2 * np.pi - 6.2], atol=1e-12)


def test_rank_by_similarity_and_bad_inputs() -> None:
    db = np.eye(3, dtype=np.float32)
    q = np.array([[0.1, 0.9, 0.0], [0.0, 0.2, 0.8]], dtype=np.float32)
    scores, ids = rank_by_similarity(q, db, 2)
    assert ids.tolist() == [[1, 0], [2, 1]]
    np.testing.assert_allclose(scores[:, 0], [0.9, 0.8], rtol=1e-6)
    with pytest.raises(MetricsError, match="rows"):
        recall_at_n(np.zeros((2, 1), dtype=int), DB[:1], DB)
    with pytest.raises(MetricsError, match=r"\[-1, 4\]"):
        recall_at_n(np.array([[7]]), DB[:1], DB)
    with pytest.raises(MetricsError, match="NaN"):
        recall_at_n(np.array([[0]]), np.array([[np.nan, 0, 0]]), DB)
