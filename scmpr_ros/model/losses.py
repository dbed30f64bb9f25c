"""Training losses (eqs. 11-12): L = L_con + λ L_sem + μ L_seg.

* InfoNCE: symmetric cross-entropy over the in-batch cosine matrix S_ij = d_i^RGB · d_j^LiDAR / τ,
  row i's positive is column i; other known positives (``positive_mask``) are left out of the negatives.
* Triplet (batch-hard): max(0, m + max_pos ‖a − p‖ − min_neg ‖a − n‖) per anchor, both directions.
* L_sem: mean over (pair i, class c present in both modalities) of 1 − cos(F^RGB_ic, F^LiDAR_ic)
  (eq. 11 with 𝒫_c = the matched RGB/LiDAR pairs and dist = cosine distance).
* L_seg: pixel cross-entropy with ignore_index = IGNORE_ID (sparse labels from projected points).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from scmpr_ros.errors import ScmprError
from scmpr_ros.semantics import IGNORE_ID


def _check_pair(a: Tensor, b: Tensor, what: str) -> None:
    if a.dim() != 2 or a.shape != b.shape:
        raise ScmprError(
            f"{what}: descriptors must be two (B, D) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )


def info_nce(
    d_rgb: Tensor,
    d_lidar: Tensor,
    temperature: Tensor | float = 0.07,
    positive_mask: Tensor | None = None,
) -> Tensor:
    """Symmetric InfoNCE; descriptors (B, D) (normalised here), temperature a float or a (learned) tensor.
    ``positive_mask`` (B, B) bool marks further true matches, which are not used as negatives."""
    _check_pair(d_rgb, d_lidar, "info_nce")
    a = F.normalize(d_rgb.float(), dim=1)
    b = F.normalize(d_lidar.float(), dim=1)
    logits = a @ b.t() / temperature
    n = logits.shape[0]
    target = torch.arange(n, device=logits.device)
    if positive_mask is not None:
        other = positive_mask.to(torch.bool) & ~torch.eye(n, dtype=torch.bool, device=logits.device)
        logits = logits.masked_fill(other, float("-inf"))
    return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.t(), target))


def triplet_loss(d_rgb: Tensor, d_lidar: Tensor, margin: float = 0.3, positive_mask: Tensor | None = None) -> Tensor:
    """Batch-hard triplet loss over the cross-modal distance matrix, RGB->LiDAR and LiDAR->RGB."""
    _check_pair(d_rgb, d_lidar, "triplet_loss")
    n = d_rgb.shape[0]
    if n < 2:
        raise ScmprError("triplet_loss needs at least 2 pairs in the batch (one is the negative)")
    a = F.normalize(d_rgb.float(), dim=1)
    b = F.normalize(d_lidar.float(), dim=1)
    dist = (2.0 - 2.0 * (a @ b.t())).clamp_min(1e-12).sqrt()
    pos = torch.eye(n, dtype=torch.bool, device=dist.device)
    if positive_mask is not None:
        pos = pos | positive_mask.to(torch.bool)
    big = torch.finfo(dist.dtype).max / 4
    terms = []
    for m in (dist, dist.t()):
        hardest_pos = m.masked_fill(~pos, -big).max(dim=1).values
        hardest_neg = m.masked_fill(pos, big).min(dim=1).values
        valid = (~pos).any(dim=1)
        terms.append(F.relu(margin + hardest_pos - hardest_neg)[valid])
    return torch.cat(terms).mean()


def semantic_consistency_loss(
    rgb_class_features: Tensor,
    rgb_present: Tensor,
    lidar_class_features: Tensor,
    lidar_present: Tensor,
) -> Tensor:
    """L_sem: mean cosine distance between matched RGB and LiDAR per-class features (B, N_S, C),
    over the classes present in both (B, N_S) bool. Zero (with a graph) when no class is shared."""
    if rgb_class_features is None or lidar_class_features is None:
        raise ScmprError("semantic_consistency_loss needs class features from both branches (model.use_semantics)")
    if rgb_class_features.shape != lidar_class_features.shape or rgb_class_features.dim() != 3:
        raise ScmprError(
            f"semantic_consistency_loss: class features must be (B, N_S, C) of one shape, got "
            f"{tuple(rgb_class_features.shape)} and {tuple(lidar_class_features.shape)}"
        )
    both = rgb_present.to(torch.bool) & lidar_present.to(torch.bool)
    cos = F.cosine_similarity(rgb_class_features.float(), lidar_class_features.float(), dim=-1, eps=1e-6)
    if not both.any():
        return (cos * 0.0).sum()
    return (1.0 - cos[both]).mean()


def segmentation_loss(seg_logits: Tensor, labels: Tensor, ignore_index: int = IGNORE_ID) -> Tensor:
    """L_seg: cross-entropy of (B, N_S, H, W) logits with (B, H, W) sparse labels; zero when all ignored."""
    if seg_logits.dim() != 4 or labels.dim() != 3 or labels.shape[0] != seg_logits.shape[0]:
        raise ScmprError(
            "segmentation_loss: logits (B, N_S, H, W) and labels (B, H, W) expected, "
            f"got {tuple(seg_logits.shape)} and {tuple(labels.shape)}"
        )
    if labels.shape[-2:] != seg_logits.shape[-2:]:
        raise ScmprError(
            f"segmentation_loss: labels {tuple(labels.shape[-2:])} and logits {tuple(seg_logits.shape[-2:])} "
            "differ in size"
        )
    labels = labels.long()
    valid = labels != ignore_index
    if not valid.any():
        return seg_logits.float().sum() * 0.0
    return F.cross_entropy(seg_logits.float(), labels, ignore_index=ignore_index)


def total_loss(
    l_con: Tensor,
    l_sem: Tensor | None = None,
    l_seg: Tensor | None = None,
    lambda_sem: float = 0.1,
    mu_seg: float = 1.0,
) -> Tensor:
    """Eq. 12 with a weight on L_seg: L = L_con + λ L_sem + μ L_seg (absent terms count as zero)."""
    total = l_con
    if l_sem is not None:
        total = total + lambda_sem * l_sem
    if l_seg is not None:
        total = total + mu_seg * l_seg
    return total
