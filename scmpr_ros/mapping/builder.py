"""``scmpr build-map``: mapping-pass sequence + model -> ``.scmpr-map``.

Viewpoints (lidar/viewpoints.py) are rendered in the camera's horizontal FOV, encoded in batches by
``model.encode_lidar``; prototypes = model.semantic_prototypes over all viewpoints (running
per-class sums, so memory does not grow with the map); a background thread renders the next batch
while the encoder runs (numpy and torch both release the GIL).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scmpr_ros.config import ScmprConfig
from scmpr_ros.datasets.base import camera_from_calibration
from scmpr_ros.errors import DatasetError, InputError
from scmpr_ros.geometry import matrices_to_poses
from scmpr_ros.io_utils import remove_stale_temp_files
from scmpr_ros.lidar.range_image import RangeProjector, camera_fov, crop_to_fov, encoder_input
from scmpr_ros.lidar.viewpoints import MapAccumulator, ViewpointRenderer, frustum_grid, plan_viewpoints
from scmpr_ros.mapping.coverage import dataset_identity
from scmpr_ros.mapping.map_file import MapData, camera_dict, write_map
from scmpr_ros.mapping.segmenters import make_segmenter

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class _LabelledScans:
    """Frame i -> (points, per-point labels) of the mapping pass (the renderer's scan source)."""

    sequence: Any
    segmenter: Any

    def __call__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        pts = np.asarray(self.sequence.load_scan(i))
        return pts, self.segmenter.segment(self.sequence, i, pts)


@dataclass
class MapPlan:
    """What the build renders: the viewpoints, how, and the camera their semantic grids are seen from."""

    lidar: Any  # LidarConfig
    mcfg: Any  # MapConfig
    segmenter: Any
    projector: RangeProjector
    camera: Any
    T_cam_velo: np.ndarray
    yaw_hfov: tuple[float, float] | None  # crop to the camera's horizontal FOV, when configured
    poses: np.ndarray  # (F, 4, 4) T_world_velo of the mapping pass
    valid: np.ndarray  # (F,) bool
    viewpoints: list
    scans: _LabelledScans
    renderer: ViewpointRenderer
    modes: list[str]  # render mode per viewpoint


@dataclass
class _Encoded:
    """The encoder pass over all viewpoints: descriptors, grids, per-class feature sums, timings."""

    descriptors: np.ndarray  # (N, D) float32
    grids: np.ndarray | None  # (N, rows, cols, N_S) bool
    class_sum: Any = None  # (N_S, C) sum of present class features, None for a model without semantics
    class_count: Any = None  # (N_S,) number of viewpoints where each class is present
    t_render: float = 0.0  # waiting for the render thread
    t_encode: float = 0.0
    t_loop: float = 0.0

    def add_class_features(self, enc: Any) -> None:
        w = enc.class_present.to(enc.class_features.dtype)
        s = (w.unsqueeze(-1) * enc.class_features).sum(0).cpu()
        c = w.sum(0).cpu()
        self.class_sum = s if self.class_sum is None else self.class_sum + s
        self.class_count = c if self.class_count is None else self.class_count + c


def _check_map_config(sequence: Any, mcfg: Any) -> None:
    if not getattr(sequence, "has_poses", True):
        raise DatasetError(f"{sequence.root} sequence {sequence.name}: no poses (poses.txt); a map needs them")
    if mcfg.descriptor_dtype not in ("float16", "float32"):
        raise InputError(f"map.descriptor_dtype '{mcfg.descriptor_dtype}' unknown (use float16 or float32)")
    if mcfg.batch_size < 1:
        raise InputError(f"map.batch_size must be >= 1, got {mcfg.batch_size}")


def plan_map(sequence: Any, cfg: ScmprConfig) -> MapPlan:
    lidar, mcfg = cfg.lidar, cfg.map
    segmenter = make_segmenter(lidar, sequence)
    projector = RangeProjector(lidar)
    camera = camera_from_calibration(sequence.calib, cfg.camera)
    T_cam_velo = np.asarray(sequence.calib.T_cam_velo, dtype=np.float64)
    yaw_hfov = camera_fov(camera, T_cam_velo) if lidar.crop_to_camera_fov else None
    poses = np.asarray(sequence.poses_velo, dtype=np.float64)
    valid = np.asarray(sequence.pose_valid, dtype=bool)
    viewpoints = plan_viewpoints(poses, valid, mcfg)
    if not viewpoints:
        raise DatasetError(f"{sequence.root} sequence {sequence.name}: no valid pose, so no viewpoint")
    scans = _LabelledScans(sequence, segmenter)
    renderer = ViewpointRenderer(projector, mcfg, None, scans, poses)
    modes = [renderer.mode_for(v) for v in viewpoints]
    return MapPlan(
        lidar,
        mcfg,
        segmenter,
        projector,
        camera,
        T_cam_velo,
        yaw_hfov,
        poses,
        valid,
        viewpoints,
        scans,
        renderer,
        modes,
    )


def accumulate_map(plan: MapPlan, progress: Progress | None) -> float:
    """Fuse all valid scans into the renderer's labelled voxel map (for "map" viewpoints); returns seconds."""
    t0 = time.perf_counter()
    acc = MapAccumulator(plan.mcfg.voxel_size_m)
    frames = np.flatnonzero(plan.valid)
    for j, i in enumerate(frames):
        pts, lab = plan.scans(int(i))
        acc.add_range_image(plan.projector.project(pts, lab), plan.poses[i])
        if progress is not None:
            progress("accumulate", j + 1, len(frames))
    plan.renderer.map = acc.finish()
    return time.perf_counter() - t0


def render_batch(plan: MapPlan, batch: list) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Encoder inputs, labels and semantic frustum grids of a batch of viewpoints."""
    mcfg = plan.mcfg
    xs, labs, grids = [], [], []
    for v in batch:
        ri = plan.renderer.render(v, plan.yaw_hfov)
        grids.append(
            frustum_grid(ri, plan.T_cam_velo, plan.camera, mcfg.grid_rows, mcfg.grid_cols, mcfg.grid_min_fraction)
        )
        if plan.yaw_hfov is not None:
            ri = crop_to_fov(ri, *plan.yaw_hfov)
        xs.append(encoder_input(ri, plan.lidar))
        labs.append(ri.labels)
    return np.stack(xs), np.stack(labs), np.stack(grids)


def _encode_batch(model: Any, device: Any, x: np.ndarray, lab: np.ndarray, acc: _Encoded) -> np.ndarray:
    """Descriptors (B, D) of one rendered batch; adds its class features to ``acc``."""
    import torch

    with torch.inference_mode():
        lab_t = torch.from_numpy(lab.astype(np.int64))
        enc = model.encode_lidar(torch.from_numpy(x).to(device), lab_t.to(device))
        d = enc.descriptor.float().cpu().numpy()
        if enc.class_features is not None:
            acc.add_class_features(enc)
    return d


def _encode_viewpoints(plan: MapPlan, model: Any, device: Any, progress: Progress | None) -> _Encoded:
    """Render batch b + 1 on a background thread while the encoder runs on batch b."""
    import torch

    n = len(plan.viewpoints)
    bs = int(plan.mcfg.batch_size)
    # one core renders the next batch while torch encodes this one: leave it that core (measured on
    # 2 cores: 1 torch thread + the render thread is ~1.6x faster than 2 torch threads + the render thread)
    threads_before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu" and threads_before >= cores > 1:
        torch.set_num_threads(cores - 1)
    batches = [plan.viewpoints[s : s + bs] for s in range(0, n, bs)]
    out = _Encoded(np.empty((n, 0), np.float32), None)
    t_loop = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(render_batch, plan, batches[0])
        done = 0
        for b, batch in enumerate(batches):
            t0 = time.perf_counter()
            x, lab, grids = fut.result()
            out.t_render += time.perf_counter() - t0
            if b + 1 < len(batches):
                fut = pool.submit(render_batch, plan, batches[b + 1])
            t0 = time.perf_counter()
            d = _encode_batch(model, device, x, lab, out)
            out.t_encode += time.perf_counter() - t0
            if out.descriptors.shape[1] == 0:
                out.descriptors = np.empty((n, d.shape[1]), np.float32)
                out.grids = np.empty((n,) + grids.shape[1:], bool)
            out.descriptors[done : done + len(batch)] = d
            out.grids[done : done + len(batch)] = grids
            done += len(batch)
            if progress is not None:
                progress("viewpoints", done, n)
    out.t_loop = time.perf_counter() - t_loop
    torch.set_num_threads(threads_before)
    return out


def _prototypes(model: Any, device: Any, enc: _Encoded) -> np.ndarray:
    """The model's semantic prototypes from the mean present-class features over all viewpoints."""
    import torch

    with torch.inference_mode():
        if enc.class_sum is not None:
            cnt = enc.class_count
            mean = (enc.class_sum / cnt.clamp_min(1.0).unsqueeze(-1)).unsqueeze(0).to(device)
            protos = model.semantic_prototypes(mean, (cnt > 0).unsqueeze(0).to(device))
        else:  # a model without semantics: its default context (unused by such a model)
            protos = torch.zeros(model.num_classes, model.feature_dim)
        return protos.float().cpu().numpy()


def _map_metadata(sequence: Any, plan: MapPlan, metadata: dict | None) -> dict:
    town = _town_of(sequence.root)
    modes, yaw_hfov = plan.modes, plan.yaw_hfov
    return {
        "dataset": str(Path(sequence.root).resolve()),
        "dataset_kind": str(getattr(sequence, "kind", "")),
        **({"town": town} if town else {}),
        "sequence": str(sequence.name),
        "segmentation": plan.segmenter.name,
        "render_modes": {m: modes.count(m) for m in sorted(set(modes))},
        "places": int(len({v.place for v in plan.viewpoints})),
        "lidar": dataclasses.asdict(plan.lidar),
        "map": dataclasses.asdict(plan.mcfg),
        "crop": {"yaw_rad": yaw_hfov[0], "hfov_rad": yaw_hfov[1]} if yaw_hfov else None,
        "pose_frame": "velo (LiDAR) of each viewpoint, in the sequence world frame",
        **(metadata or {}),
    }


def _map_data(
    plan: MapPlan, enc: _Encoded, prototypes: np.ndarray, model: Any, model_checksum: str, meta: dict
) -> MapData:
    viewpoints = plan.viewpoints
    T = np.stack([v.T_world_velo for v in viewpoints])
    return MapData(
        descriptors=enc.descriptors.astype(np.float16 if plan.mcfg.descriptor_dtype == "float16" else np.float32),
        poses=matrices_to_poses(T),
        viewpoint_ids=np.array([v.viewpoint_id for v in viewpoints], np.int64),
        source_frames=np.array([v.source_frame for v in viewpoints], np.int64),
        semantic_grids=enc.grids,
        prototypes=prototypes.astype(np.float32),
        camera=camera_dict(plan.camera, plan.T_cam_velo),
        model_config=dataclasses.asdict(model.cfg),
        model_checksum=model_checksum,
        metadata=meta,
        grid_min_fraction=float(plan.mcfg.grid_min_fraction),
    )


def build_map(
    sequence: Any,
    model: Any,
    cfg: ScmprConfig,
    out: str | Path,
    model_checksum: str,
    progress: Progress | None = None,
    metadata: dict | None = None,
) -> dict:
    """Build and write the map of a mapping-pass ``sequence`` (datasets.Sequence); returns a summary."""
    t_start = time.perf_counter()
    # a build killed while writing leaves its temporary file (.NAME.pidPID.XXXXXXXX.tmp) next to ``out``
    stale = [p.name for p in remove_stale_temp_files(out)]
    _check_map_config(sequence, cfg.map)
    plan = plan_map(sequence, cfg)
    t_acc = accumulate_map(plan, progress) if "map" in plan.modes else 0.0
    device = next(model.parameters()).device
    enc = _encode_viewpoints(plan, model, device, progress)
    if not np.isfinite(enc.descriptors).all():
        raise InputError("the model produced NaN/inf descriptors; check the checkpoint")
    prototypes = _prototypes(model, device, enc)
    meta = _map_metadata(sequence, plan, metadata)
    size = write_map(out, _map_data(plan, enc, prototypes, model, model_checksum, meta))
    total = time.perf_counter() - t_start
    n, t_loop = len(plan.viewpoints), enc.t_loop
    return {
        "out": str(out),
        "viewpoints": n,
        "places": meta["places"],
        "file_bytes": size,
        "bytes_per_1k_viewpoints": int(size / n * 1000),
        "seconds_total": total,
        "seconds_accumulate": t_acc,
        "seconds_viewpoints": t_loop,
        "seconds_waiting_render": enc.t_render,
        "seconds_encode": enc.t_encode,
        "viewpoints_per_s": n / t_loop if t_loop > 0 else float("inf"),
        "render_modes": meta["render_modes"],
        "removed_stale_temp_files": stale,
    }


def _town_of(root: Any) -> str | None:
    """The synthetic town's identity recorded in the map (checked against the queries by evaluate)."""
    try:
        return dataset_identity(root).get("town")
    except (DatasetError, OSError):  # not a dataset directory we can identify: record nothing
        return None
