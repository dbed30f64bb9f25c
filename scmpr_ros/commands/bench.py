"""CLI group ``scmpr benchmark``: ``encoder`` (SCM-PR image encoder vs a ResNet-18 + NetVLAD baseline,
timed interleaved in one run so machine noise hits both alike; the ratio of medians is the headline)."""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Optional

import typer


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


def _percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def encoder_benchmark(
    model_cfg: Any,
    size: tuple[int, int],
    threads: int = 2,
    iters: int = 30,
    warmup: int = 5,
    batch: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
) -> dict[str, Any]:
    """Time SCMPRModel.encode_image and ResNet18NetVLAD.forward on random input, interleaved.
    Returns a dict with per-model median/p95 ms, parameter counts, the ratio and machine info."""
    import dataclasses

    import torch

    from scmpr_ros.errors import InputError
    from scmpr_ros.model.baseline import ResNet18NetVLAD
    from scmpr_ros.model.scmpr import SCMPRModel

    if iters < 1 or warmup < 0 or batch < 1:
        raise InputError(f"benchmark: iters >= 1, warmup >= 0, batch >= 1 needed (got {iters}, {warmup}, {batch})")
    if threads > 0:
        torch.set_num_threads(threads)
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError("--device cuda but torch sees no CUDA device; use --device cpu")
    tdtype = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}.get(dtype)
    if tdtype is None:
        raise InputError(f"--dtype must be float32, float16 or bfloat16, got {dtype!r}")
    h, w = size
    cfg = dataclasses.replace(model_cfg, image_height=h, image_width=w)
    torch.manual_seed(0)
    ours = SCMPRModel(cfg).to(dev).eval()
    base = ResNet18NetVLAD(cfg.netvlad_clusters, cfg.descriptor_dim).to(dev).eval()
    x = torch.randn(batch, 3, h, w, device=dev)
    runs = {
        "scmpr": lambda: ours.encode_image(x).descriptor,
        "resnet18_netvlad": lambda: base(x),
    }
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    times: dict[str, list[float]] = {k: [] for k in runs}
    autocast = torch.autocast(device_type=dev.type, dtype=tdtype, enabled=tdtype != torch.float32)
    with torch.inference_mode(), autocast:
        for i in range(warmup + iters):
            for name, fn in runs.items():  # interleaved: noise hits both alike
                sync()
                t0 = time.perf_counter()
                fn()
                sync()
                if i >= warmup:
                    times[name].append((time.perf_counter() - t0) * 1e3)
    result: dict[str, Any] = {
        "config": cfg.backbone,
        "size": [h, w],
        "batch": batch,
        "threads": torch.get_num_threads(),
        "device": str(dev) if dev.type != "cuda" else torch.cuda.get_device_name(dev),
        "dtype": dtype,
        "iters": iters,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "models": {},
    }
    params = {"scmpr": ours.parameter_count()["image_encoder"], "resnet18_netvlad": sum(p.numel() for p in base.parameters())}
    for name, ts in times.items():
        result["models"][name] = {
            "median_ms": float(sorted(ts)[len(ts) // 2]) if len(ts) % 2 else _percentile(ts, 50),
            "p95_ms": _percentile(ts, 95),
            "min_ms": float(min(ts)),
            "params": int(params[name]),
        }
    result["ratio_median"] = result["models"]["scmpr"]["median_ms"] / result["models"]["resnet18_netvlad"]["median_ms"]
    return result


def format_encoder_table(res: dict[str, Any]) -> str:
    h, w = res["size"]
    lines = [
        f"encoder benchmark: {res['config']} at {h}x{w}, batch {res['batch']}, {res['threads']} threads, "
        f"{res['device']} {res['dtype']}, {res['iters']} iters, torch {res['torch']}",
        f"{'model':<24}{'params (M)':>12}{'median ms':>12}{'p95 ms':>10}{'min ms':>10}",
    ]
    for name, m in res["models"].items():
        label = f"SCM-PR {res['config']}" if name == "scmpr" else "ResNet18+NetVLAD"
        lines.append(f"{label:<24}{m['params'] / 1e6:>12.2f}{m['median_ms']:>12.1f}{m['p95_ms']:>10.1f}{m['min_ms']:>10.1f}")
    lines.append(f"ratio SCM-PR / baseline (median): {res['ratio_median']:.2f}")
    return "\n".join(lines)


def register(app: typer.Typer, benchmark_app: typer.Typer) -> None:  # noqa: ARG001
    @benchmark_app.command("encoder")
    def encoder_cmd(
        config: str = typer.Option("nano", "--config", help="backbone size (tiny | micro | nano) or a YAML config"),
        size: str = typer.Option("160x512", "--size", help="input height x width"),
        threads: int = typer.Option(2, "--threads", help="torch CPU threads (0 = torch default)"),
        iters: int = typer.Option(30, "--iters", help="timed iterations per model"),
        warmup: int = typer.Option(5, "--warmup", help="untimed iterations first"),
        batch: int = typer.Option(1, "--batch", help="images per forward"),
        device: str = typer.Option("cpu", "--device", help="cpu | cuda[:N]"),
        dtype: str = typer.Option("float32", "--dtype", help="float32 | float16 | bfloat16 (autocast)"),
        scan_backend: Optional[str] = typer.Option(None, "--scan-backend", help="override model.scan_backend"),
        json_out: Optional[Path] = typer.Option(None, "--json", help="also write the figures to this JSON file"),
    ) -> None:
        """Time the SCM-PR image encoder against ResNet-18 + NetVLAD in the same run (median, p95, ratio)."""
        import dataclasses

        from scmpr_ros.io_utils import atomic_write_text

        cfg = _model_config(config)
        if scan_backend is not None:
            cfg = dataclasses.replace(cfg, scan_backend=scan_backend)
        res = encoder_benchmark(cfg, _parse_size(size), threads, iters, warmup, batch, device, dtype)
        typer.echo(format_encoder_table(res))
        if json_out is not None:
            atomic_write_text(json_out, json.dumps(res, indent=2))
