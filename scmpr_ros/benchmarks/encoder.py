"""`scmpr benchmark encoder`: image-encoder latency of the SCM-PR model vs a ResNet18+NetVLAD baseline."""

from __future__ import annotations

import platform
from collections.abc import Callable
from typing import Any

from scmpr_ros.benchmarks.common import interleaved, model_label, timing_stats


def encoder_benchmark(
    model_cfg: Any,
    size: tuple[int, int],
    threads: int = 2,
    iters: int = 30,
    warmup: int = 5,
    batch: int = 1,
    device: str = "cpu",
    dtype: str = "float32",
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Time SCMPRModel.encode_image and ResNet18NetVLAD.forward on random input, interleaved.
    ``extra``: more SCM-PR model configs (label -> ModelConfig) timed in the same rounds.
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
    models: dict[str, Any] = {"scmpr": ours}
    for label, ecfg in (extra or {}).items():
        m = SCMPRModel(dataclasses.replace(ecfg, image_height=h, image_width=w)).to(dev).eval()
        if dataclasses.replace(ecfg, scan_backend=cfg.scan_backend) == model_cfg:
            m.load_state_dict(ours.state_dict())  # same weights: only the backend differs
        models[label] = m
    runs: dict[str, Callable[[], Any]] = {k: (lambda m=m: m.encode_image(x).descriptor) for k, m in models.items()}
    runs["resnet18_netvlad"] = lambda: base(x)
    if dev.type == "cpu" and any(
        getattr(m.cfg, "scan_backend", "") in ("auto", "cpu", "numba") for m in models.values()
    ):
        from scmpr_ros.model import scan_numba

        scan_numba.warmup(threads)  # compile / load the kernels outside the timed rounds
    sync = torch.cuda.synchronize if dev.type == "cuda" else (lambda: None)
    autocast = torch.autocast(device_type=dev.type, dtype=tdtype, enabled=tdtype != torch.float32)
    with torch.inference_mode(), autocast:
        times = interleaved(runs, iters, warmup, sync)
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
        "scan_backend": cfg.scan_backend,
        "models": {},
    }
    for name, ts in times.items():
        model = models.get(name, base)
        params = (
            model.parameter_count()["image_encoder"] if name in models else sum(p.numel() for p in base.parameters())
        )
        result["models"][name] = timing_stats(ts) | {"params": int(params)}
        if name in models:
            result["models"][name]["scan_backend"] = models[name].cfg.scan_backend
    b = result["models"]["resnet18_netvlad"]["median_ms"]
    result["ratio_median"] = result["models"]["scmpr"]["median_ms"] / b
    result["ratios"] = {k: m["median_ms"] / b for k, m in result["models"].items() if k != "resnet18_netvlad"}
    return result


def format_encoder_table(res: dict[str, Any]) -> str:
    h, w = res["size"]
    lines = [
        f"encoder benchmark: {res['config']} at {h}x{w}, batch {res['batch']}, {res['threads']} threads, "
        f"{res['device']} {res['dtype']}, {res['iters']} iters, torch {res['torch']}",
        f"{'model':<34}{'params (M)':>12}{'median ms':>12}{'p95 ms':>10}{'min ms':>10}",
    ]
    for name, m in res["models"].items():
        lines.append(
            f"{model_label(res, name):<34}{m['params'] / 1e6:>12.2f}{m['median_ms']:>12.1f}{m['p95_ms']:>10.1f}"
            f"{m['min_ms']:>10.1f}"
        )
    lines.append(f"ratio SCM-PR / baseline (median): {res['ratio_median']:.2f}")
    for name, r in res.get("ratios", {}).items():
        if name != "scmpr":
            lines.append(f"ratio {model_label(res, name)} / baseline (median): {r:.2f}")
    return "\n".join(lines)
