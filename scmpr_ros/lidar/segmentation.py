"""3D semantic segmentation of scans, pluggable (paper eq. 5: S_LiDAR = Project(3DSegmentation(P))).

* ``ground_truth``: the dataset's per-point labels (SemanticKITTI / KITTI-360 / synthetic), already
  mapped to the common classes by the dataset loader (scmpr_ros.semantics).
* ``learned``: a range-image segmenter trained by the project, chosen by ``make_segmenter``
  (scmpr_ros/mapping/segmenters.py): the RangeSegNet CNN (scmpr_ros/model/range_segnet.py, a ``.pt``
  file) or the older per-pixel MLP over the encoder channels plus local height context (numpy, a
  ``.npz`` file, kept as a fallback).

This module holds the numpy parts: the scan projection with every point's pixel (``project_scan``),
the CNN's raw input channels (``segnet_input``), the per-point look-up with RangeNet++'s k-nearest-
neighbour clean-up (``point_labels``), the MLP, and the metrics (``evaluate_segmenter``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from scmpr_ros.config import LidarConfig
from scmpr_ros.errors import DatasetError, InputError
from scmpr_ros.lidar.range_image import (
    RangeImage,
    RangeProjector,
    encoder_input,
    range_image_from_pixels,
)
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


# -- projection, network inputs and the k-NN clean-up shared by the learned segmenters ---------------
SEGNET_CHANNELS: tuple[str, ...] = (
    "range",
    "x",
    "y",
    "z",
    "reflectance",
    "normal_x",
    "normal_y",
    "normal_z",
    "valid",
)


@dataclass
class ScanProjection:
    """A scan's range image and every point's pixel.  Points outside the image (above / below the vertical
    field of view, beyond max_range) get the nearest row of their column (``in_view`` False); points with
    no direction (not finite, at the origin, nearer than min_range) get row -1."""

    image: RangeImage
    rows: np.ndarray  # (M,) int64, -1 where the point has no pixel
    cols: np.ndarray  # (M,) int64
    ranges: np.ndarray  # (M,) float32 metres
    in_view: np.ndarray  # (M,) bool: the point took part in the projection


def _nearest_pixels(projector: RangeProjector, xyz: np.ndarray, r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) of points outside the image: their column, the row clamped into the image; -1 rows where
    the point has no direction or is nearer than min_range."""
    with np.errstate(invalid="ignore", divide="ignore"):
        yaw = np.arctan2(xyz[:, 1], xyz[:, 0])
        pitch = np.arcsin(np.clip(xyz[:, 2] / r, -1.0, 1.0))
    rowf = (projector.fov_up - pitch) / projector.fov * projector.H
    ok = np.isfinite(r) & np.isfinite(rowf) & (r >= projector.cfg.min_range_m) & (r > 0)
    rows = np.where(ok, np.clip(np.floor(np.where(ok, rowf, 0)), 0, projector.H - 1), -1).astype(np.int64)
    cols = np.floor(np.where(ok, 0.5 * (1.0 - yaw / np.pi) * projector.W, 0)).astype(np.int64) % projector.W
    return rows, cols


def project_scan(projector: RangeProjector, points: np.ndarray, labels: np.ndarray | None = None) -> ScanProjection:
    """``projector.project`` plus the per-point pixels, with one ``pixel_coords`` pass and the nearest point
    per pixel found by a per-pixel minimum instead of a sort (same image up to equal-range ties)."""
    pts = np.asarray(points)
    if pts.ndim != 2 or pts.shape[1] not in (3, 4):
        raise InputError(f"points must be (M, 3) or (M, 4) x,y,z[,reflectance], got shape {pts.shape}")
    H, W = projector.H, projector.W
    xyz_all = pts[:, :3].astype(np.float32, copy=False)
    rows, cols, r, ok = projector.pixel_coords(xyz_all)
    r = r.astype(np.float32, copy=False)
    idx = np.flatnonzero(ok)
    lin = rows[idx] * W + cols[idx]
    best = np.full(H * W, np.inf, np.float32)
    np.minimum.at(best, lin, r[idx])
    win = r[idx] <= best[lin]
    point_index = np.full(H * W, -1, np.int64)
    point_index[lin[win]] = idx[win]
    pixels = np.flatnonzero(point_index >= 0)
    src = point_index[pixels]
    image = range_image_from_pixels(
        H,
        W,
        pixels,
        r[src],
        xyz_all[src],
        pts[src, 3] if pts.shape[1] == 4 else None,
        np.asarray(labels)[src] if labels is not None else None,
        src,
    )
    out = np.flatnonzero(~ok)
    if len(out):
        rows[out], cols[out] = _nearest_pixels(projector, xyz_all[out], r[out])
    return ScanProjection(image, rows, cols, r, ok)


def segnet_input(ri: RangeImage) -> np.ndarray:
    """(len(SEGNET_CHANNELS), H, W) float32 raw network inputs: range and x, y, z in metres, reflectance,
    the unit normal, the validity mask; 0 on empty pixels (normalisation is the network file's)."""
    out = np.empty((len(SEGNET_CHANNELS), ri.height, ri.width), np.float32)
    out[0] = ri.range
    out[1:4] = np.moveaxis(ri.xyz, -1, 0)
    out[4] = ri.reflectance
    out[5:8] = np.moveaxis(ri.normals, -1, 0)
    out[8] = ri.valid
    out[:8] *= ri.valid
    return out


@dataclass(frozen=True)
class KnnCleanup:
    """RangeNet++'s post-processing: each point votes among the ``k`` pixels of a ``rows`` x ``cols``
    neighbourhood of its pixel whose range is nearest to its own, ignoring those more than ``cutoff_m``
    away in range; a point with no vote keeps its pixel's class.  k = 0 disables it.  The window is wider
    than high: a 2000-column scan puts two points in each of the 1024 columns, and thin upright objects
    (poles, signs, people) hide what is behind them within a column or two."""

    k: int = 5
    rows: int = 3
    cols: int = 5
    cutoff_m: float = 1.0


def _padded(a: np.ndarray, hr: int, hc: int, fill) -> np.ndarray:
    """``a`` padded by hr rows of ``fill`` above and below and hc wrapped columns left and right."""
    p = np.pad(a, ((hr, hr), (0, 0)), constant_values=fill)
    return np.concatenate([p[:, p.shape[1] - hc :], p, p[:, :hc]], 1) if hc else p


def _foreign_range_bounds(pred: np.ndarray, rng: np.ndarray, valid: np.ndarray, knn: KnnCleanup):
    """(lo, hi) per pixel: the least and greatest range of the window's valid pixels whose class differs from
    the pixel's (inf / -inf where there is none).  A point whose range is more than cutoff_m outside
    [lo, hi] has only its own pixel's class among the votes it could get, so the vote can be skipped."""
    H, W = pred.shape
    hr, hc = knn.rows // 2, knn.cols // 2
    rp = _padded(np.where(valid, rng, np.nan).astype(np.float32), hr, hc, np.nan)
    lp = _padded(pred, hr, hc, IGNORE_ID)
    lo = np.full((H, W), np.inf, np.float32)
    hi = np.full((H, W), -np.inf, np.float32)
    for dr in range(-hr, hr + 1):
        for dc in range(-hc, hc + 1):
            r = rp[hr + dr : hr + dr + H, hc + dc : hc + dc + W]
            foreign = lp[hr + dr : hr + dr + H, hc + dc : hc + dc + W] != pred
            np.fmin(lo, np.where(foreign, r, np.nan), out=lo)  # fmin / fmax skip the NaN of empty pixels
            np.fmax(hi, np.where(foreign, r, np.nan), out=hi)
    return lo, hi


def point_labels(pred: np.ndarray, proj: ScanProjection, knn: KnnCleanup | None = None) -> np.ndarray:
    """Per-point classes from the (H, W) predicted image: each point's pixel (IGNORE_ID for a point without
    one), then (``knn``) the k-NN vote for the points that have a pixel of another class within cutoff_m of
    their range in their window (for the others every vote would be their pixel's class: same result)."""
    labels = np.full(len(proj.rows), IGNORE_ID, np.uint8)
    has = np.flatnonzero(proj.rows >= 0)
    rows, cols = proj.rows[has], proj.cols[has]
    labels[has] = pred[rows, cols]
    if knn is None or knn.k <= 0 or not len(has):
        return labels
    ri = proj.image
    lo, hi = _foreign_range_bounds(pred, ri.range, ri.valid, knn)
    r = proj.ranges[has]
    sel = has[(r >= lo[rows, cols] - knn.cutoff_m) & (r <= hi[rows, cols] + knn.cutoff_m)]
    if len(sel):
        labels[sel] = _knn_vote(pred, ri.range, ri.valid, proj.rows[sel], proj.cols[sel], proj.ranges[sel], knn)
    return labels


def _knn_vote(pred, rng, valid, rows, cols, ranges, knn: KnnCleanup) -> np.ndarray:
    """Vectorised k-NN vote of ``len(rows)`` points (see KnnCleanup).  The image is padded (rows: empty,
    columns: wrapped) so that every window offset is one gather from the flat image; the k nearest are those
    at or below the k-th smallest range distance (np.partition; distances made distinct by a small
    tie-break towards the window centre)."""
    H, W = pred.shape
    hr, hc = knn.rows // 2, knn.cols // 2
    Wp = W + 2 * hc
    rp = _padded(np.where(valid, rng, np.inf).astype(np.float32), hr, hc, np.inf).ravel()
    lp = _padded(pred, hr, hc, IGNORE_ID).ravel()
    offsets = [(dr * Wp + dc, 1e-4 * (abs(dr) + abs(dc))) for dr in range(-hr, hr + 1) for dc in range(-hc, hc + 1)]
    base = ((rows + hr) * Wp + cols + hc).astype(np.int32)
    dist = np.empty((len(rows), len(offsets)), np.float32)
    for j, (off, tie) in enumerate(offsets):
        np.abs(rp[base + off] - ranges, out=dist[:, j])
        dist[:, j] += tie
    k = min(knn.k, len(offsets))
    thr = np.minimum(np.partition(dist, k - 1, axis=1)[:, k - 1], knn.cutoff_m)
    votes = np.zeros(len(rows) * NUM_CLASSES, np.float32)
    for j, (off, _) in enumerate(offsets):  # one point appears once per offset: plain fancy-index adds
        hit = np.flatnonzero(dist[:, j] <= thr)
        lab = np.minimum(lp[base[hit] + off], NUM_CLASSES - 1)
        votes[hit * NUM_CLASSES + lab] += 1.0 + 1e-3 / (1.0 + dist[hit, j])  # equal counts: the nearer wins
    votes = votes.reshape(len(rows), NUM_CLASSES)
    own = pred[rows, cols]
    return np.where(votes.max(1) > 0, votes.argmax(1), own).astype(np.uint8)


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
        """Each point takes its pixel's class (no k-NN clean-up: the MLP as it was measured)."""
        proj = project_scan(self.projector, points)
        return point_labels(self.predict_image(proj.image), proj, knn=None)


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
