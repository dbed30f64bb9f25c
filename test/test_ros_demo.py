"""`scmpr demo` end to end with the shipped model: small synthetic town -> map -> query bag -> replay through
bag_player -> localizer <- map_server over loopback DDS -> R@1 against ground truth, Hz, latency, plot."""
from __future__ import annotations

import json

import pytest

pytest.importorskip("rclpy")
pytest.importorskip("torch")

from scmpr_ros.config import default_models_dir  # noqa: E402

MODEL = default_models_dir() / "scmpr_nano.pt"
# The floor: clearly better than a random ranking of the same map (whose R@1 is large on a small town),
# and at least half the validation R@1 recorded in the shipped checkpoint.
MARGIN_OVER_CHANCE = 0.15

pytestmark = [pytest.mark.ros, pytest.mark.slow]


@pytest.mark.skipif(not MODEL.is_file(), reason=f"{MODEL} is not shipped in this checkout")
def test_demo_replay_on_a_small_town_reaches_the_floor(tmp_path):
    from scmpr_ros.commands.ros import run_demo

    lines: list[str] = []
    summary = run_demo(tmp_path, MODEL, frames=30, seed=11, image_size=(620, 188), azimuth_steps=1024,
                       rate=0.25, device="cpu", regenerate=False, echo=lines.append)
    from scmpr_ros.model import load_checkpoint

    score = summary["score"]
    assert score["num_scored"] >= 10, summary
    val_r1 = float(load_checkpoint(MODEL)[2].get("best_val_r1", 0.0))
    floor = max(score["chance_r1"] + MARGIN_OVER_CHANCE, 0.5 * val_r1)
    assert score["recall"]["R@1"] >= floor, (floor, summary)
    assert summary["results"] >= 0.8 * summary["images_published"], "rate 0.25 leaves time for every image"
    assert (tmp_path / "results" / "trajectory.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "results" / "replay_summary.json").read_text())
    assert saved["score"]["recall"]["R@1"] == score["recall"]["R@1"]
    assert any(line.startswith("R@1") for line in lines)
    # second run: town, map and bag come from the cache
    lines.clear()
    run_demo(tmp_path, MODEL, frames=30, seed=11, image_size=(620, 188), azimuth_steps=1024, rate=0.25,
             device="cpu", regenerate=False, echo=lines.append)
    assert sum("cached" in line for line in lines) == 3
