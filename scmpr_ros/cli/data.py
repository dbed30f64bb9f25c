"""``scmpr synth`` (generate the synthetic KITTI-format town) and ``scmpr dataset-info``."""

from __future__ import annotations

import time
from pathlib import Path

import typer


def _parse_size(text: str) -> tuple[int, int]:
    from scmpr_ros.errors import InputError

    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise InputError(f"--image-size: expected WIDTHxHEIGHT such as 1241x376, got {text!r}") from None
    if w < 16 or h < 16:
        raise InputError(f"--image-size: must be at least 16x16, got {text!r}")
    return w, h


def synth(
    out: Path = typer.Argument(..., help="output directory (KITTI layout: OUT/sequences/NN/...)"),
    seed: int = typer.Option(0, help="random seed; the same seed gives the same town, byte for byte"),
    frames: int = typer.Option(200, min=2, help="frames of the mapping pass (the query pass has a similar length)"),
    conditions: str = typer.Option(
        "day,night,winter", help="query-pass camera conditions: comma list of day, night, winter"
    ),
    image_size: str = typer.Option("1241x376", help="camera image WIDTHxHEIGHT (KITTI image_2 intrinsics, scaled)"),
    azimuth_steps: int = typer.Option(2000, min=16, help="LiDAR columns per revolution (64 beams, HDL-64 FOV)"),
    lidar: str = typer.Option(
        "hdl64e",
        help="LiDAR sensor model: hdl64e (KITTI's Velodyne HDL-64E: beam table, link budget, glass, ego car, "
        "motion during the sweep, de-skewed) | uniform (idealised: 64 even beams, the output before hdl64e)",
    ),
    class_images: bool = typer.Option(
        False, "--class-images", help="also write semantic_2/NNNNNN.png (common class per pixel)"
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="replace a town already in OUT"),
) -> None:
    """Generate the synthetic town: mapping pass (00) and query pass (01 day, 02 night, 03 winter)."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    from scmpr_ros.datasets.synthetic import generate_town, parse_conditions
    from scmpr_ros.datasets.synthetic.lidar_model import LIDAR_MODELS
    from scmpr_ros.errors import InputError

    size = _parse_size(image_size)
    conds = parse_conditions(conditions)
    if lidar not in LIDAR_MODELS:
        raise InputError(f"--lidar: expected one of {', '.join(LIDAR_MODELS)}, got {lidar!r}")
    console = Console(stderr=True)
    start = time.perf_counter()
    first_frame_t: list[float] = []
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[fps]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("building town", total=None, fps="")

        def progress(done: int, total: int, label: str) -> None:
            now = time.perf_counter()
            if not first_frame_t:
                first_frame_t.append(now)
            rate = done / (now - first_frame_t[0]) if done and now > first_frame_t[0] else 0.0
            bar.update(task, completed=done, total=total, description=label, fps=f"{rate:.2f} frames/s" if done else "")

        manifest = generate_town(
            out,
            seed=seed,
            frames=frames,
            conditions=conds,
            image_size=size,
            azimuth_steps=azimuth_steps,
            class_images=class_images,
            overwrite=overwrite,
            progress=progress,
            lidar=lidar,
        )
    elapsed = time.perf_counter() - start
    seqs = manifest["sequences"]
    query = [v for k, v in seqs.items() if v["pass"] == "query"]
    n_frames = seqs["00"]["frames"] + (query[0]["frames"] if query else 0)  # drive frames (conditions share them)
    render_s = elapsed - (first_frame_t[0] - start if first_frame_t else 0.0)
    listing = ", ".join(f"{k} ({v['pass']}/{v['condition']}, {v['frames']} frames)" for k, v in seqs.items())
    typer.echo(f"wrote {out}: sequences {listing}")
    typer.echo(
        f"{n_frames} frames ({len(conds)} condition(s) per query frame, {size[0]}x{size[1]} images, "
        f"{azimuth_steps} LiDAR columns, {lidar} sensor) in {elapsed:.1f} s: "
        f"{n_frames / max(render_s, 1e-9):.2f} frames/s after {elapsed - render_s:.1f} s of scene building"
    )


def dataset_info(
    root: Path = typer.Argument(..., help="dataset root (KITTI: holds sequences/; KITTI-360: holds data_3d_raw/)"),
    sequence: str | None = typer.Option(
        None, "--sequence", "-s", help="sequence (KITTI: 00; KITTI-360: 0 or the drive name)"
    ),
    kind: str = typer.Option("auto", help="auto | kitti | kitti360"),
    check: bool = typer.Option(False, "--check", help="read every frame (scan, labels, image), not only the first"),
    as_json: bool = typer.Option(False, "--json", help="print the description as JSON"),
) -> None:
    """Print what a sequence holds; exits non-zero with the loader's message on bad data."""
    import json

    from scmpr_ros.datasets import list_sequences, open_sequence

    if sequence is None:
        names = list_sequences(root, kind)
        typer.echo(f"{root}: {len(names)} sequence(s): {', '.join(names) if names else 'none'}")
        manifest = root / "synth_manifest.yaml"
        if manifest.is_file():
            from scmpr_ros.datasets.synthetic import read_manifest

            for name, entry in read_manifest(root)["sequences"].items():
                typer.echo(f"  {name}: {entry['pass']} pass, {entry['condition']}")
        typer.echo("pass --sequence NN for details")
        return
    seq = open_sequence(root, sequence, kind)
    indices = range(seq.num_frames) if check else range(min(1, seq.num_frames))
    for i in indices:
        seq.load_scan(i)
        if seq.has_labels and seq.label_valid[i]:
            seq.load_labels(i)
        if seq.has_images:
            seq.load_image(i)
    info = seq.describe()
    info["checked_frames"] = len(indices)
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    for key, value in info.items():
        if key == "notes":
            continue
        typer.echo(f"{key:>16}: {value}")
    for note in info["notes"]:
        typer.echo(f"{'note':>16}: {note}")


def register(app: typer.Typer, benchmark_app: typer.Typer) -> None:  # noqa: ARG001 - no benchmarks in this group
    app.command("synth")(synth)
    app.command("dataset-info")(dataset_info)
