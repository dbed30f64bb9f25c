"""The training-throughput benchmark library (scmpr_ros.benchmarks.train_step): one tiny end-to-end run
(both SCM-PR scan backends and the ResNet18 pair on one batch) and the table's last line."""

import re

import torch

from scmpr_ros.benchmarks.train_step import format_train_step_table, train_step_benchmark
from scmpr_ros.model import scan_numba_autograd


def test_train_step_benchmark_runs_and_reports_the_speedup_line():
    old = torch.get_num_threads()
    try:
        res = train_step_benchmark(sizes=((32, 64),), batch=2, iters=1, warmup=0, threads=1)
    finally:
        torch.set_num_threads(old)
    (size,) = res["sizes"]
    assert size["size"] == [32, 64] and size["range_hw"][0] == 64
    assert len(res["loadavg_start"]) == 3 and len(size["loadavg_end"]) == 3
    for name in ("torch", "resnet18_netvlad") + (("numba",) if res["numba"] else ()):
        assert size[name]["pairs_per_s"] > 0 and len(size[name]["times_s"]) == 1
    if res["numba"]:  # same weights, same batch: the first step's loss agrees between the scan backends
        loss = size["first_loss"]
        assert abs(loss["numba"] - loss["torch"]) <= 1e-4 * abs(loss["torch"])
        assert res["speedup"] == size["speedup"] > 0
    assert res["numba"] == scan_numba_autograd.available()
    table = format_train_step_table(res)
    last = table.splitlines()[-1]
    if res["numba"]:
        assert re.fullmatch(r"train step speedup vs torch scan: \d+\.\d\dx \(at 32x64\)", last), last
    # at the reference size the line is exactly "train step speedup vs torch scan: N.NNx"
    res["sizes"][0]["size"] = [64, 224]
    res.update(speedup=2.345, speedup_size=[64, 224])
    assert format_train_step_table(res).splitlines()[-1] == "train step speedup vs torch scan: 2.35x"
