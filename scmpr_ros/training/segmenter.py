"""Training of the RangeSegNet point segmenter (``scmpr train-segmenter --arch cnn``).

Data: labelled KITTI-layout sequences (synthetic towns, SemanticKITTI) projected once into range images
(``lidar.segmentation.project_scan`` -> ``segnet_input``, float16) and cached under ``--cache-dir`` as
``.npy`` files read memory-mapped.  Each step: a batch of scans, each rolled by a random number of
columns (a rotation about z: x, y and the normals are rotated with it), mirrored left-right with
probability 1/2 (y -> -y) and cropped to ``crop_width`` columns; inputs normalised with the training
set's per-channel mean / std over valid pixels.

Loss: cross-entropy weighted by inverse-sqrt class frequency (weights normalised to a pixel-weighted
mean of 1) + ``lovasz_weight`` x Lovasz-softmax (Berman et al., CVPR 2018: the Lovasz extension of the
per-class Jaccard loss over the sorted errors |1[y = c] - p_c|, averaged over the classes present).
AdamW, linear warm-up then cosine decay.  The best network by validation mIoU (pixels of the
validation scans) is exported with ``save_range_segnet``; a checkpoint (network, optimiser, step, RNG,
history) is written atomically every ``ckpt_every`` steps and at the end so a run resumes exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from scmpr_ros.config import LidarConfig
from scmpr_ros.errors import CheckpointError, DatasetError
from scmpr_ros.io_utils import atomic_write
from scmpr_ros.lidar.range_image import RangeProjector
from scmpr_ros.lidar.segmentation import SEGNET_CHANNELS, project_scan, segnet_input
from scmpr_ros.model.range_segnet import RangeSegNet, RangeSegNetConfig, SegNetFile, save_range_segnet
from scmpr_ros.semantics import CLASS_NAMES, IGNORE_ID, NUM_CLASSES

Log = Callable[[str], None]
CKPT_FORMAT = "scmpr-range-segnet-train"
_XY = (SEGNET_CHANNELS.index("x"), SEGNET_CHANNELS.index("y"))
_NXY = (SEGNET_CHANNELS.index("normal_x"), SEGNET_CHANNELS.index("normal_y"))


@dataclass
class SegTrainConfig:
    steps: int = 3000  # the learning-rate schedule's length; a budget may stop the run earlier
    batch: int = 4
    crop_width: int = 512
    lr: float = 4e-3
    weight_decay: float = 1e-4
    warmup: int = 150
    lovasz_weight: float = 1.0
    lovasz_pixels: int = 65536  # the Lovasz term on a random subset of at most this many labelled pixels
    flip: bool = True
    roll: bool = True
    threads: int = 2
    time_budget_s: float = 0.0  # wall time of this invocation; 0 = none
    val_every: int = 250
    ckpt_every: int = 250
    log_every: int = 50
    seed: int = 0
    net: RangeSegNetConfig = field(default_factory=RangeSegNetConfig)


# -- data -------------------------------------------------------------------------------------------
@dataclass
class ScanSet:
    """Range images of labelled scans: ``inputs[s]`` (n, C, H, W) float16 and ``labels[s]`` (n, H, W) uint8
    per source sequence (memory-mapped from the cache)."""

    inputs: list[np.ndarray]
    labels: list[np.ndarray]
    names: list[str]

    def __len__(self) -> int:
        return sum(len(a) for a in self.labels)

    def index(self) -> list[tuple[int, int]]:
        return [(s, i) for s, a in enumerate(self.labels) for i in range(len(a))]


def _cache_key(root: Path, sequence: str, stride: int, lidar: LidarConfig) -> str:
    manifest = [p for p in (root / "synth_manifest.yaml", root / "sequences" / sequence / "poses.txt") if p.exists()]
    stamp = [(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in manifest]
    geo = (lidar.range_height, lidar.range_width, lidar.fov_up_deg, lidar.fov_down_deg, lidar.min_range_m)
    text = json.dumps([str(root.resolve()), sequence, stride, geo, lidar.max_range_m, SEGNET_CHANNELS, stamp])
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _project_sequence(root: Path, sequence: str, stride: int, lidar: LidarConfig) -> tuple[np.ndarray, np.ndarray]:
    from scmpr_ros.datasets import open_sequence

    seq = open_sequence(root, sequence)
    if not getattr(seq, "has_labels", False):
        raise DatasetError(f"{root} sequence {sequence} has no labels/*.label: the segmenter trains on labelled scans")
    proj = RangeProjector(lidar)
    frames = range(0, seq.num_frames, max(1, stride))
    x = np.empty((len(frames), len(SEGNET_CHANNELS), proj.H, proj.W), np.float16)
    y = np.empty((len(frames), proj.H, proj.W), np.uint8)
    for n, i in enumerate(frames):
        ri = project_scan(proj, seq.load_scan(i), seq.load_labels(i)).image
        x[n], y[n] = segnet_input(ri), ri.labels
    return x, y


def load_scan_set(
    sources: list[tuple[Path, str]], lidar: LidarConfig, stride: int, cache_dir: Path | None, log: Log = print
) -> ScanSet:
    """Range images of every (dataset root, sequence), from the cache when it holds them."""
    xs, ys, names = [], [], []
    for root, sequence in sources:
        root = Path(root)
        name = f"{root.name}/{sequence}"
        if cache_dir is None:
            x, y = _project_sequence(root, sequence, stride, lidar)
        else:
            stem = Path(cache_dir) / f"{root.name}_{sequence}_{_cache_key(root, sequence, stride, lidar)}"
            if not (stem.with_suffix(".labels.npy").is_file() and stem.with_suffix(".inputs.npy").is_file()):
                t0 = time.perf_counter()
                x, y = _project_sequence(root, sequence, stride, lidar)
                for suffix, arr in ((".inputs.npy", x), (".labels.npy", y)):
                    with atomic_write(stem.with_suffix(suffix), "wb") as fh:
                        np.save(fh, arr)
                log(f"cached {name}: {len(y)} scans in {time.perf_counter() - t0:.0f} s")
            x = np.load(stem.with_suffix(".inputs.npy"), mmap_mode="r")
            y = np.load(stem.with_suffix(".labels.npy"), mmap_mode="r")
        xs.append(x)
        ys.append(y)
        names.append(name)
    return ScanSet(xs, ys, names)


def input_stats(scans: ScanSet, max_scans: int = 200, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean / std over the valid pixels of up to ``max_scans`` scans (mask channel: 0 / 1)."""
    idx = scans.index()
    pick = np.random.default_rng(seed).permutation(len(idx))[:max_scans]
    c = len(SEGNET_CHANNELS)
    s1, s2, n = np.zeros(c), np.zeros(c), 0
    for k in pick:
        s, i = idx[k]
        x = np.asarray(scans.inputs[s][i], np.float64)
        v = x[-1] > 0.5
        vals = x[:, v]
        s1 += vals.sum(1)
        s2 += (vals * vals).sum(1)
        n += vals.shape[1]
    if n == 0:
        raise DatasetError("no valid pixel in the training scans")
    mean = s1 / n
    std = np.sqrt(np.maximum(s2 / n - mean * mean, 0)) + 1e-3
    mean[-1], std[-1] = 0.0, 1.0
    return mean.astype(np.float32), std.astype(np.float32)


def class_weights(scans: ScanSet) -> np.ndarray:
    """Inverse-sqrt frequency per class, normalised so that the pixel-weighted mean weight is 1 (0 for
    classes absent from the training labels)."""
    counts = np.zeros(NUM_CLASSES, np.float64)
    for y in scans.labels:
        for start in range(0, len(y), 64):
            counts += np.bincount(np.asarray(y[start : start + 64]).ravel(), minlength=256)[:NUM_CLASSES]
    if counts.sum() == 0:
        raise DatasetError("the training scans hold no labelled pixel of the common classes")
    freq = counts / counts.sum()
    w = np.where(counts > 0, 1.0 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
    return (w / float((freq * w).sum())).astype(np.float32)


# -- batches ----------------------------------------------------------------------------------------
def _rotate_z(x: torch.Tensor, channels: tuple[int, int], angle: float) -> None:
    c, s = math.cos(angle), math.sin(angle)
    a, b = x[channels[0]].clone(), x[channels[1]].clone()
    x[channels[0]] = c * a - s * b
    x[channels[1]] = s * a + c * b


def augment(x: torch.Tensor, y: torch.Tensor, rng: np.random.Generator, cfg: SegTrainConfig):
    """One scan (C, H, W), (H, W): roll = rotation about z by whole columns (column c holds yaw
    pi (1 - 2 (c + 1/2) / W), so a roll by s turns the scene by -2 pi s / W); flip = mirror y -> -y."""
    W = x.shape[-1]
    if cfg.roll:
        shift = int(rng.integers(W))
        x, y = torch.roll(x, shift, -1), torch.roll(y, shift, -1)
        for ch in (_XY, _NXY):
            _rotate_z(x, ch, -2.0 * math.pi * shift / W)
    if cfg.flip and rng.random() < 0.5:
        x, y = x.flip(-1), y.flip(-1)
        x[_XY[1]] *= -1.0
        x[_NXY[1]] *= -1.0
    cw = min(cfg.crop_width, W)
    start = int(rng.integers(W - cw + 1))
    return x[..., start : start + cw], y[..., start : start + cw]


def normalise(x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) raw -> (raw - mean) / std on valid pixels, 0 elsewhere; the mask channel unchanged."""
    v = x[:, -1:]
    out = (x - mean.view(1, -1, 1, 1)) / std.view(1, -1, 1, 1) * v
    out[:, -1:] = v
    return out


def make_batch(scans: ScanSet, picks: list[tuple[int, int]], rng: np.random.Generator, cfg: SegTrainConfig):
    xs, ys = [], []
    for s, i in picks:
        x = torch.from_numpy(np.asarray(scans.inputs[s][i], np.float32))
        y = torch.from_numpy(np.asarray(scans.labels[s][i]).astype(np.int64))
        x, y = augment(x, y, rng, cfg)
        xs.append(x)
        ys.append(y)
    return torch.stack(xs), torch.stack(ys)


# -- losses -----------------------------------------------------------------------------------------
def lovasz_extension(errors: torch.Tensor, fg: torch.Tensor) -> torch.Tensor:
    """Lovasz extension of the Jaccard loss Delta(M) = |M| / |G u M| (G = {fg = 1}, M = the pixels counted
    as wrong) at the error vector ``errors`` (P,): sum_i e_pi(i) (Delta(first i) - Delta(first i - 1)) with
    pi sorting the errors in decreasing order."""
    e, perm = torch.sort(errors, descending=True)
    g = fg[perm]
    n_fg = g.sum()
    union = n_fg + torch.cumsum(1.0 - g, 0)  # |G u M_i|
    wrong = torch.arange(1, len(g) + 1, dtype=e.dtype, device=e.device)  # |M_i|
    delta = wrong / union
    step = torch.cat([delta[:1], delta[1:] - delta[:-1]])
    return torch.dot(e, step)


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean over the classes present in ``labels`` (P,) of the Lovasz extension at |1[y = c] - p_c|."""
    losses = []
    for c in torch.unique(labels).tolist():
        fg = (labels == c).to(probs.dtype)
        losses.append(lovasz_extension((fg - probs[:, c]).abs(), fg))
    return torch.stack(losses).mean() if losses else probs.sum() * 0.0


def segmentation_loss(
    logits: torch.Tensor, y: torch.Tensor, weights: torch.Tensor, lovasz_weight: float, lovasz_pixels: int = 0
) -> tuple[torch.Tensor, dict[str, float]]:
    """Weighted cross-entropy + lovasz_weight x Lovasz-softmax over the labelled pixels (over a random
    subset of ``lovasz_pixels`` of them when positive: the per-class sorts are most of its cost)."""
    ce = F.cross_entropy(logits, y, weight=weights, ignore_index=IGNORE_ID)
    parts = {"ce": float(ce.detach())}
    loss = ce
    if lovasz_weight > 0:
        flat = logits.permute(0, 2, 3, 1).reshape(-1, logits.shape[1])
        keep = torch.nonzero(y.reshape(-1) != IGNORE_ID).flatten()
        if 0 < lovasz_pixels < len(keep):
            keep = keep[torch.randperm(len(keep))[:lovasz_pixels]]
        lov = lovasz_softmax(torch.softmax(flat[keep], 1), y.reshape(-1)[keep])
        parts["lovasz"] = float(lov.detach())
        loss = loss + lovasz_weight * lov
    return loss, parts


# -- validation -------------------------------------------------------------------------------------
def evaluate_pixels(
    net: RangeSegNet, scans: ScanSet, mean: torch.Tensor, std: torch.Tensor
) -> tuple[float, dict[str, float]]:
    """mIoU over the labelled pixels of all scans (intersections / unions summed), classes present."""
    net.eval()
    dh, dw = net.cfg.divisor
    conf = np.zeros((NUM_CLASSES, NUM_CLASSES), np.int64)
    with torch.inference_mode():
        for s, i in scans.index():
            x = torch.from_numpy(np.asarray(scans.inputs[s][i], np.float32))[None]
            H, W = x.shape[-2:]
            x = F.pad(x, (0, -W % dw, 0, -H % dh))
            pred = net(normalise(x, mean, std))[0, :, :H, :W].argmax(0).numpy()
            t = np.asarray(scans.labels[s][i])
            ok = t != IGNORE_ID
            conf += np.bincount(t[ok] * NUM_CLASSES + pred[ok], minlength=NUM_CLASSES**2).reshape(conf.shape)
    inter = np.diag(conf)
    union = conf.sum(0) + conf.sum(1) - inter
    present = np.flatnonzero(conf.sum(1))
    per = {CLASS_NAMES[c]: float(inter[c] / union[c]) for c in present}
    return (float(np.mean(list(per.values()))) if per else 0.0), per


# -- checkpoints ------------------------------------------------------------------------------------
@dataclass
class TrainState:
    net: RangeSegNet
    opt: torch.optim.Optimizer
    mean: torch.Tensor
    std: torch.Tensor
    weights: torch.Tensor
    rng: np.random.Generator
    step: int = 0
    best: float = -1.0
    elapsed_s: float = 0.0  # wall time of all invocations so far
    history: list[dict[str, Any]] = field(default_factory=list)


def save_train_checkpoint(path: Path, st: TrainState, cfg: SegTrainConfig) -> None:
    """Everything a resume needs, written atomically (temp file, then os.replace)."""
    blob = {
        "format": CKPT_FORMAT,
        "net_config": st.net.cfg.to_json(),
        "train_config": json.dumps(dataclasses.asdict(cfg), default=str),
        "model": st.net.state_dict(),
        "opt": st.opt.state_dict(),
        "mean": st.mean,
        "std": st.std,
        "weights": st.weights,
        "rng": json.dumps(st.rng.bit_generator.state),
        "step": st.step,
        "best": st.best,
        "elapsed_s": st.elapsed_s,
        "history": json.dumps(st.history),
    }
    buf = io.BytesIO()
    torch.save(blob, buf)
    with atomic_write(path, "wb") as fh:
        fh.write(buf.getvalue())


def load_train_checkpoint(path: Path, cfg: SegTrainConfig) -> TrainState:
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        if blob.get("format") != CKPT_FORMAT:
            raise ValueError(f"format {blob.get('format')!r}")
        net = RangeSegNet(RangeSegNetConfig.from_json(blob["net_config"]))
        net.load_state_dict(blob["model"])
        net = net.to(memory_format=torch.channels_last)
        opt = _optimizer(net, cfg)
        opt.load_state_dict(blob["opt"])
        rng = np.random.default_rng()
        rng.bit_generator.state = json.loads(blob["rng"])
    except Exception as exc:  # torch.load / state dicts raise many types; all mean 'cannot resume from it'
        raise CheckpointError(
            f"{path}: cannot resume from this training checkpoint ({exc}); delete it or pass another --checkpoint"
        ) from exc
    return TrainState(
        net, opt, blob["mean"], blob["std"], blob["weights"], rng, int(blob["step"]), float(blob["best"]),
        float(blob["elapsed_s"]), json.loads(blob["history"]),
    )  # fmt: skip


def _optimizer(net: RangeSegNet, cfg: SegTrainConfig) -> torch.optim.Optimizer:
    return torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_at(step: int, cfg: SegTrainConfig) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 2 % of ``lr`` at ``steps``."""
    warm = min(1.0, (step + 1) / max(1, cfg.warmup))
    t = min(1.0, step / max(1, cfg.steps))
    return cfg.lr * warm * (0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * t)))


# -- the run ----------------------------------------------------------------------------------------
def init_state(train: ScanSet, cfg: SegTrainConfig) -> TrainState:
    torch.manual_seed(cfg.seed)
    net = RangeSegNet(dataclasses.replace(cfg.net, in_channels=len(SEGNET_CHANNELS), num_classes=NUM_CLASSES))
    net = net.to(memory_format=torch.channels_last)
    mean, std = input_stats(train, seed=cfg.seed)
    return TrainState(
        net,
        _optimizer(net, cfg),
        torch.from_numpy(mean),
        torch.from_numpy(std),
        torch.from_numpy(class_weights(train)),
        np.random.default_rng(cfg.seed),
    )


def train_step(st: TrainState, train: ScanSet, index: list[tuple[int, int]], cfg: SegTrainConfig) -> dict:
    st.net.train()
    picks = [index[k] for k in st.rng.integers(len(index), size=cfg.batch)]
    x, y = make_batch(train, picks, st.rng, cfg)
    for g in st.opt.param_groups:
        g["lr"] = lr_at(st.step, cfg)
    x = normalise(x, st.mean, st.std).contiguous(memory_format=torch.channels_last)  # ~20 % faster on CPU
    loss, parts = segmentation_loss(st.net(x), y, st.weights, cfg.lovasz_weight, cfg.lovasz_pixels)
    st.opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(st.net.parameters(), 5.0)
    st.opt.step()
    st.step += 1
    return {"loss": float(loss.detach()), **parts}


def export(st: TrainState, out: Path, meta: dict[str, Any]) -> None:
    info = SegNetFile(st.net.cfg, SEGNET_CHANNELS, st.mean, st.std, meta)
    save_range_segnet(out, st.net, info)


def _validate(st: TrainState, val: ScanSet | None, out: Path, meta: dict[str, Any], log: Log) -> None:
    if val is None:
        export(st, out, meta | {"step": st.step})
        return
    miou, per = evaluate_pixels(st.net, val, st.mean, st.std)
    st.history.append({"step": st.step, "val_miou": miou, "elapsed_s": round(st.elapsed_s, 1)})
    mark = ""
    if miou > st.best:
        st.best, mark = miou, " (best, exported)"
        export(st, out, meta | {"step": st.step, "val_miou": miou, "val_per_class": per, "wall_s": st.elapsed_s})
    log(f"step {st.step}: val mIoU {miou:.3f}{mark} " + " ".join(f"{k[:4]} {v:.2f}" for k, v in per.items()))


def train_segnet(
    train: ScanSet,
    val: ScanSet | None,
    cfg: SegTrainConfig,
    out: Path,
    checkpoint: Path,
    resume: bool = True,
    meta: dict[str, Any] | None = None,
    log: Log = print,
) -> TrainState:
    """Train until ``cfg.steps`` or the time budget; exports the best network (by validation mIoU, or the
    last one without validation) to ``out`` and keeps ``checkpoint`` current for a resume."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if len(train) == 0:
        raise DatasetError("no training scans")
    if resume and Path(checkpoint).is_file():
        st = load_train_checkpoint(Path(checkpoint), cfg)
        log(f"resumed {checkpoint} at step {st.step} (best val mIoU {st.best:.3f}, {st.elapsed_s / 60:.1f} min so far)")
    else:
        st = init_state(train, cfg)
    meta = {"train": train.names, "val": val.names if val else [], "classes": list(CLASS_NAMES)} | (meta or {})
    index, t_start, t_last, run = train.index(), time.perf_counter(), time.perf_counter(), []
    while st.step < cfg.steps:
        run.append(train_step(st, train, index, cfg))
        now = time.perf_counter()
        st.elapsed_s += now - t_last
        t_last = now
        if st.step % cfg.log_every == 0:
            avg = {k: float(np.mean([r[k] for r in run])) for k in run[0]}
            log(f"step {st.step}/{cfg.steps} " + " ".join(f"{k} {v:.3f}" for k, v in avg.items())
                + f" lr {lr_at(st.step, cfg):.2e} {st.elapsed_s / 60:.1f} min")  # fmt: skip
            run = []
        over = cfg.time_budget_s > 0 and now - t_start >= cfg.time_budget_s
        if st.step % cfg.val_every == 0 or st.step == cfg.steps or over:
            _validate(st, val, out, meta | {"steps_total": cfg.steps}, log)
        if st.step % cfg.ckpt_every == 0 or st.step == cfg.steps or over:
            save_train_checkpoint(Path(checkpoint), st, cfg)
        if over:
            log(f"time budget reached at step {st.step}; resume with the same command to continue")
            break
        t_last = time.perf_counter()  # validation and checkpoint time are not training time
    return st
