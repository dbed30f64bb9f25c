"""`scmpr benchmark scan`: the selective-scan backends (numba, torch, reference, CUDA) side by side."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from scmpr_ros.benchmarks.common import interleaved, percentile, timing_stats


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


@dataclass(frozen=True)
class _ScanInputs:
    """One token-major scan call (torch tensors and their numpy views) and the bare recurrence's arrays."""

    u: Any  # (1, L, d)
    delta: Any  # (1, L, d)
    A: Any  # (d, d_state)
    B: Any  # (1, L, groups, d_state)
    C: Any  # (1, L, groups, d_state)
    D: Any  # (d,)
    bias: Any  # (d,)
    npy: list  # numpy views of (u, delta, A, B, C, D, bias) for the numba kernel
    a_lim: Any  # (L, d) float32 decay of the bare recurrence
    b_lim: Any  # (L, d) float32 input of the bare recurrence
    o_lim: Any  # the recurrence's output buffer
    o_ker: Any  # the fused kernel's output buffer (1, L, d)


@dataclass(frozen=True)
class _Ss2dCase:
    """The SS2D core timed fused vs in torch: the module and its (1, H, W, d_inner) input."""

    op: Any
    xs: Any
    height: int
    width: int
    rank: int


@dataclass(frozen=True)
class _ScanTimes:
    """What the two interleaved rounds measured: full-length and short (reference) timings, and parity."""

    full: dict[str, list[float]]
    short: dict[str, list[float]]
    numba_vs_reference: float
    numba_vs_torch: float
    ss2d_fused_vs_torch: float


def _check_scan_sizes(length: int, channels: int, groups: int, d_state: int, iters: int, ref_length: int) -> None:
    from scmpr_ros.errors import InputError
    from scmpr_ros.model import scan_numba

    if not scan_numba.available():
        raise InputError(
            f"benchmark scan: the numba kernel is unavailable ({scan_numba.NUMBA_IMPORT_ERROR or 'disabled'})"
        )
    if channels % groups or min(length, channels, groups, d_state, iters, ref_length) < 1:
        raise InputError(f"benchmark scan: need positive sizes and groups | channels (got {channels} / {groups})")


def _scan_inputs(length: int, channels: int, groups: int, d_state: int, seed: int, g: Any) -> _ScanInputs:
    """Random scan inputs drawn from the torch generator ``g``; the recurrence's from numpy's of ``seed``."""
    import numpy as np
    import torch

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
    return _ScanInputs(u, delta, A, B, C, D, bias, npy, a_lim, b_lim, o_lim, o_ker)


def _ss2d_case(ss2d: tuple[int, int, int, int], d_state: int, seed: int, g: Any) -> _Ss2dCase:
    """``ss2d`` = (H, W, d, rank): an SS2D of d inner channels (weights seeded by ``seed``), input from ``g``."""
    import torch

    from scmpr_ros.model.vmamba import SS2D

    h, w, d, rank = ss2d
    torch.manual_seed(seed)
    op = SS2D(max(1, d // 2), d_state=d_state, ssm_ratio=d / max(1, d // 2), dt_rank=rank, scan_backend="torch").eval()
    xs = torch.randn(1, h, w, op.d_inner, generator=g)
    return _Ss2dCase(op, xs, h, w, rank)


def _time_scans(
    inp: _ScanInputs, case: _Ss2dCase, threads: int, iters: int, warmup: int, torch_iters: int, ref_length: int
) -> _ScanTimes:
    """The full-length candidates interleaved, then the reference loop at ``ref_length`` tokens with the
    kernel and torch at the same length; parity of each pair."""
    import torch

    from scmpr_ros.model import scan_numba
    from scmpr_ros.model.scan import selective_scan_reference, selective_scan_tokens

    u, delta, A, B, C, D, bias, npy = inp.u, inp.delta, inp.A, inp.B, inp.C, inp.D, inp.bias, inp.npy
    op, xs = case.op, case.xs
    runs = {
        "limit": lambda: scan_numba.recurrence(inp.a_lim, inp.b_lim, threads, out=inp.o_lim),
        "numba": lambda: scan_numba.scan_tokens(*npy, True, threads, out=inp.o_ker),
        "torch": lambda: selective_scan_tokens(u, delta, A, B, C, D, None, bias, True),
        "ss2d_numba": lambda: op.forward_core_fused(xs),
        "ss2d_torch": lambda: op.forward_core_torch(xs),  # backend torch: cross-scan copies + chunked scan
    }
    with torch.inference_mode():
        times = interleaved(runs, iters, warmup, limits={"torch": torch_iters, "ss2d_torch": torch_iters})
        y_torch = selective_scan_tokens(u, delta, A, B, C, D, None, bias, True)
        y_numba = torch.from_numpy(scan_numba.scan_tokens(*npy, True, threads))
        s_fused, s_torch = op.forward_core_fused(xs), op.forward_core_torch(xs)
        short = [u[:, :ref_length], delta[:, :ref_length], A, B[:, :ref_length], C[:, :ref_length], D, bias]
        # the reference takes the channel-major (mamba-ssm) layout
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
        ref_times = interleaved(ref_runs, max(1, min(3, iters)), 1)
        y_ref = selective_scan_reference(*mamba, delta_softplus=True).transpose(1, 2)
        y_short = torch.from_numpy(scan_numba.scan_tokens(*s_np, True, threads))
    return _ScanTimes(
        times,
        ref_times,
        numba_vs_reference=float((y_short - y_ref).abs().max()),
        numba_vs_torch=float((y_numba - y_torch).abs().max()),
        ss2d_fused_vs_torch=float((s_fused - s_torch).abs().max()),
    )


def _scan_results(t: _ScanTimes, case: _Ss2dCase, length: int, channels: int) -> dict[str, Any]:
    """The result sections (timings with ns per element, ss2d shape, reference_short, ratios, parity)."""
    op = case.op
    ss2d_elements = case.height * case.width * op.d_inner * op.K
    elements = {k: (ss2d_elements if k.startswith("ss2d") else length * channels) for k in t.full}
    res: dict[str, Any] = {}
    res["timings"] = {
        k: timing_stats(v) | {"ns_per_element": percentile(v, 50) * 1e6 / elements[k]} for k, v in t.full.items()
    }
    res["ss2d"] = {
        "height": case.height,
        "width": case.width,
        "channels": op.d_inner,
        "directions": op.K,
        "rank": case.rank,
        "element_steps": elements["ss2d_numba"],
    }
    res["reference_short"] = {k: timing_stats(v) for k, v in t.short.items()}
    med = {k: v["median_ms"] for k, v in res["timings"].items()}
    res["ratios"] = {
        "numba_over_limit": med["numba"] / med["limit"],
        "torch_over_numba": med["torch"] / med["numba"],
        "ss2d_torch_over_numba": med["ss2d_torch"] / med["ss2d_numba"],
        "reference_over_numba_short": res["reference_short"]["reference"]["median_ms"]
        / res["reference_short"]["numba"]["median_ms"],
    }
    res["parity"] = {
        "numba_vs_reference_max_abs": t.numba_vs_reference,
        "numba_vs_torch_max_abs": t.numba_vs_torch,
        "ss2d_fused_vs_torch_max_abs": t.ss2d_fused_vs_torch,
    }
    return res


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
    import torch

    from scmpr_ros.model import scan_numba

    _check_scan_sizes(length, channels, groups, d_state, iters, ref_length)
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
    inp = _scan_inputs(length, channels, groups, d_state, seed, g)
    case = _ss2d_case(ss2d, d_state, seed, g)
    times = _time_scans(inp, case, threads, iters, warmup, torch_iters, min(ref_length, length))
    return res | _scan_results(times, case, length, channels)


def format_scan_table(res: dict[str, Any]) -> str:
    t = res["timings"]
    ss = res["ss2d"]
    lines = [
        f"scan benchmark: L {res['length']}, {res['channels']} channels ({res['groups']} groups), "
        f"d_state {res['d_state']}, {res['threads']} threads, {res['iters']} rounds",
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
            f"first call in a fresh process: import (torch, numba) {cs['import_s']:.2f} s "
            f"+ kernels {cs['first_call_s']:.2f} s "
            f"({'numba cache' if cs.get('cached') else 'compiled'}{'; ' + cs['reason'] if cs.get('reason') else ''})"
        )
    return "\n".join(lines)


def cuda_scan_benchmark(length: int, channels: int, groups: int, d_state: int, iters: int) -> dict[str, Any]:
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
        times = interleaved(runs, iters, 3, torch.cuda.synchronize)
    return {
        "device": torch.cuda.get_device_name(dev),
        "timings": {k: timing_stats(v) for k, v in times.items()},
        "mamba_ssm_kernel": "cuda" in runs,
    }
