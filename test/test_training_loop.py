"""The training loop on a small cache: a real step lowers the loss, resume is bit-identical on CPU,
the schedule, and two gloo ranks hold identical weights after a DDP step."""

from __future__ import annotations

import dataclasses
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from tiny_models import TINY_IMAGE_HW, tiny_config

from scmpr_ros.config import ScmprConfig
from scmpr_ros.lidar.range_image import RANGE_CHANNELS
from scmpr_ros.training.batches import make_batch
from scmpr_ros.training.pairs import PairCache
from scmpr_ros.training.train import LAST_MODEL, METRICS_LOG, STATE_FILE, compute_losses, lr_factor, read_metrics, train

(H, W), HR, WR = TINY_IMAGE_HW, 16, 48


def small_cfg(**training) -> ScmprConfig:
    return tiny_config(**({"epochs": 2, "warmup_steps": 2, "seed": 3} | training))


def structured_cache(n_places: int = 24, seed: int = 0) -> PairCache:
    """Places 40 m apart on a line; image and range image of a place share a random pattern, so the
    cross-modal task is learnable; map pass = even places' first copy, query = second copy."""
    rng = np.random.default_rng(seed)
    pattern = rng.random((n_places, 4, 8))
    up = lambda p, h, w: np.kron(p, np.ones((h // 4, w // 8)))  # noqa: E731
    imgs = np.zeros((2 * n_places, 2, H, W, 3), dtype=np.uint8)
    rngi = np.zeros((2 * n_places, RANGE_CHANNELS, HR, WR), dtype=np.float16)
    for i in range(2 * n_places):
        p = pattern[i % n_places]
        base = up(p, H, W)
        for c in range(2):
            noise = rng.normal(0, 0.05, (H, W, 3))
            scale = 1.0 if c == 0 else 0.4  # condition 1 = "night": darker copy
            imgs[i, c] = np.clip((base[..., None] + noise) * scale * 255, 0, 255).astype(np.uint8)
        rngi[i] = up(p, HR, WR)[None] + rng.normal(0, 0.05, (RANGE_CHANNELS, HR, WR))
    labels = (np.repeat(np.arange(2 * n_places) % 11, H * W).reshape(2 * n_places, H, W)).astype(np.uint8)
    pos = np.zeros((2 * n_places, 3))
    pos[:, 0] = (np.arange(2 * n_places) % n_places) * 40.0
    return PairCache(
        images=imgs,
        image_present=np.ones((2 * n_places, 2), dtype=bool),
        conditions=("day", "night"),
        image_labels=labels,
        range_input=rngi,
        range_labels=(np.arange(2 * n_places)[:, None, None] % 11 * np.ones((1, HR, WR))).astype(np.uint8),
        positions=pos,
        yaw=np.zeros(2 * n_places),
        group=np.zeros(2 * n_places, dtype=np.int32),
        role=np.repeat(np.array([0, 1], dtype=np.uint8), n_places),
        frame=np.arange(2 * n_places, dtype=np.int32),
        sequence=np.array(["00"] * n_places + ["01"] * n_places),
        meta={"image_hw": [H, W]},
    )


@pytest.fixture(scope="module")
def cache_file(tmp_path_factory) -> Path:
    return structured_cache().save(tmp_path_factory.mktemp("pairs") / "pairs.npz")


def test_lr_schedule() -> None:
    f = [lr_factor(s, 100, 10, 0.1) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)  # linear warm-up
    assert max(f) == pytest.approx(1.0) and all(a >= b for a, b in zip(f[10:], f[11:]))  # cosine decay
    assert lr_factor(100, 100, 10, 0.1) == pytest.approx(0.1)


def test_real_step_lowers_loss_on_fixed_batch(cache_file: Path) -> None:
    from scmpr_ros.model import SCMPRModel

    torch.manual_seed(0)
    cfg = small_cfg()
    cache = PairCache.load(cache_file)
    model = SCMPRModel(cfg.model, lidar_in_channels=RANGE_CHANNELS)
    batch = make_batch(cache, np.arange(0, 8), cfg, seed=1, augment=False)
    model.init_netvlad(batch["images"], batch["range"], batch["range_labels"])
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)

    def loss_now() -> dict:
        img = model.encode_image(batch["images"])
        lid = model.encode_lidar(batch["range"], batch["range_labels"])
        return compute_losses(model, img, lid, model.temperature(), batch, cfg)

    model.train()
    first = loss_now()
    assert set(first) == {"l_con", "l_sem", "l_seg", "loss"}
    for _ in range(5):
        opt.zero_grad()
        loss_now()["loss"].backward()
        opt.step()
    with torch.no_grad():
        after = loss_now()
    assert after["loss"].item() < 0.9 * first["loss"].item()
    assert after["l_con"].item() < first["l_con"].item()


def _weights(path: Path) -> dict:
    from scmpr_ros.model import load_checkpoint

    model, _, meta = load_checkpoint(path)
    return {k: v.clone() for k, v in model.state_dict().items()}, meta


def test_train_writes_log_checkpoints_and_resumes_bit_identically(cache_file: Path, tmp_path: Path) -> None:
    cfg = small_cfg(epochs=2, steps_per_epoch=3)
    full = train(cfg, cache_file, tmp_path / "full", progress=False)
    assert full.steps == 6 and full.model_path.is_file()
    recs = read_metrics(tmp_path / "full" / METRICS_LOG)
    kinds = [r["kind"] for r in recs]
    assert kinds.count("val") == 2 and kinds[-1] == "done" and "step" in kinds
    val = [r for r in recs if r["kind"] == "val"][-1]
    assert set(val["per_condition"]) == {"day", "night"} and 0.0 <= val["val_r1"] <= 1.0
    saved_cfg = (tmp_path / "full" / "config.yaml").read_text()
    assert "steps_per_epoch: 3" in saved_cfg

    part = train(cfg, cache_file, tmp_path / "part", progress=False, max_steps=4)  # stops inside epoch 2
    assert part.steps == 4 and (tmp_path / "part" / STATE_FILE).is_file()
    resumed = train(cfg, cache_file, tmp_path / "part", progress=False, resume=True)
    assert resumed.steps == 6
    a, meta_a = _weights(tmp_path / "full" / LAST_MODEL)
    b, meta_b = _weights(tmp_path / "part" / LAST_MODEL)
    assert meta_a["step"] == meta_b["step"] == 6
    assert a.keys() == b.keys()
    diff = [k for k in a if not torch.equal(a[k], b[k])]
    assert not diff, f"resume is not bit-identical: {diff[:5]}"
    assert any(r["kind"] == "resume" for r in read_metrics(tmp_path / "part" / METRICS_LOG))


def test_resume_without_state_is_refused(cache_file: Path, tmp_path: Path) -> None:
    from scmpr_ros.training.train import TrainingError

    with pytest.raises(TrainingError, match="cannot resume"):
        train(small_cfg(), cache_file, tmp_path / "nothing", progress=False, resume=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, world: int, port: int, cache_file: str, out: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank), LOCAL_RANK=str(rank)
    )
    import torch.distributed as dist

    cfg = small_cfg(epochs=1, steps_per_epoch=1)
    res = train(cfg, cache_file, Path(out) / "run", progress=False, max_steps=1, device="cpu")
    torch.save({k: v.detach().clone() for k, v in res.model.state_dict().items()}, Path(out) / f"rank{rank}.pt")
    torch.save([torch.from_numpy(b) for b in res.batch_ids], Path(out) / f"batches{rank}.pt")
    dist.destroy_process_group()


def test_ddp_two_cpu_ranks_hold_identical_weights(cache_file: Path, tmp_path: Path) -> None:
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, _free_port(), str(cache_file), str(tmp_path)), nprocs=2, join=True)
    w0 = torch.load(tmp_path / "rank0.pt")
    w1 = torch.load(tmp_path / "rank1.pt")
    b0 = torch.load(tmp_path / "batches0.pt")
    b1 = torch.load(tmp_path / "batches1.pt")
    assert not set(torch.cat(b0).tolist()) & set(torch.cat(b1).tolist())  # ranks saw different places
    # Different data on each rank, yet the same weights: the gradients were averaged across ranks.
    assert all(torch.equal(w0[k], w1[k]) for k in w0), "DDP ranks diverged after a step"


def test_time_budget_shortens_the_schedule(cache_file: Path, tmp_path: Path) -> None:
    cfg = small_cfg(epochs=2, steps_per_epoch=8, warmup_steps=2, time_budget_s=0.001, val_every=10)
    res = train(cfg, cache_file, tmp_path / "budget", progress=False)
    assert res.steps == 6  # fitted after max(warmup, 5) steps: no time left, so one more step
    assert res.model_path.is_file() and res.last_val  # a final validation and model even when cut short
    lrs = [r["lr"] for r in read_metrics(tmp_path / "budget" / METRICS_LOG) if r["kind"] == "step"]
    assert lrs[-1] == pytest.approx(cfg.training.lr * cfg.training.min_lr_ratio, rel=1e-6)  # cosine ended


def test_warm_start_copies_what_fits() -> None:
    from scmpr_ros.model import SCMPRModel
    from scmpr_ros.training.train import warm_start

    torch.manual_seed(0)
    cfg = small_cfg()
    full = SCMPRModel(cfg.model, lidar_in_channels=RANGE_CHANNELS)
    base = SCMPRModel(dataclasses.replace(cfg.model, use_semantics=False), lidar_in_channels=RANGE_CHANNELS)
    before = {k: v.clone() for k, v in base.state_dict().items()}
    copied, total = warm_start(base, full)
    # without semantics the LiDAR stem has no label-embedding channels: that one tensor cannot be copied
    assert (copied, total) == (len(before) - 1, len(before))
    src, dst = full.state_dict(), base.state_dict()
    assert torch.equal(dst["lidar.stem.0.weight"], before["lidar.stem.0.weight"])
    assert dst["lidar.stem.0.weight"].shape[1] < src["lidar.stem.0.weight"].shape[1]
    assert all(torch.equal(dst[k], src[k]) for k in dst if k != "lidar.stem.0.weight")
    assert base.csa is None  # the variant keeps its own architecture
