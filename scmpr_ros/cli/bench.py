"""CLI group ``scmpr benchmark``: ``encoder`` (SCM-PR image encoder vs a ResNet-18 + NetVLAD baseline),
``scan`` (compiled CPU kernel vs its memory-traffic limit vs the pure-torch scan vs the reference loop),
``segmenter`` (the LiDAR range-image CNN and the full per-point segmentation) and ``all`` (encoder, scan,
search, ROS loop into one JSON + markdown report with machine info).

Candidates are timed interleaved (A, B, A, B, ...) in one process so machine noise hits them alike;
the ratio of medians is the headline, absolute ms belong to the machine (and its load) they came from.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer

from scmpr_ros.benchmarks.common import set_omp_wait_policy
from scmpr_ros.benchmarks.encoder import encoder_benchmark, format_encoder_table
from scmpr_ros.benchmarks.report import benchmark_all, format_report_markdown
from scmpr_ros.benchmarks.scan import format_scan_table, scan_benchmark


def _parse_size(size: str) -> tuple[int, int]:
    from scmpr_ros.errors import InputError

    try:
        h, w = (int(v) for v in size.lower().split("x"))
    except ValueError as exc:
        raise InputError(f"--size must look like 160x512 (height x width), got {size!r}") from exc
    if h < 32 or w < 32:
        raise InputError(f"--size must be at least 32x32, got {size!r}")
    return h, w


def _model_config(config: str):
    """A VMamba size name (tiny | micro | nano) or a YAML file with a model section."""
    import dataclasses

    from scmpr_ros.config import ConfigError, ModelConfig, load_config
    from scmpr_ros.model.vmamba import VMAMBA_CONFIGS

    if config in VMAMBA_CONFIGS:
        return dataclasses.replace(ModelConfig(), backbone=config)
    if Path(config).is_file():
        return load_config(config).model
    raise ConfigError(f"--config: {config!r} is neither a backbone size ({', '.join(VMAMBA_CONFIGS)}) nor a YAML file")


def encoder_cmd(
    config: str = typer.Option("nano", "--config", help="backbone size (tiny | micro | nano) or a YAML config"),
    size: str = typer.Option("160x512", "--size", help="input height x width"),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads (0 = torch default)"),
    iters: int = typer.Option(30, "--iters", help="timed iterations per model"),
    warmup: int = typer.Option(5, "--warmup", help="untimed iterations first"),
    batch: int = typer.Option(1, "--batch", help="images per forward"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda[:N]"),
    dtype: str = typer.Option("float32", "--dtype", help="float32 | float16 | bfloat16 (autocast)"),
    scan_backend: str | None = typer.Option(None, "--scan-backend", help="override model.scan_backend"),
    compare_torch_scan: bool = typer.Option(
        False, "--compare-torch-scan", help="also time the same model with the pure-torch scan"
    ),
    omp_wait_policy: str = typer.Option(
        "keep", "--omp-wait-policy", help="keep | passive | active (OpenMP idle threads)"
    ),
    json_out: Path | None = typer.Option(None, "--json", help="also write the figures to this JSON file"),
) -> None:
    """Time the SCM-PR image encoder against ResNet-18 + NetVLAD in the same run (median, p95, ratio)."""
    import dataclasses

    from scmpr_ros.io_utils import atomic_write_text

    set_omp_wait_policy(omp_wait_policy)
    cfg = _model_config(config)
    if scan_backend is not None:
        cfg = dataclasses.replace(cfg, scan_backend=scan_backend)
    extra = {"scmpr_torch_scan": dataclasses.replace(cfg, scan_backend="torch")} if compare_torch_scan else None
    res = encoder_benchmark(cfg, _parse_size(size), threads, iters, warmup, batch, device, dtype, extra)
    typer.echo(format_encoder_table(res))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(res, indent=2))


def scan_cmd(
    length: int = typer.Option(3328, "--length", help="tokens (3328 = 128x416 input at stride 4)"),
    channels: int = typer.Option(768, "--channels", help="scan channels (4 directions x 192 for VMamba-T stage 1)"),
    groups: int = typer.Option(4, "--groups", help="B/C groups (the scan directions)"),
    d_state: int = typer.Option(1, "--d-state", help="SSM state size N"),
    ss2d: str = typer.Option("32x104x192x6", "--ss2d", help="HxWxdxrank of the fused SS2D core timed beside"),
    threads: int = typer.Option(2, "--threads", help="CPU threads (torch and the kernel)"),
    iters: int = typer.Option(20, "--iters", help="timed rounds"),
    torch_iters: int = typer.Option(5, "--torch-iters", help="timed rounds of the (slow) torch candidates"),
    ref_length: int = typer.Option(256, "--ref-length", help="tokens for the (slow) reference loop"),
    omp_wait_policy: str = typer.Option("keep", "--omp-wait-policy", help="keep | passive | active"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the figures to this JSON file"),
) -> None:
    """Time the compiled CPU scan against the bare recurrence (the memory limit), torch and the reference."""
    from scmpr_ros.errors import InputError
    from scmpr_ros.io_utils import atomic_write_text

    set_omp_wait_policy(omp_wait_policy)
    try:
        shape = tuple(int(v) for v in ss2d.lower().split("x"))
    except ValueError as exc:
        raise InputError(f"--ss2d must look like 32x104x192x6 (H x W x d x rank), got {ss2d!r}") from exc
    if len(shape) != 4 or min(shape) < 1:
        raise InputError(f"--ss2d must be four positive numbers HxWxdxrank, got {ss2d!r}")
    res = scan_benchmark(length, channels, groups, d_state, shape, threads, iters, 3, torch_iters, ref_length)  # type: ignore[arg-type]
    typer.echo(format_scan_table(res))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(res, indent=2))


def all_cmd(
    out: Path = typer.Option(Path("bench"), "--out", "-o", help="directory for benchmark.json and benchmark.md"),
    quick: bool = typer.Option(False, "--quick", help="defaults become: nano only, 5 rounds, a 10k search map"),
    configs: str | None = typer.Option(None, "--configs", help="comma-separated backbone sizes [nano,micro,tiny]"),
    size: str = typer.Option("160x512", "--size", help="encoder input height x width"),
    threads: int = typer.Option(2, "--threads", help="CPU threads"),
    encoder_iters: int | None = typer.Option(
        None, "--encoder-iters", help="timed rounds per encoder [15] (tiny: a third)"
    ),
    scan_iters: int | None = typer.Option(None, "--scan-iters", help="timed rounds of the scan candidates [15]"),
    scan_shape: str = typer.Option("3328x768", "--scan-shape", help="tokens x channels of the scan section"),
    search_sizes: str | None = typer.Option(None, "--search-sizes", help="map sizes [100000,1000000]"),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when available) | cpu | cuda"),
    ros_bag: Path | None = typer.Option(None, "--ros-bag", help="query rosbag2 for the ROS loop section"),
    ros_map: Path | None = typer.Option(None, "--ros-map", help=".scmpr-map for the ROS loop section"),
    ros_model: Path | None = typer.Option(None, "--ros-model", help="checkpoint (default: the shipped nano)"),
    ros_duration: float = typer.Option(60.0, "--ros-duration", help="seconds of ROS playback"),
    omp_wait_policy: str = typer.Option(
        "passive",
        "--omp-wait-policy",
        help="passive (default: idle OpenMP threads sleep; spinning ones ruin timings on a shared machine)"
        " | active | keep",
    ),
) -> None:
    """Encoder, scan, search and ROS loop into OUT/benchmark.json + OUT/benchmark.md (with machine info)."""
    from scmpr_ros.errors import InputError, ScmprError
    from scmpr_ros.io_utils import atomic_write_text

    set_omp_wait_policy(omp_wait_policy)
    search_sizes = search_sizes or ("10000" if quick else "100000,1000000")
    configs = configs or ("nano" if quick else "nano,micro,tiny")
    encoder_iters = encoder_iters or (5 if quick else 15)
    scan_iters = scan_iters or (5 if quick else 15)
    try:
        sizes = tuple(int(v.replace("_", "")) for v in search_sizes.split(",") if v.strip())
        shape = tuple(int(v) for v in scan_shape.lower().split("x"))
    except ValueError as exc:
        raise InputError(
            f"--search-sizes / --scan-shape: integers expected, got {search_sizes!r} / {scan_shape!r}"
        ) from exc
    if len(shape) != 2 or min(shape) < 4 or shape[1] % 4:
        raise InputError(f"--scan-shape must be TOKENSxCHANNELS with channels divisible by 4, got {scan_shape!r}")
    names = tuple(c.strip() for c in configs.split(",") if c.strip())
    for name in names:
        _model_config(name)  # unknown names fail before anything runs
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"--device must be auto, cpu or cuda, got {device!r}")
    report = benchmark_all(
        quick,
        names,
        _parse_size(size),
        threads,
        encoder_iters,
        scan_iters,
        sizes,
        shape,  # type: ignore[arg-type]
        device,
        ros_bag,
        ros_map,
        ros_model,
        10.0,
        ros_duration,
        log=lambda s: typer.echo(s, err=True),
    )
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "benchmark.json", json.dumps(report, indent=2, default=float))
    md = format_report_markdown(report)
    atomic_write_text(out / "benchmark.md", md)
    typer.echo(md)
    typer.echo(f"wrote {out / 'benchmark.json'} and {out / 'benchmark.md'}")
    if report["errors"]:
        raise ScmprError(f"benchmark all: sections failed: {', '.join(report['errors'])} (see {out / 'benchmark.md'})")


def filter_cmd(
    particles: int = typer.Option(2000, "--particles", help="filter particles"),
    steps: int = typer.Option(200, "--steps", help="filter steps timed per map size"),
    sizes: str = typer.Option("10000,1000000", "--sizes", help="map sizes (viewpoints), comma separated"),
    json_out: Path | None = typer.Option(None, "--json", help="write the figures as JSON here"),
) -> None:
    """One localization-filter step (odometry motion + measurement + estimate) at each map size."""
    set_omp_wait_policy("passive")
    from scmpr_ros.benchmarks.filter import filter_step_benchmark, format_filter_table
    from scmpr_ros.errors import InputError
    from scmpr_ros.io_utils import atomic_write_text

    try:
        counts = tuple(int(s) for s in sizes.split(","))
    except ValueError as exc:
        raise InputError(f"--sizes must be comma-separated integers, got {sizes!r}") from exc
    result = filter_step_benchmark(counts, particles=particles, steps=steps)
    typer.echo(format_filter_table(result))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=2))


def train_cmd(
    iters: int = typer.Option(5, "--iters", help="timed rounds per candidate (interleaved)"),
    warmup: int = typer.Option(2, "--warmup", help="untimed rounds first"),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads"),
    batch: int = typer.Option(16, "--batch", help="pairs per step"),
    config: Path | None = typer.Option(None, "--config", help="training YAML (default config/train_nano.yaml)"),
    json_out: Path | None = typer.Option(None, "--json", help="write the figures as JSON here"),
) -> None:
    """Pairs/s of a full training step (both towers, losses, optimizer): numba vs torch scan vs ResNet18."""
    from scmpr_ros.benchmarks.train_step import format_train_step_table, train_step_benchmark
    from scmpr_ros.io_utils import atomic_write_text

    result = train_step_benchmark(batch=batch, iters=iters, warmup=warmup, threads=threads, config=config)
    typer.echo(format_train_step_table(result))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(result, indent=2, default=float))


def segmenter_cmd(
    weights: Path | None = typer.Option(
        None, "--weights", help="RangeSegNet file (default: models/range_segnet.pt, else an untrained default net)"
    ),
    data: Path | None = typer.Option(None, "--data", help="KITTI-layout root to take scans from (default: analytic)"),
    sequence: str = typer.Option("00", "--sequence", help="sequence of --data"),
    scans: int = typer.Option(10, "--scans", help="scans cycled through by segment_points"),
    threads: int = typer.Option(2, "--threads", help="torch CPU threads"),
    iters: int = typer.Option(30, "--iters", help="timed rounds"),
    warmup: int = typer.Option(5, "--warmup", help="untimed rounds first"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the figures to this JSON file"),
) -> None:
    """Median ms of the LiDAR segmenter: the network alone and the full segment_points (64x1024 range image)."""
    set_omp_wait_policy("passive")
    from scmpr_ros.benchmarks.segmenter import format_segmenter_table, load_scans, segmenter_benchmark, street_scan
    from scmpr_ros.io_utils import atomic_write_text

    clouds = load_scans(data, sequence, scans) if data is not None else [street_scan(seed=i) for i in range(3)]
    res = segmenter_benchmark(clouds, weights, threads, iters, warmup)
    typer.echo(format_segmenter_table(res))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(res, indent=2, default=float))


def register(app: typer.Typer, benchmark_app: typer.Typer) -> None:
    """Add this group's commands to the ``scmpr`` app (and its ``benchmark`` sub-app)."""
    benchmark_app.command("encoder")(encoder_cmd)
    benchmark_app.command("scan")(scan_cmd)
    benchmark_app.command("all")(all_cmd)
    benchmark_app.command("filter")(filter_cmd)
    benchmark_app.command("train")(train_cmd)
    benchmark_app.command("segmenter")(segmenter_cmd)
