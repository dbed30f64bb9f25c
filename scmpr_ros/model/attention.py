"""Cross-modal semantic attention (CSA, eqs. 7-9).

Each image feature f (pixel) attends over the map's N_S per-class prototypes P (map-wide means of
LiDAR class features, never place-specific): w = softmax_c(q(f)·k(P_c)/√d_a), ctx = Σ_c w_c v(P_c);
gate A = σ(W_g [f; ctx] + b_g), F' = A ⊙ F.  Without a map the learned default prototypes are used.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from scmpr_ros.errors import ScmprError


class CrossModalSemanticAttention(nn.Module):
    def __init__(self, feature_dim: int, num_classes: int, attention_dim: int = 64):
        super().__init__()
        self.feature_dim = feature_dim
        self.num_classes = num_classes
        self.attention_dim = attention_dim
        self.default_prototypes = nn.Parameter(torch.randn(num_classes, feature_dim) * 0.1)
        self.query = nn.Conv2d(feature_dim, attention_dim, 1, bias=False)
        self.key = nn.Linear(feature_dim, attention_dim, bias=False)
        self.value = nn.Linear(feature_dim, feature_dim, bias=False)
        self.gate = nn.Conv2d(2 * feature_dim, feature_dim, 1, bias=True)
        nn.init.constant_(self.gate.bias, 2.0)  # A ≈ 0.88 at start: the features pass nearly unchanged

    def check_prototypes(self, prototypes: Tensor) -> None:
        if prototypes.dim() != 2 or tuple(prototypes.shape) != (self.num_classes, self.feature_dim):
            raise ScmprError(
                f"CSA prototypes must be (num_classes={self.num_classes}, feature_dim={self.feature_dim}), "
                f"got {tuple(prototypes.shape)}; rebuild the map with this model"
            )
        if not torch.isfinite(prototypes).all():
            raise ScmprError("CSA prototypes contain NaN or inf; rebuild the map")

    def forward(self, feats: Tensor, prototypes: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """feats (B, C, h, w); prototypes (N_S, C) or None -> (F' (B, C, h, w), class weights (B, N_S, h, w))."""
        if prototypes is None:
            prototypes = self.default_prototypes
        else:
            self.check_prototypes(prototypes)
            prototypes = prototypes.to(device=feats.device, dtype=self.default_prototypes.dtype)
        bsz, c, h, w = feats.shape
        q = self.query(feats).flatten(2)  # (B, d_a, hw)
        k = self.key(prototypes)  # (N_S, d_a)
        v = self.value(prototypes)  # (N_S, C)
        logits = torch.einsum("nd,bdp->bnp", k, q) / math.sqrt(self.attention_dim)
        weights = torch.softmax(logits, dim=1)  # over classes
        ctx = torch.einsum("nc,bnp->bcp", v, weights).reshape(bsz, c, h, w)
        gate = torch.sigmoid(self.gate(torch.cat([feats, ctx.to(feats.dtype)], dim=1)))
        return gate * feats, weights.reshape(bsz, self.num_classes, h, w)
