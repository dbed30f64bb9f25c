"""3D semantic segmentation of scans, pluggable (paper eq. 5: S_LiDAR = Project(3DSegmentation(P))).

* ``ground_truth``: the dataset's per-point labels (SemanticKITTI / KITTI-360 / synthetic), already
  mapped to the common classes by the dataset loader (scmpr_ros.semantics).
* ``learned``: a range-image segmenter trained by the project: a per-pixel MLP over the encoder
  channels plus local height context (numpy inference; weights in a ``.npz``); each point takes the
  class predicted for its pixel.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scmpr_ros.config import LidarConfig
from scmpr_ros.errors import DatasetError, InputError
from scmpr_ros.lidar.range_image import RangeImage, RangeProjector, encoder_input
from scmpr_ros.semantics import CLASS_NAMES, IGNORE_ID, NUM_CLASSES

SEGMENTATION_MODES = ("ground_truth", "learned")
SEGMENTER_FORMAT = "scmpr-range-segmenter"
SEGMENTER_VERSION = 3  # 3: 14 pixel features


class PointSegmenter(Protocol):
    """Per-point common class ids (uint8, IGNORE_ID for none) of frame ``index`` of a sequence."""

    name: str

    def segment(self, sequence: Any, index: int, points: np.ndarray) -> np.ndarray: ...


class GroundTruthSegmenter:
    name = "ground_truth"

    def segment(self, sequence: Any, index: int, points: np.ndarray) -> np.ndarray:
        labels = np.asarray(sequence.load_labels(index))
        if labels.shape != (len(points),):
            raise DatasetError(
                f"{getattr(sequence, 'root', '?')} sequence {getattr(sequence, 'name', '?')} frame {index}: "
                f"{labels.shape[0] if labels.ndim else 0} labels for {len(points)} points; the labels/ and velodyne/ "
                "files do not belong together"
            )
        return labels.astype(np.uint8, copy=False)


# -- learned range-image segmenter ----------------------------------------------------------------
def _local_reduce(a: np.ndarray, rows: int, cols: int, fn) -> np.ndarray:
    """fn (np.min / np.max) over a rows x cols window (edge-padded, columns wrap), separable."""
    hr, hc = rows // 2, cols // 2
    p = np.pad(a, ((hr, hr), (0, 0)), mode="edge")
    r = fn(np.stack([p[i : i + a.shape[0]] for i in range(rows)]), axis=0)
    p = np.concatenate([r[:, -hc:], r, r[:, :hc]], axis=1) if hc else r
    return fn(np.stack([p[:, j : j + a.shape[1]] for j in range(cols)]), axis=0)


def _local_mean(a: np.ndarray, w: np.ndarray, size: int) -> np.ndarray:
    """Weighted mean over a size x size window (weights w, e.g. the valid mask)."""
    h = size // 2

    def box(x):
        x = np.pad(x, ((h, h), (h, h)), mode="constant")
        c = np.cumsum(np.cumsum(x, 0), 1)
        c = np.pad(c, ((1, 0), (1, 0)))
        return c[size:, size:] - c[:-size, size:] - c[size:, :-size] + c[:-size, :-size]

    return box(a * w) / np.maximum(box(w.astype(np.float64)), 1e-9)


def pixel_features(ri: RangeImage, cfg: LidarConfig) -> np.ndarray:
    """(H, W, F) float32 pixel features: the encoder channels; height above the lowest point of a
    9 x 9 and a 5 x 41 window (ground proxies); height of the highest point above the pixel in a
    9 x 9 window and in its 3 columns (walls vs buildings); range roughness (3 x 3 std / range);
    normal spread (1 - |mean normal| over 5 x 5); log range."""
    v = ri.valid
    x = np.moveaxis(encoder_input(ri, cfg), 0, -1)
    z = ri.xyz[..., 2].astype(np.float64)
    zlo = np.where(v, z, np.inf)
    zhi = np.where(v, z, -np.inf)
    feats = [x]
    for rows, cols in ((9, 9), (5, 41)):
        zmin = _local_reduce(zlo, rows, cols, np.min)
        feats.append((np.where(v & np.isfinite(zmin), np.clip(z - zmin, 0, 10), 0.0) / 5.0)[..., None])
    for rows, cols in ((9, 9), (2 * ri.height - 1, 3)):  # local overhang; the whole column above
        zmax = _local_reduce(zhi, rows, cols, np.max)
        feats.append((np.where(v & np.isfinite(zmax), np.clip(zmax - z, 0, 10), 0.0) / 5.0)[..., None])
    r = ri.range.astype(np.float64)
    m1 = _local_mean(r, v, 3)
    m2 = _local_mean(r * r, v, 3)
    rough = np.sqrt(np.maximum(m2 - m1 * m1, 0)) / np.maximum(r, 1e-3)
    feats.append(np.where(v, np.clip(rough, 0, 1) * 5.0, 0.0)[..., None])
    nm = np.stack([_local_mean(ri.normals[..., k].astype(np.float64), v, 5) for k in range(3)], -1)
    feats.append(np.where(v, 1.0 - np.linalg.norm(nm, axis=-1), 0.0)[..., None])
    feats.append((np.where(v, np.log1p(r), 0.0) / 4.0)[..., None])
    return np.concatenate(feats, -1).astype(np.float32)


class RangeImageSegmenter:
    """MLP (F -> hidden -> hidden -> N_S, ReLU) over pixel_features; weights from ``save``."""

    name = "learned"

    def __init__(self, weights: dict[str, np.ndarray], cfg: LidarConfig, source: str = "<memory>"):
        self.cfg = cfg
        self.projector = RangeProjector(cfg)
        self.source = source
        try:
            self.layers = [
                (np.asarray(weights[f"W{i}"], np.float32), np.asarray(weights[f"b{i}"], np.float32)) for i in range(3)
            ]
            self.mean = np.asarray(weights["mean"], np.float32)
            self.std = np.asarray(weights["std"], np.float32)
        except KeyError as exc:
            raise DatasetError(f"{source}: segmenter weights lack {exc}; retrain with `scmpr train-segmenter`") from exc
        if self.layers[-1][0].shape[1] != NUM_CLASSES:
            raise DatasetError(
                f"{source}: segmenter predicts {self.layers[-1][0].shape[1]} classes, expected {NUM_CLASSES}"
            )

    @classmethod
    def load(cls, path: str | Path, cfg: LidarConfig) -> RangeImageSegmenter:
        path = Path(path)
        if not path.is_file():
            raise DatasetError(
                f"segmenter weights not found: {path} (lidar.segmenter_weights); train them with "
                "`scmpr train-segmenter`"
            )
        try:
            with np.load(path, allow_pickle=False) as z:
                data = {k: z[k] for k in z.files}
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: not a segmenter weights file ({exc})") from exc
        if str(data.get("format", "")) != SEGMENTER_FORMAT or int(data.get("version", -1)) != SEGMENTER_VERSION:
            raise DatasetError(
                f"{path}: not a {SEGMENTER_FORMAT} v{SEGMENTER_VERSION} file; retrain with `scmpr train-segmenter`"
            )
        return cls(data, cfg, str(path))

    def save(self, path: str | Path) -> None:
        from scmpr_ros.io_utils import atomic_write

        arrays = {f"W{i}": w for i, (w, _) in enumerate(self.layers)}
        arrays.update({f"b{i}": b for i, (_, b) in enumerate(self.layers)})
        arrays.update(
            mean=self.mean,
            std=self.std,
            format=np.array(SEGMENTER_FORMAT),
            version=np.array(SEGMENTER_VERSION),
            classes=np.array(CLASS_NAMES),
        )
        with atomic_write(path, "wb") as fh:
            np.savez(fh, **arrays)

    def logits(self, feats: np.ndarray) -> np.ndarray:
        h = (feats - self.mean) / self.std
        for i, (w, b) in enumerate(self.layers):
            h = h @ w + b
            if i < len(self.layers) - 1:
                np.maximum(h, 0, out=h)
        return h

    def predict_image(self, ri: RangeImage) -> np.ndarray:
        """(H, W) uint8 predicted classes, IGNORE_ID where the pixel is empty."""
        out = np.full(ri.range.shape, IGNORE_ID, np.uint8)
        f = pixel_features(ri, self.cfg)[ri.valid]
        if len(f):
            out[ri.valid] = np.argmax(self.logits(f), axis=1).astype(np.uint8)
        return out

    def segment(self, sequence: Any, index: int, points: np.ndarray) -> np.ndarray:
        return self.segment_points(points)

    def segment_points(self, points: np.ndarray) -> np.ndarray:
        ri = self.projector.project(points)
        pred = self.predict_image(ri)
        rows, cols, _, ok = self.projector.pixel_coords(np.asarray(points)[:, :3].astype(np.float32))
        labels = np.full(len(points), IGNORE_ID, np.uint8)
        labels[ok] = pred[rows[ok], cols[ok]]
        return labels


def make_segmenter(cfg: LidarConfig, sequence: Any) -> PointSegmenter:
    """The segmenter ``lidar.segmentation`` asks for, or a DatasetError saying what is missing."""
    if cfg.segmentation not in SEGMENTATION_MODES:
        raise InputError(f"lidar.segmentation '{cfg.segmentation}' unknown (use {' | '.join(SEGMENTATION_MODES)})")
    where = f"{getattr(sequence, 'root', '?')} sequence {getattr(sequence, 'name', '?')}"
    if cfg.segmentation == "ground_truth":
        if getattr(sequence, "has_labels", False):
            return GroundTruthSegmenter()
        if cfg.segmenter_weights:
            return RangeImageSegmenter.load(cfg.segmenter_weights, cfg)
        raise DatasetError(
            f"{where} has no per-point labels (labels/*.label) and no segmenter weights are set: "
            "set lidar.segmentation: learned and lidar.segmenter_weights: <file.npz> "
            "(train one with `scmpr train-segmenter` on a labelled dataset), or use a labelled sequence"
        )
    if not cfg.segmenter_weights:
        raise DatasetError(
            "lidar.segmentation is 'learned' but lidar.segmenter_weights is empty: "
            "point it at weights from `scmpr train-segmenter`"
        )
    return RangeImageSegmenter.load(cfg.segmenter_weights, cfg)


def train_range_segmenter(
    range_images: list[RangeImage],
    cfg: LidarConfig,
    hidden: int = 64,
    steps: int = 1500,
    batch: int = 4096,
    lr: float = 3e-3,
    seed: int = 0,
) -> RangeImageSegmenter:
    """Fit the pixel MLP with Adam on softmax cross-entropy; pixels sampled class-balanced."""
    rng = np.random.default_rng(seed)
    feats, labels = [], []
    for ri in range_images:
        ok = ri.valid & (ri.labels != IGNORE_ID)
        feats.append(pixel_features(ri, cfg)[ok])
        labels.append(ri.labels[ok].astype(np.int64))
    X = np.concatenate(feats) if feats else np.zeros((0, 1), np.float32)
    y = np.concatenate(labels) if labels else np.zeros(0, np.int64)
    if len(y) < 100:
        raise DatasetError(f"only {len(y)} labelled pixels to train the segmenter on; give it labelled scans")
    mean, std = X.mean(0), X.std(0) + 1e-3
    Xn = (X - mean) / std
    counts = np.bincount(y, minlength=NUM_CLASSES).astype(np.float64)
    # rare classes over-sampled: class mass ~ count^0.4 instead of count (1 = plain, 0 = balanced)
    p = np.where(counts > 0, np.maximum(counts, 1) ** -0.6, 0.0)[y]
    p /= p.sum()
    dims = [X.shape[1], hidden, hidden, NUM_CLASSES]
    params = []
    for i in range(3):
        params.append(rng.normal(0, np.sqrt(2.0 / dims[i]), (dims[i], dims[i + 1])).astype(np.float32))
        params.append(np.zeros(dims[i + 1], np.float32))
    m = [np.zeros_like(q) for q in params]
    v = [np.zeros_like(q) for q in params]
    b1, b2 = 0.9, 0.999
    for step in range(1, steps + 1):
        idx = rng.choice(len(y), size=min(batch, len(y)), p=p)
        xb, yb = Xn[idx], y[idx]
        acts = [xb]
        h = xb
        for i in range(3):
            h = h @ params[2 * i] + params[2 * i + 1]
            if i < 2:
                h = np.maximum(h, 0)
            acts.append(h)
        z = acts[-1] - acts[-1].max(1, keepdims=True)
        prob = np.exp(z)
        prob /= prob.sum(1, keepdims=True)
        g = prob
        g[np.arange(len(yb)), yb] -= 1.0
        g /= len(yb)
        grads = [None] * 6
        for i in (2, 1, 0):
            grads[2 * i] = acts[i].T @ g
            grads[2 * i + 1] = g.sum(0)
            if i > 0:
                g = (g @ params[2 * i].T) * (acts[i] > 0)
        a = lr * (0.5 * (1 + np.cos(np.pi * step / steps)))  # cosine decay
        for j in range(6):
            m[j] = b1 * m[j] + (1 - b1) * grads[j]
            v[j] = b2 * v[j] + (1 - b2) * grads[j] ** 2
            params[j] -= (a * (m[j] / (1 - b1**step)) / (np.sqrt(v[j] / (1 - b2**step)) + 1e-8)).astype(np.float32)
    weights = {f"W{i}": params[2 * i] for i in range(3)} | {f"b{i}": params[2 * i + 1] for i in range(3)}
    weights.update(mean=mean.astype(np.float32), std=std.astype(np.float32))
    return RangeImageSegmenter(weights, cfg)


def segmentation_miou(pred: np.ndarray, truth: np.ndarray) -> tuple[float, dict[str, float]]:
    """Mean IoU over the classes present in ``truth`` (IGNORE_ID excluded) and the per-class IoUs."""
    ok = truth != IGNORE_ID
    p, t = pred[ok].astype(np.int64), truth[ok].astype(np.int64)
    per = {}
    for c in np.unique(t):
        inter = np.sum((p == c) & (t == c))
        union = np.sum((p == c) | (t == c))
        per[CLASS_NAMES[c]] = float(inter / union) if union else 0.0
    return (float(np.mean(list(per.values()))) if per else 0.0), per


@dataclass
class SegmentationScore:
    """Per-class IoU over all labelled points of the scans scored (classes present in the labels)."""

    per_class: dict[str, float]
    points: int  # labelled points scored
    scans: int

    @property
    def miou(self) -> float:
        return float(np.mean(list(self.per_class.values()))) if self.per_class else 0.0


def evaluate_segmenter(
    segmenter: Any, sequence: Any, stride: int = 1, progress: Callable[[int, int], None] | None = None
) -> SegmentationScore:
    """Score ``segmenter.segment_points`` against a labelled sequence's per-point labels, scan by scan
    (intersections and unions are summed, so the result equals segmentation_miou over all points)."""
    if not getattr(sequence, "has_labels", False):
        raise DatasetError(
            f"{getattr(sequence, 'root', '?')} sequence {getattr(sequence, 'name', '?')} has no per-point labels "
            "(labels/*.label): score a segmenter on a labelled sequence (SemanticKITTI, KITTI-360, synthetic)"
        )
    frames = range(0, sequence.num_frames, max(1, int(stride)))
    inter = np.zeros(NUM_CLASSES, np.int64)
    pred_count = np.zeros(NUM_CLASSES, np.int64)
    truth_count = np.zeros(NUM_CLASSES, np.int64)
    points = 0
    for n, i in enumerate(frames):
        truth = np.asarray(sequence.load_labels(i))
        pred = np.asarray(segmenter.segment_points(sequence.load_scan(i)))
        ok = truth != IGNORE_ID
        t, q = truth[ok].astype(np.int64), pred[ok].astype(np.int64)
        q = np.where(q < NUM_CLASSES, q, NUM_CLASSES)  # IGNORE_ID predictions count as wrong for every class
        inter += np.bincount(t[t == q], minlength=NUM_CLASSES)[:NUM_CLASSES]
        truth_count += np.bincount(t, minlength=NUM_CLASSES)[:NUM_CLASSES]
        pred_count += np.bincount(q, minlength=NUM_CLASSES + 1)[:NUM_CLASSES]
        points += int(ok.sum())
        if progress is not None:
            progress(n + 1, len(frames))
    union = pred_count + truth_count - inter
    present = np.flatnonzero(truth_count)
    per = {CLASS_NAMES[c]: float(inter[c] / union[c]) for c in present}
    return SegmentationScore(per, points, len(frames))
