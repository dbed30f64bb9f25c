"""SCMPRModel: the image encoder (VMamba -> SAFF -> CSA -> NetVLAD) and the LiDAR encoder
(range image + label embedding -> CNN -> NetVLAD) into one d_D space, plus per-class features
(masked means F_c = Σ_p w_pc F_p / Σ_p w_pc, w = predicted class probabilities on the image side,
label fractions on the LiDAR side) for L_sem and the map-wide CSA prototypes.

Ablation: use_semantics=False removes SAFF, CSA, L_sem and the LiDAR label embedding; use_saff,
use_csa remove their modules; use_lsem only switches the loss (L_sem has no parameters of its own).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from scmpr_ros.config import ConfigError, ModelConfig
from scmpr_ros.errors import InputError
from scmpr_ros.model.attention import CrossModalSemanticAttention
from scmpr_ros.model.lidar_encoder import LidarEncoder
from scmpr_ros.model.netvlad import NetVLAD, init_netvlad_from_features
from scmpr_ros.model.saff import SAFFHead
from scmpr_ros.model.scan import BACKENDS
from scmpr_ros.model.vmamba import VMAMBA_CONFIGS, VMamba
from scmpr_ros.semantics import NUM_CLASSES

# a class counts as present in an image / range image if its weights sum to this many feature cells
PRESENT_MIN_MASS = 1.0


@dataclass
class ImageEncoding:
    descriptor: Tensor  # (B, D) unit norm
    seg_logits: Tensor | None  # (B, N_S, H, W); None without SAFF
    class_features: Tensor | None  # (B, N_S, C); None without semantics
    class_present: Tensor | None  # (B, N_S) bool


@dataclass
class LidarEncoding:
    descriptor: Tensor  # (B, D) unit norm
    class_features: Tensor | None  # (B, N_S, C); None without semantics
    class_present: Tensor | None  # (B, N_S) bool


def validate_model_config(cfg: ModelConfig) -> None:
    def bad(key: str, msg: str) -> ConfigError:
        return ConfigError(f"model.{key}: {msg}")

    if cfg.backbone not in VMAMBA_CONFIGS:
        raise bad("backbone", f"unknown size {cfg.backbone!r} (choose one of {', '.join(VMAMBA_CONFIGS)})")
    if cfg.scan_backend not in BACKENDS:
        raise bad("scan_backend", f"unknown backend {cfg.scan_backend!r} (choose one of {', '.join(BACKENDS)})")
    for key in ("image_height", "image_width"):
        v = getattr(cfg, key)
        if v < 32:
            raise bad(key, f"must be >= 32 (the backbone's stride), got {v}")
    for key in ("d_state", "feature_dim", "netvlad_clusters", "lidar_in_channels", "attention_dim"):
        if getattr(cfg, key) < 1:
            raise bad(key, f"must be >= 1, got {getattr(cfg, key)}")
    if cfg.ssm_ratio <= 0:
        raise bad("ssm_ratio", f"must be > 0, got {cfg.ssm_ratio}")
    if cfg.descriptor_dim < 0:
        raise bad("descriptor_dim", f"must be >= 0 (0 keeps K*C), got {cfg.descriptor_dim}")
    if not cfg.lidar_dims or min(cfg.lidar_dims) < 1:
        raise bad("lidar_dims", f"must be a non-empty list of positive widths, got {cfg.lidar_dims}")
    if cfg.label_embedding_dim < 0:
        raise bad("label_embedding_dim", f"must be >= 0, got {cfg.label_embedding_dim}")
    if not 0.0 <= cfg.drop_path_rate < 1.0:
        raise bad("drop_path_rate", f"must be in [0, 1), got {cfg.drop_path_rate}")
    if cfg.use_semantics and cfg.use_lsem and not (cfg.use_saff or cfg.use_csa):
        raise bad(
            "use_lsem", "L_sem needs image class features, which come from SAFF or CSA; enable use_saff or use_csa"
        )


def _class_pool(feats: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """feats (B, C, h, w), weights (B, N_S, h, w) >= 0 -> (B, N_S, C) weighted means, (B, N_S) present."""
    w = weights.flatten(2).to(feats.dtype)
    mass = w.sum(-1)
    pooled = torch.bmm(w, feats.flatten(2).transpose(1, 2)) / mass.clamp_min(1e-6).unsqueeze(-1)
    return pooled, mass >= PRESENT_MIN_MASS


class SCMPRModel(nn.Module):
    def __init__(self, cfg: ModelConfig, lidar_in_channels: int | None = None):
        super().__init__()
        if lidar_in_channels is not None:
            cfg = dataclasses.replace(cfg, lidar_in_channels=int(lidar_in_channels))
        validate_model_config(cfg)
        self.cfg = cfg
        sem = cfg.use_semantics
        self.use_saff = sem and cfg.use_saff
        self.use_csa = sem and cfg.use_csa
        self.use_lsem = sem and cfg.use_lsem
        self.num_classes = NUM_CLASSES
        fdim = cfg.feature_dim
        self.backbone = VMamba(cfg.backbone, cfg.d_state, cfg.ssm_ratio, cfg.drop_path_rate, cfg.scan_backend)
        self.head = SAFFHead(self.backbone.out_channels, fdim, NUM_CLASSES, use_saff=self.use_saff)
        self.csa = CrossModalSemanticAttention(fdim, NUM_CLASSES, cfg.attention_dim) if self.use_csa else None
        self.netvlad_rgb = NetVLAD(fdim, cfg.netvlad_clusters, cfg.descriptor_dim)
        self.lidar = LidarEncoder(
            cfg.lidar_in_channels, cfg.lidar_dims, fdim, NUM_CLASSES, cfg.label_embedding_dim if sem else 0
        )
        self.netvlad_lidar = NetVLAD(fdim, cfg.netvlad_clusters, cfg.descriptor_dim)
        self.log_temperature = nn.Parameter(torch.tensor(math.log(0.07)))

    # ------------------------------------------------------------------ properties
    @property
    def descriptor_dim(self) -> int:
        return self.netvlad_rgb.out_dim

    @property
    def feature_dim(self) -> int:
        return self.cfg.feature_dim

    def temperature(self) -> Tensor:
        """InfoNCE temperature τ = exp(log τ), clamped to [0.01, 1]."""
        return self.log_temperature.exp().clamp(0.01, 1.0)

    @torch.no_grad()
    def set_temperature(self, value: float, learnable: bool = True) -> None:
        if not 0.01 <= value <= 1.0:
            raise ConfigError(f"training.temperature must be in [0.01, 1], got {value}")
        self.log_temperature.fill_(math.log(value))
        self.log_temperature.requires_grad_(learnable)

    def set_scan_backend(self, backend: str) -> None:
        if backend not in BACKENDS:
            raise ConfigError(f"model.scan_backend: unknown backend {backend!r} (choose one of {', '.join(BACKENDS)})")
        self.backbone.set_scan_backend(backend)
        self.cfg = dataclasses.replace(self.cfg, scan_backend=backend)

    # ------------------------------------------------------------------ image branch
    def _check_images(self, images: Tensor) -> None:
        if images.dim() != 4 or images.shape[1] != 3:
            raise InputError(f"images must be (B, 3, H, W), got {tuple(images.shape)}; use preprocess_images()")
        if images.shape[2] < 32 or images.shape[3] < 32:
            raise InputError(f"image size {tuple(images.shape[2:])} is below 32x32; use preprocess_images()")
        if not images.is_floating_point():
            raise InputError(f"images must be float (normalised), got {images.dtype}; use preprocess_images()")

    def image_features(self, images: Tensor, prototypes: Tensor | None = None):
        """(F after SAFF, F' after CSA, seg logits, class weights) of a batch; shared by encode/init."""
        self._check_images(images)
        feats = self.backbone.forward_features(images)
        fused, seg_logits, probs = self.head(feats, tuple(images.shape[-2:]))
        attended, attn = fused, None
        if self.csa is not None:
            attended, attn = self.csa(fused, prototypes)
        weights = probs if probs is not None else attn
        return fused, attended, seg_logits, weights

    def encode_image(self, images: Tensor, prototypes: Tensor | None = None) -> ImageEncoding:
        """images (B, 3, H, W) normalised; prototypes (N_S, C) map-wide context or None (learned defaults)."""
        fused, attended, seg_logits, weights = self.image_features(images, prototypes)
        descriptor = self.netvlad_rgb(attended)
        cf = present = None
        if weights is not None:
            cf, present = _class_pool(fused, weights)
        return ImageEncoding(descriptor, seg_logits, cf, present)

    # ------------------------------------------------------------------ LiDAR branch
    def encode_lidar(self, range_input: Tensor, labels: Tensor | None = None) -> LidarEncoding:
        """range_input (B, C_in, Hr, Wr); labels (B, Hr, Wr) common ids, IGNORE_ID where none."""
        feats, fractions = self.lidar(range_input, labels)
        descriptor = self.netvlad_lidar(feats)
        cf = present = None
        if fractions is not None and self.cfg.use_semantics:
            cf, present = _class_pool(feats, fractions)
        return LidarEncoding(descriptor, cf, present)

    def semantic_prototypes(self, lidar_class_features: Tensor, lidar_class_present: Tensor) -> Tensor:
        """Map-wide CSA context (N_S, C): per class, the mean of the LiDAR class features over all the
        viewpoints where it is present; classes never seen keep the learned default prototype."""
        cf, present = lidar_class_features, lidar_class_present
        if cf is None or cf.dim() != 3 or cf.shape[1:] != (self.num_classes, self.feature_dim):
            raise InputError(
                f"semantic_prototypes: class features must be (N, {self.num_classes}, {self.feature_dim}), "
                f"got {None if cf is None else tuple(cf.shape)}"
            )
        if present is None or present.shape != cf.shape[:2]:
            raise InputError(f"semantic_prototypes: presence must be (N, {self.num_classes}) bool")
        w = present.to(cf.dtype)
        count = w.sum(0)
        protos = (w.unsqueeze(-1) * cf).sum(0) / count.clamp_min(1.0).unsqueeze(-1)
        if self.csa is not None:
            default = self.csa.default_prototypes.detach().to(protos)
        else:
            default = torch.zeros_like(protos)
        return torch.where((count > 0).unsqueeze(-1), protos, default)

    # ------------------------------------------------------------------ initialisation
    @torch.no_grad()
    def init_netvlad(
        self,
        images: Tensor,
        range_input: Tensor,
        range_labels: Tensor | None = None,
        seed: int = 0,
        batch_size: int = 16,
    ) -> None:
        """k-means initialisation of both NetVLADs from the local features of these samples."""
        was = self.training
        self.eval()
        try:
            img_feats, lid_feats = [], []
            for s in range(0, images.shape[0], batch_size):
                _, attended, _, _ = self.image_features(images[s : s + batch_size])
                img_feats.append(attended.permute(0, 2, 3, 1).reshape(-1, self.feature_dim).float().cpu())
            for s in range(0, range_input.shape[0], batch_size):
                lab = None if range_labels is None else range_labels[s : s + batch_size]
                f, _ = self.lidar(range_input[s : s + batch_size], lab)
                lid_feats.append(f.permute(0, 2, 3, 1).reshape(-1, self.feature_dim).float().cpu())
            init_netvlad_from_features(self.netvlad_rgb, torch.cat(img_feats), seed=seed)
            init_netvlad_from_features(self.netvlad_lidar, torch.cat(lid_feats), seed=seed + 1)
        finally:
            self.train(was)

    def parameter_count(self) -> dict[str, int]:
        parts = {
            "backbone": self.backbone,
            "saff_head": self.head,
            "csa": self.csa,
            "netvlad_rgb": self.netvlad_rgb,
            "lidar_encoder": self.lidar,
            "netvlad_lidar": self.netvlad_lidar,
        }
        out = {k: (sum(p.numel() for p in m.parameters()) if m is not None else 0) for k, m in parts.items()}
        out["image_encoder"] = out["backbone"] + out["saff_head"] + out["csa"] + out["netvlad_rgb"]
        out["total"] = sum(p.numel() for p in self.parameters())
        return out
