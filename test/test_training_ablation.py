"""`scmpr ablation` mechanics at toy scale: pairs built from a town, each variant trained with its
flags, mapped and evaluated, and a markdown table shaped like the paper's Table 3."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from scmpr_ros.config import ScmprConfig
from scmpr_ros.evaluation.ablation import PAPER_KITTI_R1, VARIANTS, run_ablation
from scmpr_ros.model import load_checkpoint


def test_ablation_ladder_end_to_end(tmp_path: Path) -> None:
    from scmpr_ros.datasets.synthetic import generate_town

    town = tmp_path / "town6"
    generate_town(town, seed=6, frames=24, image_size=(320, 96), azimuth_steps=1024)
    cfg = ScmprConfig()
    cfg = dataclasses.replace(
        cfg,
        model=dataclasses.replace(
            cfg.model,
            image_height=32,
            image_width=96,
            feature_dim=16,
            netvlad_clusters=4,
            descriptor_dim=16,
            lidar_dims=[8, 8, 16],
            attention_dim=8,
        ),
        training=dataclasses.replace(
            cfg.training,
            epochs=1,
            steps_per_epoch=2,
            batch_size=2,
            negative_radius_m=5.0,
            warmup_steps=1,
            kmeans_batches=1,
            threads=1,
            val_max_queries=5,
            augment=False,
        ),
        map=dataclasses.replace(cfg.map, place_spacing_m=4.0, yaw_offsets_deg=[0.0, 180.0]),
    )
    table = run_ablation(cfg, town, tmp_path / "abl", eval_data=town, variants=(0, 3), progress=False)
    lines = table.splitlines()
    assert lines[2].startswith("| Configuration | R@1 day (%) | R@1 night (%) | R@1 winter (%)")
    rows = [ln for ln in lines if ln.startswith(("| Ours", "| +"))]
    assert [r.split(" | ")[0].lstrip("| ") for r in rows] == [VARIANTS[0][0], VARIANTS[3][0]]
    assert f"{PAPER_KITTI_R1[3]:.2f}" in rows[1]
    saved = json.loads((tmp_path / "abl" / "ablation.json").read_text())
    assert [r["steps"] for r in saved["rows"]] == [2, 2]
    for r in saved["rows"]:
        assert set(r["per_condition"]) == {"day", "night", "winter"}
        assert all(0.0 <= v <= 1.0 for v in r["per_condition"].values())
    # each variant really is the configuration it claims: no SAFF/CSA parameters in the base model
    base, base_cfg, _ = load_checkpoint(saved["rows"][0]["model"])
    full, full_cfg, _ = load_checkpoint(saved["rows"][1]["model"])
    assert not base_cfg.use_semantics and base.csa is None and full.csa is not None
    assert sum(p.numel() for p in full.parameters()) > sum(p.numel() for p in base.parameters())
    assert (tmp_path / "abl" / "ablation.md").read_text().strip() == table.strip()

    # an interrupted / repeated ablation reuses the variants finished with the same settings ...
    mtime = Path(saved["rows"][1]["model"]).stat().st_mtime_ns
    again = run_ablation(cfg, town, tmp_path / "abl", eval_data=town, variants=(0, 3), progress=False)
    assert again == table and Path(saved["rows"][1]["model"]).stat().st_mtime_ns == mtime
    # ... and trains again when a setting changed
    cfg2 = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, seed=cfg.training.seed + 1))
    run_ablation(cfg2, town, tmp_path / "abl", eval_data=town, variants=(3,), progress=False)
    assert Path(saved["rows"][1]["model"]).stat().st_mtime_ns != mtime
