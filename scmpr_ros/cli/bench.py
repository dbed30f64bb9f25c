"""CLI group ``scmpr benchmark``: ``encoder`` (SCM-PR image encoder vs a ResNet-18 + NetVLAD baseline),
``scan`` (compiled CPU kernel vs its memory-traffic limit vs the pure-torch scan vs the reference loop)
and ``all`` (encoder, scan, search, ROS loop into one JSON + markdown report with machine info).

Candidates are timed interleaved (A, B, A, B, ...) in one process so machine noise hits them alike;
the ratio of medians is the headline, absolute ms belong to the machine (and its load) they came from.
"""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer

OMP_POLICIES = ("keep", "passive", "active")


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


def _stats(ts: list[float]) -> dict[str, float]:
    return {"median_ms": _percentile(ts, 50), "p95_ms": _percentile(ts, 95), "min_ms": float(min(ts)), "n": len(ts)}


def _interleaved(
    runs: dict[str, Callable[[], Any]],
    iters: int,
    warmup: int,
    sync: Callable[[], None] = lambda: None,
    limits: dict[str, int] | None = None,
) -> dict[str, list[float]]:
    """ms per call of every candidate, alternating candidates within each round; ``limits`` caps the
    timed rounds of slow candidates (they stop being run after that many)."""
    limits = limits or {}
    times: dict[str, list[float]] = {k: [] for k in runs}
    for i in range(warmup + iters):
        for name, fn in runs.items():
            if i >= warmup + limits.get(name, iters):
                continue
            sync()
            t0 = time.perf_counter()
            fn()
            sync()
            if i >= warmup:
                times[name].append((time.perf_counter() - t0) * 1e3)
    return times


def set_omp_wait_policy(policy: str) -> str:
    """Set OMP_WAIT_POLICY before torch / numba load their OpenMP runtimes (it is read once, at load).
    Returns what is in effect as far as can be told."""
    import sys

    from scmpr_ros.errors import InputError

    if policy not in OMP_POLICIES:
        raise InputError(f"--omp-wait-policy must be one of {', '.join(OMP_POLICIES)}, got {policy!r}")
    if policy != "keep":
        if "torch" in sys.modules or "numba" in sys.modules:
            return f"{os.environ.get('OMP_WAIT_POLICY', 'unset')} (torch already loaded: --omp-wait-policy {policy} ignored)"
        os.environ["OMP_WAIT_POLICY"] = policy.upper()
    return os.environ.get("OMP_WAIT_POLICY", "unset (libgomp default: spin, then sleep)")


def machine_info(threads: int) -> dict[str, Any]:
    """CPU model, cores, thread settings and library versions for the report header."""
    import numpy as np
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "logical_cpus": os.cpu_count(),
        "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "threads": threads if threads > 0 else torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "unset"),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "loadavg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    try:
        import numba

        from scmpr_ros.model import scan_numba

        info["numba"] = numba.__version__
        info["numba_kernel"] = scan_numba.available()
    except ImportError:
        info["numba"] = None
        info["numba_kernel"] = False
    return info


# ------------------------------------------------------------------------------------------- encoder


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
        times = _interleaved(runs, iters, warmup, sync)
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
        result["models"][name] = _stats(ts) | {"params": int(params)}
        if name in models:
            result["models"][name]["scan_backend"] = models[name].cfg.scan_backend
    b = result["models"]["resnet18_netvlad"]["median_ms"]
    result["ratio_median"] = result["models"]["scmpr"]["median_ms"] / b
    result["ratios"] = {k: m["median_ms"] / b for k, m in result["models"].items() if k != "resnet18_netvlad"}
    return result


def _model_label(res: dict[str, Any], name: str) -> str:
    if name == "resnet18_netvlad":
        return "ResNet18+NetVLAD"
    if name == "scmpr":
        return f"SCM-PR {res['config']}"
    return f"SCM-PR {res['config']} ({res['models'][name].get('scan_backend', name)} scan)"


def format_encoder_table(res: dict[str, Any]) -> str:
    h, w = res["size"]
    lines = [
        f"encoder benchmark: {res['config']} at {h}x{w}, batch {res['batch']}, {res['threads']} threads, "
        f"{res['device']} {res['dtype']}, {res['iters']} iters, torch {res['torch']}",
        f"{'model':<34}{'params (M)':>12}{'median ms':>12}{'p95 ms':>10}{'min ms':>10}",
    ]
    for name, m in res["models"].items():
        lines.append(
            f"{_model_label(res, name):<34}{m['params'] / 1e6:>12.2f}{m['median_ms']:>12.1f}{m['p95_ms']:>10.1f}"
            f"{m['min_ms']:>10.1f}"
        )
    lines.append(f"ratio SCM-PR / baseline (median): {res['ratio_median']:.2f}")
    for name, r in res.get("ratios", {}).items():
        if name != "scmpr":
            lines.append(f"ratio {_model_label(res, name)} / baseline (median): {r:.2f}")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------- scan


def _cold_start_seconds() -> dict[str, Any]:
    """First-call latency of the kernels in a fresh interpreter (numba import + cache load or compile)."""
    import subprocess
    import sys

    code = (
        "import time, json; t0 = time.perf_counter()\n"
        "from scmpr_ros.model import scan_numba\n"
        "t1 = time.perf_counter(); r = scan_numba.warmup(1)\n"
        "print(json.dumps({'import_s': t1 - t0, 'first_call_s': r['seconds'], 'cached': r.get('cached'), "
        "'reason': r.get('reason', '')}))\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    except (subprocess.SubprocessError, ValueError, IndexError) as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def scan_benchmark(
    length: int = 3328,
    channels: int = 768,
    groups: int = 4,
    d_state: int = 1,
    ss2d: tuple[int, int, int, int] = (32, 104, 192, 6),
    threads: int = 2,
    iters: int = 20,
    warmup: int = 3,
    torch_iters: int = 5,
    ref_length: int = 256,
    cold_start: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """The stage-1 scan call of VMamba-T at 128x416 by default (L = 32*104 tokens, 4 directions x 192
    channels, d_state 1), timed interleaved: ``limit`` = the bare compiled recurrence over contiguous
    (L, d) arrays, ``numba`` = the fused kernel on the token-major call, ``torch`` = the chunked
    pure-torch scan; ``ss2d_*`` = the whole SS2D core (x_proj + cross-scan + scan + merge) of an
    (H, W, d, rank) map fused vs in torch; the reference loop only at ``ref_length`` tokens."""
    import numpy as np
    import torch

    from scmpr_ros.errors import InputError
    from scmpr_ros.model import scan_numba
    from scmpr_ros.model.scan import selective_scan_reference, selective_scan_tokens
    from scmpr_ros.model.vmamba import SS2D

    if not scan_numba.available():
        raise InputError(
            f"benchmark scan: the numba kernel is unavailable ({scan_numba.NUMBA_IMPORT_ERROR or 'disabled'})"
        )
    if channels % groups or min(length, channels, groups, d_state, iters, ref_length) < 1:
        raise InputError(f"benchmark scan: need positive sizes and groups | channels (got {channels} / {groups})")
    if threads > 0:
        torch.set_num_threads(threads)
    threads = torch.get_num_threads()
    res: dict[str, Any] = {
        "length": length,
        "channels": channels,
        "groups": groups,
        "d_state": d_state,
        "threads": threads,
        "iters": iters,
        "ref_length": ref_length,
    }
    if cold_start:
        res["cold_start"] = _cold_start_seconds()
    t0 = time.perf_counter()
    scan_numba.warmup(threads)
    res["first_call_in_process_s"] = time.perf_counter() - t0
    g = torch.Generator().manual_seed(seed)
    u = torch.randn(1, length, channels, generator=g)
    delta = 0.5 * torch.randn(1, length, channels, generator=g) - 1.0
    A = -(torch.rand(channels, d_state, generator=g) + 0.1)
    B = torch.randn(1, length, groups, d_state, generator=g)
    C = torch.randn(1, length, groups, d_state, generator=g)
    D = torch.randn(channels, generator=g)
    bias = 0.5 * torch.randn(channels, generator=g)
    npy = [t.numpy() for t in (u, delta, A, B, C, D, bias)]
    rng = np.random.default_rng(seed)
    a_lim = rng.random((length, channels), dtype=np.float32)
    b_lim = rng.standard_normal((length, channels), dtype=np.float32)
    o_lim = np.empty_like(b_lim)
    o_ker = np.empty((1, length, channels), np.float32)
    h, w, d, rank = ss2d
    torch.manual_seed(seed)
    op = SS2D(max(1, d // 2), d_state=d_state, ssm_ratio=d / max(1, d // 2), dt_rank=rank, scan_backend="torch").eval()
    xs = torch.randn(1, h, w, op.d_inner, generator=g)
    runs = {
        "limit": lambda: scan_numba.recurrence(a_lim, b_lim, threads, out=o_lim),
        "numba": lambda: scan_numba.scan_tokens(*npy, True, threads, out=o_ker),
        "torch": lambda: selective_scan_tokens(u, delta, A, B, C, D, None, bias, True),
        "ss2d_numba": lambda: op.forward_core_fused(xs),
        "ss2d_torch": lambda: op.forward_core_torch(xs),  # backend torch: cross-scan copies + chunked scan
    }
    with torch.inference_mode():
        times = _interleaved(runs, iters, warmup, limits={"torch": torch_iters, "ss2d_torch": torch_iters})
        y_torch = selective_scan_tokens(u, delta, A, B, C, D, None, bias, True)
        y_numba = torch.from_numpy(scan_numba.scan_tokens(*npy, True, threads))
        s_fused, s_torch = op.forward_core_fused(xs), op.forward_core_torch(xs)
        # short sequence: the reference loop, with the kernel and torch at the same length
        lr = min(ref_length, length)
        short = [u[:, :lr], delta[:, :lr], A, B[:, :lr], C[:, :lr], D, bias]
        mamba = [
            short[0].transpose(1, 2),
            short[1].transpose(1, 2),
            A,
            short[3].permute(0, 2, 3, 1),
            short[4].permute(0, 2, 3, 1),
            D,
            None,
            bias,
        ]
        s_np = [t.contiguous().numpy() for t in short]
        ref_runs = {
            "reference": lambda: selective_scan_reference(*mamba, delta_softplus=True),
            "numba": lambda: scan_numba.scan_tokens(*s_np, True, threads),
            "torch": lambda: selective_scan_tokens(*short[:5], D, None, bias, True),
        }
        ref_times = _interleaved(ref_runs, max(1, min(3, iters)), 1)
        y_ref = selective_scan_reference(*mamba, delta_softplus=True).transpose(1, 2)
        y_short = torch.from_numpy(scan_numba.scan_tokens(*s_np, True, threads))
    elements = {k: (h * w * op.d_inner * op.K if k.startswith("ss2d") else length * channels) for k in times}
    res["timings"] = {
        k: _stats(v) | {"ns_per_element": _percentile(v, 50) * 1e6 / elements[k]} for k, v in times.items()
    }
    res["ss2d"] = {
        "height": h,
        "width": w,
        "channels": op.d_inner,
        "directions": op.K,
        "rank": rank,
        "element_steps": elements["ss2d_numba"],
    }
    res["reference_short"] = {k: _stats(v) for k, v in ref_times.items()}
    med = {k: v["median_ms"] for k, v in res["timings"].items()}
    res["ratios"] = {
        "numba_over_limit": med["numba"] / med["limit"],
        "torch_over_numba": med["torch"] / med["numba"],
        "ss2d_torch_over_numba": med["ss2d_torch"] / med["ss2d_numba"],
        "reference_over_numba_short": res["reference_short"]["reference"]["median_ms"]
        / res["reference_short"]["numba"]["median_ms"],
    }
    res["parity"] = {
        "numba_vs_reference_max_abs": float((y_short - y_ref).abs().max()),
        "numba_vs_torch_max_abs": float((y_numba - y_torch).abs().max()),
        "ss2d_fused_vs_torch_max_abs": float((s_fused - s_torch).abs().max()),
    }
    return res


def format_scan_table(res: dict[str, Any]) -> str:
    t = res["timings"]
    ss = res["ss2d"]
    lines = [
        f"scan benchmark: L {res['length']}, {res['channels']} channels ({res['groups']} groups), d_state {res['d_state']}, "
        f"{res['threads']} threads, {res['iters']} rounds",
        f"{'candidate':<44}{'median ms':>11}{'p95 ms':>9}{'min ms':>9}{'ns/elem':>9}",
    ]
    labels = {
        "limit": "limit: compiled h=a*h+b over (L, d)",
        "numba": "numba fused kernel (token-major call)",
        "torch": "pure-torch chunked scan (inference)",
        "ss2d_numba": f"SS2D core {ss['height']}x{ss['width']}x{ss['channels']} fused (numba)",
        "ss2d_torch": f"SS2D core {ss['height']}x{ss['width']}x{ss['channels']} torch path",
    }
    for k, label in labels.items():
        m = t[k]
        lines.append(
            f"{label:<44}{m['median_ms']:>11.2f}{m['p95_ms']:>9.2f}{m['min_ms']:>9.2f}{m['ns_per_element']:>9.2f}"
        )
    r = res["ratios"]
    rs = res["reference_short"]
    lines.append(
        f"numba / limit {r['numba_over_limit']:.2f}x; torch / numba {r['torch_over_numba']:.1f}x; "
        f"SS2D torch / fused {r['ss2d_torch_over_numba']:.1f}x"
    )
    lines.append(
        f"reference loop at L {res['ref_length']}: {rs['reference']['median_ms']:.1f} ms "
        f"(numba {rs['numba']['median_ms']:.2f} ms, torch {rs['torch']['median_ms']:.1f} ms)"
    )
    p = res["parity"]
    lines.append(
        f"parity max |diff|: numba vs reference {p['numba_vs_reference_max_abs']:.2e}, numba vs torch "
        f"{p['numba_vs_torch_max_abs']:.2e}, SS2D fused vs torch {p['ss2d_fused_vs_torch_max_abs']:.2e}"
    )
    cs = res.get("cold_start")
    if cs and "error" not in cs:
        lines.append(
            f"first call in a fresh process: import (torch, numba) {cs['import_s']:.2f} s + kernels {cs['first_call_s']:.2f} s "
            f"({'numba cache' if cs.get('cached') else 'compiled'}{'; ' + cs['reason'] if cs.get('reason') else ''})"
        )
    return "\n".join(lines)


def _cuda_scan_benchmark(length: int, channels: int, groups: int, d_state: int, iters: int) -> dict[str, Any]:
    """On a CUDA device: mamba-ssm's kernel vs the pure-torch scan on the GPU (same call)."""
    import torch

    from scmpr_ros.model.scan import cuda_kernel_available, selective_scan

    dev = torch.device("cuda")
    g = torch.Generator(device="cpu").manual_seed(0)
    args = [
        torch.randn(1, channels, length, generator=g),
        0.5 * torch.randn(1, channels, length, generator=g) - 1,
        -(torch.rand(channels, d_state, generator=g) + 0.1),
        torch.randn(1, groups, d_state, length, generator=g),
        torch.randn(1, groups, d_state, length, generator=g),
        torch.randn(channels, generator=g),
    ]
    args = [a.to(dev) for a in args]
    runs = {"torch": lambda: selective_scan(*args, None, None, True, backend="torch")}
    if cuda_kernel_available():
        runs["cuda"] = lambda: selective_scan(*args, None, None, True, backend="cuda")
    with torch.inference_mode():
        times = _interleaved(runs, iters, 3, torch.cuda.synchronize)
    return {
        "device": torch.cuda.get_device_name(dev),
        "timings": {k: _stats(v) for k, v in times.items()},
        "mamba_ssm_kernel": "cuda" in runs,
    }


# ----------------------------------------------------------------------------------------------- all


def _ros_section(
    bag: Path | None, map_file: Path | None, model: Path | None, rate: float, duration: float
) -> dict[str, Any]:
    if bag is None or map_file is None:
        return {
            "skipped": "no --ros-bag / --ros-map given (`scmpr demo` builds a synthetic town, its map and a "
            "query bag; pass those to time the ROS loop)"
        }
    from scmpr_ros.config import default_models_dir
    from scmpr_ros.nodes.replay import run_replay

    model = model or default_models_dir() / "scmpr_nano.pt"
    result = run_replay(bag, map_file, model, image_rate_hz=rate, duration_s=duration, loop=True)
    s = result.summary()
    s["model"] = str(model)
    s["meets_10hz"] = bool(s["processed_hz"] >= 10.0)
    return s


def benchmark_all(
    quick: bool = False,
    configs: tuple[str, ...] = ("nano", "micro", "tiny"),
    size: tuple[int, int] = (160, 512),
    threads: int = 2,
    encoder_iters: int = 15,
    scan_iters: int = 15,
    search_sizes: tuple[int, ...] = (100_000, 1_000_000),
    scan_shape: tuple[int, int] = (3328, 768),
    device: str = "auto",
    ros_bag: Path | None = None,
    ros_map: Path | None = None,
    ros_model: Path | None = None,
    ros_rate: float = 10.0,
    ros_duration: float = 60.0,
    log: Callable[[str], None] = lambda s: None,
) -> dict[str, Any]:
    """Every section into one dict (a section that fails records its error and the rest still run).
    ``quick`` only skips the scan's fresh-process start-up measurement; the CLI picks small defaults."""
    import dataclasses

    import torch

    from scmpr_ros.config import ModelConfig, RetrievalConfig

    if threads > 0:
        torch.set_num_threads(threads)
    dev = "cuda" if device == "auto" and torch.cuda.is_available() else ("cpu" if device == "auto" else device)
    report: dict[str, Any] = {
        "machine": machine_info(threads),
        "quick": quick,
        "device": dev,
        "sections": {},
        "errors": {},
    }
    sections = report["sections"]

    def section(name: str, fn: Callable[[], Any]) -> None:
        t0 = time.perf_counter()
        log(f"[{name}] running ...")
        try:
            sections[name] = fn()
        except Exception as exc:  # noqa: BLE001 - a failed section must not lose the others
            report["errors"][name] = f"{type(exc).__name__}: {exc}"
            log(f"[{name}] FAILED: {report['errors'][name]}")
        report.setdefault("section_seconds", {})[name] = time.perf_counter() - t0

    def encoders() -> list[dict[str, Any]]:
        rows = []
        for name in configs:
            cfg = dataclasses.replace(ModelConfig(), backbone=name)
            extra = (
                {"scmpr_torch_scan": dataclasses.replace(cfg, scan_backend="torch")}
                if name == configs[0] and dev == "cpu"
                else None
            )
            it = encoder_iters if name != "tiny" else max(3, encoder_iters // 3)
            rows.append(encoder_benchmark(cfg, size, threads, it, 2 if quick else 3, 1, dev, "float32", extra))
            log(format_encoder_table(rows[-1]))
        return rows

    section("encoder", encoders)
    if dev == "cpu":
        section(
            "scan",
            lambda: scan_benchmark(
                scan_shape[0],
                scan_shape[1],
                threads=threads,
                iters=scan_iters,
                torch_iters=max(2, scan_iters // 3),
                cold_start=not quick,
            ),
        )
    else:
        section("scan", lambda: _cuda_scan_benchmark(scan_shape[0], scan_shape[1], 4, 1, scan_iters))

    def search() -> list[dict[str, Any]]:
        from scmpr_ros.benchmarks.search import search_benchmark

        mc = ModelConfig()
        return search_benchmark(
            list(search_sizes),
            mc.descriptor_dim or mc.feature_dim * mc.netvlad_clusters,
            RetrievalConfig(),
            queries=50 if quick else 200,
            log=log,
        )

    section("search", search)
    section("ros", lambda: _ros_section(ros_bag, ros_map, ros_model, ros_rate, ros_duration))
    report["machine"]["loadavg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return report


def format_report_markdown(report: dict[str, Any]) -> str:
    m = report["machine"]
    la = lambda v: "n/a" if not v else ", ".join(f"{x:.2f}" for x in v)  # noqa: E731
    out = [
        "# SCM-PR benchmark report",
        "",
        f"- CPU: {m['cpu']} ({m['usable_cpus']} usable of {m['logical_cpus']} logical CPUs), {m['threads']} threads",
        f"- torch {m['torch']}, numpy {m['numpy']}, numba {m.get('numba')} (kernel available: {m.get('numba_kernel')}), "
        f"python {m['python']}; CUDA: {m['cuda'] or 'none'}",
        f"- OMP_WAIT_POLICY: {m['omp_wait_policy']}; load average (1/5/15 min) at start {la(m['loadavg_start'])}, "
        f"at end {la(m.get('loadavg_end'))}",
        f"- {m['date']}{' (quick run)' if report.get('quick') else ''}; device for the encoder: {report['device']}",
        "",
        "Ratios are the headline (candidates timed interleaved in one process); absolute ms belong to this machine "
        "and its load.",
        "",
    ]
    s = report["sections"]
    if "encoder" in s:
        out += [
            "## Encoder (one image)",
            "",
            "| model | input | params (M) | median ms | p95 ms | min ms | ratio vs ResNet18+NetVLAD |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        for res in s["encoder"]:
            h, w = res["size"]
            b = res["models"]["resnet18_netvlad"]["median_ms"]
            for name, mm in res["models"].items():
                ratio = "1.00 (baseline)" if name == "resnet18_netvlad" else f"{mm['median_ms'] / b:.2f}"
                out.append(
                    f"| {_model_label(res, name)} | {h}x{w} | {mm['params'] / 1e6:.2f} | {mm['median_ms']:.1f} | "
                    f"{mm['p95_ms']:.1f} | {mm['min_ms']:.1f} | {ratio} |"
                )
        out.append("")
    if "scan" in s and "timings" in s["scan"] and "ratios" in s["scan"]:
        out += ["## Selective scan", "", "```", format_scan_table(s["scan"]), "```", ""]
    elif "scan" in s:
        out += ["## Selective scan (CUDA)", "", "```", json.dumps(s["scan"], indent=1), "```", ""]
    if "search" in s:
        from scmpr_ros.benchmarks.search import format_search_table

        out += [
            "## Search (per query: top-k + semantic re-rank)",
            "",
            "```",
            format_search_table(s["search"]),
            "```",
            "",
        ]
    if "ros" in s:
        r = s["ros"]
        out += ["## ROS loop (bag_player -> localizer -> hypotheses)", ""]
        if "skipped" in r:
            out.append(f"skipped: {r['skipped']}")
        else:
            out += [
                f"- processed {r['processed_hz']:.1f} Hz (images in at {r['input_hz']:.1f} Hz), dropped {r['dropped']}, "
                f"{'meets' if r['meets_10hz'] else 'misses'} 10 Hz",
                f"- end-to-end latency p50 {r['e2e_latency_ms']['p50']:.1f} ms, p95 {r['e2e_latency_ms']['p95']:.1f} ms; "
                f"encoder+search p50 {r['compute_ms']['p50']:.1f} ms",
                f"- RSS {r['rss_mb']['start']:.0f} -> {r['rss_mb']['end']:.0f} MB; model {r['model']}",
            ]
        out.append("")
    if report.get("errors"):
        out += ["## Errors", ""] + [f"- {k}: {v}" for k, v in report["errors"].items()] + [""]
    if report.get("section_seconds"):
        out.append("Section wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["section_seconds"].items()))
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------- CLI


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

    @benchmark_app.command("scan")
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

    @benchmark_app.command("all")
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
            help="passive (default: idle OpenMP threads sleep; spinning ones ruin timings on a shared machine) | active | keep",
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
            raise ScmprError(
                f"benchmark all: sections failed: {', '.join(report['errors'])} (see {out / 'benchmark.md'})"
            )
