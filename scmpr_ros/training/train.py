"""``scmpr train``: cross-modal contrastive training of the SCM-PR model (paper eq. 12).

L = L_con(D_RGB, D_LiDAR) + λ·L_sem + μ·L_seg with in-batch negatives (places > 25 m apart, and
with ``training.near_negative_share`` > 0 small groups 6-15 m apart; with ``map_render_positives`` > 0
the LiDAR side is sometimes the mapping-pass map rendered at the frame's pose: training/batches.py);
AdamW, linear warm-up then cosine decay to lr·min_lr_ratio; NetVLAD centroids from k-means over
features before the first step; autocast (bf16/fp16) on CUDA only; CSA is fed an EMA of the LiDAR
class prototypes (map-wide statistics, never the answer's).  One entry point for one process or
``torchrun`` (DistributedDataParallel, DistributedSampler over the epoch's batch list; gloo on CPU,
nccl on CUDA).  Checkpoints (model + config, and the optimiser/scheduler/RNG state) are atomic;
``resume`` continues bit-identically on CPU because every batch is rebuilt from (seed, epoch, index).
"""

from __future__ import annotations

import io
import json
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scmpr_ros.config import ScmprConfig
from scmpr_ros.errors import ScmprError
from scmpr_ros.io_utils import atomic_write_bytes, atomic_write_text
from scmpr_ros.training.batches import NearNegatives, epoch_batches, make_batch
from scmpr_ros.training.pairs import PairCache, load_or_build_cache

STATE_FILE = "train_state.pt"
LAST_MODEL = "last.pt"
BEST_MODEL = "best.pt"
FINAL_MODEL = "model.pt"
METRICS_LOG = "metrics.jsonl"
BUDGET_REFIT_STEPS = 25  # with training.time_budget_s, re-fit the schedule to the speed this often
KMEANS_EPOCH = 999_999  # batch-list id of the k-means initialisation (never a training epoch)


class TrainingError(ScmprError):
    """A training run that cannot start or continue."""


# --------------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------------
@dataclass
class DistInfo:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def init_distributed(device: str) -> DistInfo:
    """Join the process group when started by torchrun (WORLD_SIZE > 1), else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    import torch.distributed as dist

    rank = int(os.environ["RANK"])
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=rank, world=world, local_rank=local_rank)


def resolve_device(device: str, dist_info: DistInfo) -> str:
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
        if device == "cuda":
            device = f"cuda:{dist_info.local_rank}"
        torch.cuda.set_device(torch.device(device))
    elif device != "cpu":
        raise TrainingError(f"--device must be auto, cpu or cuda[:N], got {device!r}")
    return device


# --------------------------------------------------------------------------------------------
# Schedule, splits
# --------------------------------------------------------------------------------------------
def make_adamw(params, lr: float, weight_decay: float):
    """AdamW with the fused kernel (one pass over all parameters: ~6x faster than the per-tensor loop on a
    2-core CPU for this model; the same update).  Its state loads into and from the plain AdamW's, so
    runs resume either way."""
    import torch

    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay, fused=True)


def lr_factor(step: int, total: int, warmup: int, min_ratio: float) -> float:
    """Linear warm-up from 1/warmup to 1, then cosine from 1 to ``min_ratio`` at ``total``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(total - warmup, 1)
    t = min(max(step - warmup, 0) / span, 1.0)
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t))


def split_train_val(cache: PairCache, fraction: float, buffer_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Spatial split: with >= 3 datasets the last is validation; else, per dataset, the places with
    the largest x (``fraction`` of them) are validation and training drops places within ``buffer_m``
    of any of them, so no place is on both sides."""
    groups = np.unique(cache.group)
    if len(groups) >= 3:
        val = np.flatnonzero(cache.group == groups[-1])
        train = np.flatnonzero(cache.group != groups[-1])
        return train, val
    val_mask = np.zeros(len(cache), dtype=bool)
    for g in groups:
        idx = np.flatnonzero(cache.group == g)
        cut = np.quantile(cache.positions[idx, 0], 1.0 - fraction)
        val_mask[idx[cache.positions[idx, 0] >= cut]] = True
    pos = cache.separated_positions()
    vpos = pos[val_mask]
    near = np.zeros(len(cache), dtype=bool)
    for start in range(0, len(cache), 512):
        d = np.linalg.norm(pos[start : start + 512, None, :] - vpos[None], axis=-1)
        near[start : start + 512] = (d <= buffer_m).any(axis=1)
    train = np.flatnonzero(~val_mask & ~near)
    return train, np.flatnonzero(val_mask)


# --------------------------------------------------------------------------------------------
# Model pieces
# --------------------------------------------------------------------------------------------
def _pair_module(model: Any) -> Any:
    """A module whose forward runs both encoders, so DistributedDataParallel sees one forward."""
    import torch

    class PairForward(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.model = m

        def forward(self, images, range_input, range_labels, prototypes):
            img = self.model.encode_image(images, prototypes)
            lid = self.model.encode_lidar(range_input, range_labels)
            return img, lid, self.model.temperature()  # inside forward, so DDP sees τ's gradient

    return PairForward(model)


def compute_losses(model: Any, img: Any, lid: Any, temperature: Any, batch: dict, cfg: ScmprConfig) -> dict[str, Any]:
    """The terms of eq. 12 for one batch (each present only when its model part is switched on)."""
    from scmpr_ros.model import losses

    t = cfg.training
    out: dict[str, Any] = {}
    if t.contrastive == "infonce":
        out["l_con"] = losses.info_nce(img.descriptor, lid.descriptor, temperature)
    elif t.contrastive == "triplet":
        out["l_con"] = losses.triplet_loss(img.descriptor, lid.descriptor, t.triplet_margin)
    else:
        raise TrainingError(f"training.contrastive must be infonce or triplet, got {t.contrastive!r}")
    if model.use_lsem and img.class_features is not None and lid.class_features is not None and t.lambda_sem > 0:
        out["l_sem"] = losses.semantic_consistency_loss(
            img.class_features, img.class_present, lid.class_features, lid.class_present
        )
    if img.seg_logits is not None and t.mu_seg > 0:
        out["l_seg"] = losses.segmentation_loss(img.seg_logits, batch["image_labels"])
    out["loss"] = losses.total_loss(out["l_con"], out.get("l_sem"), out.get("l_seg"), t.lambda_sem, t.mu_seg)
    return out


def _average_buffers(model: Any, world: int) -> None:
    """Average the floating-point buffers (BatchNorm running statistics) over the ranks after each
    step, so every rank holds the same model (DDP only synchronises the gradients)."""
    import torch
    import torch.distributed as dist

    with torch.no_grad():
        for buf in model.buffers():
            if buf.is_floating_point():
                dist.all_reduce(buf)
                buf /= world


def _update_prototypes(
    model: Any, protos: Any, seen: Any, lid: Any, momentum: float, dist_info: DistInfo
) -> tuple[Any, Any]:
    """EMA over training batches of the per-class mean LiDAR class feature (what build-map computes
    over the whole map); classes not seen yet keep the model's learned default prototype."""
    import torch

    with torch.no_grad():
        w = lid.class_present.to(torch.float32)
        sums = (w.unsqueeze(-1) * lid.class_features.detach().float()).sum(0)  # (N_S, C)
        counts = w.sum(0)
        if dist_info.enabled:
            import torch.distributed as dist

            dist.all_reduce(sums)
            dist.all_reduce(counts)
        here = counts > 0
        mean = sums / counts.clamp_min(1.0).unsqueeze(-1)
        if protos is None:
            default = model.csa.default_prototypes.detach().float() if model.csa is not None else torch.zeros_like(mean)
            protos, seen = default.clone(), torch.zeros_like(here)
        first = here & ~seen
        upd = here & seen
        protos = torch.where(first.unsqueeze(-1), mean, protos)
        protos = torch.where(upd.unsqueeze(-1), momentum * protos + (1 - momentum) * mean, protos)
        return protos, seen | here


def warm_start(model: Any, source: Any) -> tuple[int, int]:
    """Copy the tensors of ``source`` whose name and shape match into ``model`` (an ablation variant
    takes what it shares with a trained model); returns (copied, tensors in model)."""
    import torch

    src = source.state_dict()
    dst = model.state_dict()
    copied = 0
    with torch.no_grad():
        for name, t in dst.items():
            if name in src and src[name].shape == t.shape:
                t.copy_(src[name].to(t.dtype))
                copied += 1
    return copied, len(dst)


def kmeans_init(model: Any, cache: PairCache, train_ids: np.ndarray, cfg: ScmprConfig, device: str) -> None:
    """NetVLAD centroids of both branches from k-means over features of a few training batches."""
    import torch

    t = cfg.training
    near = NearNegatives.from_config(t)
    batches = epoch_batches(cache, t.batch_size, t.negative_radius_m, t.seed, KMEANS_EPOCH, train_ids, near)[
        : max(1, t.kmeans_batches)
    ]
    if not batches:
        raise TrainingError("not enough training places for one batch; lower training.batch_size or add data")
    img_list, rng_list, lab_list = [], [], []
    for k, ids in enumerate(batches):
        b = make_batch(cache, ids, cfg, seed=t.seed * 1000 + k, augment=False)
        img_list.append(b["images"])
        rng_list.append(b["range"])
        lab_list.append(b["range_labels"])
    with torch.no_grad():
        model.init_netvlad(
            torch.cat(img_list).to(device), torch.cat(rng_list).to(device), torch.cat(lab_list).to(device), seed=t.seed
        )


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------
def encode_cache(
    model: Any, cache: PairCache, ids: np.ndarray, cfg: ScmprConfig, device: str, batch_size: int = 32
) -> dict:
    """LiDAR descriptors + map-wide prototypes of ``ids``; returns arrays on the CPU."""
    import torch

    descs, feats, present = [], [], []
    with torch.no_grad():
        for s in range(0, len(ids), batch_size):
            sel = ids[s : s + batch_size]
            r = torch.from_numpy(cache.range_input[sel].astype(np.float32)).to(device)
            lab = torch.from_numpy(cache.range_labels[sel].astype(np.int64)).to(device)
            lid = model.encode_lidar(r, lab)
            descs.append(lid.descriptor.float().cpu())
            if lid.class_features is not None:
                feats.append(lid.class_features.float().cpu())
                present.append(lid.class_present.cpu())
        protos = None  # a model without CSA takes no context
        if feats and getattr(model, "use_csa", False):
            protos = model.semantic_prototypes(torch.cat(feats).to(device), torch.cat(present).to(device))
    return {"descriptors": torch.cat(descs).numpy(), "prototypes": protos}


def validate(model: Any, cache: PairCache, val_ids: np.ndarray, cfg: ScmprConfig, device: str) -> dict[str, Any]:
    """Cross-modal R@1/5/10 at ``positive_radius``-free 5 m: database = LiDAR of the map-pass places,
    queries = images of the query-pass places per condition (all places when no pass roles)."""
    import torch

    from scmpr_ros.model import preprocess_images
    from scmpr_ros.retrieval.metrics import rank_by_similarity, recall_at_n

    was_training = model.training
    model.eval()
    db_ids = val_ids[cache.role[val_ids] != 1]
    q_ids = val_ids[cache.role[val_ids] != 0]
    if len(db_ids) == 0 or len(q_ids) == 0:
        db_ids = q_ids = val_ids
    db = encode_cache(model, cache, db_ids, cfg, device)
    per_cond: dict[str, dict] = {}
    rng = np.random.default_rng(12345)
    with torch.no_grad():
        for c, cond in enumerate(cache.conditions):
            qs = q_ids[cache.image_present[q_ids, c]]
            if cfg.training.val_max_queries and len(qs) > cfg.training.val_max_queries:
                qs = np.sort(rng.choice(qs, cfg.training.val_max_queries, replace=False))
            if len(qs) == 0:
                continue
            descs = []
            for s in range(0, len(qs), 32):
                imgs = preprocess_images([cache.images[i, c] for i in qs[s : s + 32]], cfg.model).to(device)
                descs.append(model.encode_image(imgs, db["prototypes"]).descriptor.float().cpu())
            _, ranked = rank_by_similarity(torch.cat(descs).numpy(), db["descriptors"], 10)
            res = recall_at_n(ranked, cache.positions[qs], cache.positions[db_ids], threshold_m=5.0)
            per_cond[cond] = {f"R@{n}": res.recall[n] for n in res.ns} | {"queries": res.num_evaluated}
    model.train(was_training)
    r1 = [v["R@1"] for v in per_cond.values()]
    return {"val_r1": float(np.mean(r1)) if r1 else 0.0, "per_condition": per_cond, "database": int(len(db_ids))}


# --------------------------------------------------------------------------------------------
# State files
# --------------------------------------------------------------------------------------------
def _save_state(out: Path, state: dict) -> None:
    import torch

    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(out / STATE_FILE, buf.getvalue())


def _load_state(out: Path) -> dict:
    import torch

    path = out / STATE_FILE
    if not path.is_file():
        raise TrainingError(f"cannot resume: {path} not found (start without --resume, or point --out at a run)")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unpickling failure means a bad file
        raise TrainingError(f"cannot resume: {path} is corrupt ({exc}); start a new run") from exc


def _append_jsonl(path: Path, record: dict) -> None:
    with open(path, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()


def read_metrics(path: str | Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    out_dir: Path
    model_path: Path
    steps: int
    epochs: int
    wall_s: float
    best_val_r1: float
    last_val: dict
    model: Any = None  # the trained SCMPRModel (this rank's copy)
    batch_ids: list = None  # the place ids of each batch this rank trained on


def train(
    cfg: ScmprConfig,
    data_dir: str | Path,
    out: str | Path,
    *,
    resume: bool = False,
    device: str = "auto",
    cache_path: str | Path | None = None,
    max_steps: int | None = None,
    progress: bool = True,
    init_checkpoint: str | Path | None = None,
    on_step: Callable[[int, dict], None] | None = None,
) -> TrainResult:
    """Train ``SCMPRModel(cfg.model)`` on the pairs of ``data_dir`` and write checkpoints to ``out``.

    ``max_steps`` stops early (for tests and resume checks) after that many optimizer steps in
    total, saving a checkpoint there.  Returns where the final model lies and the figures.
    """
    trainer = Trainer(cfg, data_dir, out, device=device, cache_path=cache_path, init_checkpoint=init_checkpoint)
    if resume:
        trainer.resume()
    else:
        trainer.start()
    return trainer.run(max_steps=max_steps, progress=progress, on_step=on_step)


class Trainer:
    """One training run: data, model, optimizer and schedule; ``step`` / ``validate`` / ``checkpoint``."""

    def __init__(
        self,
        cfg: ScmprConfig,
        data_dir: str | Path,
        out: str | Path,
        *,
        device: str = "auto",
        cache_path: str | Path | None = None,
        init_checkpoint: str | Path | None = None,
    ) -> None:
        import torch

        t = cfg.training
        if t.amp_dtype not in ("bfloat16", "float16"):
            raise TrainingError(f"training.amp_dtype must be bfloat16 or float16, got {t.amp_dtype!r}")
        if t.epochs < 1:
            raise TrainingError(f"training.epochs must be >= 1, got {t.epochs}")
        self.cfg, self.data_dir, self.out, self.init_checkpoint = cfg, data_dir, Path(out), init_checkpoint
        wants_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        self.dist = init_distributed("cuda" if wants_cuda else "cpu")
        self.device = resolve_device(device, self.dist)
        if t.threads > 0:
            torch.set_num_threads(t.threads)
        torch.manual_seed(t.seed)
        self.out.mkdir(parents=True, exist_ok=True)
        self.log_path = self.out / METRICS_LOG
        self.main = self.dist.is_main
        self._load_data(cache_path)
        self._build_model()
        self._build_optimizer()
        self.step_count, self.start_epoch, self.start_batch, self.best = 0, 0, 0, -1.0
        self.prototypes = self.proto_seen = None
        self.last_val: dict = {}

    # ------------------------------------------------------------------------------------ setup
    def _load_data(self, cache_path: str | Path | None) -> None:
        t = self.cfg.training
        self.cache = load_or_build_cache(self.data_dir, self.cfg, cache_path, t.sequences or None, t.frame_stride)
        if t.map_render_positives > 0 and not self.cache.has_renders:
            raise TrainingError(
                f"training.map_render_positives {t.map_render_positives} but no frame of {self.data_dir} has a "
                "map render (a town needs a mapping pass that covers its frames)"
            )
        if t.val_data:  # validation pairs the scans, as before (no renders: they cost render time)
            self.val_cache = load_or_build_cache(
                t.val_data, self.cfg, None, t.sequences or None, t.frame_stride, map_renders=False
            )
            self.train_ids, self.val_ids = np.arange(len(self.cache)), np.arange(len(self.val_cache))
        else:
            self.train_ids, self.val_ids = split_train_val(self.cache, t.val_fraction, t.negative_radius_m)
            self.val_cache = self.cache
        if len(self.train_ids) < t.batch_size:
            raise TrainingError(
                f"only {len(self.train_ids)} training places for batch_size {t.batch_size}; add data or lower it"
            )

    def _build_model(self) -> None:
        from scmpr_ros.lidar.range_image import RANGE_CHANNELS
        from scmpr_ros.model import SCMPRModel, load_checkpoint

        t = self.cfg.training
        self.model = SCMPRModel(self.cfg.model, lidar_in_channels=RANGE_CHANNELS)
        self.model.set_temperature(t.temperature, learnable=t.learn_temperature)
        self.init_info = None
        if self.init_checkpoint is not None:  # warm start: every tensor whose name and shape match
            source, _, _ = load_checkpoint(self.init_checkpoint, map_location="cpu")
            copied, total = warm_start(self.model, source)
            self.init_info = {"kind": "init", "from": str(self.init_checkpoint), "tensors": copied, "of": total}
        self.model.to(self.device)
        self.model.train()

    def _build_optimizer(self) -> None:
        import torch

        t = self.cfg.training
        self.optimizer = make_adamw(self.model.parameters(), t.lr, t.weight_decay)
        self.steps_per_epoch = len(self.rank_batches(0))
        if self.steps_per_epoch == 0:
            raise TrainingError(
                f"no batch of {t.batch_size} places mutually > {t.negative_radius_m} m apart: use more data "
                "or a smaller training.batch_size"
            )
        self.total_steps = self.steps_per_epoch * t.epochs
        # the total may shrink to fit training.time_budget_s (refit_time_budget)
        self.plan = {"total": self.total_steps, "budget_fixed": t.time_budget_s <= 0}
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s, self.plan["total"], t.warmup_steps, t.min_lr_ratio)
        )
        self.use_amp = t.amp and self.device.startswith("cuda")
        self.amp_dtype = torch.bfloat16 if t.amp_dtype == "bfloat16" else torch.float16
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp and self.amp_dtype == torch.float16)

    def _wrap_for_ranks(self) -> None:
        """Identical weights on every rank, then the pair module (DDP when distributed)."""
        import torch

        self.pair = _pair_module(self.model)
        if not self.dist.enabled:
            return
        import torch.distributed as dist
        from torch.nn.parallel import DistributedDataParallel as DDP

        for p in self.model.state_dict().values():
            dist.broadcast(p, src=0)
        device_ids = [torch.device(self.device).index] if self.device.startswith("cuda") else None
        # buffers are averaged by _average_buffers
        self.pair = DDP(self.pair, device_ids=device_ids, find_unused_parameters=True, broadcast_buffers=False)

    def start(self) -> None:
        """A fresh run: k-means init of NetVLAD (unless warm-started), an empty log, the config written."""
        if self.init_checkpoint is None:
            kmeans_init(self.model, self.cache, self.train_ids, self.cfg, self.device)
        self._wrap_for_ranks()
        if self.main:
            self.log_path.unlink(missing_ok=True)
            atomic_write_text(self.out / "config.yaml", _config_yaml(self.cfg))
            if self.init_info is not None:
                _append_jsonl(self.log_path, self.init_info)

    def resume(self) -> None:
        """Continue from ``last.pt`` + ``train_state.pt`` of an earlier run in the same folder."""
        import torch

        from scmpr_ros.model import load_checkpoint

        state = _load_state(self.out)
        loaded, _, _ = load_checkpoint(self.out / LAST_MODEL, map_location="cpu")
        self.model.load_state_dict(loaded.state_dict())
        self._wrap_for_ranks()
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.step_count, self.start_epoch = int(state["step"]), int(state["epoch"])
        self.start_batch, self.best = int(state["batch"]), float(state["best"])
        self.plan.update(state.get("plan", {}))
        if state.get("prototypes") is not None:
            self.prototypes = state["prototypes"].to(self.device)
            self.proto_seen = state["proto_seen"].to(self.device)
        torch.set_rng_state(state["torch_rng"])
        if self.main:
            _append_jsonl(
                self.log_path,
                {"kind": "resume", "step": self.step_count, "epoch": self.start_epoch, "time": time.time()},
            )

    # ----------------------------------------------------------------------------- schedule
    def batches_of(self, epoch: int) -> list[np.ndarray]:
        """The epoch's batches of place ids (fixed by the data; topped up to steps_per_epoch)."""
        t, world = self.cfg.training, self.dist.world
        near = NearNegatives.from_config(t)
        bl = epoch_batches(self.cache, t.batch_size, t.negative_radius_m, t.seed, epoch, self.train_ids, near)
        k = 1
        while t.steps_per_epoch > 0 and len(bl) < t.steps_per_epoch * world:
            more = epoch_batches(
                self.cache, t.batch_size, t.negative_radius_m, t.seed, epoch + 100_000 * k, self.train_ids, near
            )
            if not more:
                break
            bl += more
            k += 1
        return bl[: t.steps_per_epoch * world] if t.steps_per_epoch > 0 else bl

    def rank_batches(self, epoch: int) -> list[int]:
        """This rank's share of the epoch's batch indices."""
        from torch.utils.data import DistributedSampler

        t = self.cfg.training
        bl = self.batches_of(epoch)
        sampler = DistributedSampler(
            range(len(bl)), num_replicas=self.dist.world, rank=self.dist.rank, shuffle=True, seed=t.seed, drop_last=True
        )
        sampler.set_epoch(epoch)
        return list(sampler)

    def refit_time_budget(self, bar: Any) -> None:
        """Fit the cosine schedule to the measured speed (10 % kept for validation): first after the
        warm-up, then every BUDGET_REFIT_STEPS steps from the recent speed."""
        t = self.cfg.training
        if t.time_budget_s <= 0 or self.step_count - self.steps_at_start < max(t.warmup_steps, 5):
            return
        if self.plan["budget_fixed"] and self.step_count % BUDGET_REFIT_STEPS != 0:
            return
        now = time.time() - self.t0
        window = self.rate_window[-1] if self.rate_window else (self.steps_at_start, 0.0)
        rate = (self.step_count - window[0]) / max(now - window[1], 1e-6)
        self.rate_window.append((self.step_count, now))
        fit = self.step_count + int((0.9 * t.time_budget_s - now) * rate)
        self.plan.update(total=max(self.step_count + 1, min(self.total_steps, fit)), budget_fixed=True)
        if bar is not None:
            bar.set_total(self.plan["total"])
            bar.note(
                f"time budget {t.time_budget_s / 60:.0f} min at {rate * 60:.1f} steps/min: {self.plan['total']} steps"
            )

    # --------------------------------------------------------------------------------- work
    def step(self, ids: np.ndarray, seed: int) -> dict[str, float]:
        """One optimizer step on the places ``ids``; returns the loss terms."""
        import torch

        t = self.cfg.training
        batch = make_batch(self.cache, ids, self.cfg, seed=seed, augment=t.augment)
        batch = {k: v.to(self.device) for k, v in batch.items()}
        with torch.autocast(device_type="cuda", dtype=self.amp_dtype, enabled=self.use_amp):
            img, lid, tau = self.pair(batch["images"], batch["range"], batch["range_labels"], self.prototypes)
            terms = compute_losses(self.model, img, lid, tau, batch, self.cfg)
        loss = terms["loss"]
        if not torch.isfinite(loss):
            raise TrainingError(
                f"loss became {loss.item()} at step {self.step_count}; lower training.lr or check the data"
            )
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if t.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), t.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step_count += 1
        if self.dist.enabled:
            _average_buffers(self.model, self.dist.world)
        if self.model.use_csa and lid.class_features is not None:  # map-wide CSA context, see _update_prototypes
            self.prototypes, self.proto_seen = _update_prototypes(
                self.model, self.prototypes, self.proto_seen, lid, t.prototype_momentum, self.dist
            )
        return {k: float(v.detach()) for k, v in terms.items()}

    def _log_step(self, epoch: int, record: dict[str, float]) -> None:
        if not self.main or (self.step_count % max(self.cfg.training.log_every, 1) != 0 and self.step_count != 1):
            return
        _append_jsonl(
            self.log_path,
            {
                "kind": "step",
                "step": self.step_count,
                "epoch": epoch,
                **record,
                "lr": self.scheduler.get_last_lr()[0],
                "temperature": float(self.model.temperature().detach()),
                "time": time.time() - self.t0,
            },
        )

    def validate(self, epoch: int, bar: Any) -> None:
        """Validation R@1 after ``epoch``; the best model so far is kept as best.pt."""
        self.last_val = validate(self.model, self.val_cache, self.val_ids, self.cfg, self.device)
        _append_jsonl(
            self.log_path,
            {"kind": "val", "step": self.step_count, "epoch": epoch, **self.last_val, "time": time.time() - self.t0},
        )
        if bar is not None:
            per = " ".join(f"{c}={v['R@1']:.2f}" for c, v in self.last_val["per_condition"].items())
            bar.note(f"epoch {epoch + 1}/{self.cfg.training.epochs}: val R@1 {self.last_val['val_r1']:.3f} {per}")
        if self.last_val["val_r1"] > self.best:
            self.best = self.last_val["val_r1"]
            self.checkpoint(epoch + 1, 0, self.out / BEST_MODEL)
        else:
            self.checkpoint(epoch + 1, 0)

    def checkpoint(self, epoch: int, batch: int, path_model: Path | None = None) -> None:
        """last.pt + train_state.pt (resume point: ``epoch``, ``batch``), and ``path_model`` when given."""
        import torch

        from scmpr_ros.model import save_checkpoint

        if not self.main:
            return
        meta = {
            "step": self.step_count,
            "epoch": epoch,
            "best_val_r1": self.best,
            "data": str(self.data_dir),
            "config": self.cfg.to_dict(),
        }
        save_checkpoint(self.out / LAST_MODEL, self.model, self.cfg.model, meta)
        detached = {
            k: None if v is None else v.detach().cpu()
            for k, v in (("prototypes", self.prototypes), ("proto_seen", self.proto_seen))
        }
        _save_state(
            self.out,
            {
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step_count,
                "epoch": epoch,
                "batch": batch,
                "best": self.best,
                "plan": dict(self.plan),
                **detached,
                "torch_rng": torch.get_rng_state(),
            },
        )
        if path_model is not None:
            save_checkpoint(path_model, self.model, self.cfg.model, meta)

    # ---------------------------------------------------------------------------------- run
    def run(
        self, max_steps: int | None = None, progress: bool = True, on_step: Callable[[int, dict], None] | None = None
    ) -> TrainResult:
        """Epochs from the start (or resume) point until the planned total, ``max_steps`` or the time budget."""
        self.t0 = time.time()
        self.steps_at_start = self.step_count
        self.rate_window: list[tuple[int, float]] = []  # (step, seconds) where the last speed measurement began
        self.seen_batches: list[np.ndarray] = []
        stopped = False
        with _progress(enabled=progress and self.main, total=self.total_steps, done=self.step_count) as bar:
            for epoch in range(self.start_epoch, self.cfg.training.epochs):
                stopped, finished = self._run_epoch(epoch, bar, max_steps, on_step)
                if stopped:
                    break
                self._end_epoch(epoch, bar, finished)
                if finished:
                    break
        return self._finish(stopped)

    def _run_epoch(self, epoch: int, bar: Any, max_steps: int | None, on_step) -> tuple[bool, bool]:
        """The epoch's batches; returns (stopped at max_steps, schedule finished)."""
        t = self.cfg.training
        my_batches, bl = self.rank_batches(epoch), self.batches_of(epoch)
        first = self.start_batch if epoch == self.start_epoch else 0
        for b in range(first, len(my_batches)):
            ids = bl[my_batches[b]]
            self.seen_batches.append(ids)
            record = self.step(ids, hash_seed(t.seed, epoch, my_batches[b]))
            self._log_step(epoch, record)
            if on_step is not None:
                on_step(self.step_count, record)
            if bar is not None:
                bar.update(self.step_count, loss=record["loss"], epoch=epoch)
            self.refit_time_budget(bar)
            done_epoch = b == len(my_batches) - 1
            if self.step_count >= self.plan["total"] and not done_epoch:
                return False, True
            if max_steps is not None and self.step_count >= max_steps:
                self.checkpoint(epoch + int(done_epoch), 0 if done_epoch else b + 1)
                return True, False
            if t.checkpoint_every > 0 and self.step_count % t.checkpoint_every == 0 and not done_epoch:
                self.checkpoint(epoch, b + 1)
        return False, self.step_count >= self.plan["total"]

    def _end_epoch(self, epoch: int, bar: Any, finished: bool) -> None:
        t = self.cfg.training
        if self.main and ((epoch + 1) % max(t.val_every, 1) == 0 or epoch + 1 == t.epochs or finished):
            self.validate(epoch, bar)
        else:
            self.checkpoint(epoch + 1, 0)

    def _finish(self, stopped: bool) -> TrainResult:
        """final model = best (or last), the done record and the training plot; the result."""
        wall = time.time() - self.t0
        final = self.out / FINAL_MODEL
        if self.main and not stopped:
            src = self.out / BEST_MODEL if (self.out / BEST_MODEL).is_file() else self.out / LAST_MODEL
            atomic_write_bytes(final, src.read_bytes())
            done = {"kind": "done", "step": self.step_count, "wall_s": wall, "best_val_r1": self.best}
            _append_jsonl(self.log_path, done | {"model": str(final)})
            try:
                from scmpr_ros.training.curves import plot_training_curves

                plot_training_curves(read_metrics(self.log_path), self.out / "training.png")
            except Exception:  # noqa: BLE001 - a plot never fails a training run
                pass
        if self.dist.enabled:
            import torch.distributed as dist

            dist.barrier()
        return TrainResult(
            out_dir=self.out,
            model_path=final if final.is_file() else self.out / LAST_MODEL,
            steps=self.step_count,
            epochs=self.cfg.training.epochs,
            wall_s=wall,
            best_val_r1=self.best,
            last_val=self.last_val,
            model=self.model,
            batch_ids=self.seen_batches,
        )


def hash_seed(*parts: int) -> int:
    """A stable 63-bit seed from integers (numpy SeedSequence, not Python's salted hash)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(2, np.uint64)[0] >> 1)


def _config_yaml(cfg: ScmprConfig) -> str:
    import yaml

    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


class _Bar:
    def __init__(self, progress, task):
        self.progress, self.task = progress, task

    def set_total(self, total: int) -> None:
        self.progress.update(self.task, total=total)

    def update(self, step: int, loss: float, epoch: int) -> None:
        self.progress.update(self.task, completed=step, description=f"epoch {epoch + 1} loss {loss:.3f}")

    def note(self, text: str) -> None:
        self.progress.console.print(text)


class _progress:
    """Rich progress bar on the main rank; a no-op elsewhere."""

    def __init__(self, enabled: bool, total: int, done: int):
        self.enabled, self.total, self.done = enabled, total, done
        self.progress = None

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
        )
        self.progress.__enter__()
        task = self.progress.add_task("training", total=self.total, completed=self.done)
        return _Bar(self.progress, task)

    def __exit__(self, *exc):
        if self.progress is not None:
            self.progress.__exit__(*exc)
        return False
