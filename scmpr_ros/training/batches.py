"""Training batches drawn from a :class:`~scmpr_ros.training.pairs.PairCache`.

Each draw of a place picks one of its conditions (day / night / winter images) at random, so every
condition of a place is a positive for its LiDAR view.  Batches hold places mutually farther apart
than ``training.negative_radius_m`` (25 m), so every other item of a batch is a valid negative.
Batch lists and batches are deterministic in (seed, epoch, index), so a resume or another rank
rebuilds the same ones.  Augmentation is photometric only (the sparse labels stay valid).

Two options bring training closer to what the map holds at test time (both off by default):

* near negatives (``training.near_negative_share``): a share of each batch comes in small groups of
  places ``near_negative_min_m``..``near_negative_max_m`` (6-15 m) apart, beyond the positive radius
  and the 5 m evaluation threshold, so the model learns to tell a place from the one 10 m further on;
* map-render positives (``training.map_render_positives``): where the cache holds the frame's map
  render (see :mod:`scmpr_ros.training.pairs`), each draw takes it instead of the scan with that
  probability: query passes are driven 1-2 m off the mapping lane, and at test time the image meets
  such renders (lateral offset viewpoints), not the scan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from scmpr_ros.config import ScmprConfig
from scmpr_ros.training.pairs import PairCache, PairsError


# --------------------------------------------------------------------------------------------
# Augmentation
# --------------------------------------------------------------------------------------------
def photometric_augment(rgb: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> np.ndarray:
    """Random brightness, contrast, saturation, gamma, per-channel gain and sensor noise (uint8 in/out).

    Photometric only: geometry (and so the sparse labels) is unchanged.
    """
    img = rgb.astype(np.float32) / 255.0
    s = float(strength)
    gray = img.mean(axis=2, keepdims=True)
    img = gray + (img - gray) * rng.uniform(1 - 0.4 * s, 1 + 0.3 * s)  # saturation
    img = img * rng.uniform(1 - 0.4 * s, 1 + 0.4 * s)  # brightness
    mean = img.mean()
    img = mean + (img - mean) * rng.uniform(1 - 0.3 * s, 1 + 0.3 * s)  # contrast
    img = img * (1 + rng.uniform(-0.08 * s, 0.08 * s, size=(1, 1, 3)))  # white balance
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(1 - 0.3 * s, 1 + 0.5 * s)  # gamma
    img = img + rng.normal(0.0, rng.uniform(0, 0.025 * s), size=img.shape)  # noise
    return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


# --------------------------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class NearNegatives:
    """How a batch takes near negatives (``training.near_negative_*``, see TrainingConfig)."""

    share: float = 0.0
    min_m: float = 6.0
    max_m: float = 15.0
    group: int = 2

    @classmethod
    def from_config(cls, t: Any) -> NearNegatives:
        return cls(t.near_negative_share, t.near_negative_min_m, t.near_negative_max_m, t.near_negative_group)

    def groups_per_batch(self, batch_size: int) -> int:
        """Near groups per batch: ``share`` of the batch's places, at least one when share > 0."""
        if self.share <= 0:
            return 0
        return max(1, min(int(round(self.share * batch_size / self.group)), batch_size // self.group))


def place_batches(
    positions: np.ndarray,
    batch_size: int,
    min_separation_m: float,
    rng: np.random.Generator,
    candidates: np.ndarray | None = None,
    open_batches: int = 16,
    near: NearNegatives | None = None,
) -> list[np.ndarray]:
    """Shuffle and group indices into batches whose places are mutually > ``min_separation_m`` apart.

    Greedy over a random permutation with a few batches open at a time; indices that fit nowhere
    wait for a later batch, and the remainder that cannot form a full batch is dropped.  With
    ``near`` (share > 0) see :func:`near_place_batches`.
    """
    pos = np.asarray(positions, dtype=np.float64)[:, :3]
    idx = np.arange(len(pos)) if candidates is None else np.asarray(candidates)
    if batch_size < 2:
        raise PairsError(f"training.batch_size must be >= 2 for in-batch negatives, got {batch_size}")
    if near is not None and near.share > 0:
        return near_place_batches(pos, idx, batch_size, min_separation_m, rng, near, open_batches)
    remaining = [int(i) for i in idx[rng.permutation(len(idx))]]
    batches: list[np.ndarray] = []
    while len(remaining) >= batch_size:
        open_: list[list[int]] = []
        left: list[int] = []
        made = 0
        for i in remaining:
            for b in open_:
                if np.all(np.linalg.norm(pos[b] - pos[i], axis=1) > min_separation_m):
                    b.append(i)
                    if len(b) == batch_size:
                        batches.append(np.array(b, dtype=np.int64))
                        open_.remove(b)
                        made += 1
                    break
            else:
                if len(open_) < open_batches:
                    open_.append([i])
                else:
                    left.append(i)
        if made == 0:
            break
        remaining = left + [i for b in open_ for i in b]
    return batches


def near_groups(
    pos: np.ndarray, idx: np.ndarray, rng: np.random.Generator, near: NearNegatives, want: int
) -> tuple[list[list[int]], np.ndarray]:
    """Up to ``want`` groups of ``near.group`` places: an anchor (in random order) and others drawn at
    random ``near.min_m`` < d <= ``near.max_m`` from it and > ``near.min_m`` from each other; each
    place in at most one group.  Returns the groups and the places in none (in random order)."""
    order = idx[rng.permutation(len(idx))]
    cand_pos = pos[idx]
    used = np.zeros(len(pos), dtype=bool)
    groups: list[list[int]] = []
    for a in order:
        if len(groups) >= want:
            break
        if used[a]:
            continue
        d = np.linalg.norm(cand_pos - pos[a], axis=1)
        close = idx[(d > near.min_m) & (d <= near.max_m)]
        close = close[~used[close]]
        members = [int(a)]
        for j in close[rng.permutation(len(close))]:
            if np.all(np.linalg.norm(pos[members] - pos[j], axis=1) > near.min_m):
                members.append(int(j))
                if len(members) == near.group:
                    break
        if len(members) == near.group:
            groups.append(members)
            used[members] = True
    return groups, order[~used[order]]


def near_place_batches(
    pos: np.ndarray,
    idx: np.ndarray,
    batch_size: int,
    min_separation_m: float,
    rng: np.random.Generator,
    near: NearNegatives,
    open_batches: int = 16,
) -> list[np.ndarray]:
    """Batches of ``batch_size`` places: ``near.groups_per_batch`` groups of near places
    (:func:`near_groups`, all pairs inside a group > ``near.min_m`` apart, the anchor's others within
    ``near.max_m``), the rest single places; across groups and singles every pair is >
    ``min_separation_m`` apart.  Greedy over a random order of the groups and singles, as
    :func:`place_batches`; a batch is made only with its full count of groups (data without any near
    pair gets the batches of :func:`place_batches`)."""
    if near.group < 2 or not (0 < near.min_m < near.max_m):
        raise PairsError(f"near negatives need group >= 2 and 0 < min_m < max_m, got {near}")
    gpb = near.groups_per_batch(batch_size)
    singles_per_batch = batch_size - gpb * near.group
    groups, singles = near_groups(pos, idx, rng, near, want=gpb * max(len(idx) // batch_size, 1))
    if not groups:  # no two places of the data lie min_m..max_m apart: the batches of before
        return place_batches(pos, batch_size, min_separation_m, rng, singles, open_batches)
    units = [np.asarray(g, dtype=np.int64) for g in groups] + [np.array([int(i)]) for i in singles]
    remaining = [units[k] for k in rng.permutation(len(units))]
    batches: list[np.ndarray] = []

    def room(b: dict, u: np.ndarray) -> bool:
        return b["groups"] < gpb if len(u) > 1 else b["singles"] < singles_per_batch

    while remaining:
        open_: list[dict] = []
        left: list[np.ndarray] = []
        made = 0
        for u in remaining:
            for k, b in enumerate(open_):
                if room(b, u) and np.all(
                    np.linalg.norm(pos[b["ids"]][:, None] - pos[u][None], axis=-1) > min_separation_m
                ):
                    b["ids"] = np.concatenate([b["ids"], u])
                    b["units"].append(u)
                    b["groups" if len(u) > 1 else "singles"] += 1
                    if len(b["ids"]) == batch_size:
                        batches.append(b["ids"])
                        del open_[k]
                        made += 1
                    break
            else:
                if len(open_) < open_batches:
                    open_.append({"ids": u, "units": [u], "groups": int(len(u) > 1), "singles": int(len(u) == 1)})
                else:
                    left.append(u)
        if made == 0:
            break
        remaining = left + [u for b in open_ for u in b["units"]]
    return batches


def epoch_batches(
    cache: PairCache,
    batch_size: int,
    min_separation_m: float,
    seed: int,
    epoch: int,
    candidates: np.ndarray | None = None,
    near: NearNegatives | None = None,
) -> list[np.ndarray]:
    """Deterministic batch list of one epoch (same on every rank and after a resume)."""
    rng = np.random.default_rng([seed, epoch, 17])
    return place_batches(cache.separated_positions(), batch_size, min_separation_m, rng, candidates, near=near)


def choose_conditions(cache: PairCache, ids: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(B,) condition index per item, uniform over the conditions present at that place."""
    out = np.empty(len(ids), dtype=np.int64)
    for j, i in enumerate(ids):
        avail = np.flatnonzero(cache.image_present[i])
        out[j] = avail[rng.integers(len(avail))]
    return out


def make_batch(
    cache: PairCache,
    ids: np.ndarray,
    cfg: ScmprConfig,
    seed: int,
    augment: bool,
    conditions: np.ndarray | None = None,
) -> dict[str, Any]:
    """Tensors for one batch: images (B,3,H,W), image_labels (B,H,W), range (B,C,Hr,Wr), range_labels,
    and ``from_render`` (B,) bool: the LiDAR side is the map render (``training.map_render_positives``:
    the probability of that, for items whose render exists; the image labels stay the scan's).

    Randomness (condition choice, augmentation, render choice) comes from ``seed`` alone, so a batch
    is the same whenever it is rebuilt (resume, other ranks).
    """
    import torch

    from scmpr_ros.model import preprocess_images

    ids = np.asarray(ids, dtype=np.int64)
    rng = np.random.default_rng(seed)
    cond = choose_conditions(cache, ids, rng) if conditions is None else np.asarray(conditions)
    rgb = [cache.images[i, c] for i, c in zip(ids, cond)]
    if augment:
        rgb = [photometric_augment(im, rng, cfg.training.augment_strength) for im in rgb]
    labels = cache.image_labels[ids]
    hw = (int(cfg.model.image_height), int(cfg.model.image_width))
    if labels.shape[1:] != hw:  # a cache built at another size: nearest-neighbour labels, resized images
        import cv2

        labels = np.stack([cv2.resize(lab, hw[::-1], interpolation=cv2.INTER_NEAREST) for lab in labels])
    rng_in, rng_lab = cache.range_input[ids].astype(np.float32), cache.range_labels[ids].astype(np.int64)
    from_render = choose_renders(cache, ids, cfg.training.map_render_positives, seed)
    if from_render.any():
        sel = ids[from_render]
        rng_in[from_render] = cache.render_input[sel].astype(np.float32)
        rng_lab[from_render] = cache.render_labels[sel].astype(np.int64)
    return {
        "images": preprocess_images(rgb, cfg.model),
        "image_labels": torch.from_numpy(labels.astype(np.int64)),
        "range": torch.from_numpy(rng_in),
        "range_labels": torch.from_numpy(rng_lab),
        "ids": torch.from_numpy(ids),
        "conditions": torch.from_numpy(cond),
        "from_render": torch.from_numpy(from_render),
    }


def choose_renders(cache: PairCache, ids: np.ndarray, probability: float, seed: int) -> np.ndarray:
    """(B,) bool: which items take the map render as their LiDAR side, each with ``probability`` where
    the cache holds a render of it.  Its own generator (from ``seed``), so the condition and
    augmentation draws of a batch are those of a run without renders."""
    out = np.zeros(len(ids), dtype=bool)
    if probability <= 0 or cache.render_present is None:
        return out
    draw = np.random.default_rng([int(seed) & 0xFFFFFFFFFFFFFFFF, 29]).random(len(ids))
    return (draw < probability) & cache.render_present[np.asarray(ids, dtype=np.int64)]
