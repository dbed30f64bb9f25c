"""RangeSegNet: a compact encoder-decoder CNN over the LiDAR range image (RangeNet++ / SalsaNext family).

Input (B, C, H, W): the normalised range-image channels (the caller chooses and names them; the file
stores the names and the mean / std used).  Encoder: a full-resolution stem, then one strided 3x3
convolution per level (stride (1, 2) in width only, or (2, 2)) followed by residual blocks of two 3x3
convolutions, the second one dilated.  Decoder: per level, a 1x1 projection at the coarse resolution,
bilinear up-sampling, the encoder's skip added, a 3x3 convolution.  Head: 1x1 -> per-pixel logits.
Batch norm everywhere during training; ``fuse_batchnorm`` folds it into the convolutions for inference.

Weights files (``save_range_segnet`` / ``load_range_segnet``): one safetensors file with the weights and
the normalisation (``input_mean`` / ``input_std``) as tensors, and in its header the format tag, the
version, the network config, the class list, the input channel names and free-form training metadata
(JSON).  Loading checks all of it and names what to do when a check fails.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from scmpr_ros.errors import CheckpointError
from scmpr_ros.io_utils import atomic_write_bytes
from scmpr_ros.semantics import CLASS_NAMES, NUM_CLASSES

SEGNET_FORMAT = "scmpr-range-segnet"
SEGNET_VERSION = 1
RETRAIN_HINT = "train one with `scmpr train-segmenter DATASET_DIR --arch cnn`"


@dataclass(frozen=True)
class RangeSegNetConfig:
    """Widths per level (level 0 = full resolution), the stride into each deeper level, residual blocks
    per level and the dilation of each block's second convolution."""

    in_channels: int = 9
    num_classes: int = NUM_CLASSES
    widths: tuple[int, ...] = (16, 32, 48, 64, 96)
    strides: tuple[tuple[int, int], ...] = ((1, 2), (2, 2), (1, 2), (2, 2))
    blocks: tuple[int, ...] = (0, 1, 1, 2, 2)
    dilations: tuple[int, ...] = (1, 1, 2, 2, 4)

    def __post_init__(self) -> None:
        n = len(self.widths)
        if len(self.strides) != n - 1 or len(self.blocks) != n or len(self.dilations) != n:
            raise CheckpointError(
                f"RangeSegNetConfig: {n} widths need {n - 1} strides and {n} blocks / dilations, got "
                f"{len(self.strides)} / {len(self.blocks)} / {len(self.dilations)}"
            )

    @property
    def divisor(self) -> tuple[int, int]:
        """Input height and width must be multiples of these (the product of the strides)."""
        h = w = 1
        for sh, sw in self.strides:
            h, w = h * sh, w * sw
        return h, w

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> RangeSegNetConfig:
        d = json.loads(text)
        d["widths"] = tuple(d["widths"])
        d["strides"] = tuple(tuple(s) for s in d["strides"])
        d["blocks"] = tuple(d["blocks"])
        d["dilations"] = tuple(d["dilations"])
        return cls(**d)


class ConvBN(nn.Module):
    """k x k convolution (optionally depthwise: groups = channels) + batch norm (+ ReLU); the norm folds
    into the convolution for inference."""

    def __init__(self, cin: int, cout: int, k: int = 3, stride=1, dilation: int = 1, groups: int = 1, act=True):
        super().__init__()
        pad = dilation * (k // 2)
        self.conv = nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False)
        self.bn: nn.Module = nn.BatchNorm2d(cout)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.bn(self.conv(x))
        return F.relu(x, inplace=True) if self.act else x

    def fuse(self) -> None:
        if not isinstance(self.bn, nn.BatchNorm2d):
            return
        bn, c = self.bn, self.conv
        scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps)
        fused = nn.Conv2d(
            c.in_channels, c.out_channels, c.kernel_size, c.stride, c.padding, c.dilation, c.groups, bias=True
        )
        with torch.no_grad():
            fused.weight.copy_(c.weight * scale[:, None, None, None])
            fused.bias.copy_(bn.bias.detach() - bn.running_mean * scale)
        self.conv, self.bn = fused, nn.Identity()


class SepConv(nn.Sequential):
    """Depthwise 3x3 (strided or dilated) -> pointwise 1x1: a 3x3 convolution at a ninth of the cost."""

    def __init__(self, cin: int, cout: int, stride=1, dilation: int = 1, act: bool = True):
        super().__init__(ConvBN(cin, cin, 3, stride, dilation, groups=cin, act=False), ConvBN(cin, cout, 1, act=act))


class ResBlock(nn.Module):
    """x + sep(sep(x)) with the second depthwise convolution dilated (wider context at the same cost)."""

    def __init__(self, c: int, dilation: int):
        super().__init__()
        self.a = SepConv(c, c)
        self.b = SepConv(c, c, dilation=dilation, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.b(self.a(x)), inplace=True)


class UpStep(nn.Module):
    """Coarse features -> 1x1 to the finer width -> bilinear up-sampling -> + skip -> separable 3x3."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.proj = ConvBN(cin, cout, k=1, act=False)
        self.mix = SepConv(cout, cout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(self.proj(x), size=skip.shape[-2:], mode="bilinear", align_corners=False)
        return self.mix(F.relu(x + skip, inplace=True))


class RangeSegNet(nn.Module):
    def __init__(self, cfg: RangeSegNetConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg if cfg is not None else RangeSegNetConfig()
        w = cfg.widths
        self.stem = nn.Sequential(
            ConvBN(cfg.in_channels, w[0]), *[ResBlock(w[0], cfg.dilations[0]) for _ in range(cfg.blocks[0])]
        )
        self.down = nn.ModuleList()
        for i in range(1, len(w)):
            layers = [SepConv(w[i - 1], w[i], stride=cfg.strides[i - 1])]
            layers += [ResBlock(w[i], cfg.dilations[i]) for _ in range(cfg.blocks[i])]
            self.down.append(nn.Sequential(*layers))
        self.up = nn.ModuleList(UpStep(w[i], w[i - 1]) for i in range(len(w) - 1, 0, -1))
        self.head = nn.Conv2d(w[0], cfg.num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in_channels, H, W) -> (B, num_classes, H, W) logits; H, W multiples of ``cfg.divisor``."""
        dh, dw = self.cfg.divisor
        if x.shape[-2] % dh or x.shape[-1] % dw:
            raise ValueError(f"RangeSegNet input {tuple(x.shape[-2:])} is not a multiple of {dh}x{dw}")
        skips = [self.stem(x)]
        for layer in self.down:
            skips.append(layer(skips[-1]))
        y = skips.pop()
        for step in self.up:
            y = step(y, skips.pop())
        return self.head(y)

    def fuse_batchnorm(self) -> RangeSegNet:
        """Fold every batch norm into its convolution (inference only: call after ``eval()``)."""
        for m in self.modules():
            if isinstance(m, ConvBN):
                m.fuse()
        return self


def count_parameters(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


@dataclass
class SegNetFile:
    """What a weights file holds besides the weights."""

    cfg: RangeSegNetConfig
    channels: tuple[str, ...]
    mean: torch.Tensor  # (C,)
    std: torch.Tensor  # (C,)
    meta: dict[str, Any] = field(default_factory=dict)


def save_range_segnet(path: str | Path, net: RangeSegNet, info: SegNetFile) -> None:
    """Weights (float32) + normalisation + header, written atomically (temp file, then os.replace)."""
    from safetensors.torch import save

    if len(info.channels) != net.cfg.in_channels or info.mean.numel() != net.cfg.in_channels:
        raise CheckpointError(
            f"save_range_segnet {path}: {len(info.channels)} channel names and {info.mean.numel()} means for a "
            f"network with {net.cfg.in_channels} input channels"
        )
    state = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in net.state_dict().items()}
    state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    state["input_mean"] = info.mean.detach().to(torch.float32).reshape(-1).contiguous()
    state["input_std"] = info.std.detach().to(torch.float32).reshape(-1).contiguous()
    header = {
        "format": SEGNET_FORMAT,
        "version": str(SEGNET_VERSION),
        "config": net.cfg.to_json(),
        "classes": json.dumps(list(CLASS_NAMES)),
        "channels": json.dumps(list(info.channels)),
        "meta": json.dumps(info.meta, sort_keys=True, default=str),
    }
    atomic_write_bytes(path, save(state, metadata=header))


def _read_header(path: Path) -> tuple[dict[str, str], dict[str, torch.Tensor]]:
    from safetensors.torch import load

    if not path.is_file():
        raise CheckpointError(f"segmenter weights not found: {path} (lidar.segmenter_weights); {RETRAIN_HINT}")
    data = path.read_bytes()
    try:
        n = int.from_bytes(data[:8], "little") if len(data) >= 8 else -1
        if n <= 0 or 8 + n > len(data):
            raise ValueError("bad header length")
        header = json.loads(data[8 : 8 + n]).get("__metadata__") or {}
        state = load(data)
    except Exception as exc:  # safetensors raises its own error types; all mean 'not a weights file'
        raise CheckpointError(
            f"{path}: not a range-segmenter weights file (truncated or not safetensors: {exc}); {RETRAIN_HINT}"
        ) from exc
    return header, state


def _check_header(header: dict[str, str], path: Path, expected_channels: tuple[str, ...] | None) -> None:
    fmt = header.get("format", "")
    if fmt != SEGNET_FORMAT:
        what = f"a '{fmt}' file" if fmt else "a file without a format tag"
        raise CheckpointError(f"{path}: {what}, not {SEGNET_FORMAT} segmenter weights; {RETRAIN_HINT}")
    if header.get("version") != str(SEGNET_VERSION):
        raise CheckpointError(
            f"{path}: {SEGNET_FORMAT} version {header.get('version')}, this build reads version {SEGNET_VERSION}; "
            f"{RETRAIN_HINT}"
        )
    classes = tuple(json.loads(header.get("classes", "[]")))
    if classes != CLASS_NAMES:
        raise CheckpointError(
            f"{path}: trained for the classes {list(classes)}, this build uses {list(CLASS_NAMES)}; {RETRAIN_HINT}"
        )
    channels = tuple(json.loads(header.get("channels", "[]")))
    if expected_channels is not None and channels != tuple(expected_channels):
        raise CheckpointError(
            f"{path}: the network reads the channels {list(channels)}, this build feeds {list(expected_channels)}; "
            f"{RETRAIN_HINT}"
        )


def load_range_segnet(
    path: str | Path, expected_channels: tuple[str, ...] | None = None
) -> tuple[RangeSegNet, SegNetFile]:
    """The network (eval mode, float32, batch norm not yet fused) and its file info; CheckpointError with
    what to do when the file is missing, corrupt, of another format / version / class list / input."""
    path = Path(path)
    header, state = _read_header(path)
    _check_header(header, path, expected_channels)
    try:
        cfg = RangeSegNetConfig.from_json(header["config"])
        meta = json.loads(header.get("meta", "{}"))
        mean, std = state.pop("input_mean"), state.pop("input_std")
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: incomplete {SEGNET_FORMAT} file (missing {exc}); {RETRAIN_HINT}") from exc
    net = RangeSegNet(cfg)
    try:
        missing, unexpected = net.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatches
        missing, unexpected = [str(exc).splitlines()[-1].strip()], []
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the stored network config (missing / mismatched {missing[:3]}, unexpected "
            f"{unexpected[:3]}); the file is damaged or was edited; {RETRAIN_HINT}"
        )
    if mean.numel() != cfg.in_channels or std.numel() != cfg.in_channels or not bool((std > 0).all()):
        raise CheckpointError(f"{path}: input normalisation does not fit {cfg.in_channels} channels; {RETRAIN_HINT}")
    if not all(bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point()):
        raise CheckpointError(f"{path}: weights hold NaN or inf (a diverged run?); {RETRAIN_HINT}")
    channels = tuple(json.loads(header.get("channels", "[]")))
    return net.eval(), SegNetFile(cfg, channels, mean, std, meta)


def freeze_for_inference(net: RangeSegNet, example: torch.Tensor) -> nn.Module:
    """A TorchScript trace of the fused network for inputs shaped like ``example``, frozen (weights folded as
    constants, element-wise ops fused): about a third faster than eager mode on CPU (28 vs 43 ms for 64 x 1024
    on 2 threads).  The trace is valid for that input shape only (the up-sampling sizes are recorded).
    torch deprecates TorchScript in favour of torch.compile, which needs a C++ tool chain and compiles for
    tens of seconds; where tracing fails, the eager network is returned."""
    import warnings

    net = net.eval().fuse_batchnorm()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", getattr(torch.jit, "TracerWarning", UserWarning))  # the shape check
        try:
            return torch.jit.freeze(torch.jit.trace(net, example))
        except Exception:  # TorchScript gone or unable to trace on this build: eager mode, same results
            return net
