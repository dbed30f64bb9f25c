"""Which point segmenter a map build (or a training cache) uses: ``make_segmenter`` reads ``lidar.segmentation``
and ``lidar.segmenter_weights``.  It sits above lidar/ (projection, MLP, k-NN clean-up) and model/ (the
RangeSegNet CNN) so that it can join the two; torch is imported only when a CNN is loaded.

Weights files: ``.npz`` = the per-pixel MLP (``scmpr train-segmenter --arch mlp``), anything else = a
RangeSegNet safetensors file (``--arch cnn``, the default; the shipped one is models/range_segnet.pt).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import numpy as np

from scmpr_ros.config import LidarConfig, default_models_dir
from scmpr_ros.errors import DatasetError, InputError
from scmpr_ros.lidar.range_image import RangeImage, RangeProjector
from scmpr_ros.lidar.segmentation import (
    SEGMENTATION_MODES,
    SEGNET_CHANNELS,
    GroundTruthSegmenter,
    KnnCleanup,
    PointSegmenter,
    RangeImageSegmenter,
    point_labels,
    project_scan,
    segnet_input,
)
from scmpr_ros.semantics import IGNORE_ID


class RangeSegNetSegmenter:
    """Scan -> range image -> RangeSegNet -> per-pixel class -> per-point class with the k-NN clean-up."""

    name = "learned"

    def __init__(
        self, net: Any, info: Any, cfg: LidarConfig, source: str = "<memory>", knn: KnnCleanup | None = KnnCleanup()
    ):
        import torch

        self.cfg, self.source, self.knn, self.info = cfg, source, knn, info
        self.projector = RangeProjector(cfg)
        self.net = net.eval().fuse_batchnorm().to(memory_format=torch.channels_last)
        self.traced: dict[tuple[int, ...], Any] = {}  # input shape -> frozen TorchScript trace
        self.use_trace = True
        self._trace_lock = threading.Lock()  # the map builder segments from its render thread
        c = len(SEGNET_CHANNELS)
        self.mean = np.asarray(info.mean, np.float32).reshape(c, 1, 1)
        self.inv_std = (1.0 / np.asarray(info.std, np.float32)).reshape(c, 1, 1)

    @classmethod
    def load(cls, path: str | Path, cfg: LidarConfig, knn: KnnCleanup | None = KnnCleanup()) -> RangeSegNetSegmenter:
        from scmpr_ros.model.range_segnet import load_range_segnet

        net, info = load_range_segnet(path, expected_channels=SEGNET_CHANNELS)
        return cls(net, info, cfg, str(path), knn)

    def normalised_input(self, ri: RangeImage) -> np.ndarray:
        """(C, H, W) float32: (raw - mean) / std on valid pixels, 0 elsewhere; the mask channel as is."""
        x = segnet_input(ri)
        v = x[-1:].copy()
        x = (x - self.mean) * self.inv_std * v
        x[-1:] = v
        return x

    def predict_image(self, ri: RangeImage) -> np.ndarray:
        """(H, W) uint8 predicted classes, IGNORE_ID where the pixel is empty (input padded to the
        network's stride multiple with empty pixels)."""
        import torch

        x = self.normalised_input(ri)
        dh, dw = self.net.cfg.divisor
        H, W = ri.height, ri.width
        ph, pw = -H % dh, -W % dw
        if ph or pw:
            x = np.pad(x, ((0, 0), (0, ph), (0, pw)))
        t = torch.from_numpy(x)[None].contiguous(memory_format=torch.channels_last)
        with torch.no_grad():  # not inference_mode: the first call traces the network
            cls = self.forward(t)[0, :, :H, :W].argmax(0).to(torch.uint8).numpy()
        return np.where(ri.valid, cls, np.uint8(IGNORE_ID))

    def forward(self, x: Any) -> Any:
        """Logits of a (1, C, H, W) input: the frozen trace for its shape (made on first use), or eager mode."""
        if not self.use_trace:
            return self.net(x)
        key = tuple(x.shape)
        with self._trace_lock:
            if key not in self.traced:
                from scmpr_ros.model.range_segnet import freeze_for_inference

                self.traced[key] = freeze_for_inference(self.net, x)
        return self.traced[key](x)

    def segment_points(self, points: np.ndarray) -> np.ndarray:
        proj = project_scan(self.projector, points)
        return point_labels(self.predict_image(proj.image), proj, self.knn)

    def segment(self, sequence: Any, index: int, points: np.ndarray) -> np.ndarray:
        return self.segment_points(points)


def default_segmenter_weights() -> Path:
    """The shipped weights: models/range_segnet.pt (the CNN), else models/range_segmenter.npz (the MLP)."""
    models = default_models_dir()
    cnn = models / "range_segnet.pt"
    return cnn if cnn.is_file() else models / "range_segmenter.npz"


def load_segmenter(path: str | Path, cfg: LidarConfig) -> RangeImageSegmenter | RangeSegNetSegmenter:
    """A learned segmenter from its weights file: ``.npz`` the MLP, otherwise the CNN."""
    if Path(path).suffix == ".npz":
        return RangeImageSegmenter.load(path, cfg)
    return RangeSegNetSegmenter.load(path, cfg)


def make_segmenter(cfg: LidarConfig, sequence: Any) -> PointSegmenter:
    """The segmenter ``lidar.segmentation`` asks for, or a DatasetError / CheckpointError saying what is missing."""
    if cfg.segmentation not in SEGMENTATION_MODES:
        raise InputError(f"lidar.segmentation '{cfg.segmentation}' unknown (use {' | '.join(SEGMENTATION_MODES)})")
    where = f"{getattr(sequence, 'root', '?')} sequence {getattr(sequence, 'name', '?')}"
    if cfg.segmentation == "ground_truth":
        if getattr(sequence, "has_labels", False):
            return GroundTruthSegmenter()
        if cfg.segmenter_weights:
            return load_segmenter(cfg.segmenter_weights, cfg)
        raise DatasetError(
            f"{where} has no per-point labels (labels/*.label) and no segmenter weights are set: "
            "set lidar.segmentation: learned and lidar.segmenter_weights: models/range_segnet.pt "
            "(or train one with `scmpr train-segmenter` on a labelled dataset), or use a labelled sequence"
        )
    if not cfg.segmenter_weights:
        raise DatasetError(
            "lidar.segmentation is 'learned' but lidar.segmenter_weights is empty: point it at "
            "models/range_segnet.pt or at weights from `scmpr train-segmenter`"
        )
    return load_segmenter(cfg.segmenter_weights, cfg)
