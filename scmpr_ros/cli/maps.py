"""CLI group: ``scmpr build-map``, ``scmpr map-info``, ``scmpr train-segmenter``, ``scmpr benchmark search``."""

from __future__ import annotations

import json
from pathlib import Path

import typer


def _load_cfg(configs: list[Path] | None):
    from scmpr_ros.config import load_config

    return load_config(*(configs or []))


def _progress_callback():
    """A rich progress bar driven by (stage, done, total) calls; returns (callback, progress)."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    prog = Progress(
        TextColumn("{task.description:>12}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
    )
    tasks: dict[str, int] = {}

    def cb(stage: str, done: int, total: int) -> None:
        if stage not in tasks:
            tasks[stage] = prog.add_task(stage, total=total)
        prog.update(tasks[stage], completed=done)

    return cb, prog


def build_map_cmd(
    dataset_dir: Path = typer.Argument(
        ..., help="dataset root (KITTI odometry layout, KITTI-360, or a synthetic town)"
    ),
    sequence: str = typer.Option(..., "--sequence", "-s", help="mapping-pass sequence, e.g. 00"),
    model: Path = typer.Option(..., "--model", "-m", help="model checkpoint (e.g. models/scmpr_nano.pt)"),
    out: Path = typer.Option(..., "--out", "-o", help="map file to write (*.scmpr-map)"),
    config: list[Path] = typer.Option(
        [], "--config", "-c", help="YAML over config/scmpr.yaml (map:, lidar:, camera: sections)"
    ),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda[:N]"),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0 = torch default)"),
    kind: str = typer.Option("auto", "--kind", help="dataset kind: auto | kitti | kitti360"),
) -> None:
    """Render the mapping pass's LiDAR viewpoints, encode them and write a validated .scmpr-map."""
    from scmpr_ros.benchmarks.common import set_omp_wait_policy

    cfg = _load_cfg(config)
    if cfg.lidar.segmentation == "learned" or cfg.lidar.segmenter_weights:
        # the segmenter CNN alternates with numpy work scan by scan: spinning OpenMP threads starve that
        # work (town 200 map accumulation 120 s -> 23 s with passive threads)
        set_omp_wait_policy("passive")
    import torch

    from scmpr_ros.datasets import open_sequence
    from scmpr_ros.mapping.builder import build_map
    from scmpr_ros.mapping.map_file import MAP_SUFFIX
    from scmpr_ros.model.checkpoint import load_checkpoint, model_checksum

    if threads:
        torch.set_num_threads(threads)
    if not str(out).endswith(MAP_SUFFIX):
        typer.echo(f"note: map files are conventionally named *{MAP_SUFFIX}", err=True)
    net, model_cfg, _meta = load_checkpoint(model, device)
    seq = open_sequence(dataset_dir, sequence, kind=kind)
    cb, prog = _progress_callback()
    with prog:
        res = build_map(seq, net, cfg, out, model_checksum(net), progress=cb, metadata={"model_file": str(model)})
    typer.echo(
        f"wrote {res['out']}: {res['viewpoints']} viewpoints ({res['places']} places), "
        f"{res['file_bytes'] / 1e6:.2f} MB ({res['bytes_per_1k_viewpoints'] / 1e3:.0f} kB per 1k viewpoints)"
    )
    typer.echo(
        f"throughput: {res['viewpoints_per_s']:.1f} viewpoints/s (render+encode), total {res['seconds_total']:.1f} s"
        + (f", map accumulation {res['seconds_accumulate']:.1f} s" if res["seconds_accumulate"] else "")
        + f"; render modes {res['render_modes']}"
    )


def map_info_cmd(
    map_file: Path = typer.Argument(..., help="a .scmpr-map file"),
    as_json: bool = typer.Option(False, "--json", help="print JSON"),
    model: Path | None = typer.Option(None, "--model", "-m", help="also check the map fits this model checkpoint"),
) -> None:
    """Validate a map file (magic, version, checksum, shapes, NaN/inf) and print what it holds."""
    from scmpr_ros.mapping.map_file import describe_map, read_map

    dim = checksum = None
    if model is not None:
        from scmpr_ros.model.checkpoint import load_checkpoint, model_checksum

        net, _, _ = load_checkpoint(model, "cpu")
        dim, checksum = net.descriptor_dim, model_checksum(net)
    m = read_map(map_file, expected_dim=dim, expected_model_checksum=checksum)
    info = describe_map(m, map_file)
    if as_json:
        typer.echo(json.dumps(info, indent=2, default=str))
        return
    meta = info["metadata"] or {}
    lines = [
        f"{map_file}: valid .scmpr-map v{info['format_version']} ({info['file_bytes'] / 1e6:.2f} MB)",
        f"  viewpoints      {info['viewpoints']} from {info['source_frames']} frames"
        f" ({meta.get('places', '?')} places), frame '{info['frame_id']}'",
        f"  descriptors     {info['descriptor_dim']}-d {info['descriptor_dtype']}",
        f"  semantic grid   {info['semantic_grid']['rows']}x{info['semantic_grid']['cols']}"
        f"x{info['semantic_grid']['classes']}"
        f" (min fraction {info['semantic_grid']['min_fraction']})",
        f"  prototypes      {info['prototypes']}",
        f"  model           {info['model_config'].get('backbone', '?')}, checksum {info['model_checksum'][:16]}…"
        + (" (matches --model)" if model is not None else ""),
        f"  extent          {info['extent_m']['min']} .. {info['extent_m']['max']} m",
        f"  source          {meta.get('dataset', '?')} sequence {meta.get('sequence', '?')}, "
        f"segmentation {meta.get('segmentation', '?')}, render {meta.get('render_modes', '?')}",
    ]
    if "bytes_per_1k_viewpoints" in info:
        lines.append(f"  size            {info['bytes_per_1k_viewpoints'] / 1e3:.0f} kB per 1k viewpoints")
    typer.echo("\n".join(lines))


def _train_mlp(sources, val, stride: int, steps: int, out: Path, cfg) -> None:
    """The per-pixel MLP (numpy), as before the CNN; reports the held-out point mIoU."""
    from scmpr_ros.datasets import open_sequence
    from scmpr_ros.lidar.range_image import RangeProjector
    from scmpr_ros.lidar.segmentation import evaluate_segmenter, train_range_segmenter

    proj = RangeProjector(cfg.lidar)
    ris = []
    for root, name in sources:
        seq = open_sequence(root, name)
        for i in range(0, seq.num_frames, max(1, stride)):
            ris.append(proj.project(seq.load_scan(i), seq.load_labels(i)))
    typer.echo(f"training the MLP on {len(ris)} scans")
    seg = train_range_segmenter(ris, cfg.lidar, steps=steps)
    seg.save(out)
    typer.echo(f"wrote {out}")
    if val:
        score = evaluate_segmenter(seg, open_sequence(*val[0]), stride)
        typer.echo(f"held-out mIoU {score.miou:.3f} ({val[0][0]} sequence {val[0][1]}): "
                   + ", ".join(f"{k} {v:.2f}" for k, v in score.per_class.items()))  # fmt: skip


def _train_cnn(sources, val, opts: dict, out: Path, cfg) -> None:
    """RangeSegNet (torch): cached range images, the training loop, the held-out point mIoU of the best."""
    from scmpr_ros.datasets import open_sequence
    from scmpr_ros.lidar.segmentation import evaluate_segmenter
    from scmpr_ros.mapping.segmenters import RangeSegNetSegmenter
    from scmpr_ros.training.segmenter import SegTrainConfig, load_scan_set, train_segnet

    tcfg = SegTrainConfig(**opts["train"])
    log = lambda s: typer.echo(s, err=True)  # noqa: E731
    train = load_scan_set(sources, cfg.lidar, opts["stride"], opts["cache_dir"], log)
    vset = load_scan_set(val, cfg.lidar, opts["val_stride"], opts["cache_dir"], log) if val else None
    typer.echo(f"training RangeSegNet on {len(train)} scans of {len(sources)} sequence(s)"
               + (f", validating on {len(vset)}" if vset else ""))  # fmt: skip
    ckpt = opts["checkpoint"] or out.with_name(out.name + ".ckpt")
    meta = {"command": opts["command"]}
    st = train_segnet(train, vset, tcfg, out, ckpt, opts["resume"], meta, log)
    typer.echo(f"step {st.step}/{tcfg.steps}, {st.elapsed_s / 60:.1f} min of training in all; "
               f"wrote {out} (best val pixel mIoU {st.best:.3f}), checkpoint {ckpt}")  # fmt: skip
    if val:
        seg = RangeSegNetSegmenter.load(out, cfg.lidar)
        score = evaluate_segmenter(seg, open_sequence(*val[0]), opts["val_stride"])
        typer.echo(f"held-out point mIoU {score.miou:.3f} ({val[0][0]} sequence {val[0][1]}): "
                   + ", ".join(f"{k} {v:.2f}" for k, v in score.per_class.items()))  # fmt: skip


def train_segmenter_cmd(
    dataset_dir: list[Path] = typer.Argument(..., help="labelled dataset root(s) (synthetic towns / SemanticKITTI)"),
    sequence: list[str] = typer.Option(["00"], "--sequence", "-s", help="training sequence(s) of every root"),
    arch: str = typer.Option("cnn", "--arch", help="cnn (RangeSegNet, torch) | mlp (per-pixel numpy MLP)"),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="weights file [models/range_segnet.pt | models/range_segmenter.npz]"
    ),
    val_sequence: str | None = typer.Option(None, "--val-sequence", help="held-out sequence for the mIoU"),
    val_dir: Path | None = typer.Option(None, "--val-dir", help="held-out dataset root (default: the first root)"),
    stride: int = typer.Option(2, "--stride", help="use every N-th training scan"),
    val_stride: int = typer.Option(4, "--val-stride", help="use every N-th validation scan"),
    steps: int | None = typer.Option(None, "--steps", help="optimizer steps [cnn 3000: the LR schedule | mlp 1500]"),
    batch: int = typer.Option(4, "--batch", help="cnn: scans per step"),
    crop_width: int = typer.Option(512, "--crop-width", help="cnn: columns of each training crop"),
    lr: float = typer.Option(4e-3, "--lr", help="cnn: AdamW peak learning rate"),
    lovasz_weight: float = typer.Option(1.0, "--lovasz-weight", help="cnn: weight of the Lovasz-softmax term"),
    threads: int = typer.Option(2, "--threads", help="cnn: torch CPU threads (0 = torch default)"),
    time_budget: float = typer.Option(0.0, "--time-budget", help="cnn: stop after this many minutes (0 = none)"),
    val_every: int = typer.Option(250, "--val-every", help="cnn: validate (and export the best) every N steps"),
    checkpoint: Path | None = typer.Option(None, "--checkpoint", help="cnn: training checkpoint [OUT.ckpt]"),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="cnn: continue from the checkpoint if present"),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="cnn: keep projected range images here"),
    seed: int = typer.Option(0, "--seed", help="cnn: initialisation and sampling seed"),
    config: list[Path] = typer.Option([], "--config", "-c", help="YAML over config/scmpr.yaml (lidar: section)"),
) -> None:
    """Train the range-image point segmenter and report its mIoU on held-out scans."""
    import sys

    from scmpr_ros.benchmarks.common import set_omp_wait_policy
    from scmpr_ros.errors import InputError

    if arch not in ("cnn", "mlp"):
        raise InputError(f"--arch must be cnn or mlp, got {arch!r}")
    set_omp_wait_policy("passive")  # spinning OpenMP threads crawl on a shared, oversubscribed CPU
    cfg = _load_cfg(config)
    sources = [(root, name) for root in dataset_dir for name in sequence]
    val = [(val_dir or dataset_dir[0], val_sequence)] if val_sequence else []
    if arch == "mlp":
        _train_mlp(sources, val, stride, steps or 1500, out or Path("models/range_segmenter.npz"), cfg)
        return
    train = {
        "steps": steps or 3000,
        "batch": batch,
        "crop_width": crop_width,
        "lr": lr,
        "lovasz_weight": lovasz_weight,
        "threads": threads,
        "time_budget_s": time_budget * 60.0,
        "val_every": val_every,
        "ckpt_every": val_every,
        "seed": seed,
    }
    opts = {
        "train": train,
        "stride": stride,
        "val_stride": val_stride,
        "cache_dir": cache_dir,
        "checkpoint": checkpoint,
        "resume": resume,
        "command": " ".join(["scmpr", *sys.argv[1:]]),
    }
    _train_cnn(sources, val, opts, out or Path("models/range_segnet.pt"), cfg)


def evaluate_segmenter_cmd(
    dataset_dir: Path = typer.Argument(..., help="KITTI-layout root with labels (SemanticKITTI, KITTI-360, synthetic)"),
    sequence: str = typer.Option(..., "--sequence", "-s", help="labelled sequence to score, e.g. 08"),
    model: Path | None = typer.Option(
        None,
        "--model",
        "-m",
        help="segmenter weights: .pt RangeSegNet or .npz MLP (default: the shipped models/range_segnet.pt, "
        "else models/range_segmenter.npz)",
    ),
    stride: int = typer.Option(1, "--stride", help="score every N-th scan"),
    knn: int = typer.Option(-1, "--knn", help="CNN: k of the k-NN clean-up (0 = off, -1 = the default)"),
    threads: int = typer.Option(0, "--threads", help="CNN: torch CPU threads (0 = torch default)"),
    config: list[Path] = typer.Option([], "--config", "-c", help="YAML overrides (lidar: section)"),
) -> None:
    """Per-class IoU of a point segmenter against a sequence's labels; last line: mIoU over all points."""
    import dataclasses

    from scmpr_ros.benchmarks.common import set_omp_wait_policy
    from scmpr_ros.datasets import open_sequence
    from scmpr_ros.lidar.segmentation import evaluate_segmenter
    from scmpr_ros.mapping.segmenters import default_segmenter_weights, load_segmenter

    set_omp_wait_policy("passive")
    cfg = _load_cfg(config)
    weights = model or default_segmenter_weights()
    segmenter = load_segmenter(weights, cfg.lidar)
    if knn >= 0 and hasattr(segmenter, "knn"):
        segmenter.knn = dataclasses.replace(segmenter.knn, k=knn)
    if threads > 0 and hasattr(segmenter, "net"):
        import torch

        torch.set_num_threads(threads)
    score = evaluate_segmenter(segmenter, open_sequence(dataset_dir, sequence), stride)
    typer.echo(f"{weights} on {dataset_dir} sequence {sequence}: {score.scans} scans")
    for name, iou in score.per_class.items():
        typer.echo(f"  {name:<14} IoU {iou:.3f}")
    typer.echo(f"mIoU {score.miou:.3f} over {score.points} points")


def search_cmd(
    sizes: str = typer.Option("100000,1000000", "--sizes", help="comma-separated map sizes (viewpoints)"),
    dim: int = typer.Option(0, "--dim", help="descriptor dimension (0 = the model config's descriptor_dim)"),
    queries: int = typer.Option(200, "--queries", help="single queries timed per size"),
    distribution: str = typer.Option("walk", "--distribution", help="walk (place-like) | iid (ANN worst case)"),
    ann: str | None = typer.Option(None, "--ann", help="ivf | hnsw (default: retrieval.ann_type)"),
    threads: int = typer.Option(0, "--threads", help="faiss OpenMP threads (0 = default)"),
    config: list[Path] = typer.Option([], "--config", "-c", help="YAML over config/scmpr.yaml (retrieval: section)"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the figures to this JSON file"),
) -> None:
    """Per-query top-10 + re-rank time at each map size, and ANN recall@10 against exact search."""
    import dataclasses

    from scmpr_ros.benchmarks.search import format_search_table, search_benchmark
    from scmpr_ros.io_utils import atomic_write_text

    cfg = _load_cfg(config)
    r = cfg.retrieval if ann is None else dataclasses.replace(cfg.retrieval, ann_type=ann)
    if threads:
        import faiss

        faiss.omp_set_num_threads(threads)
    d = dim or (cfg.model.descriptor_dim or cfg.model.feature_dim * cfg.model.netvlad_clusters)
    size_list = [int(s.replace("_", "")) for s in sizes.split(",") if s.strip()]
    rows = search_benchmark(
        size_list,
        d,
        r,
        queries=queries,
        top_k=r.top_k,
        distribution=distribution,
        log=lambda s: typer.echo(s, err=True),
    )
    typer.echo(format_search_table(rows))
    if json_out is not None:
        atomic_write_text(json_out, json.dumps(rows, indent=2))


def register(app: typer.Typer, benchmark_app: typer.Typer) -> None:
    """Add this group's commands to the ``scmpr`` app (and its ``benchmark`` sub-app)."""
    app.command("build-map")(build_map_cmd)
    app.command("map-info")(map_info_cmd)
    app.command("train-segmenter")(train_segmenter_cmd)
    app.command("evaluate-segmenter")(evaluate_segmenter_cmd)
    benchmark_app.command("search")(search_cmd)
