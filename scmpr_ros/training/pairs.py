"""Cross-modal training pairs: a camera image and the LiDAR range image at the same pose.

This module builds and stores the pair cache; :mod:`scmpr_ros.training.batches` samples training
batches from it.

Per frame of a sequence with images, scans and poses: the scan is projected to a range image and
cropped to the camera's horizontal FOV (``lidar.crop_to_camera_fov``), as ``build-map`` renders a
map viewpoint at a mapped pose; the image is resized to the encoder input; sparse segmentation labels
for the image come from the LiDAR points (labelled by the same segmenter as the map) projected with
the calibration, u ~ K · T_cam_velo · p (nearest point wins, IGNORE_ID elsewhere).
Camera-only passes (synthetic night / winter) share the poses of a pass with scans and are stored
as extra images of the same place (``image_present`` says which conditions a place has).
Everything is precomputed once into a :class:`PairCache` (one ``.npz``) so that epochs are cheap.

Map-render positives (``training.map_render_positives``, off by default): the cache also holds, per
frame, the range image rendered from the town's accumulated mapping-pass map at the frame's pose (the
``build-map`` renderer in "map" mode, cropped to the camera FOV); :mod:`~scmpr_ros.training.batches`
draws it instead of the scan with that probability.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from scmpr_ros.config import ScmprConfig
from scmpr_ros.errors import DatasetError, ScmprError
from scmpr_ros.io_utils import atomic_write_bytes
from scmpr_ros.semantics import IGNORE_ID

CACHE_VERSION = 1
TOWN_OFFSET_M = 1.0e6  # places of different towns / datasets are never near each other


class PairsError(ScmprError):
    """Training data that cannot be turned into cross-modal pairs."""


# --------------------------------------------------------------------------------------------
# Geometry helpers
# --------------------------------------------------------------------------------------------
def project_labels_to_image(
    points_velo: np.ndarray,
    labels: np.ndarray,
    T_cam_velo: np.ndarray,
    K: np.ndarray,
    image_size: tuple[int, int],
    out_hw: tuple[int, int],
    min_depth_m: float = 0.5,
) -> np.ndarray:
    """(H_out, W_out) uint8 sparse label image: LiDAR labels projected into the camera.

    ``image_size`` = (width, height) of the camera image that K refers to; pixel coordinates are
    scaled to the output grid (the encoder input, a plain resize of the camera image).
    """
    pts = np.asarray(points_velo, dtype=np.float64)[:, :3]
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != pts.shape[0]:
        raise PairsError(f"{pts.shape[0]} points but {labels.shape[0]} labels")
    w_img, h_img = int(image_size[0]), int(image_size[1])
    h_out, w_out = int(out_hw[0]), int(out_hw[1])
    out = np.full((h_out, w_out), IGNORE_ID, dtype=np.uint8)
    if pts.shape[0] == 0:
        return out
    cam = pts @ np.asarray(T_cam_velo, dtype=np.float64)[:3, :3].T + np.asarray(T_cam_velo)[:3, 3]
    keep = (cam[:, 2] > min_depth_m) & (labels != IGNORE_ID)
    cam, lab = cam[keep], labels[keep]
    uvw = cam @ np.asarray(K, dtype=np.float64).T
    u = uvw[:, 0] / uvw[:, 2] * (w_out / w_img)
    v = uvw[:, 1] / uvw[:, 2] * (h_out / h_img)
    inside = (u >= 0) & (u < w_out) & (v >= 0) & (v < h_out)
    u, v, z, lab = u[inside].astype(np.int64), v[inside].astype(np.int64), cam[inside, 2], lab[inside]
    lin = v * w_out + u
    order = np.lexsort((z, lin))  # by pixel, then depth: first of each pixel is the nearest
    lin_s = lin[order]
    first = np.ones(lin_s.shape, dtype=bool)
    first[1:] = lin_s[1:] != lin_s[:-1]
    out.reshape(-1)[lin_s[first]] = lab[order[first]]
    return out


def resize_image(rgb: np.ndarray, out_hw: tuple[int, int]) -> np.ndarray:
    import cv2

    h, w = out_hw
    if rgb.shape[:2] == (h, w):
        return np.ascontiguousarray(rgb)
    interp = cv2.INTER_AREA if rgb.shape[0] > h else cv2.INTER_LINEAR
    return cv2.resize(rgb, (w, h), interpolation=interp)


# --------------------------------------------------------------------------------------------
# The cache
# --------------------------------------------------------------------------------------------
@dataclass
class PairCache:
    """All training pairs of one or more datasets, in memory (see module docstring)."""

    images: np.ndarray  # (F, K, H, W, 3) uint8, K = len(conditions)
    image_present: np.ndarray  # (F, K) bool
    conditions: tuple[str, ...]
    image_labels: np.ndarray  # (F, H, W) uint8 sparse (IGNORE_ID where no LiDAR point)
    range_input: np.ndarray  # (F, C, Hr, Wr) float16
    range_labels: np.ndarray  # (F, Hr, Wr) uint8
    positions: np.ndarray  # (F, 3) float64 world position of the LiDAR at the frame
    yaw: np.ndarray  # (F,) float64 heading of the LiDAR (rad)
    group: np.ndarray  # (F,) int32 index of the source dataset (town)
    role: np.ndarray  # (F,) uint8: 0 = map pass, 1 = query pass, 2 = either (no manifest)
    frame: np.ndarray  # (F,) int32 frame index in its sequence
    sequence: np.ndarray  # (F,) '<U16' sequence name (of the scan pass)
    meta: dict = field(default_factory=dict)
    # map-render positives (None when the cache was built without them): the LiDAR side rendered from
    # the town's mapping-pass map at the frame's pose, same layout as range_input / range_labels
    render_input: np.ndarray | None = None  # (F, C, Hr, Wr) float16
    render_labels: np.ndarray | None = None  # (F, Hr, Wr) uint8
    render_present: np.ndarray | None = None  # (F,) bool: a render covering the view exists

    @property
    def has_renders(self) -> bool:
        return self.render_present is not None and bool(self.render_present.any())

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_hw(self) -> tuple[int, int]:
        return int(self.images.shape[2]), int(self.images.shape[3])

    def separated_positions(self) -> np.ndarray:
        """Positions with each group moved far away, so distances across datasets are huge."""
        out = self.positions.copy()
        out[:, 0] += self.group.astype(np.float64) * TOWN_OFFSET_M
        return out

    def subset(self, idx: np.ndarray) -> PairCache:
        idx = np.asarray(idx)
        return PairCache(
            images=self.images[idx],
            image_present=self.image_present[idx],
            conditions=self.conditions,
            image_labels=self.image_labels[idx],
            range_input=self.range_input[idx],
            range_labels=self.range_labels[idx],
            positions=self.positions[idx],
            yaw=self.yaw[idx],
            group=self.group[idx],
            role=self.role[idx],
            frame=self.frame[idx],
            sequence=self.sequence[idx],
            meta=dict(self.meta),
            **{k: None if getattr(self, k) is None else getattr(self, k)[idx] for k in _RENDER_FIELDS},
        )

    def save(self, path: str | Path, compress: bool = True, compact: bool = False) -> Path:
        """``compact``: JPEG images (quality 92) and quantised range channels (range 1/65535 of
        max_range, z 1/3000 of 10 m, reflectance 1/255, normals 1/127): ~4x smaller, for moving a
        cache to another machine; everything else is stored exactly."""
        arrays = {k: getattr(self, k) for k in _ARRAY_FIELDS}
        arrays.update({k: getattr(self, k) for k in _RENDER_FIELDS if getattr(self, k) is not None})
        if compact:
            arrays.update(_compact_arrays(self))
        arrays["conditions"] = np.array(self.conditions)
        meta = {"version": CACHE_VERSION, **self.meta, "compact": bool(compact)}
        arrays["meta_json"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        buf = io.BytesIO()
        (np.savez_compressed if compress else np.savez)(buf, **arrays)
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> PairCache:
        path = Path(path)
        if not path.is_file():
            raise PairsError(f"pair cache not found: {path}")
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(bytes(z["meta_json"]).decode())
                conditions = tuple(str(c) for c in z["conditions"])
                if meta.get("compact"):
                    arrays = {k: z[k] for k in _ARRAY_FIELDS if k not in ("images", "range_input")}
                    arrays.update(_expand_arrays(z, len(conditions)))
                else:
                    arrays = {k: z[k] for k in _ARRAY_FIELDS}
                for k in _RENDER_FIELDS:  # optional (caches without map renders lack them)
                    if k in z.files and k not in arrays:
                        arrays[k] = z[k]
        except (KeyError, ValueError, OSError) as exc:
            raise PairsError(f"{path}: not a pair cache or corrupt ({exc}); delete it and rebuild") from exc
        if meta.get("version") != CACHE_VERSION:
            raise PairsError(
                f"{path}: pair cache version {meta.get('version')} != {CACHE_VERSION}; delete it and rebuild"
            )
        meta.pop("version", None)
        meta.pop("compact", None)
        return cls(conditions=conditions, meta=meta, **arrays)

    @classmethod
    def concatenate(cls, caches: Sequence[PairCache]) -> PairCache:
        if not caches:
            raise PairsError("no training data: no cache to concatenate")
        conds: list[str] = []
        for c in caches:
            conds += [k for k in c.conditions if k not in conds]
        shapes = {(c.image_hw, c.range_input.shape[1:]) for c in caches}
        if len(shapes) != 1:
            raise PairsError(
                f"caches disagree on image / range-image shapes: {sorted(shapes)}; rebuild with one config"
            )
        parts: dict[str, list[np.ndarray]] = {k: [] for k in _ARRAY_FIELDS}
        with_renders = any(c.render_present is not None for c in caches)
        if with_renders:
            parts.update({k: [] for k in _RENDER_FIELDS})
        offset = 0
        for c in caches:
            if with_renders:  # a cache without renders joins with none present
                none = c.render_present is None
                parts["render_input"].append(np.zeros_like(c.range_input) if none else c.render_input)
                parts["render_labels"].append(np.zeros_like(c.range_labels) if none else c.render_labels)
                parts["render_present"].append(np.zeros(len(c), bool) if none else c.render_present)
            F = len(c)
            imgs = np.zeros((F, len(conds)) + c.images.shape[2:], dtype=np.uint8)
            pres = np.zeros((F, len(conds)), dtype=bool)
            for j, k in enumerate(c.conditions):
                imgs[:, conds.index(k)] = c.images[:, j]
                pres[:, conds.index(k)] = c.image_present[:, j]
            uniq, local = np.unique(c.group, return_inverse=True)  # renumber groups 0.. per cache
            for k in _ARRAY_FIELDS:
                parts[k].append(
                    {"images": imgs, "image_present": pres, "group": (local + offset).astype(np.int32)}.get(
                        k, getattr(c, k)
                    )
                )
            offset += len(uniq)
        meta = dict(caches[0].meta)
        meta["sources"] = [s for c in caches for s in c.meta.get("sources", [])]
        return cls(conditions=tuple(conds), meta=meta, **{k: np.concatenate(v) for k, v in parts.items()})


_ARRAY_FIELDS = (
    "images",
    "image_present",
    "image_labels",
    "range_input",
    "range_labels",
    "positions",
    "yaw",
    "group",
    "role",
    "frame",
    "sequence",
)


_RENDER_FIELDS = ("render_input", "render_labels", "render_present")


_Q_RANGE, _Q_Z, _Q_REFL, _Q_NORMAL = 65535.0, 3000.0, 255.0, 127.0


def _quantise_range(x: np.ndarray, prefix: str = "") -> dict[str, np.ndarray]:
    r = x.astype(np.float32)
    return {
        prefix + "q_range": np.clip(np.round(r[:, 0] * _Q_RANGE), 0, 65535).astype(np.uint16),
        prefix + "q_z": np.clip(np.round(r[:, 1] * _Q_Z), -32767, 32767).astype(np.int16),
        prefix + "q_refl": np.clip(np.round(r[:, 2] * _Q_REFL), 0, 255).astype(np.uint8),
        prefix + "q_normals": np.clip(np.round(r[:, 3:6] * _Q_NORMAL), -127, 127).astype(np.int8),
    }


def _dequantise_range(z: Any, prefix: str = "") -> np.ndarray:
    q_range = z[prefix + "q_range"]
    rng = np.empty((q_range.shape[0], 7) + q_range.shape[1:], np.float16)
    rng[:, 0] = q_range.astype(np.float32) / _Q_RANGE
    rng[:, 1] = z[prefix + "q_z"].astype(np.float32) / _Q_Z
    rng[:, 2] = z[prefix + "q_refl"].astype(np.float32) / _Q_REFL
    rng[:, 3:6] = z[prefix + "q_normals"].astype(np.float32) / _Q_NORMAL
    rng[:, 6] = q_range > 0
    return rng


def _compact_arrays(c: PairCache) -> dict[str, np.ndarray]:
    import cv2

    chunks, offsets = [], [0]
    for i in range(len(c)):
        for k in range(len(c.conditions)):
            if c.image_present[i, k]:
                ok, buf = cv2.imencode(
                    ".jpg", np.ascontiguousarray(c.images[i, k][:, :, ::-1]), [cv2.IMWRITE_JPEG_QUALITY, 92]
                )
                if not ok:
                    raise PairsError("JPEG encoding of a training image failed")
                chunks.append(buf.reshape(-1))
            else:
                chunks.append(np.zeros(0, np.uint8))
            offsets.append(offsets[-1] + len(chunks[-1]))
    out = {
        "images": np.concatenate(chunks) if chunks else np.zeros(0, np.uint8),
        "image_offsets": np.asarray(offsets, np.int64),
        "image_shape": np.asarray(c.images.shape, np.int64),
        "range_input": np.zeros(0, np.float16),
        **_quantise_range(c.range_input),
    }
    if c.render_input is not None:
        out["render_input"] = np.zeros(0, np.float16)
        out.update(_quantise_range(c.render_input, "render_"))
    return out


def _expand_arrays(z: Any, num_conditions: int) -> dict[str, np.ndarray]:
    import cv2

    shape = tuple(int(v) for v in z["image_shape"])
    data, offsets = z["images"], z["image_offsets"]
    images = np.zeros(shape, np.uint8)
    for j in range(len(offsets) - 1):
        a, b = int(offsets[j]), int(offsets[j + 1])
        if b > a:
            images[j // num_conditions, j % num_conditions] = cv2.imdecode(data[a:b], cv2.IMREAD_COLOR)[:, :, ::-1]
    out = {"images": images, "range_input": _dequantise_range(z)}
    if "render_q_range" in z.files:
        out["render_input"] = _dequantise_range(z, "render_")
    return out


# --------------------------------------------------------------------------------------------
# Building the cache from datasets
# --------------------------------------------------------------------------------------------
def find_datasets(data_dir: str | Path) -> list[Path]:
    """Dataset roots under ``data_dir``: itself if it holds ``sequences/``, else its children that do."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise PairsError(f"training data directory not found: {data_dir}")

    def is_dataset(p: Path) -> bool:  # KITTI / synthetic town / KITTI-360 root
        return (p / "sequences").is_dir() or (p / "synth_manifest.yaml").is_file() or (p / "data_3d_raw").is_dir()

    if is_dataset(data_dir):
        return [data_dir]
    roots = sorted(p for p in data_dir.iterdir() if p.is_dir() and is_dataset(p))
    if not roots:
        raise PairsError(
            f"{data_dir}: no dataset found (expected sequences/ in it or in its subfolders); "
            "generate one with `scmpr synth OUT --seed 100`"
        )
    return roots


def _has_scans(seq: Any) -> bool:
    try:
        seq.load_scan(0)
        return True
    except DatasetError:
        return False


def plan_passes(root: Path, sequences: Sequence[str] | None = None, need_labels: bool = True) -> list[dict]:
    """Which sequences give scans and which extra camera passes share their poses.

    Returns one entry per scan pass: {"scan": name, "role": 0|1|2, "images": {condition: name}}.
    Synthetic towns are described by their manifest; KITTI-style roots use ``sequences`` (all
    sequences with images, scans and poses when empty), condition "day".
    """
    from scmpr_ros.datasets import open_sequence

    manifest = None
    if (root / "synth_manifest.yaml").is_file():
        from scmpr_ros.datasets.synthetic import read_manifest

        manifest = read_manifest(root)
    if manifest is not None:
        entries = {str(k): v for k, v in manifest["sequences"].items()}
        names = [n for n in entries if not sequences or n in sequences]
    else:
        from scmpr_ros.datasets import list_sequences

        names = list(sequences) if sequences else list_sequences(root)
        entries = {n: {"pass": "both", "condition": "day"} for n in names}
    seqs = {}
    for n in names:
        try:
            seqs[n] = open_sequence(root, n)
        except DatasetError:
            if sequences:
                raise
            continue  # e.g. a KITTI sequence without images
        if not (seqs[n].has_images and seqs[n].has_poses):
            seqs.pop(n)

    def same_poses(a: Any, b: Any) -> bool:
        return a.num_frames == b.num_frames and np.allclose(
            np.nan_to_num(a.poses_cam[:, :3, 3]), np.nan_to_num(b.poses_cam[:, :3, 3]), atol=0.05
        )

    plans: list[dict] = []
    scans = {n: _has_scans(seqs[n]) for n in seqs}
    for n in sorted(seqs, key=lambda n: not scans[n]):  # passes with scans first (stable)
        cond = str(entries[n].get("condition", "day"))
        # a pass that shares the poses of an earlier one (synthetic night / winter) adds images only
        home = next((p for p in plans if same_poses(seqs[n], seqs[p["scan"]])), None)
        if home is not None:
            home["images"].setdefault(cond, n)
            continue
        if (seqs[n].has_labels or not need_labels) and scans[n]:
            role = {"map": 0, "query": 1}.get(str(entries[n].get("pass")), 2)
            plans.append({"scan": n, "role": role, "images": {cond: n}})
    if not plans:
        raise PairsError(f"{root}: no sequence with images, labelled scans and poses to train on")
    return plans


MIN_RENDER_FILL = 0.5  # a map render counts when it has >= this share of the scan's valid pixels


class MapRenders:
    """Map-render positives of one dataset root: the range image that ``build-map`` renders from the
    accumulated map of the mapping pass, at any LiDAR pose of the town.

    The map pass is the plan with role 0 (synthetic manifest); a root without roles renders each
    pass from its own map.  The map, its segmenter labels and the renderer come from
    ``mapping.builder`` (``plan_map`` / ``accumulate_map`` / ``render_batch``), with
    ``map.render_mode`` forced to "map": the scan at the pose is the other positive already.
    """

    def __init__(self, root: Path, cfg: ScmprConfig, plans: Sequence[dict]):
        import dataclasses

        self.root, self.plans = root, list(plans)
        self.cfg = dataclasses.replace(cfg, map=dataclasses.replace(cfg.map, render_mode="map"))
        self._maps: dict[str, Any] = {}
        self.seconds_accumulate = 0.0
        self.seconds_render = 0.0

    def map_sequence(self, scan_sequence: str) -> str:
        mapping = [p["scan"] for p in self.plans if p["role"] == 0]
        return mapping[0] if mapping else scan_sequence

    def plan_for(self, scan_sequence: str) -> Any:
        """The builder's map plan of the map that serves ``scan_sequence`` (accumulated on first use)."""
        from scmpr_ros.datasets import open_sequence
        from scmpr_ros.mapping.builder import accumulate_map, plan_map

        name = self.map_sequence(scan_sequence)
        if name not in self._maps:
            import time

            t0 = time.perf_counter()
            plan = plan_map(open_sequence(self.root, name), self.cfg)
            accumulate_map(plan, None)
            self._maps[name] = plan
            self.seconds_accumulate += time.perf_counter() - t0
        return self._maps[name]

    def render(self, scan_sequence: str, T_world_velo: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(encoder input (C, Hr, Wr) float32, labels (Hr, Wr) uint8) of the map seen from ``T_world_velo``,
        cropped to the camera FOV when ``lidar.crop_to_camera_fov`` (as build-map does)."""
        import time

        from scmpr_ros.lidar.viewpoints import Viewpoint
        from scmpr_ros.mapping.builder import render_batch

        plan = self.plan_for(scan_sequence)
        t0 = time.perf_counter()
        vp = Viewpoint(0, -1, -1, 0.0, 0.0, np.asarray(T_world_velo, dtype=np.float64))
        x, labels, _grids = render_batch(plan, [vp])
        self.seconds_render += time.perf_counter() - t0
        return x[0], labels[0]


def build_pair_cache(
    root: str | Path,
    cfg: ScmprConfig,
    sequences: Sequence[str] | None = None,
    frame_stride: int = 1,
    group: int = 0,
    progress: Callable[[int, int], None] | None = None,
    map_renders: bool | None = None,
) -> PairCache:
    """Pairs of one dataset root (see module docstring); ``map_renders`` (default: when
    ``training.map_render_positives`` > 0) adds the map-render positive of every frame."""
    from scmpr_ros.datasets import open_sequence
    from scmpr_ros.datasets.base import camera_from_calibration
    from scmpr_ros.lidar.range_image import RangeProjector, camera_fov, crop_to_fov, encoder_input

    root = Path(root)
    if frame_stride < 1:
        raise PairsError(f"training.frame_stride must be >= 1, got {frame_stride}")
    from scmpr_ros.mapping.segmenters import make_segmenter

    plans = plan_passes(
        root, sequences, need_labels=cfg.lidar.segmentation == "ground_truth" and not cfg.lidar.segmenter_weights
    )
    projector = RangeProjector(cfg.lidar)
    segmenters: dict[str, Any] = {}
    out_hw = (int(cfg.model.image_height), int(cfg.model.image_width))
    conditions: list[str] = []
    for plan in plans:
        conditions += [c for c in plan["images"] if c not in conditions]
    rows: dict[str, list] = {k: [] for k in _ARRAY_FIELDS}
    if map_renders is None:
        map_renders = cfg.training.map_render_positives > 0
    renders = MapRenders(root, cfg, plans) if map_renders else None
    if renders is not None:
        rows.update({k: [] for k in _RENDER_FIELDS})
    todo = [(plan, i) for plan in plans for i in range(0, open_sequence(root, plan["scan"]).num_frames, frame_stride)]
    opened: dict[str, Any] = {}

    def seq(name: str) -> Any:
        if name not in opened:
            opened[name] = open_sequence(root, name)
        return opened[name]

    for step, (plan, i) in enumerate(todo):
        s = seq(plan["scan"])
        if progress is not None:
            progress(step, len(todo))
        if not bool(s.pose_valid[i]):
            continue
        scan = s.load_scan(i)
        if plan["scan"] not in segmenters:  # the same labels build-map uses (ground truth or learned)
            segmenters[plan["scan"]] = make_segmenter(cfg.lidar, s)
        labels = segmenters[plan["scan"]].segment(s, i, scan)
        ri = projector.project(scan, labels)
        if cfg.lidar.crop_to_camera_fov:
            yaw_c, hfov = camera_fov(camera_from_calibration(s.calib, cfg.camera), s.calib.T_cam_velo)
            ri = crop_to_fov(ri, yaw_c, hfov)
        imgs = np.zeros((len(conditions),) + out_hw + (3,), dtype=np.uint8)
        present = np.zeros(len(conditions), dtype=bool)
        for cond, name in plan["images"].items():
            q = seq(name)
            if i < q.num_frames and bool(q.pose_valid[i]):
                imgs[conditions.index(cond)] = resize_image(q.load_image(i), out_hw)
                present[conditions.index(cond)] = True
        if not present.any():
            continue
        calib = s.calib
        rows["images"].append(imgs)
        rows["image_present"].append(present)
        rows["image_labels"].append(
            project_labels_to_image(scan, labels, calib.T_cam_velo, calib.K, calib.image_size, out_hw)
        )
        rows["range_input"].append(encoder_input(ri, cfg.lidar).astype(np.float16))
        rows["range_labels"].append(ri.labels.astype(np.uint8))
        T = s.poses_velo[i]
        if renders is not None:
            x, lab = renders.render(plan["scan"], T)
            if x.shape != rows["range_input"][-1].shape:
                raise PairsError(f"{root}: map render {x.shape} and scan {rows['range_input'][-1].shape} differ")
            rows["render_input"].append(x.astype(np.float16))
            rows["render_labels"].append(lab.astype(np.uint8))
            rows["render_present"].append(bool(x[6].sum() >= MIN_RENDER_FILL * max(int(ri.valid.sum()), 1)))
        rows["positions"].append(T[:3, 3])
        rows["yaw"].append(math.atan2(T[1, 0], T[0, 0]))
        rows["group"].append(group)
        rows["role"].append(plan["role"])
        rows["frame"].append(i)
        rows["sequence"].append(plan["scan"])
    if progress is not None:
        progress(len(todo), len(todo))
    if not rows["images"]:
        raise PairsError(f"{root}: no frame with a valid pose, an image and a scan")
    dtypes = {
        "group": np.int32,
        "role": np.uint8,
        "frame": np.int32,
        "sequence": "<U16",
        "positions": np.float64,
        "yaw": np.float64,
        "render_present": bool,
    }
    arrays = {k: np.asarray(v, dtype=dtypes.get(k)) if k in dtypes else np.stack(v) for k, v in rows.items()}
    meta = {
        "sources": [{"root": str(root), "plans": plans}],
        "image_hw": list(out_hw),
        "lidar": _lidar_meta(cfg),
        "frame_stride": frame_stride,
    }
    if renders is not None:
        meta["map_render"] = _render_meta(cfg)
        meta["map_render_seconds"] = {
            "accumulate": round(renders.seconds_accumulate, 2),
            "render": round(renders.seconds_render, 2),
        }
    return PairCache(conditions=tuple(conditions), meta=meta, **arrays)


def _lidar_meta(cfg: ScmprConfig) -> dict:
    keys = (
        "range_height",
        "range_width",
        "fov_up_deg",
        "fov_down_deg",
        "min_range_m",
        "max_range_m",
        "crop_to_camera_fov",
        "segmentation",
        "segmenter_weights",
    )
    return {k: getattr(cfg.lidar, k) for k in keys}


def _render_meta(cfg: ScmprConfig) -> dict:
    """The map settings a map-render positive depends on (a cache built with others is rebuilt)."""
    keys = ("voxel_size_m", "render_radius_m", "splat_radius_m", "max_splat_px")
    return {k: getattr(cfg.map, k) for k in keys}


def _cache_fits(cache: PairCache, cfg: ScmprConfig, map_renders: bool) -> bool:
    if cache.meta.get("lidar") != _lidar_meta(cfg):  # images are resized to the model at batch time
        return False
    return not map_renders or (cache.render_present is not None and cache.meta.get("map_render") == _render_meta(cfg))


def load_or_build_cache(
    data_dir: str | Path,
    cfg: ScmprConfig,
    cache_path: str | Path | None = None,
    sequences: Sequence[str] | None = None,
    frame_stride: int = 1,
    progress: Callable[[str, int, int], None] | None = None,
    map_renders: bool | None = None,
) -> PairCache:
    """A cache file if given and present (or a .npz / a folder of .npz passed as data_dir), else built
    from the datasets (and saved to ``cache_path`` when given).  ``map_renders`` (default: when
    ``training.map_render_positives`` > 0): the cache must hold map-render positives; a prebuilt
    cache without them is refused, a ``cache_path`` without them is rebuilt."""
    data_dir = Path(data_dir)
    if map_renders is None:
        map_renders = cfg.training.map_render_positives > 0

    def checked(cache: PairCache, where: Path) -> PairCache:
        if map_renders and cache.render_present is None:
            raise PairsError(
                f"{where}: pair cache without map renders but training.map_render_positives > 0; "
                "rebuild it from the datasets (or set training.map_render_positives: 0)"
            )
        return cache

    if data_dir.is_file() and data_dir.suffix == ".npz":
        return checked(PairCache.load(data_dir), data_dir)
    caches_here = sorted(data_dir.glob("*.npz")) if data_dir.is_dir() else []
    if caches_here and not (data_dir / "sequences").is_dir():  # a folder of pair caches (one per town)
        return checked(PairCache.concatenate([PairCache.load(p) for p in caches_here]), data_dir)
    if cache_path is not None and Path(cache_path).is_file():
        cache = PairCache.load(cache_path)
        if _cache_fits(cache, cfg, map_renders):
            return cache
    caches: list[PairCache] = []
    for g, root in enumerate(find_datasets(data_dir)):
        cb = (lambda i, n, r=root: progress(r.name, i, n)) if progress else None
        caches.append(
            build_pair_cache(root, cfg, sequences, frame_stride, group=g, progress=cb, map_renders=map_renders)
        )
    cache = PairCache.concatenate(caches)
    if cache_path is not None:
        cache.save(cache_path)
    return cache
