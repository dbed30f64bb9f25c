"""CLI group: ``scmpr kitti-to-bag``, ``scmpr replay``, ``scmpr demo``, ``scmpr benchmark ros``.

rclpy is imported only inside the commands, through scmpr_ros.nodes (the one package that uses it).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import typer


def _fmt(x: float, unit: str = "") -> str:
    return "n/a" if x != x else f"{x:.1f}{unit}"  # NaN -> n/a


def _default_model() -> Path:
    from scmpr_ros.config import default_models_dir

    return default_models_dir() / "scmpr_nano.pt"


def _replay_report(result, score: dict | None) -> str:
    s = result.summary()
    lines = [
        f"images published {s['images_published']}, localized {s['results']}, dropped {s['dropped']}, "
        f"rejected {s['rejected']} ({s['device']})",
        f"processed {_fmt(s['processed_hz'], ' Hz')} over {s['play_wall_s']:.1f} s of playback",
        f"end-to-end latency p50 {_fmt(s['e2e_latency_ms']['p50'], ' ms')}, p95 {_fmt(s['e2e_latency_ms']['p95'], ' ms')}"
        f" (encoder+search p50 {_fmt(s['compute_ms']['p50'], ' ms')}, p95 {_fmt(s['compute_ms']['p95'], ' ms')})",
        f"RSS {s['rss_mb']['start']:.0f} -> {s['rss_mb']['end']:.0f} MB (max {s['rss_mb']['max']:.0f})",
    ]
    if score is not None:
        rec = ", ".join(f"{k} {v:.3f}" for k, v in score["recall"].items())
        lines.append(f"{rec} over {score['num_scored']} localized images with a true match within "
                     f"{score['threshold_m']:.0f} m")
    return "\n".join(lines)


def _write_outputs(out: Path, result, score: dict | None) -> None:
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
            rows.append(",".join([str(stamp), str(rank), str(int(h["viewpoint_id"]))]
                                 + [f"{float(h[n]):.6f}" for n in ("x", "y", "z", "qx", "qy", "qz", "qw",
                                                                   "score", "cosine", "psi")]))
    atomic_write_text(out / "hypotheses.csv", "\n".join(rows) + "\n")
    if score is not None:
        from scmpr_ros.training.plots import plot_trajectory

        d = score["_detail"]
        top1 = d["db_xyz"][np.maximum(d["top1"], 0)][:, :2] if len(d["top1"]) else None
        plot_trajectory(d["db_xyz"][:, :2], d["query_xyz"][:, :2], d["hits"], out / "trajectory.png",
                        title="ROS replay: top-1 hits (green) and misses (red)", evaluated=d["evaluated"],
                        top1_xy=top1)


def register(app: typer.Typer, benchmark_app: typer.Typer) -> None:
    @app.command("kitti-to-bag")
    def kitti_to_bag_cmd(
        dataset: Path = typer.Argument(..., help="dataset root in KITTI odometry layout (or the synthetic town)"),
        sequence: str = typer.Option(..., "--sequence", "-s", help="sequence, e.g. 00"),
        out: Path = typer.Option(..., "--out", "-o", help="rosbag2 directory to create"),
        storage: str = typer.Option("sqlite3", "--storage", help="sqlite3 | mcap"),
        max_frames: Optional[int] = typer.Option(None, "--max-frames", help="convert only the first N frames"),
        no_lidar: bool = typer.Option(False, "--no-lidar", help="leave out the velodyne PointCloud2"),
        overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it exists"),
    ) -> None:
        """Convert a KITTI-layout sequence to a rosbag2: image, camera_info, velodyne, ground truth (odometry + /tf)."""
        from rich.progress import Progress

        from scmpr_ros.bags.kitti_to_bag import kitti_to_bag

        with Progress(transient=True) as bar:
            task = bar.add_task(f"sequence {sequence}", total=None)
            summary = kitti_to_bag(dataset, sequence, out, storage, max_frames=max_frames,
                                   include_lidar=not no_lidar, overwrite=overwrite,
                                   progress=lambda i, n: bar.update(task, completed=i, total=n))
        typer.echo(f"{summary.path} ({summary.storage}): {summary.frames} frames, "
                   f"{(summary.end_ns - summary.start_ns) / 1e9:.1f} s")
        for topic, (msgtype, count) in sorted(summary.topics.items()):
            typer.echo(f"  {topic:28s} {msgtype:32s} {count}")

    @app.command("replay")
    def replay_cmd(
        bag: Path = typer.Option(..., "--bag", help="rosbag2 directory (from `scmpr kitti-to-bag`)"),
        map_file: Path = typer.Option(..., "--map", help=".scmpr-map of the same environment"),
        model: Optional[Path] = typer.Option(None, "--model", help="checkpoint the map was built with (default: shipped nano model)"),
        rate: float = typer.Option(1.0, "--rate", help="playback rate (1.0 = recorded timing)"),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda (default: params file)"),
        params: Optional[Path] = typer.Option(None, "--params", help="ROS params file (default: config/localization.params.yaml)"),
        duration: Optional[float] = typer.Option(None, "--duration", help="stop playback after this many seconds"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="folder for replay_summary.json, hypotheses.csv, trajectory.png"),
        threshold: float = typer.Option(5.0, "--threshold", help="a hypothesis is correct within this many metres of ground truth"),
    ) -> None:
        """Replay a bag through map_server + localizer over loopback DDS (what localization.launch.py starts)."""
        from scmpr_ros.bags.kitti_to_bag import ODOM_TOPIC
        from scmpr_ros.bags.reader import bag_info
        from scmpr_ros.nodes.replay import run_replay, score_replay

        result = run_replay(bag, map_file, model or _default_model(), params_file=params, rate=rate, device=device,
                            duration_s=duration)
        score = score_replay(result, threshold) if ODOM_TOPIC in bag_info(bag).topics and result.results else None
        typer.echo(_replay_report(result, score))
        if out is not None:
            _write_outputs(out, result, score)
            typer.echo(f"outputs in {out}")

    @benchmark_app.command("ros")
    def benchmark_ros_cmd(
        bag: Path = typer.Option(..., "--bag", help="rosbag2 with camera images"),
        map_file: Path = typer.Option(..., "--map", help=".scmpr-map built with --model"),
        model: Optional[Path] = typer.Option(None, "--model", help="checkpoint (default: shipped nano model)"),
        rate: float = typer.Option(10.0, "--rate", help="playback rate"),
        duration: float = typer.Option(300.0, "--duration", help="seconds of playback (the bag loops if shorter)"),
        device: Optional[str] = typer.Option(None, "--device", help="auto | cpu | cuda"),
        out: Optional[Path] = typer.Option(None, "--out", "-o", help="write benchmark_ros.json here"),
    ) -> None:
        """End-to-end latency (image -> PoseArray received) p50/p95, processed Hz, drops and RSS over time."""
        from scmpr_ros.io_utils import atomic_write_text
        from scmpr_ros.nodes.replay import run_replay

        result = run_replay(bag, map_file, model or _default_model(), rate=rate, device=device, duration_s=duration,
                            loop=True)
        s = result.summary()
        rss = result.rss_mb
        # growth after warm-up: the first 10 % of the run (model/map first use) is not counted
        warm = [m for t, m in rss if t >= rss[-1][0] * 0.1] or [m for _, m in rss]
        s["rss_growth_mb"] = float(warm[-1] - warm[0])
        s["rss_over_time"] = [{"t_s": round(t, 1), "mb": round(m, 1)} for t, m in rss]
        typer.echo(_replay_report(result, None))
        typer.echo(f"RSS growth after warm-up {s['rss_growth_mb']:+.1f} MB")
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out / "benchmark_ros.json", json.dumps(s, indent=2, default=float))
