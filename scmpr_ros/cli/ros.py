"""CLI group: ``scmpr kitti-to-bag``, ``scmpr replay``, ``scmpr demo``, ``scmpr benchmark ros``.

rclpy is imported only inside the commands, through scmpr_ros.nodes (the one package that uses it).
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from scmpr_ros.demo import default_model, replay_report, run_demo, write_replay_outputs


def kitti_to_bag_cmd(
    dataset: Path = typer.Argument(..., help="dataset root in KITTI odometry layout (or the synthetic town)"),
    sequence: str = typer.Option(..., "--sequence", "-s", help="sequence, e.g. 00"),
    out: Path = typer.Option(..., "--out", "-o", help="rosbag2 directory to create"),
    storage: str = typer.Option("sqlite3", "--storage", help="sqlite3 | mcap"),
    max_frames: int | None = typer.Option(None, "--max-frames", help="convert only the first N frames"),
    no_lidar: bool = typer.Option(False, "--no-lidar", help="leave out the velodyne PointCloud2"),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace --out if it exists"),
) -> None:
    """Convert a KITTI-layout sequence to a rosbag2: image, camera_info, velodyne, ground truth (odometry + /tf)."""
    from rich.progress import Progress

    from scmpr_ros.bags.kitti_to_bag import kitti_to_bag

    with Progress(transient=True) as bar:
        task = bar.add_task(f"sequence {sequence}", total=None)
        summary = kitti_to_bag(
            dataset,
            sequence,
            out,
            storage,
            max_frames=max_frames,
            include_lidar=not no_lidar,
            overwrite=overwrite,
            progress=lambda i, n: bar.update(task, completed=i, total=n),
        )
    typer.echo(
        f"{summary.path} ({summary.storage}): {summary.frames} frames, "
        f"{(summary.end_ns - summary.start_ns) / 1e9:.1f} s"
    )
    for topic, (msgtype, count) in sorted(summary.topics.items()):
        typer.echo(f"  {topic:28s} {msgtype:32s} {count}")


def replay_cmd(
    bag: Path = typer.Option(..., "--bag", help="rosbag2 directory or a single .mcap file"),
    map_file: Path = typer.Option(..., "--map", help=".scmpr-map of the same environment"),
    model: Path | None = typer.Option(
        None, "--model", help="checkpoint the map was built with (default: shipped nano model)"
    ),
    rate: float = typer.Option(1.0, "--rate", help="playback rate (1.0 = recorded timing)"),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda (default: params file)"),
    params: Path | None = typer.Option(
        None, "--params", help="ROS params file (default: config/localization.params.yaml)"
    ),
    duration: float | None = typer.Option(None, "--duration", help="stop playback after this many seconds"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="folder for replay_summary.json, hypotheses.csv, trajectory.png"
    ),
    threshold: float = typer.Option(
        5.0, "--threshold", help="a hypothesis is correct within this many metres of ground truth"
    ),
    image_topic: str | None = typer.Option(
        None, "--image-topic", help="the bag's sensor_msgs/Image topic (default: the params file's image_topic)"
    ),
    camera_info_topic: str | None = typer.Option(
        None, "--camera-info-topic", help="the bag's CameraInfo topic (default: the params file's)"
    ),
) -> None:
    """Replay a bag (rosbag2 directory or .mcap file) through map_server + localizer over loopback DDS."""
    from scmpr_ros.bags.reader import bag_info
    from scmpr_ros.msgs.topics import GROUND_TRUTH_TOPIC
    from scmpr_ros.nodes.replay import run_replay

    topics = {"image_topic": image_topic, "camera_info_topic": camera_info_topic}
    result = run_replay(
        bag,
        map_file,
        model or default_model(),
        params_file=params,
        rate=rate,
        device=device,
        duration_s=duration,
        localizer_overrides={k: v for k, v in topics.items() if v},
    )
    has_truth = GROUND_TRUTH_TOPIC in bag_info(bag).topics
    score = result.score(threshold) if has_truth and result.results else None
    typer.echo(replay_report(result, score))
    if not has_truth:
        typer.echo(f"recall not scored: the bag has no ground truth on {GROUND_TRUTH_TOPIC}")
    if out is not None:
        write_replay_outputs(out, result, score)
        typer.echo(f"outputs in {out}")


def demo_cmd(
    work: Path = typer.Option(Path("runs/demo"), "--work", help="cache + output folder"),
    model: Path | None = typer.Option(None, "--model", help="checkpoint (default: the shipped nano model)"),
    frames: int = typer.Option(80, "--frames", help="frames of the town's mapping pass"),
    seed: int = typer.Option(7, "--seed", help="town seed"),
    width: int = typer.Option(620, "--width", help="rendered image width"),
    height: int = typer.Option(188, "--height", help="rendered image height"),
    azimuth_steps: int = typer.Option(1024, "--azimuth-steps", help="LiDAR columns per revolution"),
    rate: float = typer.Option(1.0, "--rate", help="playback rate"),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda"),
    regenerate: bool = typer.Option(False, "--regenerate", help="rebuild the town, map and bag"),
) -> None:
    """End to end: synthetic town -> map -> query bag -> replay through the ROS nodes -> R@1, Hz, latency, plot."""
    run_demo(
        work,
        model or default_model(),
        frames=frames,
        seed=seed,
        image_size=(width, height),
        azimuth_steps=azimuth_steps,
        rate=rate,
        device=device,
        regenerate=regenerate,
        echo=typer.echo,
    )


def benchmark_ros_cmd(
    bag: Path = typer.Option(..., "--bag", help="rosbag2 with camera images"),
    map_file: Path = typer.Option(..., "--map", help=".scmpr-map built with --model"),
    model: Path | None = typer.Option(None, "--model", help="checkpoint (default: shipped nano model)"),
    rate: float = typer.Option(10.0, "--rate", help="camera images per second (the bag's timing is scaled to it)"),
    duration: float = typer.Option(300.0, "--duration", help="seconds of playback (the bag loops if shorter)"),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda"),
    out: Path | None = typer.Option(None, "--out", "-o", help="write benchmark_ros.json here"),
) -> None:
    """End-to-end latency (image -> PoseArray received) p50/p95, processed Hz, drops and RSS over time."""
    from scmpr_ros.io_utils import atomic_write_text
    from scmpr_ros.nodes.replay import run_replay

    result = run_replay(
        bag, map_file, model or default_model(), image_rate_hz=rate, device=device, duration_s=duration, loop=True
    )
    s = result.summary()
    rss = result.rss_mb
    # growth after warm-up: the first 10 % of the run (model/map first use) is not counted
    warm = [m for t, m in rss if t >= rss[-1][0] * 0.1] or [m for _, m in rss]
    s["rss_growth_mb"] = float(warm[-1] - warm[0])
    s["rss_over_time"] = [{"t_s": round(t, 1), "mb": round(m, 1)} for t, m in rss]
    typer.echo(replay_report(result, None))
    targets = [  # the targets on 2 CPU cores with the nano model
        ("processed >= 10 Hz", s["processed_hz"] >= 10.0, f"{s['processed_hz']:.1f} Hz"),
        (
            "ROS overhead p95 <= 5 ms (e2e - mailbox wait - encoder)",
            s["ros_overhead_ms"]["p95"] <= 5.0,
            f"{s['ros_overhead_ms']['p95']:.1f} ms",
        ),
        ("RSS growth < 20 MB", s["rss_growth_mb"] < 20.0, f"{s['rss_growth_mb']:+.1f} MB"),
    ]
    s["targets"] = {name: {"met": bool(ok), "value": val} for name, ok, val in targets}
    for name, ok, val in targets:
        typer.echo(f"  {'met ' if ok else 'MISS'}  {name}: {val}")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "benchmark_ros.json", json.dumps(s, indent=2, default=float))


def register(app: typer.Typer, benchmark_app: typer.Typer) -> None:
    """Add this group's commands to the ``scmpr`` app (and its ``benchmark`` sub-app)."""
    app.command("kitti-to-bag")(kitti_to_bag_cmd)
    app.command("replay")(replay_cmd)
    app.command("demo")(demo_cmd)
    benchmark_app.command("ros")(benchmark_ros_cmd)
