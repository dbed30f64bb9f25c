"""`scmpr demo`: the whole chain on the embedded synthetic town, and the replay report it prints.

town (cached) -> LiDAR map with the model (cached per model checksum and map settings) -> query
rosbag2 (cached) -> bag_player -> localizer <- map_server over loopback DDS -> score against ground truth.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from scmpr_ros.config import default_models_dir, load_config
from scmpr_ros.io_utils import atomic_write_text

Echo = Callable[[str], None]
DEMO_LIDAR = "hdl64e"  # the synthetic town's LiDAR sensor model (datasets/synthetic/lidar_model.py)


def _fmt(x: float, unit: str = "") -> str:
    return "n/a" if x != x else f"{x:.1f}{unit}"  # NaN -> n/a


def default_model() -> Path:
    """The shipped nano model."""

    return default_models_dir() / "scmpr_nano.pt"


def replay_report(result, score: dict | None) -> str:
    """What `scmpr replay` and `scmpr demo` print: rates, latency, memory and, with a score, Recall@N."""
    s = result.summary()
    lines = [
        f"images published {s['images_published']}, localized {s['results']}, dropped {s['dropped']}, "
        f"rejected {s['rejected']} ({s['device']})",
        f"processed {_fmt(s['processed_hz'], ' Hz')} (images in at {_fmt(s['input_hz'], ' Hz')}) over "
        f"{s['play_wall_s']:.1f} s of playback",
        f"end-to-end latency p50 {_fmt(s['e2e_latency_ms']['p50'], ' ms')}, "
        f"p95 {_fmt(s['e2e_latency_ms']['p95'], ' ms')}"
        f" (encoder+search p50 {_fmt(s['compute_ms']['p50'], ' ms')}, p95 {_fmt(s['compute_ms']['p95'], ' ms')};"
        f" ROS overhead p50 {_fmt(s['ros_overhead_ms']['p50'], ' ms')}, "
        f"p95 {_fmt(s['ros_overhead_ms']['p95'], ' ms')})",
        f"RSS {s['rss_mb']['start']:.0f} -> {s['rss_mb']['end']:.0f} MB (max {s['rss_mb']['max']:.0f})",
    ]
    if score is not None:
        rec = ", ".join(f"{k} {v:.3f}" for k, v in score["recall"].items())
        lines.append(
            f"{rec} over {score['num_scored']} localized images with a true match within "
            f"{score['threshold_m']:.0f} m (a random ranking: R@1 {score['chance_r1']:.3f})"
        )
        filtered = score.get("filtered")
        if filtered:
            lines.append(
                f"filtered along the drive: R@1 {filtered['R@1']:.3f}, after 5 frames {filtered['R@1_after_5']:.3f} "
                f"over {filtered['num_frames']} frames (single frame above)"
            )
    return "\n".join(lines)


def write_replay_outputs(out: Path, result, score: dict | None) -> None:
    """replay_summary.json, hypotheses.csv (every published hypothesis) and, with a score, trajectory.png."""
    from scmpr_ros.io_utils import atomic_write_text

    out.mkdir(parents=True, exist_ok=True)
    summary = result.summary()
    if score is not None:
        summary["score"] = {k: v for k, v in score.items() if not k.startswith("_")}
    summary["localizer"] = result.localizer
    atomic_write_text(out / "replay_summary.json", json.dumps(summary, indent=2, default=float))
    rows = ["stamp_ns,rank,viewpoint_id,x,y,z,qx,qy,qz,qw,score,cosine,psi"]
    for stamp in sorted(result.results):
        for rank, h in enumerate(result.results[stamp]["hypotheses"]):
            rows.append(
                ",".join(
                    [str(stamp), str(rank), str(int(h["viewpoint_id"]))]
                    + [f"{float(h[n]):.6f}" for n in ("x", "y", "z", "qx", "qy", "qz", "qw", "score", "cosine", "psi")]
                )
            )
    atomic_write_text(out / "hypotheses.csv", "\n".join(rows) + "\n")
    if score is not None:
        from scmpr_ros.evaluation.plots import plot_trajectory

        d = score["_detail"]
        top1 = d["db_xyz"][np.maximum(d["top1"], 0)][:, :2] if len(d["top1"]) else None
        plot_trajectory(
            d["db_xyz"][:, :2],
            d["query_xyz"][:, :2],
            d["hits"],
            out / "trajectory.png",
            title="ROS replay: top-1 hits (green) and misses (red)",
            evaluated=d["evaluated"],
            top1_xy=top1,
        )


@dataclass(frozen=True)
class DemoTown:
    root: Path
    map_sequence: str
    query_sequence: str


def ensure_town(
    work: Path, *, seed: int, frames: int, image_size: tuple[int, int], azimuth_steps: int, regenerate: bool, echo: Echo
) -> DemoTown:
    """The synthetic town under ``work/town``, regenerated (and derived maps/bags dropped) when its
    parameters changed."""
    from scmpr_ros.datasets.synthetic.writer import MANIFEST, generate_town, read_manifest

    town = work / "town"
    wanted = {
        "seed": seed,
        "frames": frames,
        "image_size": list(image_size),
        "azimuth_steps": azimuth_steps,
        "lidar": DEMO_LIDAR,
    }
    stamp = work / "town_params.yaml"
    stale = not (town / MANIFEST).is_file() or not stamp.is_file() or yaml.safe_load(stamp.read_text()) != wanted
    if regenerate or stale:
        echo(f"[1/4] generating the synthetic town (seed {seed}, {frames} frames) in {town} ...")
        generate_town(
            town,
            seed=seed,
            frames=frames,
            conditions="day",
            image_size=image_size,
            azimuth_steps=azimuth_steps,
            overwrite=True,
            lidar=DEMO_LIDAR,
        )
        atomic_write_text(stamp, yaml.safe_dump(wanted))
        for old in work.glob("*.scmpr-map"):
            old.unlink()
        for old in work.glob("query_*_bag"):
            shutil.rmtree(old)
    else:
        echo(f"[1/4] synthetic town cached in {town}")
    passes = read_manifest(town)["sequences"]
    map_seq = next(k for k, v in passes.items() if v["pass"] == "map")
    query_seq = next(k for k, v in passes.items() if v["pass"] == "query")
    return DemoTown(town, map_seq, query_seq)


def ensure_map(work: Path, town: DemoTown, model: Path, echo: Echo) -> Path:
    """The town's map built with ``model``; the town's query pass drives part of the route backwards,
    so the map's default viewpoints face each way (and sit 1.5 m to either side of the mapping lane)."""
    from scmpr_ros.datasets import open_sequence
    from scmpr_ros.localization.session import load_model
    from scmpr_ros.mapping.builder import build_map

    loaded = load_model(model, "cpu", warm_up=False)
    cfg = load_config()
    key = hashlib.sha256((loaded.checksum + json.dumps(dataclasses.asdict(cfg.map), sort_keys=True)).encode())
    map_file = work / f"town_{key.hexdigest()[:12]}.scmpr-map"
    if map_file.is_file():
        echo(f"[2/4] map cached: {map_file}")
        return map_file
    echo(f"[2/4] building the map of sequence {town.map_sequence} with {model} ...")
    sequence = open_sequence(town.root, town.map_sequence)
    build_map(sequence, loaded.network, cfg, map_file, loaded.checksum, metadata={"model_file": str(model)})
    return map_file


def ensure_query_bag(work: Path, town: DemoTown, echo: Echo) -> Path:
    from scmpr_ros.bags.kitti_to_bag import kitti_to_bag

    bag = work / f"query_{town.query_sequence}_bag"
    if bag.is_dir():
        echo(f"[3/4] query bag cached: {bag}")
    else:
        echo(f"[3/4] converting query sequence {town.query_sequence} to a rosbag2 ...")
        kitti_to_bag(town.root, town.query_sequence, bag, include_lidar=False)
    return bag


def run_demo(
    work: Path,
    model: Path,
    *,
    frames: int,
    seed: int,
    image_size: tuple[int, int],
    azimuth_steps: int,
    rate: float,
    device: str | None,
    regenerate: bool,
    echo: Echo = print,
) -> dict:
    """Town -> map -> query bag -> replay -> score (each stage cached); returns the replay summary with the
    score and writes replay_summary.json, hypotheses.csv and trajectory.png under ``work/results``."""
    from scmpr_ros.nodes.replay import run_replay

    work = Path(work)
    seconds = {}
    t0 = time.perf_counter()
    town = ensure_town(
        work,
        seed=seed,
        frames=frames,
        image_size=image_size,
        azimuth_steps=azimuth_steps,
        regenerate=regenerate,
        echo=echo,
    )
    seconds["town"] = time.perf_counter() - t0
    map_file = ensure_map(work, town, model, echo)
    seconds["map"] = time.perf_counter() - t0 - sum(seconds.values())
    bag = ensure_query_bag(work, town, echo)
    seconds["bag"] = time.perf_counter() - t0 - sum(seconds.values())
    echo(f"[4/4] replaying {bag.name} at rate {rate}: bag_player -> localizer <- map_server over loopback DDS ...")
    result = run_replay(bag, map_file, model, rate=rate, device=device)
    score = result.score(5.0)
    seconds["replay"] = time.perf_counter() - t0 - sum(seconds.values())
    out = work / "results"
    write_replay_outputs(out, result, score)
    summary = result.summary() | {"score": {k: v for k, v in score.items() if not k.startswith("_")}}
    summary["stage_seconds"] = seconds
    echo(replay_report(result, score))
    echo("stages: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()) + f"; plot {out / 'trajectory.png'}")
    return summary
