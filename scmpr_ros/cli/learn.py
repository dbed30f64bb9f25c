"""CLI group: ``scmpr train``, ``scmpr evaluate``, ``scmpr ablation``, ``scmpr protocol``.

Multi-GPU / multi-node: the same command under torchrun, e.g.
``torchrun --nproc-per-node 4 -m scmpr_ros.cli train --config config/train_nano.yaml --data DIR``.
"""

from __future__ import annotations

from pathlib import Path

import typer


def _load_cfg(configs: list[Path] | None):
    from scmpr_ros.config import load_config

    return load_config(*(configs or []))


def _split(values: list[str] | None) -> list[str]:
    out: list[str] = []
    for v in values or []:
        out += [s.strip() for s in v.split(",") if s.strip()]
    return out


def _floats(text: str | None, option: str) -> list[float]:
    """'0,0.3,1' -> [0.0, 0.3, 1.0]; a value that is not a number fails naming the option."""
    out: list[float] = []
    for v in _split([text] if text else []):
        try:
            out.append(float(v))
        except ValueError:
            raise typer.BadParameter(
                f"{v!r} is not a number (comma-separated list expected)", param_hint=option
            ) from None
    return out


def train_cmd(
    data: Path = typer.Option(
        ..., "--data", help="dataset root (KITTI layout / synthetic town), a folder of them, or a pair-cache .npz"
    ),
    config: list[Path] = typer.Option(
        [], "--config", "-c", help="YAML config(s) over config/scmpr.yaml, e.g. config/train_nano.yaml"
    ),
    out: Path = typer.Option(
        Path("runs/train"), "--out", "-o", help="run folder: checkpoints, metrics.jsonl, config.yaml"
    ),
    resume: bool = typer.Option(False, "--resume", help="continue the run in --out from its last checkpoint"),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda[:N]"),
    cache: Path | None = typer.Option(None, "--cache", help="pair cache .npz: built once, reused after"),
    val_data: Path | None = typer.Option(None, "--val-data", help="held-out dataset for the validation R@1"),
    max_steps: int | None = typer.Option(None, "--max-steps", help="stop after this many optimizer steps"),
    init: Path | None = typer.Option(
        None, "--init", help="warm start: copy the matching tensors of this checkpoint (no k-means init)"
    ),
) -> None:
    """Train the SCM-PR model on cross-modal pairs (works on CPU, CUDA, and under torchrun)."""
    import dataclasses

    from scmpr_ros.training.train import train

    cfg = _load_cfg(config)
    if val_data is not None:
        cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, val_data=str(val_data)))
    res = train(
        cfg, data, out, resume=resume, device=device, cache_path=cache, max_steps=max_steps, init_checkpoint=init
    )
    if res.model_path.is_file():
        typer.echo(
            f"model: {res.model_path}  steps {res.steps}  wall {res.wall_s / 60:.1f} min  "
            f"best val R@1 {res.best_val_r1:.3f}"
        )


def evaluate_cmd(
    model: Path = typer.Option(..., "--model", "-m", help="model checkpoint (e.g. models/scmpr_nano.pt)"),
    map_file: Path = typer.Option(..., "--map", help=".scmpr-map built from the mapping pass with the same model"),
    queries: Path = typer.Option(..., "--queries", help="dataset root holding the query sequence(s)"),
    sequence: list[str] = typer.Option(
        [], "--sequence", "-s", help="query sequence(s), repeat or comma-separate (default: the query passes)"
    ),
    threshold: float = typer.Option(
        5.0, "--threshold", help="a retrieved viewpoint is correct within this many metres"
    ),
    yaw_gate: float | None = typer.Option(None, "--yaw-gate", help="also require |yaw difference| <= DEG"),
    exclude_recent: float | None = typer.Option(
        None, "--exclude-recent", help="same-sequence revisits: ignore viewpoints within S seconds of the query"
    ),
    map_sequence: str | None = typer.Option(
        None, "--map-sequence", help="sequence the map was built from (for --exclude-recent)"
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="folder for results.json and the PNG plots"),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    stride: int = typer.Option(1, "--stride", help="use every n-th query frame"),
    max_queries: int = typer.Option(0, "--max-queries", help="at most this many queries per sequence (0 = all)"),
    config: list[Path] = typer.Option(
        [], "--config", "-c", help="YAML overriding the retrieval section (alpha, beta, top_k)"
    ),
    threads: int = typer.Option(0, "--threads", help="torch CPU threads (0 = default)"),
    sweep_beta: str | None = typer.Option(
        None,
        "--sweep-beta",
        help="also report R@1 re-ranked with each of these beta, e.g. 0,0.3,1,3 "
        "(one encoder pass; tune retrieval.beta on a validation town)",
    ),
    force: bool = typer.Option(
        False, "--force", help="evaluate even if the map is of another town/sequence or far from the queries"
    ),
    filter_mode: str = typer.Option(
        "none", "--filter", help="none | mcl: also run the localization filter along each query sequence"
    ),
    odometry: str = typer.Option(
        "drift", "--odometry", help="with --filter mcl: drift (simulated odometry) | none (image only)"
    ),
) -> None:
    """Recall@1/5/10 (overall and per condition) of camera queries against a LiDAR map."""
    from rich.progress import Progress

    from scmpr_ros.evaluation.evaluate import evaluate, format_summary

    with Progress(transient=True) as bar:
        tasks: dict[str, int] = {}

        def cb(name: str, i: int, n: int) -> None:
            if name not in tasks:
                tasks[name] = bar.add_task(name, total=n)
            bar.update(tasks[name], completed=i)

        summary = evaluate(
            model,
            map_file,
            queries,
            _split(sequence) or None,
            threshold_m=threshold,
            yaw_gate_deg=yaw_gate,
            exclude_recent_s=exclude_recent,
            map_sequence=map_sequence,
            out_dir=out,
            device=device,
            frame_stride=stride,
            max_queries=max_queries,
            config_paths=config,
            threads=threads,
            progress=cb,
            beta_sweep=_floats(sweep_beta, "--sweep-beta"),
            force=force,
            filter_mode=filter_mode,
            odometry=odometry,
        )
    typer.echo(format_summary(summary))
    if out is not None:
        typer.echo(f"wrote {out}/results.json, recall_at_n.png, trajectory_*.png")


def ablation_cmd(
    data: Path = typer.Option(..., "--data", help="training data (synthetic towns / KITTI root / pair cache .npz)"),
    eval_data: Path | None = typer.Option(
        None, "--eval-data", help="held-out dataset to map and query (default: generate a synthetic town)"
    ),
    eval_sequence: str | None = typer.Option(
        None, "--eval-sequence", help="its mapping sequence (default: the manifest's map pass, else 00)"
    ),
    query_sequence: list[str] = typer.Option(
        [], "--query-sequence", help="its query sequence(s) (default: the query passes, else the map sequence)"
    ),
    config: list[Path] = typer.Option([], "--config", "-c", help="base config, e.g. config/train_ablation.yaml"),
    out: Path = typer.Option(Path("runs/ablation"), "--out", "-o", help="folder for the runs and ablation.md"),
    steps: int | None = typer.Option(
        None, "--steps", help="optimizer steps per variant (default: the config's epochs)"
    ),
    device: str = typer.Option("auto", "--device", help="auto | cpu | cuda"),
    init: Path | None = typer.Option(
        None, "--init", help="warm-start every variant from this checkpoint's matching tensors"
    ),
) -> None:
    """Train + evaluate the ladder: no semantics -> +SAFF -> +CSA -> +L_sem; writes a markdown table."""
    from scmpr_ros.evaluation.ablation import run_ablation

    cfg = _load_cfg(config)
    table = run_ablation(
        cfg,
        data,
        out,
        eval_data=eval_data,
        eval_map_sequence=eval_sequence,
        eval_query_sequences=_split(query_sequence) or None,
        steps=steps,
        device=device,
        init=init,
    )
    typer.echo(table)


def protocol_cmd(
    data: Path = typer.Option(..., "--data", help="dataset root (KITTI odometry / KITTI-360 / synthetic town)"),
    sequences: list[str] = typer.Option(..., "--sequences", "-s", help="test sequences, e.g. 00,02,05,06,08"),
    model: Path = typer.Option(..., "--model", "-m", help="model checkpoint"),
    out: Path = typer.Option(Path("results/protocol"), "--out", "-o", help="folder for maps, results and protocol.md"),
    threshold: float = typer.Option(5.0, "--threshold", help="correct within this many metres"),
    exclude_recent: float | None = typer.Option(
        None, "--exclude-recent", help="revisit-only protocol: ignore viewpoints within S seconds"
    ),
    config: list[Path] = typer.Option(
        [], "--config", "-c", help="YAML over config/scmpr.yaml (map, lidar, retrieval sections)"
    ),
    device: str = typer.Option("cpu", "--device", help="cpu | cuda"),
    map_semantics: str | None = typer.Option(
        None,
        "--map-semantics",
        help="map semantics to compare, e.g. ground_truth,learned: one map per source and sequence, "
        "R@N side by side (default: the config's lidar.segmentation)",
    ),
) -> None:
    """Per sequence: build its map, query it with its own camera frames; a paper-style R@N table."""
    from scmpr_ros.benchmarks.common import set_omp_wait_policy

    cfg = _load_cfg(config)
    if "learned" in (map_semantics or cfg.lidar.segmentation).split(","):
        set_omp_wait_policy("passive")  # as in build-map: spinning OpenMP threads starve the segmenter's numpy work
    from scmpr_ros.evaluation.evaluate import run_protocol

    table = run_protocol(
        model,
        data,
        _split(sequences),
        out,
        cfg,
        threshold_m=threshold,
        exclude_recent_s=exclude_recent,
        device=device,
        map_semantics=None if map_semantics is None else map_semantics.split(","),
    )
    typer.echo(table)


def register(app: typer.Typer, benchmark_app: typer.Typer) -> None:
    """Add this group's commands to the ``scmpr`` app (and its ``benchmark`` sub-app)."""
    app.command("train")(train_cmd)
    app.command("evaluate")(evaluate_cmd)
    app.command("ablation")(ablation_cmd)
    app.command("protocol")(protocol_cmd)
