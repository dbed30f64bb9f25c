"""`scmpr benchmark encoder`: times both encoders in one run and reports the ratio."""

import json

from scmpr_ros.cli import main


def test_benchmark_encoder_cli_reports_both_models(tmp_path, capsys):
    out = tmp_path / "enc.json"
    rc = main(
        [
            "benchmark",
            "encoder",
            "--config",
            "nano",
            "--size",
            "64x128",
            "--threads",
            "1",
            "--iters",
            "2",
            "--warmup",
            "0",
            "--json",
            str(out),
        ]
    )
    assert rc == 0
    text = capsys.readouterr().out
    assert "SCM-PR nano" in text and "ResNet18+NetVLAD" in text and "ratio" in text
    res = json.loads(out.read_text())
    assert set(res["models"]) == {"scmpr", "resnet18_netvlad"}
    for m in res["models"].values():
        assert m["median_ms"] > 0 and m["p95_ms"] >= m["min_ms"] > 0 and m["params"] > 1e6
    # the benchmark timed the models it names: their sizes match models built here independently
    from scmpr_ros.config import ModelConfig
    from scmpr_ros.model import SCMPRModel
    from scmpr_ros.model.baseline import ResNet18NetVLAD

    nano = SCMPRModel(ModelConfig(backbone="nano"))
    image_tower = ("backbone.", "head.", "csa.", "netvlad_rgb.")  # what encode_image runs
    expected = sum(p.numel() for n, p in nano.named_parameters() if n.startswith(image_tower))
    assert res["models"]["scmpr"]["params"] == expected
    assert res["models"]["resnet18_netvlad"]["params"] == sum(p.numel() for p in ResNet18NetVLAD().parameters())


def test_benchmark_encoder_rejects_bad_size(capsys):
    assert main(["benchmark", "encoder", "--size", "160by512", "--iters", "1"]) == 2
    assert "--size" in capsys.readouterr().err
