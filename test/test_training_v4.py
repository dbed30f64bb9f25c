"""v4 training data: near negatives in the batch sampler, positives rendered from the mapping-pass map.

The sampler is checked on a hand-made street; the map renders and a few real training steps on a
tiny generated town (30 mapping frames, day only, 320x100 images, 512 LiDAR columns).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from tiny_models import TINY_IMAGE_HW, tiny_config

from scmpr_ros.config import ConfigError, ScmprConfig, TrainingConfig
from scmpr_ros.training.batches import NearNegatives, epoch_batches, make_batch, place_batches
from scmpr_ros.training.pairs import (
    MapRenders,
    PairCache,
    PairsError,
    build_pair_cache,
    load_or_build_cache,
    plan_passes,
)


def _street() -> np.ndarray:
    """A mapping pass every 1.5 m along x, a query pass 1.5 m aside driven back, and a side street."""
    fwd = np.stack([np.arange(0, 450, 1.5), np.zeros(300), np.zeros(300)], 1)
    back = np.stack([np.arange(448, 0, -1.6), np.full(280, 1.5), np.zeros(280)], 1)
    side = np.stack([np.full(120, 200.0), np.arange(5, 245, 2.0), np.zeros(120)], 1)
    return np.concatenate([fwd, back, side])


def _pair_distances(pos: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = np.linalg.norm(pos[b][:, None] - pos[b][None], axis=-1)
    return d[np.triu_indices(len(b), 1)]


def test_near_negative_batches_share_separation_and_determinism() -> None:
    pos = _street()
    near = NearNegatives(share=0.25, min_m=6.0, max_m=15.0, group=2)
    batches = place_batches(pos, 16, 25.0, np.random.default_rng([3, 0, 17]), near=near)
    assert len(batches) >= 25
    used = np.concatenate(batches)
    assert len(np.unique(used)) == len(used)  # no place twice in an epoch
    near_members = []
    for b in batches:
        assert len(b) == 16
        d = _pair_distances(pos, b)
        assert (d > 6.0).all()  # never within the positive radius (3 m) nor the 5 m evaluation radius
        close = (d <= 15.0).sum()
        assert close == 2  # two groups of two: one near pair each, everything else > 25 m apart
        assert ((d <= 15.0) | (d > 25.0)).all()
        dm = np.linalg.norm(pos[b][:, None] - pos[b][None], axis=-1) + np.eye(16) * 1e9
        near_members.append(int((dm.min(1) <= 15.0).sum()))
    assert np.mean(near_members) == pytest.approx(0.25 * 16)  # the configured share of the batch
    # a larger share and groups of three
    near3 = NearNegatives(share=0.4, min_m=6.0, max_m=15.0, group=3)
    assert near3.groups_per_batch(16) == 2
    for b in place_batches(pos, 16, 25.0, np.random.default_rng(1), near=near3):
        d = _pair_distances(pos, b)
        assert (d > 6.0).all() and (d <= 15.0).sum() >= 4  # two groups of three near places

    # deterministic per (seed, epoch) through epoch_batches, different across epochs
    cache = PairCache(
        images=np.zeros((len(pos), 1, 1, 1, 3), np.uint8),
        image_present=np.ones((len(pos), 1), bool),
        conditions=("day",),
        image_labels=np.zeros((len(pos), 1, 1), np.uint8),
        range_input=np.zeros((len(pos), 7, 1, 1), np.float16),
        range_labels=np.zeros((len(pos), 1, 1), np.uint8),
        positions=pos,
        yaw=np.zeros(len(pos)),
        group=np.zeros(len(pos), np.int32),
        role=np.zeros(len(pos), np.uint8),
        frame=np.arange(len(pos), dtype=np.int32),
        sequence=np.array(["00"] * len(pos)),
    )
    a = epoch_batches(cache, 16, 25.0, seed=3, epoch=2, near=near)
    b = epoch_batches(cache, 16, 25.0, seed=3, epoch=2, near=near)
    c = epoch_batches(cache, 16, 25.0, seed=3, epoch=3, near=near)
    assert len(a) == len(b) and all((x == y).all() for x, y in zip(a, b))
    assert not all(len(x) == len(y) and (x == y).all() for x, y in zip(a, c))
    # places 40 m apart have no near pair: the batches of before (from the sampler's own draws)
    sparse = np.stack([np.arange(0, 4000, 40.0), np.zeros(100), np.zeros(100)], 1)
    far = place_batches(sparse, 8, 25.0, np.random.default_rng(0), near=near)
    assert len(far) >= 10 and all((_pair_distances(sparse, b) > 25.0).all() for b in far)
    # share 0 is the sampler of before, batch for batch
    old = epoch_batches(cache, 16, 25.0, seed=3, epoch=2)
    off = epoch_batches(cache, 16, 25.0, seed=3, epoch=2, near=NearNegatives(share=0.0))
    assert all((x == y).all() for x, y in zip(old, off)) and len(old) == len(off)


def test_training_config_checks_the_new_settings() -> None:
    t = TrainingConfig(near_negative_share=0.25, map_render_positives=0.5)
    assert NearNegatives.from_config(t) == NearNegatives(0.25, 6.0, 15.0, 2)
    assert TrainingConfig().near_negative_share == 0.0 and TrainingConfig().map_render_positives == 0.0
    with pytest.raises(ConfigError, match="near_negative_min_m"):
        TrainingConfig(near_negative_share=0.2, near_negative_min_m=2.0)  # inside the positive radius
    with pytest.raises(ConfigError, match=r"\[0, 1\]"):
        TrainingConfig(map_render_positives=1.5)


# --------------------------------------------------------------------------------------------
# A tiny generated town
# --------------------------------------------------------------------------------------------
H, W = TINY_IMAGE_HW


def tiny_cfg(**training) -> ScmprConfig:
    t = {
        "epochs": 1,
        "warmup_steps": 1,
        "seed": 1,
        "augment": False,
        "negative_radius_m": 10.0,
        "near_negative_share": 0.5,
        "near_negative_min_m": 4.0,
        "near_negative_max_m": 8.0,
        "map_render_positives": 0.5,
    }
    cfg = tiny_config(**(t | training))
    return dataclasses.replace(cfg, lidar=dataclasses.replace(cfg.lidar, range_width=512))  # the town's 512 columns


@pytest.fixture(scope="module")
def town(tmp_path_factory) -> Path:
    from scmpr_ros.datasets.synthetic import generate_town

    out = tmp_path_factory.mktemp("town_v4")
    generate_town(out, seed=5, frames=30, conditions="day", image_size=(320, 100), azimuth_steps=512)
    return out


@pytest.fixture(scope="module")
def render_cache(town: Path) -> PairCache:
    return build_pair_cache(town, tiny_cfg())


def _agreement(a: np.ndarray, b: np.ndarray, max_range: float, b_labels: np.ndarray) -> float:
    """Share of the pixels valid in both encoder inputs and off the ground in ``b`` (the road looks
    the same from anywhere along it) whose ranges agree within max(0.3 m, 3 %)."""
    from scmpr_ros.semantics import CLASS_ID, IGNORE_ID

    ground = np.isin(b_labels, [CLASS_ID["road"], CLASS_ID["sidewalk"], CLASS_ID["terrain"], IGNORE_ID])
    both = (a[6] > 0.5) & (b[6] > 0.5) & ~ground
    ra, rb = a[0].astype(np.float32) * max_range, b[0].astype(np.float32) * max_range
    return float((np.abs(ra - rb) <= np.maximum(0.3, 0.03 * rb))[both].mean())


def test_cache_holds_map_renders_at_the_frame_pose(town: Path, render_cache: PairCache, tmp_path: Path) -> None:
    from scmpr_ros.datasets import open_sequence

    cfg, cache = tiny_cfg(), render_cache
    assert cache.render_input.shape == cache.range_input.shape
    assert cache.render_labels.shape == cache.range_labels.shape
    assert cache.render_present.mean() > 0.8 and cache.meta["map_render"]["voxel_size_m"] == cfg.map.voxel_size_m
    renders = MapRenders(town, cfg, plan_passes(town))
    assert renders.map_sequence("01") == "00"  # query frames are rendered from the mapping pass's map
    max_r = cfg.lidar.max_range_m
    q = np.flatnonzero((cache.role == 1) & cache.render_present)
    assert len(q) >= 10
    agree, shifted = [], []
    for k in q[:: max(len(q) // 5, 1)][:5]:
        T = open_sequence(town, str(cache.sequence[k])).poses_velo[cache.frame[k]]
        x, lab = renders.render("01", T)
        assert np.array_equal(x.astype(np.float16), cache.render_input[k])  # rendered at this frame's pose
        assert np.array_equal(lab, cache.render_labels[k])
        agree.append(
            _agreement(cache.render_input[k], cache.range_input[k], max_r, cache.range_labels[k])
        )  # vs the query's own scan
        T4 = T.copy()
        T4[:3, 3] += 4.0 * T[:3, 0]  # 4 m further along the heading
        shifted.append(_agreement(renders.render("01", T4)[0], cache.range_input[k], max_r, cache.range_labels[k]))
        labelled = (cache.render_labels[k] != 255) & (cache.range_labels[k] != 255)
        assert (cache.render_labels[k] == cache.range_labels[k])[labelled].mean() > 0.8
    # the map seen from the query's pose (1-2 m off the mapping lane) matches that pose's scan,
    # and clearly better than the map seen from 4 m further on
    assert np.median(agree) > 0.6, agree
    assert np.median(agree) > np.median(shifted) + 0.25, (agree, shifted)  # measured 0.82 vs 0.27

    # renders travel with the cache: save / load (plain and compact), subset, concatenate
    for compact in (False, True):
        back = PairCache.load(cache.save(tmp_path / f"c{compact}.npz", compact=compact))
        assert np.array_equal(back.render_present, cache.render_present)
        assert np.array_equal(back.render_labels, cache.render_labels)
        err = np.abs(back.render_input.astype(np.float32) - cache.render_input.astype(np.float32)).max()
        assert err < (5e-3 if compact else 1e-6)
    sub = cache.subset(np.array([0, 2]))
    assert np.array_equal(sub.render_input, cache.render_input[[0, 2]])
    plain = dataclasses.replace(cache, render_input=None, render_labels=None, render_present=None)
    both = PairCache.concatenate([cache, plain])
    assert both.render_present.tolist() == cache.render_present.tolist() + [False] * len(cache)
    # a prebuilt cache without renders is refused when renders are asked for
    plain_path = plain.save(tmp_path / "plain.npz")
    with pytest.raises(PairsError, match="map renders"):
        load_or_build_cache(plain_path, cfg)
    assert load_or_build_cache(plain_path, tiny_cfg(map_render_positives=0.0)).render_present is None

    # make_batch takes the render with the configured probability, only where one exists
    ids = np.arange(len(cache))
    all_r = make_batch(cache, ids, tiny_cfg(map_render_positives=1.0), seed=4, augment=False)
    assert np.array_equal(all_r["from_render"].numpy(), cache.render_present)
    assert np.allclose(all_r["range"].numpy()[cache.render_present], cache.render_input[cache.render_present])
    none = make_batch(cache, ids, tiny_cfg(map_render_positives=0.0), seed=4, augment=False)
    assert not none["from_render"].any() and np.allclose(none["range"].numpy(), cache.range_input)
    half = make_batch(cache, ids, tiny_cfg(map_render_positives=0.5), seed=4, augment=False)
    assert 0.25 < half["from_render"].numpy().mean() < 0.75
    assert np.array_equal(half["images"].numpy(), none["images"].numpy())  # other draws unchanged


def test_training_steps_with_near_negatives_and_map_renders(render_cache: PairCache, tmp_path: Path) -> None:
    import torch

    from scmpr_ros.training.train import Trainer, train

    torch.manual_seed(0)
    path = render_cache.save(tmp_path / "pairs.npz", compress=False)
    cfg = tiny_cfg(val_data=str(path))
    trainer = Trainer(cfg, path, tmp_path / "fixed", device="cpu")
    trainer.start()
    bl = trainer.batches_of(0)
    assert bl and all(len(b) == 4 for b in bl)
    pos = render_cache.separated_positions()
    for b in bl:
        d = _pair_distances(pos, b)
        assert (d > 4.0).all() and ((d <= 8.0).sum() >= 1) and ((d <= 8.0) | (d > 10.0)).all()
    ids = bl[0]
    losses = [trainer.step(ids, seed=11)["loss"] for _ in range(6)]  # one fixed batch, both options on
    assert np.isfinite(losses).all()
    assert losses[-1] < losses[0], losses
    batch = make_batch(render_cache, ids, cfg, seed=11, augment=False)
    assert batch["from_render"].any() or not render_cache.render_present[ids].any()

    res = train(cfg, path, tmp_path / "run", progress=False, max_steps=3)  # the loop end to end
    assert res.steps == 3
