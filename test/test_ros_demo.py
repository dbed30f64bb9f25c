"""`scmpr demo` end to end with the shipped model: small synthetic town -> map -> query bag -> replay through
bag_player -> localizer <- map_server over loopback DDS -> R@1 against ground truth, Hz, latency, plot."""

from __future__ import annotations

import json

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("torch")

from scmpr_ros.config import default_models_dir  # noqa: E402

MODEL = default_models_dir() / "scmpr_nano.pt"
# `scmpr demo` (town seed 7, 80 frames, 620x188; map with forward + backward viewpoints) with models/scmpr_nano.pt
# v3 measured R@1 0.762 over all 84 query images (R@5 0.845; a random ranking of that map: R@1 0.081).  The floor
# is 80 % of it, as for the shipped model's evaluate test, and it must stay clearly above chance.
MEASURED_R1 = 0.762
R1_FLOOR = 0.8 * MEASURED_R1

pytestmark = [pytest.mark.ros, pytest.mark.slow]


@pytest.mark.skipif(not MODEL.is_file(), reason=f"{MODEL} is not shipped in this checkout")
def test_demo_replay_on_a_small_town_reaches_the_floor(tmp_path):
    from scmpr_ros.demo import run_demo

    lines: list[str] = []
    # the demo's defaults, replayed at half speed so that a loaded machine still processes every image
    args = {"frames": 80, "seed": 7, "image_size": (620, 188), "azimuth_steps": 1024, "rate": 0.5, "device": "cpu"}
    summary = run_demo(tmp_path, MODEL, regenerate=False, echo=lines.append, **args)
    score = summary["score"]
    assert score["num_scored"] >= 60, summary
    assert score["recall"]["R@1"] >= R1_FLOOR, summary
    assert score["recall"]["R@1"] >= score["chance_r1"] + 0.05, summary
    assert summary["results"] >= 0.9 * summary["images_published"], "rate 0.5 leaves time for every image"
    assert (tmp_path / "results" / "trajectory.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results" / "replay_summary.json").read_text())
    assert saved["score"]["recall"]["R@1"] == score["recall"]["R@1"]
    assert any("\nR@1 " in line for line in lines)
    # second run: town, map and bag come from the cache
    lines.clear()
    run_demo(tmp_path, MODEL, regenerate=False, echo=lines.append, **args)
    assert sum("cached" in line for line in lines) == 3
