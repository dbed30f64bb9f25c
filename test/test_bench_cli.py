"""`scmpr benchmark scan` and `scmpr benchmark all`: real (small) runs of every section, the report
files, machine info, and the refusals of bad options."""

import json

import pytest

from scmpr_ros.cli import main
from scmpr_ros.model import scan_numba

needs_numba = pytest.mark.skipif(not scan_numba.NUMBA_AVAILABLE, reason="numba is not installed")


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)  # the commands set the thread count for the whole process


@needs_numba
def test_benchmark_scan_reports_every_candidate_and_parity(tmp_path, capsys):
    out = tmp_path / "scan.json"
    rc = main(
        [
            "benchmark",
            "scan",
            "--length",
            "300",
            "--channels",
            "32",
            "--ss2d",
            "5x7x16x2",
            "--iters",
            "2",
            "--torch-iters",
            "1",
            "--ref-length",
            "40",
            "--threads",
            "1",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    for label in ("limit", "numba fused kernel", "pure-torch", "SS2D core 5x7x16", "reference loop at L 40", "parity"):
        assert label in text
    res = json.loads(out.read_text())
    assert set(res["timings"]) == {"limit", "numba", "torch", "ss2d_numba", "ss2d_torch"}
    for name, t in res["timings"].items():
        assert t["median_ms"] > 0 and t["p95_ms"] >= t["min_ms"] > 0, name
    assert res["timings"]["torch"]["n"] == 1 and res["timings"]["numba"]["n"] == 2
    assert (
        abs(
            res["ratios"]["numba_over_limit"]
            - res["timings"]["numba"]["median_ms"] / res["timings"]["limit"]["median_ms"]
        )
        < 1e-9
    )
    for name, diff in res["parity"].items():
        assert diff < 1e-4, name
    assert res["ss2d"]["element_steps"] == 5 * 7 * 16 * 4
    cold = res["cold_start"]
    assert "error" not in cold and cold["first_call_s"] > 0


def test_benchmark_scan_rejects_a_bad_ss2d_shape(capsys):
    assert main(["benchmark", "scan", "--ss2d", "5x7x16"]) == 2
    assert "--ss2d" in capsys.readouterr().err


@needs_numba
def test_benchmark_all_quick_writes_json_and_markdown(tmp_path, capsys):
    out = tmp_path / "bench"
    rc = main(
        [
            "benchmark",
            "all",
            "--quick",
            "--out",
            str(out),
            "--configs",
            "nano",
            "--size",
            "64x128",
            "--threads",
            "1",
            "--encoder-iters",
            "2",
            "--scan-iters",
            "2",
            "--scan-shape",
            "200x32",
            "--search-sizes",
            "3000",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    report = json.loads((out / "benchmark.json").read_text())
    m = report["machine"]
    assert m["cpu"] and m["threads"] == 1 and m["torch"] and len(m["loadavg_start"]) == 3 and len(m["loadavg_end"]) == 3
    assert report["errors"] == {}
    (enc,) = report["sections"]["encoder"]
    assert enc["size"] == [64, 128]
    assert set(enc["models"]) == {"scmpr", "scmpr_torch_scan", "resnet18_netvlad"}  # same run, same weights
    assert (
        enc["models"]["scmpr"]["scan_backend"] == "auto"
        and enc["models"]["scmpr_torch_scan"]["scan_backend"] == "torch"
    )
    scan = report["sections"]["scan"]
    assert scan["length"] == 200 and scan["channels"] == 32 and scan["parity"]["numba_vs_reference_max_abs"] < 1e-4
    (search,) = report["sections"]["search"]
    assert search["n"] == 3000 and 0 <= search["ann"]["recall_at_10"] <= 1
    assert "skipped" in report["sections"]["ros"]
    md = (out / "benchmark.md").read_text()
    for heading in ("# SCM-PR benchmark report", "## Encoder", "## Selective scan", "## Search", "## ROS loop"):
        assert heading in md
    assert "| SCM-PR nano | 64x128 |" in md and "ResNet18+NetVLAD" in md and m["cpu"] in md


@pytest.mark.parametrize(
    "args,needle",
    [
        (["--scan-shape", "200x30"], "--scan-shape"),
        (["--configs", "huge"], "huge"),
        (["--search-sizes", "1e5"], "--search-sizes"),
        (["--device", "tpu"], "--device"),
    ],
)
def test_benchmark_all_refuses_bad_options_before_running(tmp_path, capsys, args, needle):
    out = tmp_path / "bench"
    assert main(["benchmark", "all", "--out", str(out)] + args) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_benchmark_filter_reports_each_map_size(tmp_path, capsys):
    from scmpr_ros.cli import main

    out = tmp_path / "filter.json"
    assert main(["benchmark", "filter", "--steps", "20", "--sizes", "2000,20000", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "filter step (2000 particles" in text and "load average" in text
    res = json.loads(out.read_text())
    assert set(res["sizes"]) == {"2000", "20000"}  # the road grid reaches each requested size exactly
    for row in res["sizes"].values():
        assert all(row[m]["median_ms"] > 0 and row[m]["n"] == 15 for m in ("odometry", "image_only"))
