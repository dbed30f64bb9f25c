"""CPU time of the LiDAR point segmenter (``scmpr benchmark segmenter``): the RangeSegNet forward pass on one
64 x 1024 range image, and the whole ``segment_points`` (projection + normals + network + per-point look-up +
k-NN clean-up), interleaved in one process, median over the rounds.  The projection and the look-up with
the k-NN vote are timed alone beside them (they are what the network's budget leaves).

Scans: the first ones of a labelled or unlabelled KITTI-layout sequence (``--data``), else an analytic
street (ground, house fronts, poles) cast with 64 beams x 2000 columns.  Weights: the given file, else
the shipped models/range_segnet.pt, else a freshly initialised network of the default size (the time
depends on the size only).  Set OMP_WAIT_POLICY=PASSIVE before torch loads (the CLI does) and compare
figures only at a similar load average (recorded at the start and the end).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from scmpr_ros.benchmarks.common import interleaved, timing_stats


def street_scan(beams: int = 64, columns: int = 2000, seed: int = 0) -> np.ndarray:
    """(M, 4) x y z reflectance: rays of an HDL-64-like sensor 1.73 m above a flat road between two
    house fronts 9 m to either side, poles every 15 m 4 m to the left, end walls 70 m away."""
    rng = np.random.default_rng(seed)
    pitch = np.radians(np.linspace(2.0, -24.8, beams))
    yaw = np.linspace(np.pi, -np.pi, columns, endpoint=False)
    P, Y = np.meshgrid(pitch, yaw, indexing="ij")
    d = np.stack([np.cos(P) * np.cos(Y), np.cos(P) * np.sin(Y), np.sin(P)], -1).reshape(-1, 3)
    with np.errstate(divide="ignore", invalid="ignore"):
        t_ground = np.where(d[:, 2] < 0, -1.73 / d[:, 2], np.inf)
        t_walls = np.where(d[:, 1] != 0, 9.0 / np.abs(d[:, 1]), np.inf)
        t_ends = np.where(d[:, 0] != 0, 70.0 / np.abs(d[:, 0]), np.inf)
        t_pole = np.where(d[:, 1] > 0, 4.0 / d[:, 1], np.inf)
        x_pole = d[:, 0] * t_pole
        t_pole = np.where(np.abs((x_pole + 7.5) % 15.0 - 7.5) < 0.15, t_pole, np.inf)
    t = np.min(np.stack([t_ground, t_walls, t_ends, t_pole]), 0)
    t = t * (1.0 + 0.002 * rng.standard_normal(len(t)))
    pts = d * t[:, None]
    keep = np.isfinite(t) & (t < 80.0)
    refl = rng.uniform(0.1, 0.6, keep.sum())
    return np.concatenate([pts[keep], refl[:, None]], 1).astype(np.float32)


def _segmenter(weights: Path | None, lidar: Any) -> tuple[Any, str]:
    from scmpr_ros.config import default_models_dir
    from scmpr_ros.lidar.segmentation import SEGNET_CHANNELS
    from scmpr_ros.mapping.segmenters import RangeSegNetSegmenter
    from scmpr_ros.model.range_segnet import RangeSegNet, SegNetFile

    shipped = default_models_dir() / "range_segnet.pt"
    path = weights or (shipped if shipped.is_file() else None)
    if path is not None:
        return RangeSegNetSegmenter.load(path, lidar), str(path)
    c = len(SEGNET_CHANNELS)
    info = SegNetFile(RangeSegNet().cfg, SEGNET_CHANNELS, torch.zeros(c), torch.ones(c))
    return RangeSegNetSegmenter(RangeSegNet(), info, lidar), "untrained default-size RangeSegNet"


def segmenter_benchmark(
    scans: list[np.ndarray], weights: Path | None = None, threads: int = 2, iters: int = 30, warmup: int = 5
) -> dict[str, Any]:
    """Median / p95 ms of the network, the full segment_points and its numpy parts, on 2 threads by default."""
    from scmpr_ros.config import LidarConfig
    from scmpr_ros.lidar.segmentation import point_labels, project_scan
    from scmpr_ros.model.range_segnet import count_parameters

    if threads > 0:
        torch.set_num_threads(threads)
    seg, source = _segmenter(weights, LidarConfig())
    proj = project_scan(seg.projector, scans[0])
    x = torch.from_numpy(seg.normalised_input(proj.image))[None].contiguous(memory_format=torch.channels_last)
    pred = seg.predict_image(proj.image)
    turn = {"i": 0}

    def full() -> None:
        seg.segment_points(scans[turn["i"] % len(scans)])
        turn["i"] += 1

    def network() -> None:
        with torch.no_grad():
            seg.forward(x)  # what segment_points runs: the frozen trace (made on the first call)

    runs = {
        "network": network,
        "segment_points": full,
        "projection": lambda: project_scan(seg.projector, scans[0]),
        "lookup_knn": lambda: point_labels(pred, proj, seg.knn),
    }
    load_start = list(os.getloadavg())
    times = interleaved(runs, iters, warmup)
    return {
        "machine": _machine(threads) | {"loadavg_end": list(os.getloadavg()), "loadavg_start": load_start},
        "weights": source,
        "parameters": count_parameters(seg.net),
        "input": list(x.shape),
        "points_per_scan": int(np.mean([len(s) for s in scans])),
        "knn": vars(seg.knn) if seg.knn else None,
        "results": {k: timing_stats(v) for k, v in times.items()},
    }


def _machine(threads: int) -> dict[str, Any]:
    """CPU, threads, OpenMP policy, versions (benchmarks.common.machine_info without its numba probe)."""
    import platform

    cpu = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "threads": threads if threads > 0 else torch.get_num_threads(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "torch": torch.__version__,
        "numpy": np.__version__,
    }


def format_segmenter_table(res: dict[str, Any]) -> str:
    m = res["machine"]
    lines = [
        f"segmenter: {res['weights']} ({res['parameters']:,} parameters), input {res['input']}, "
        f"{res['points_per_scan']:,} points per scan, {m['threads']} threads, OMP_WAIT_POLICY {m['omp_wait_policy']}",
        f"load average {m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end ({m['cpu']})",
        "| part | median ms | p95 ms | min ms |",
        "|---|---|---|---|",
    ]
    for name, r in res["results"].items():
        lines.append(f"| {name} | {r['median_ms']:.1f} | {r['p95_ms']:.1f} | {r['min_ms']:.1f} |")
    return "\n".join(lines)


def load_scans(data: Path, sequence: str, count: int) -> list[np.ndarray]:
    from scmpr_ros.datasets import open_sequence

    seq = open_sequence(data, sequence)
    return [np.asarray(seq.load_scan(i)) for i in range(min(count, seq.num_frames))]
