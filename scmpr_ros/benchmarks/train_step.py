"""Training throughput: pairs/s of one full SCM-PR training step with the numba-autograd scan vs the
torch scan, and a ResNet18+NetVLAD two-tower step as the yardstick.

One step = image tower + LiDAR tower forward, the losses of ``training.train.compute_losses`` (InfoNCE,
L_sem, L_seg with the config's weights), backward, gradient clipping and an AdamW step.  The models
are built from the ``model`` section of ``config/train_nano.yaml`` at each image size; the two SCM-PR
candidates start from the same weights and differ only in ``scan_backend`` (auto = the fused SS2D
core with its numba backward) and the LiDAR tower's memory layout (channels-last with numba, NCHW
with torch: the torch candidate is the step as it was before either change).  All candidates
run interleaved, round by round, in one process on the same random batch (images, sparse image
labels, camera-cropped range images and their labels).  ``OMP_WAIT_POLICY=PASSIVE`` is set before torch
loads (when it is not loaded yet).  The load average is recorded at the start and end of each size:
on a shared machine compare figures only at a similar load.
"""

from __future__ import annotations

import math
import os
from typing import Any

from scmpr_ros.benchmarks.common import set_omp_wait_policy

REFERENCE_SIZE = (64, 224)
CANDIDATES = ("numba", "torch", "resnet18_netvlad")
LABELS = {
    "numba": "SCM-PR numba, NHWC",  # numba scan backward, channels-last LiDAR tower
    "torch": "SCM-PR torch, NCHW",  # torch scan, NCHW LiDAR tower: the step before both changes
    "resnet18_netvlad": "ResNet18+NetVLAD",
}


def _range_width(cfg: Any) -> int:
    """Width of the camera-FOV crop of the range image (what training caches hold)."""
    from scmpr_ros.lidar.range_image import camera_fov

    _, hfov = camera_fov(cfg.camera)
    return (
        max(1, int(round(hfov / (2 * math.pi) * cfg.lidar.range_width)))
        if cfg.lidar.crop_to_camera_fov
        else cfg.lidar.range_width
    )


def _batch(cfg: Any, size: tuple[int, int], batch: int, seed: int) -> dict[str, Any]:
    import torch

    from scmpr_ros.lidar.range_image import RANGE_CHANNELS
    from scmpr_ros.semantics import IGNORE_ID, NUM_CLASSES

    g = torch.Generator().manual_seed(seed)
    h, w = size
    hr, wr = int(cfg.lidar.range_height), _range_width(cfg)

    def labels(shape: tuple[int, ...], ignore: float) -> Any:
        lab = torch.randint(0, NUM_CLASSES, shape, generator=g)
        return lab.masked_fill(torch.rand(shape, generator=g) < ignore, IGNORE_ID)

    return {
        "images": torch.randn(batch, 3, h, w, generator=g),
        "image_labels": labels((batch, h, w), 0.7),  # sparse: projected LiDAR points
        "range": torch.randn(batch, RANGE_CHANNELS, hr, wr, generator=g),
        "range_labels": labels((batch, hr, wr), 0.1),
    }


class _Tower:
    """A ResNet18+NetVLAD per modality (the LiDAR one on the range-image channels)."""

    def __init__(self, model_cfg: Any, in_chans: int):
        from torch import nn

        from scmpr_ros.model.baseline import ResNet18
        from scmpr_ros.model.netvlad import NetVLAD

        backbone = ResNet18(in_chans=in_chans)
        self.net = nn.Sequential(
            backbone, NetVLAD(backbone.out_channels, model_cfg.netvlad_clusters, model_cfg.descriptor_dim)
        )


def _scmpr_step(model: Any, opt: Any, cfg: Any, batch: dict[str, Any]) -> float:
    import torch

    from scmpr_ros.training.train import compute_losses

    img = model.encode_image(batch["images"], None)
    lid = model.encode_lidar(batch["range"], batch["range_labels"])
    loss = compute_losses(model, img, lid, model.temperature(), batch, cfg)["loss"]
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.training.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.training.grad_clip)
    opt.step()
    return float(loss.detach())


def _resnet_step(towers: tuple[Any, Any], opt: Any, cfg: Any, batch: dict[str, Any]) -> float:
    import torch

    from scmpr_ros.model.losses import info_nce

    loss = info_nce(towers[0](batch["images"]), towers[1](batch["range"]), cfg.training.temperature)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if cfg.training.grad_clip > 0:
        params = [p for t in towers for p in t.parameters()]
        torch.nn.utils.clip_grad_norm_(params, cfg.training.grad_clip)
    opt.step()
    return float(loss.detach())


def _candidates(cfg: Any, size: tuple[int, int], numba_ok: bool) -> dict[str, Any]:
    """name -> step(batch) over its own model and AdamW, for one image size."""
    import copy
    import dataclasses
    from functools import partial

    import torch

    from scmpr_ros.lidar.range_image import RANGE_CHANNELS
    from scmpr_ros.model import SCMPRModel
    from scmpr_ros.training.train import make_adamw

    t = cfg.training
    mcfg = dataclasses.replace(cfg.model, image_height=size[0], image_width=size[1], scan_backend="torch")
    torch.manual_seed(0)
    slow = SCMPRModel(mcfg, RANGE_CHANNELS).train()
    slow.lidar.fast_cpu_path = False  # the baseline is the step as it was before the numba backward
    models = {"torch": slow}
    if numba_ok:
        fast = copy.deepcopy(slow)
        fast.set_scan_backend("auto")
        fast.lidar.fast_cpu_path = True
        models = {"numba": fast, "torch": slow}
    out = {}
    for name, m in models.items():  # today's step uses the trainer's optimizer, the baseline the plain AdamW
        opt = (
            make_adamw(m.parameters(), t.lr, t.weight_decay)
            if name == "numba"
            else torch.optim.AdamW(m.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        )
        out[name] = partial(_scmpr_step, m, opt, cfg)
    towers = (_Tower(cfg.model, 3).net.train(), _Tower(cfg.model, RANGE_CHANNELS).net.train())
    ropt = torch.optim.AdamW([p for tw in towers for p in tw.parameters()], lr=t.lr, weight_decay=t.weight_decay)
    out["resnet18_netvlad"] = partial(_resnet_step, towers, ropt, cfg)
    return out


def _time_size(cfg: Any, size: tuple[int, int], batch: int, iters: int, warmup: int, numba_ok: bool, seed: int):
    import time

    import numpy as np

    data = _batch(cfg, size, batch, seed)
    runs = _candidates(cfg, size, numba_ok)
    load0 = list(os.getloadavg())
    first_loss: dict[str, float] = {}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(warmup + iters):
        for name, step in runs.items():
            t0 = time.perf_counter()
            loss = step(data)
            dt = time.perf_counter() - t0
            first_loss.setdefault(name, loss)
            if i >= warmup:
                times[name].append(dt)
    res: dict[str, Any] = {"size": list(size), "range_hw": list(data["range"].shape[-2:]), "loadavg_start": load0}
    for name, ts in times.items():
        med = float(np.median(ts))
        res[name] = {"median_s": med, "min_s": float(min(ts)), "pairs_per_s": batch / med, "times_s": ts}
    res["first_loss"] = first_loss  # numba and torch start from the same weights: the same loss
    res["speedup"] = res["numba"]["pairs_per_s"] / res["torch"]["pairs_per_s"] if numba_ok else None
    res["loadavg_end"] = list(os.getloadavg())
    return res


def train_step_benchmark(
    sizes: tuple[tuple[int, int], ...] = ((64, 224), (96, 320)),
    batch: int = 16,
    iters: int = 5,
    warmup: int = 2,
    threads: int = 2,
    config: str | os.PathLike | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Pairs/s of a full training step (see the module docstring) per image size, numba vs torch scan vs
    ResNet18+NetVLAD, interleaved.  ``config``: a training YAML (default config/train_nano.yaml)."""
    policy = set_omp_wait_policy("passive")
    import torch

    from scmpr_ros.config import default_config_dir, load_config
    from scmpr_ros.errors import InputError
    from scmpr_ros.model import scan_numba_autograd

    if batch < 2 or iters < 1 or warmup < 0 or threads < 1:
        raise InputError(
            "train-step benchmark: batch >= 2, iters >= 1, warmup >= 0, threads >= 1 "
            f"(got {batch}, {iters}, {warmup}, {threads})"
        )
    torch.set_num_threads(threads)
    cfg = load_config(config or default_config_dir() / "train_nano.yaml")
    numba_ok = scan_numba_autograd.available()
    result: dict[str, Any] = {
        "batch": batch,
        "threads": threads,
        "iters": iters,
        "warmup": warmup,
        "omp_wait_policy": policy,
        "numba": numba_ok,
        "backbone": cfg.model.backbone,
        "loadavg_start": list(os.getloadavg()),
        "sizes": [],
    }
    for size in sizes:
        result["sizes"].append(_time_size(cfg, (int(size[0]), int(size[1])), batch, iters, warmup, numba_ok, seed))
    result["loadavg_end"] = list(os.getloadavg())
    ref = [s for s in result["sizes"] if tuple(s["size"]) == REFERENCE_SIZE] or result["sizes"][:1]
    result["speedup"] = ref[0]["speedup"] if ref else None
    result["speedup_size"] = ref[0]["size"] if ref else None
    return result


def format_train_step_table(result: dict[str, Any]) -> str:
    """A plain-text table (pairs/s and ms per step); the last line is the speedup at 64x224."""
    b = result["batch"]
    lines = [
        f"training step, batch {b}, {result['threads']} threads, backbone {result['backbone']}, "
        f"median of {result['iters']} (OMP_WAIT_POLICY={result['omp_wait_policy']})",
        f"{'size':>9}  {'range':>8}  "
        + "  ".join(f"{LABELS[c]:>24}" for c in CANDIDATES)
        + f"  {'speedup':>7}  load avg",
    ]
    for s in result["sizes"]:
        cells = []
        for c in CANDIDATES:
            cells.append(
                f"{s[c]['pairs_per_s']:7.2f} pairs/s {1e3 * s[c]['median_s']:6.0f} ms" if c in s else f"{'n/a':>24}"
            )
        sp = f"{s['speedup']:6.2f}x" if s["speedup"] is not None else f"{'n/a':>7}"
        load = " ".join(f"{v:.2f}" for v in s["loadavg_start"])
        lines.append(
            f"{s['size'][0]:>4}x{s['size'][1]:<4}  {s['range_hw'][0]:>3}x{s['range_hw'][1]:<4}  "
            + "  ".join(f"{c:>24}" for c in cells)
            + f"  {sp}  {load}"
        )
    end = " ".join(f"{v:.2f}" for v in result["loadavg_end"])
    lines.append(f"load average (1/5/15 min) at the end: {end}")
    sp, at = result["speedup"], result["speedup_size"]
    where = "" if at is None or tuple(at) == REFERENCE_SIZE else f" (at {at[0]}x{at[1]})"
    lines.append(
        f"train step speedup vs torch scan: {sp:.2f}x{where}"
        if sp is not None
        else "train step speedup vs torch scan: n/a"
    )
    return "\n".join(lines)


__all__ = ["format_train_step_table", "train_step_benchmark"]
