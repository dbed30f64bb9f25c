"""LiDAR range-image encoder (semantic-geometric hybrid features, eqs. 5-6).

Input: the range-image channels (range, height, reflectance, normals, valid; C_in from the caller)
concatenated with a learned embedding of the per-pixel semantic label (IGNORE_ID -> an "unlabelled"
embedding).  Stem conv (stride 1x2) + residual stages (stride 2 each) + 1x1 to the feature dim,
output stride (2^S, 2^(S+1)).  Per-class weights = fraction of each cell's pixels with that label.

``fast_cpu_path`` (on by default) computes the same function in a form whose training step is cheaper
on a CPU (``scmpr benchmark train``); the outputs are the same up to float rounding and the parameters
are the same, so checkpoints load either way:

- the convolutions run on channels-last (NHWC) tensors: the backward of the strided stem and first
  stage convolutions is 2-4x faster that way;
- the stem convolves the range channels and the one-hot labels, with the label part of its weight
  folded with the embedding table (conv(embed(l)) = conv(onehot(l), W_e * E)): no input of the stem
  needs a gradient, so its backward computes the weight gradient only and no embedding backward runs;
- a strided 1x1 shortcut convolves the subsampled input x[..., ::s, ::s] (a plain matrix product).

``fast_cpu_path = False`` restores the plain form (the benchmark's baseline).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scmpr_ros.errors import InputError
from scmpr_ros.model.saff import ConvBNAct
from scmpr_ros.semantics import IGNORE_ID, NUM_CLASSES


class _Subsample(torch.autograd.Function):
    """x[..., ::sh, ::sw] whose gradient keeps x's memory layout (a plain slice's gradient is NCHW; added to
    the channels-last gradient of the block's other branch it turns every gradient below it into NCHW,
    which makes the element-wise backward ops several times slower)."""

    @staticmethod
    def forward(ctx, x: Tensor, step_h: int, step_w: int) -> Tensor:
        ctx.shape, ctx.steps = x.shape, (step_h, step_w)
        ctx.layout = (
            torch.channels_last if x.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
        )
        return x[:, :, ::step_h, ::step_w]

    @staticmethod
    def backward(ctx, grad: Tensor):
        step_h, step_w = ctx.steps
        full = torch.empty(ctx.shape, dtype=grad.dtype, device=grad.device, memory_format=ctx.layout).zero_()
        full[:, :, ::step_h, ::step_w] = grad
        return full, None, None


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int | tuple[int, int] = 1):
        super().__init__()
        self.conv1 = ConvBNAct(cin, cout, 3, stride=stride)
        self.conv2 = ConvBNAct(cout, cout, 3, act=False)
        self.short = None if (cin == cout and stride == 1) else ConvBNAct(cin, cout, 1, stride=stride, act=False)

        self.subsample_shortcut = True  # see the module docstring (LidarEncoder.fast_cpu_path)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.conv2(self.conv1(x)) + self._shortcut(x))

    def _shortcut(self, x: Tensor) -> Tensor:
        if self.short is None:
            return x
        conv = self.short[0]
        if not self.subsample_shortcut or conv.stride == (1, 1):
            return self.short(x)
        sub = _Subsample.apply(x, *conv.stride)  # a 1x1 kernel without padding reads only these pixels
        return self.short[1](F.conv2d(sub, conv.weight))


def label_fractions(labels: Tensor, num_classes: int, size: tuple[int, int]) -> Tensor:
    """(B, H, W) long labels (IGNORE_ID allowed) -> (B, N_S, h, w) fraction of each cell per class."""
    valid = labels != IGNORE_ID
    onehot = torch.zeros((labels.shape[0], num_classes, *labels.shape[1:]), device=labels.device)
    onehot.scatter_(1, torch.where(valid, labels, 0).long().unsqueeze(1), valid.unsqueeze(1).float())
    return F.adaptive_avg_pool2d(onehot, size)


def check_labels(labels: Tensor, batch: int, hw: tuple[int, int], num_classes: int = NUM_CLASSES) -> None:
    if labels.dim() != 3 or labels.shape[0] != batch or tuple(labels.shape[1:]) != tuple(hw):
        raise InputError(f"range labels must be (B={batch}, H={hw[0]}, W={hw[1]}), got {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
        raise InputError(f"range labels must be integer class ids, got dtype {labels.dtype}")
    bad = (labels >= num_classes) & (labels != IGNORE_ID) | (labels < 0)
    if bad.any():
        raise InputError(
            f"range labels hold ids outside 0..{num_classes - 1} and {IGNORE_ID} (e.g. {int(labels[bad][0])}); "
            "map dataset ids with scmpr_ros.semantics first"
        )


class LidarEncoder(nn.Module):
    def __init__(
        self,
        in_channels: int,
        dims: Sequence[int] = (32, 64, 128),
        feature_dim: int = 128,
        num_classes: int = NUM_CLASSES,
        label_embedding_dim: int = 8,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.num_classes = num_classes
        self.label_embed = nn.Embedding(num_classes + 1, label_embedding_dim) if label_embedding_dim > 0 else None
        cin = in_channels + (label_embedding_dim if self.label_embed is not None else 0)
        self.stem = ConvBNAct(cin, dims[0], 3, stride=(1, 2))
        blocks = []
        prev = dims[0]
        for d in dims:
            blocks.append(BasicBlock(prev, d, stride=2))
            prev = d
        self.stages = nn.Sequential(*blocks)
        self.head = nn.Conv2d(prev, feature_dim, 1)
        self.fast_cpu_path = True  # see the module docstring

    @property
    def fast_cpu_path(self) -> bool:
        return self._fast_cpu_path

    @fast_cpu_path.setter
    def fast_cpu_path(self, on: bool) -> None:
        self._fast_cpu_path = bool(on)
        for block in self.stages:
            block.subsample_shortcut = bool(on)

    def forward(self, x: Tensor, labels: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
        """x (B, C_in, H, W), labels (B, H, W) -> (features (B, C, h, w), class fractions (B, N_S, h, w) or None)."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise InputError(f"range input must be (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        if labels is not None:
            check_labels(labels, x.shape[0], tuple(x.shape[2:]), self.num_classes)
            labels = labels.long()
        if self.label_embed is not None and labels is None:
            raise InputError("this LiDAR encoder uses semantic labels (model.use_semantics); pass range labels")
        stem_out = self._stem_folded(x, labels) if self.fast_cpu_path else self._stem_plain(x, labels)
        feats = self.head(self.stages(stem_out))
        fractions = None if labels is None else label_fractions(labels, self.num_classes, tuple(feats.shape[-2:]))
        return feats, fractions

    def _label_ids(self, labels: Tensor) -> Tensor:
        return torch.where(labels == IGNORE_ID, self.num_classes, labels)

    def _stem_plain(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """The stem over the range channels and the label embeddings, NCHW."""
        if self.label_embed is not None:
            emb = self.label_embed(self._label_ids(labels)).permute(0, 3, 1, 2).to(x.dtype)
            x = torch.cat([x, emb], dim=1)
        return self.stem(x)

    def _stem_folded(self, x: Tensor, labels: Tensor | None) -> Tensor:
        """The same stem as one channels-last convolution over the range channels and one-hot labels.

        The label part of the weight is folded with the embedding table, so the gradient reaches the
        stem weight and the table through the (tiny) folded weight, never through the inputs."""
        conv = self.stem[0]
        weight = conv.weight
        if self.label_embed is not None:
            w_range, w_label = weight[:, : self.in_channels], weight[:, self.in_channels :]
            folded = torch.einsum("odhw,cd->ochw", w_label, self.label_embed.weight.to(weight.dtype))
            weight = torch.cat([w_range, folded], dim=1)
            batch, channels, height, width = x.shape
            stacked = x.new_zeros((batch, height, width, channels + self.num_classes + 1))  # NHWC memory
            stacked[..., :channels] = x.permute(0, 2, 3, 1)
            stacked.scatter_(3, (channels + self._label_ids(labels)).unsqueeze(3), 1.0)  # one-hot labels
            x = stacked.permute(0, 3, 1, 2)  # a channels-last view
        x = x.contiguous(memory_format=torch.channels_last)
        out = F.conv2d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups)
        for layer in list(self.stem)[1:]:  # batch norm, ReLU
            out = layer(out)
        return out
