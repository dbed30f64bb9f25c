"""check_map_covers_queries: a map of another town / sequence / dataset kind, or far from the
queries, is refused before evaluation with a message that says --force (issue [J])."""

from __future__ import annotations

import numpy as np
import pytest

from scmpr_ros.errors import ScmprError
from scmpr_ros.mapping import coverage
from scmpr_ros.mapping.coverage import MapCoverageError, check_map_covers_queries, dataset_identity, nearest_distances


def _street(n=200, spacing=2.0, y=0.0):
    x = np.arange(n) * spacing
    return np.stack([x, np.full(n, y), np.zeros(n)], axis=1)


MAP_META = {"dataset": "/data/town3", "dataset_kind": "kitti", "town": "synthetic seed 3", "sequence": "00"}
QUERY_INFO = {
    "dataset": "/data/town3",
    "dataset_kind": "kitti",
    "town": "synthetic seed 3",
    "sequences": ["01", "02"],
    "same_place": ["00", "01", "02", "03"],
}


def test_queries_of_the_same_place_pass_and_the_gap_is_reported():
    rng = np.random.default_rng(0)
    q = _street(150, 2.6, y=1.0) + rng.normal(0, 0.3, (150, 3))
    q[::10] = np.nan  # frames without a valid pose are ignored
    report = check_map_covers_queries(_street(), q, MAP_META, QUERY_INFO, max_gap_m=5.0)
    assert report["problems"] == [] and report["queries"] == 135 and report["map_viewpoints"] == 200
    assert 0.5 < report["median_gap_m"] < 2.0 and report["within_max_gap"] == 1.0
    # (N, 7) poses are accepted as they are in MapData.poses
    poses = np.concatenate([_street(), np.tile([0, 0, 0, 1.0], (200, 1))], axis=1)
    assert check_map_covers_queries(poses, q, MAP_META, QUERY_INFO, 5.0)["median_gap_m"] == report["median_gap_m"]


def test_the_map_of_another_town_is_refused_with_force_named():
    other = dict(QUERY_INFO, town="synthetic seed 5", dataset="/data/town5")
    before = (dict(MAP_META), dict(other))
    with pytest.raises(MapCoverageError) as err:
        check_map_covers_queries(_street(), _street(), MAP_META, other, max_gap_m=5.0)
    text = str(err.value)
    assert "the map's town is 'synthetic seed 3' but the queries' is 'synthetic seed 5'" in text
    assert "pass --force to evaluate anyway" in text and "/data/town3" in text and "/data/town5" in text
    assert isinstance(err.value, ScmprError)
    assert (MAP_META, other) == before  # inputs untouched


def test_another_dataset_kind_or_a_sequence_of_another_place_is_refused():
    with pytest.raises(MapCoverageError, match=r"dataset kind is 'kitti360' but the queries' is 'kitti'.*--force"):
        check_map_covers_queries(_street(), _street(), dict(MAP_META, dataset_kind="kitti360"), QUERY_INFO, 5.0)
    with pytest.raises(MapCoverageError, match=r"map is of sequence 07, which is not one of .*00, 01, 02, 03"):
        check_map_covers_queries(_street(), _street(), dict(MAP_META, sequence="07"), QUERY_INFO, 5.0)
    # without a same_place list (real KITTI) only the geometry decides: same positions pass
    real = {"dataset_kind": "kitti", "sequences": ["05"]}
    assert check_map_covers_queries(_street(), _street(), {"sequence": "00"}, real, 5.0)["problems"] == []


def test_queries_far_from_every_viewpoint_are_refused_with_the_distance():
    far = _street(100) + [0.0, 300.0, 0.0]
    with pytest.raises(MapCoverageError) as err:
        check_map_covers_queries(_street(), far, {}, {}, max_gap_m=5.0)
    text = str(err.value)
    assert "median distance from a query's ground-truth position to the nearest map viewpoint is 300.0 m" in text
    assert "more than 5 m (only 0% of the 100 queries checked are within 5 m" in text
    assert "pass --force to evaluate anyway" in text
    # half of the queries on the street, half far away: the median decides
    mixed = np.concatenate([_street(60), far[:40]])
    assert check_map_covers_queries(_street(), mixed, {}, {}, 5.0)["within_max_gap"] == pytest.approx(0.6)


def test_force_returns_the_problems_instead_of_raising():
    report = check_map_covers_queries(
        _street(), _street() + [0, 50, 0], MAP_META, dict(QUERY_INFO, town="x"), 5.0, force=True
    )
    assert len(report["problems"]) == 2 and report["median_gap_m"] == pytest.approx(50.0)


def test_degenerate_inputs():
    with pytest.raises(MapCoverageError, match="no viewpoint with a finite position"):
        check_map_covers_queries(np.zeros((0, 3)), _street(), {}, {}, 5.0)
    with pytest.raises(MapCoverageError, match="max_gap_m must be a positive number"):
        check_map_covers_queries(_street(), _street(), {}, {}, 0.0)
    with pytest.raises(MapCoverageError, match=r"query positions: expected \(N, 3\) positions"):
        check_map_covers_queries(_street(), np.zeros(5), {}, {}, 5.0)
    # no query with a pose: identity alone is checked, the gap is not measured
    r = check_map_covers_queries(_street(), np.full((4, 3), np.nan), None, None, 5.0)
    assert r["median_gap_m"] is None and r["problems"] == []


def test_nearest_distances_is_exact_across_chunks(monkeypatch):
    monkeypatch.setattr(coverage, "_CHUNK", 64)
    rng = np.random.default_rng(1)
    ref = rng.uniform(-500, 500, (1000, 3))
    pts = rng.uniform(-600, 600, (300, 3))
    brute = np.sqrt(((pts[:, None, :] - np.round(ref, 2)[None]) ** 2).sum(-1)).min(1)
    np.testing.assert_allclose(nearest_distances(pts, ref), brute, rtol=1e-9, atol=1e-6)


def test_dataset_identity_of_a_synthetic_town(tmp_path):
    root = tmp_path / "town"
    for s in ("00", "01"):
        (root / "sequences" / s / "velodyne").mkdir(parents=True)
    (root / "synth_manifest.yaml").write_text(
        "seed: 3\nsequences:\n  '00': {pass: map, condition: day}\n  '01': {pass: query, condition: night}\n"
    )
    info = dataset_identity(root, ["01"])
    assert info == {
        "dataset": str(root.resolve()),
        "dataset_kind": "kitti",
        "sequences": ["01"],
        "town": "synthetic seed 3",
        "same_place": ["00", "01"],
    }
    map_meta = {"dataset_kind": "kitti", "town": "synthetic seed 3", "sequence": "00"}
    assert check_map_covers_queries(_street(), _street(), map_meta, info, 5.0)["problems"] == []


def test_a_built_map_covers_its_own_drive_and_not_a_shifted_one(built_map, scene_kitti_dir):
    from scmpr_ros.datasets import open_sequence
    from scmpr_ros.mapping.map_file import read_map

    m = read_map(built_map)
    seq = open_sequence(scene_kitti_dir, "00")
    q = np.asarray(seq.poses_velo)[:, :3, 3]
    info = dataset_identity(scene_kitti_dir, ["00"])
    assert "town" not in info and info["dataset_kind"] == m.metadata["dataset_kind"] == "kitti"
    report = check_map_covers_queries(m.poses, q, m.metadata, info, max_gap_m=5.0)
    assert report["median_gap_m"] < 2.5  # places every 4 m along a drive of frames 2 m apart
    with pytest.raises(MapCoverageError, match="--force"):
        check_map_covers_queries(m.poses, q + [0.0, 40.0, 0.0], m.metadata, info, max_gap_m=5.0)
