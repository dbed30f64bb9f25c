"""Pairs: label projection geometry, batch separation, augmentation, cache round trip."""

from __future__ import annotations

import numpy as np
import pytest

from scmpr_ros.semantics import IGNORE_ID
from scmpr_ros.training.batches import choose_conditions, photometric_augment, place_batches
from scmpr_ros.training.pairs import PairCache, PairsError, project_labels_to_image

# KITTI-like camera: velo x forward -> cam z forward, velo y left -> cam -x, velo z up -> cam -y.
T_CAM_VELO = np.array([[0, -1, 0, 0], [0, 0, -1, 0], [1, 0, 0, 0], [0, 0, 0, 1]], dtype=np.float64)
K = np.array([[100.0, 0, 50], [0, 100.0, 20], [0, 0, 1]])


def test_label_projection_by_hand() -> None:
    pts = np.array(
        [
            [10.0, 0.0, 0.0],  # straight ahead -> principal point (50, 20) -> out (10, 25) at 1/2 scale
            [10.0, 0.0, 0.0],  # duplicate further point below decides nothing (same depth)
            [20.0, 0.0, 0.0],  # same pixel, further away: loses
            [10.0, 2.0, 0.0],  # 2 m left -> u = 50 - 20 = 30 -> out col 15
            [-5.0, 0.0, 0.0],  # behind the camera: dropped
            [10.0, 0.0, -1.0],  # 1 m below -> v = 20 + 10 = 30 -> out row 15
        ]
    )
    labels = np.array([3, 3, 7, 5, 9, IGNORE_ID], dtype=np.uint8)
    out = project_labels_to_image(pts, labels, T_CAM_VELO, K, image_size=(100, 40), out_hw=(20, 50))
    assert out.shape == (20, 50)
    assert out[10, 25] == 3  # nearest wins over the class-7 point behind it
    assert out[10, 15] == 5
    assert out[15, 25] == IGNORE_ID  # an ignored label never paints a pixel
    assert (out != IGNORE_ID).sum() == 2
    with pytest.raises(PairsError, match="labels"):
        project_labels_to_image(pts, labels[:2], T_CAM_VELO, K, (100, 40), (20, 50))


def test_place_batches_are_mutually_far_apart() -> None:
    rng = np.random.default_rng(0)
    # Two streets of places every 2 m: many near-duplicates, like consecutive frames.
    pos = np.concatenate(
        [
            np.stack([np.arange(0, 400, 2.0), np.zeros(200), np.zeros(200)], 1),
            np.stack([np.zeros(100), np.arange(0, 200, 2.0), np.zeros(100)], 1),
        ]
    )
    batches = place_batches(pos, batch_size=8, min_separation_m=25.0, rng=rng)
    assert len(batches) >= 20
    used = np.concatenate(batches)
    assert len(np.unique(used)) == len(used)  # no place twice in an epoch
    for b in batches:
        assert len(b) == 8
        d = np.linalg.norm(pos[b][:, None] - pos[b][None], axis=-1)
        assert (d[~np.eye(8, dtype=bool)] > 25.0).all()
    again = place_batches(pos, 8, 25.0, np.random.default_rng(0))
    assert all((a == b).all() for a, b in zip(batches, again))  # deterministic for a seed
    with pytest.raises(PairsError, match="batch_size"):
        place_batches(pos, 1, 25.0, rng)


def test_augmentation_is_photometric_and_seeded() -> None:
    img = (np.random.default_rng(1).random((16, 24, 3)) * 255).astype(np.uint8)
    a = photometric_augment(img, np.random.default_rng(5))
    b = photometric_augment(img, np.random.default_rng(5))
    c = photometric_augment(img, np.random.default_rng(6))
    assert a.dtype == np.uint8 and a.shape == img.shape
    assert (a == b).all() and not (a == c).all()
    # Photometric only: the spatial structure is kept (high correlation with the source).
    corr = np.corrcoef(img.astype(float).ravel(), a.astype(float).ravel())[0, 1]
    assert corr > 0.8


def _tiny_cache(n: int = 6) -> PairCache:
    rng = np.random.default_rng(0)
    present = np.ones((n, 3), dtype=bool)
    present[0, 1:] = False  # a map-pass place: day only
    return PairCache(
        images=(rng.random((n, 3, 8, 16, 3)) * 255).astype(np.uint8),
        image_present=present,
        conditions=("day", "night", "winter"),
        image_labels=rng.integers(0, 11, (n, 8, 16)).astype(np.uint8),
        range_input=rng.random((n, 7, 4, 10)).astype(np.float16),
        range_labels=rng.integers(0, 11, (n, 4, 10)).astype(np.uint8),
        positions=rng.random((n, 3)) * 100,
        yaw=rng.random(n),
        group=np.array([0, 0, 0, 1, 1, 1], dtype=np.int32)[:n],
        role=np.zeros(n, dtype=np.uint8),
        frame=np.arange(n, dtype=np.int32),
        sequence=np.array(["00"] * n),
        meta={"image_hw": [8, 16]},
    )


def test_cache_round_trip_and_conditions(tmp_path) -> None:
    cache = _tiny_cache()
    path = cache.save(tmp_path / "pairs.npz")
    back = PairCache.load(path)
    for name in (
        "images",
        "image_present",
        "image_labels",
        "range_input",
        "range_labels",
        "positions",
        "group",
        "sequence",
    ):
        assert np.array_equal(getattr(back, name), getattr(cache, name)), name
    assert back.conditions == cache.conditions and back.meta["image_hw"] == [8, 16]
    sep = back.separated_positions()
    assert np.linalg.norm(sep[0] - sep[3]) > 1e5  # other town: never a positive, never "near"
    cond = choose_conditions(back, np.array([0] * 20 + [1] * 200), np.random.default_rng(0))
    assert (cond[:20] == 0).all()  # only day exists at place 0
    assert set(cond[20:].tolist()) == {0, 1, 2}  # every condition of place 1 gets drawn
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(PairsError, match="rebuild"):
        PairCache.load(tmp_path / "bad.npz")
    both = PairCache.concatenate([cache.subset(np.arange(3)), cache.subset(np.arange(3, 6))])
    assert len(both) == 6 and both.group.tolist() == [0, 0, 0, 1, 1, 1]


def test_compact_cache_round_trip_is_close(tmp_path) -> None:
    cache = _tiny_cache()
    cache.range_input = np.clip(cache.range_input.astype(np.float32), 0, 1).astype(np.float16)
    cache.range_input[:, 3:6] = cache.range_input[:, 3:6] * 2 - 1  # normals in [-1, 1]
    cache.range_input[:, 6] = cache.range_input[:, 0] > 0
    yy, xx = np.mgrid[0:8, 0:16]
    smooth = np.stack([xx * 12, yy * 25, 100 + 0 * xx], -1).astype(np.uint8)  # JPEG keeps smooth images
    cache.images[:] = smooth
    small = cache.save(tmp_path / "small.npz", compact=True)
    back = PairCache.load(small)
    assert back.images.shape == cache.images.shape and back.range_input.shape == cache.range_input.shape
    err = np.abs(back.range_input.astype(np.float32) - cache.range_input.astype(np.float32)).max(axis=(0, 2, 3))
    assert err[0] < 1e-3 and err[1] < 1e-3 and err[2] < 3e-3 and err[3:6].max() < 5e-3 and err[6] == 0
    present = cache.image_present
    assert np.abs(back.images[present].astype(float) - cache.images[present].astype(float)).mean() < 4
    assert (back.images[~present] == 0).all()
    for name in ("image_present", "image_labels", "range_labels", "positions", "group", "sequence"):
        assert np.array_equal(getattr(back, name), getattr(cache, name)), name
