"""Shared benchmark machinery: interleaved timing of candidates side by side, statistics, machine facts."""

from __future__ import annotations

import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

OMP_POLICIES = ("keep", "passive", "active")


def percentile(values: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(values), q))


def timing_stats(ts: list[float]) -> dict[str, float]:
    return {"median_ms": percentile(ts, 50), "p95_ms": percentile(ts, 95), "min_ms": float(min(ts)), "n": len(ts)}


def interleaved(
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
            return (
                f"{os.environ.get('OMP_WAIT_POLICY', 'unset')} "
                f"(torch already loaded: --omp-wait-policy {policy} ignored)"
            )
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


def model_label(res: dict[str, Any], name: str) -> str:
    if name == "resnet18_netvlad":
        return "ResNet18+NetVLAD"
    if name == "scmpr":
        return f"SCM-PR {res['config']}"
    return f"SCM-PR {res['config']} ({res['models'][name].get('scan_backend', name)} scan)"
