"""Semantic-Aware Feature Fusion head (SAFF, eq. 2).

Multi-scale neck: P = conv(Σ_i resize_{s8}(W_i F_i)) over the four backbone stages at stride 8.
Descriptor branch F_d = W_d P; segmentation branch F_s = conv(conv(P)); gated fusion
F = F_d + σ(W_g F_s) ⊙ F_d.  Segmentation logits: 1x1 on F_s (stride 8), upsampled ×2, plus a 1x1 on
the stride-4 stage (detail), bilinearly upsampled to the input size.  ``use_saff=False`` keeps only
the neck and F_d (no segmentation branch, no gate, no logits).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch.nn.functional as F
from torch import Tensor, nn


class ConvBNAct(nn.Sequential):
    def __init__(
        self, cin: int, cout: int, k: int = 1, stride: int | tuple[int, int] = 1, groups: int = 1, act: bool = True
    ):
        layers: list[nn.Module] = [
            nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
        ]
        if act:
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class SepConv(nn.Sequential):
    """Depthwise 3x3 + pointwise 1x1, each with BN; ReLU at the end."""

    def __init__(self, cin: int, cout: int):
        super().__init__(ConvBNAct(cin, cin, 3, groups=cin, act=False), ConvBNAct(cin, cout, 1))


class SAFFHead(nn.Module):
    def __init__(self, in_channels: Sequence[int], feature_dim: int, num_classes: int, use_saff: bool = True):
        super().__init__()
        self.use_saff = use_saff
        self.num_classes = num_classes
        self.lateral = nn.ModuleList([ConvBNAct(c, feature_dim, 1) for c in in_channels])
        self.fuse = SepConv(feature_dim, feature_dim)
        self.desc = nn.Conv2d(feature_dim, feature_dim, 1)
        if use_saff:
            self.seg = nn.Sequential(SepConv(feature_dim, feature_dim), SepConv(feature_dim, feature_dim))
            self.gate = nn.Conv2d(feature_dim, feature_dim, 1)
            self.seg_cls = nn.Conv2d(feature_dim, num_classes, 1)
            self.seg_detail = nn.Conv2d(in_channels[0], num_classes, 1)

    def forward(
        self, feats: Sequence[Tensor], out_size: tuple[int, int]
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """feats: the four stage maps (stride 4..32). Returns (F (B, C, H/8, W/8),
        seg_logits (B, N_S, H, W) or None, class probabilities at stride 8 (B, N_S, H/8, W/8) or None)."""
        size8 = feats[1].shape[-2:]
        p = None
        for lat, f in zip(self.lateral, feats):
            x = lat(f)
            if x.shape[-2:] != size8:
                x = (
                    F.adaptive_avg_pool2d(x, size8)
                    if x.shape[-1] > size8[-1]
                    else F.interpolate(x, size=size8, mode="bilinear", align_corners=False)
                )
            p = x if p is None else p + x
        p = self.fuse(p)
        fd = self.desc(p)
        if not self.use_saff:
            return fd, None, None
        fs = self.seg(p)
        fused = fd + self.gate(fs).sigmoid() * fd
        logits8 = self.seg_cls(fs)
        detail = self.seg_detail(feats[0])
        logits4 = F.interpolate(logits8, size=detail.shape[-2:], mode="bilinear", align_corners=False) + detail
        logits = F.interpolate(logits4, size=out_size, mode="bilinear", align_corners=False)
        probs8 = F.adaptive_avg_pool2d(logits4, size8).softmax(dim=1)
        return fused, logits, probs8
