"""`scmpr benchmark all`: every benchmark in one run and its Markdown report."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from scmpr_ros.benchmarks.common import machine_info, model_label
from scmpr_ros.benchmarks.encoder import encoder_benchmark, format_encoder_table
from scmpr_ros.benchmarks.scan import cuda_scan_benchmark, format_scan_table, scan_benchmark


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
        section("scan", lambda: cuda_scan_benchmark(scan_shape[0], scan_shape[1], 4, 1, scan_iters))

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
        f"- torch {m['torch']}, numpy {m['numpy']}, numba {m.get('numba')} "
        f"(kernel available: {m.get('numba_kernel')}), "
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
                    f"| {model_label(res, name)} | {h}x{w} | {mm['params'] / 1e6:.2f} | {mm['median_ms']:.1f} | "
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
                f"- processed {r['processed_hz']:.1f} Hz (images in at {r['input_hz']:.1f} Hz), "
                f"dropped {r['dropped']}, "
                f"{'meets' if r['meets_10hz'] else 'misses'} 10 Hz",
                f"- end-to-end latency p50 {r['e2e_latency_ms']['p50']:.1f} ms, "
                f"p95 {r['e2e_latency_ms']['p95']:.1f} ms; "
                f"encoder+search p50 {r['compute_ms']['p50']:.1f} ms",
                f"- RSS {r['rss_mb']['start']:.0f} -> {r['rss_mb']['end']:.0f} MB; model {r['model']}",
            ]
        out.append("")
    if report.get("errors"):
        out += ["## Errors", ""] + [f"- {k}: {v}" for k, v in report["errors"].items()] + [""]
    if report.get("section_seconds"):
        out.append("Section wall time: " + ", ".join(f"{k} {v:.0f} s" for k, v in report["section_seconds"].items()))
    return "\n".join(out) + "\n"
