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
from pathlib import Path
from typing import Any

import numpy as np

from scmpr_ros.config import ScmprConfig
from scmpr_ros.datasets.base import camera_from_calibration
from scmpr_ros.errors import DatasetError, InputError
from scmpr_ros.geometry import matrices_to_poses
from scmpr_ros.io_utils import remove_stale_temp_files
from scmpr_ros.lidar.range_image import RangeProjector, camera_fov, crop_to_fov, encoder_input
from scmpr_ros.lidar.segmentation import make_segmenter
from scmpr_ros.lidar.viewpoints import MapAccumulator, ViewpointRenderer, frustum_grid, plan_viewpoints
from scmpr_ros.mapping.coverage import dataset_identity
from scmpr_ros.mapping.map_file import MapData, camera_dict, write_map

Progress = Callable[[str, int, int], None]


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
    import torch

    t_start = time.perf_counter()
    # a build killed while writing leaves its temporary file (.NAME.pidPID.XXXXXXXX.tmp) next to ``out``
    stale = [p.name for p in remove_stale_temp_files(out)]
    if not getattr(sequence, "has_poses", True):
        raise DatasetError(f"{sequence.root} sequence {sequence.name}: no poses (poses.txt); a map needs them")
    lidar, mcfg = cfg.lidar, cfg.map
    if mcfg.descriptor_dtype not in ("float16", "float32"):
        raise InputError(f"map.descriptor_dtype '{mcfg.descriptor_dtype}' unknown (use float16 or float32)")
    if mcfg.batch_size < 1:
        raise InputError(f"map.batch_size must be >= 1, got {mcfg.batch_size}")
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

    def labelled_scan(i: int) -> tuple[np.ndarray, np.ndarray]:
        pts = np.asarray(sequence.load_scan(i))
        return pts, segmenter.segment(sequence, i, pts)

    renderer = ViewpointRenderer(projector, mcfg, None, labelled_scan, poses)
    modes = [renderer.mode_for(v) for v in viewpoints]
    t_acc = 0.0
    if "map" in modes:
        t0 = time.perf_counter()
        acc = MapAccumulator(mcfg.voxel_size_m)
        frames = np.flatnonzero(valid)
        for j, i in enumerate(frames):
            pts, lab = labelled_scan(int(i))
            acc.add_range_image(projector.project(pts, lab), poses[i])
            if progress is not None:
                progress("accumulate", j + 1, len(frames))
        renderer.map = acc.finish()
        t_acc = time.perf_counter() - t0

    device = next(model.parameters()).device
    rows, cols = mcfg.grid_rows, mcfg.grid_cols

    def render_batch(batch):
        xs, labs, grids = [], [], []
        for v in batch:
            ri = renderer.render(v, yaw_hfov)
            grids.append(frustum_grid(ri, T_cam_velo, camera, rows, cols, mcfg.grid_min_fraction))
            if yaw_hfov is not None:
                ri = crop_to_fov(ri, *yaw_hfov)
            xs.append(encoder_input(ri, lidar))
            labs.append(ri.labels)
        return np.stack(xs), np.stack(labs), np.stack(grids)

    n = len(viewpoints)
    bs = int(mcfg.batch_size)
    # one core renders the next batch while torch encodes this one: leave it that core (measured on
    # 2 cores: 1 torch thread + the render thread is ~1.6x faster than 2 torch threads + the render thread)
    threads_before = torch.get_num_threads()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if device.type == "cpu" and threads_before >= cores > 1:
        torch.set_num_threads(cores - 1)
    batches = [viewpoints[s : s + bs] for s in range(0, n, bs)]
    descriptors = np.empty((n, 0), np.float32)
    grids_all = None
    cf_sum = cnt = None
    t_render = t_encode = 0.0
    t_loop = time.perf_counter()
    with ThreadPoolExecutor(max_workers=1) as pool:
        fut = pool.submit(render_batch, batches[0])
        done = 0
        for b, batch in enumerate(batches):
            t0 = time.perf_counter()
            x, lab, grids = fut.result()
            t_render += time.perf_counter() - t0
            if b + 1 < len(batches):
                fut = pool.submit(render_batch, batches[b + 1])
            t0 = time.perf_counter()
            with torch.inference_mode():
                lab_t = torch.from_numpy(lab.astype(np.int64))
                enc = model.encode_lidar(torch.from_numpy(x).to(device), lab_t.to(device))
                d = enc.descriptor.float().cpu().numpy()
                if enc.class_features is not None:
                    w = enc.class_present.to(enc.class_features.dtype)
                    s = (w.unsqueeze(-1) * enc.class_features).sum(0).cpu()
                    c = w.sum(0).cpu()
                    cf_sum = s if cf_sum is None else cf_sum + s
                    cnt = c if cnt is None else cnt + c
            t_encode += time.perf_counter() - t0
            if descriptors.shape[1] == 0:
                descriptors = np.empty((n, d.shape[1]), np.float32)
                grids_all = np.empty((n,) + grids.shape[1:], bool)
            descriptors[done : done + len(batch)] = d
            grids_all[done : done + len(batch)] = grids
            done += len(batch)
            if progress is not None:
                progress("viewpoints", done, n)
    t_loop = time.perf_counter() - t_loop
    torch.set_num_threads(threads_before)
    if not np.isfinite(descriptors).all():
        raise InputError("the model produced NaN/inf descriptors; check the checkpoint")

    with torch.inference_mode():
        if cf_sum is not None:
            mean = (cf_sum / cnt.clamp_min(1.0).unsqueeze(-1)).unsqueeze(0).to(device)
            protos = model.semantic_prototypes(mean, (cnt > 0).unsqueeze(0).to(device))
        else:  # a model without semantics: its default context (unused by such a model)
            protos = torch.zeros(model.num_classes, model.feature_dim)
        prototypes = protos.float().cpu().numpy()

    T = np.stack([v.T_world_velo for v in viewpoints])
    town = _town_of(sequence.root)
    meta = {
        "dataset": str(Path(sequence.root).resolve()),
        "dataset_kind": str(getattr(sequence, "kind", "")),
        **({"town": town} if town else {}),
        "sequence": str(sequence.name),
        "segmentation": segmenter.name,
        "render_modes": {m: modes.count(m) for m in sorted(set(modes))},
        "places": int(len({v.place for v in viewpoints})),
        "lidar": dataclasses.asdict(lidar),
        "map": dataclasses.asdict(mcfg),
        "crop": {"yaw_rad": yaw_hfov[0], "hfov_rad": yaw_hfov[1]} if yaw_hfov else None,
        "pose_frame": "velo (LiDAR) of each viewpoint, in the sequence world frame",
        **(metadata or {}),
    }
    data = MapData(
        descriptors=descriptors.astype(np.float16 if mcfg.descriptor_dtype == "float16" else np.float32),
        poses=matrices_to_poses(T),
        viewpoint_ids=np.array([v.viewpoint_id for v in viewpoints], np.int64),
        source_frames=np.array([v.source_frame for v in viewpoints], np.int64),
        semantic_grids=grids_all,
        prototypes=prototypes.astype(np.float32),
        camera=camera_dict(camera, T_cam_velo),
        model_config=dataclasses.asdict(model.cfg),
        model_checksum=model_checksum,
        metadata=meta,
        grid_min_fraction=float(mcfg.grid_min_fraction),
    )
    size = write_map(out, data)
    total = time.perf_counter() - t_start
    return {
        "out": str(out),
        "viewpoints": n,
        "places": meta["places"],
        "file_bytes": size,
        "bytes_per_1k_viewpoints": int(size / n * 1000),
        "seconds_total": total,
        "seconds_accumulate": t_acc,
        "seconds_viewpoints": t_loop,
        "seconds_waiting_render": t_render,
        "seconds_encode": t_encode,
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
