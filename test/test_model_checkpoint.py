"""Checkpoints: save -> load gives the same outputs; corrupt or foreign files are refused whole."""

import dataclasses
import json

import pytest
import torch

from scmpr_ros.config import ModelConfig
from scmpr_ros.errors import CheckpointError
from scmpr_ros.model import SCMPRModel, load_checkpoint, model_checksum, save_checkpoint
from scmpr_ros.semantics import NUM_CLASSES


def small_model(**kw):
    cfg = ModelConfig(
        image_height=64,
        image_width=128,
        lidar_dims=[8, 16, 32],
        feature_dim=16,
        netvlad_clusters=4,
        descriptor_dim=32,
        attention_dim=8,
    )
    torch.manual_seed(0)
    return SCMPRModel(dataclasses.replace(cfg, **kw), lidar_in_channels=5)


@pytest.fixture()
def saved(tmp_path):
    m = small_model().eval()
    with torch.no_grad():  # non-default BN statistics so buffers matter too
        for mod in m.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.1, 0.1)
    path = tmp_path / "model.pt"
    checksum = save_checkpoint(path, m, m.cfg, {"epoch": 3, "note": "test"})
    return m, path, checksum


def test_save_load_identical_outputs(saved):
    m, path, checksum = saved
    loaded, cfg, meta = load_checkpoint(path)
    assert cfg == m.cfg and cfg.lidar_in_channels == 5
    assert meta == {"epoch": 3, "note": "test"}
    assert model_checksum(loaded) == checksum == model_checksum(m)
    assert not loaded.training
    g = torch.Generator().manual_seed(1)
    images = torch.randn(2, 3, 64, 128, generator=g)
    rng = torch.randn(2, 5, 16, 64, generator=g)
    labels = torch.randint(0, NUM_CLASSES, (2, 16, 64), generator=g)
    protos = torch.randn(NUM_CLASSES, 16, generator=g)
    with torch.no_grad():
        a, b = m.encode_image(images, protos), loaded.encode_image(images, protos)
        assert torch.equal(a.descriptor, b.descriptor) and torch.equal(a.seg_logits, b.seg_logits)
        assert torch.equal(m.encode_lidar(rng, labels).descriptor, loaded.encode_lidar(rng, labels).descriptor)


def test_ablated_model_round_trip(tmp_path):
    m = small_model(use_semantics=False)
    save_checkpoint(tmp_path / "a.pt", m)
    loaded, cfg, _ = load_checkpoint(tmp_path / "a.pt")
    assert cfg.use_semantics is False and loaded.csa is None and loaded.lidar.label_embed is None


def test_checksum_changes_with_weights():
    m = small_model()
    c0 = model_checksum(m)
    with torch.no_grad():
        m.netvlad_rgb.centroids[0, 0] += 1e-3
    assert model_checksum(m) != c0


def _header_len(data: bytes) -> int:
    return 8 + int.from_bytes(data[:8], "little")


def test_corrupted_weights_are_refused(saved):
    _, path, _ = saved
    data = bytearray(path.read_bytes())
    data[_header_len(data) + 1000] ^= 0xFF  # one flipped byte in the tensor data
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


def test_truncated_and_foreign_files_are_refused(saved, tmp_path):
    _, path, _ = saved
    data = path.read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "trunc.pt")
    (tmp_path / "short.pt").write_bytes(b"abc")
    with pytest.raises(CheckpointError, match="too short"):
        load_checkpoint(tmp_path / "short.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "torch.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "torch.pt")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(3)}, str(tmp_path / "plain.safetensors"))
    with pytest.raises(CheckpointError, match="not an scmpr checkpoint"):
        load_checkpoint(tmp_path / "plain.safetensors")
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")


def _rewrite_header(path, edit):
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    edit(header["__metadata__"])
    raw = json.dumps(header).encode()
    raw += b" " * ((8 - len(raw) % 8) % 8)
    path.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])


def test_config_that_does_not_fit_the_weights_is_refused(saved):
    _, path, _ = saved

    def widen(meta):
        cfg = json.loads(meta["config"])
        cfg["feature_dim"] = 24
        meta["config"] = json.dumps(cfg)

    _rewrite_header(path, widen)
    with pytest.raises(CheckpointError, match="do not fit"):
        load_checkpoint(path)


def test_unknown_config_key_and_version_are_refused(saved):
    _, path, _ = saved
    _rewrite_header(path, lambda meta: meta.update(version="99"))
    with pytest.raises(CheckpointError, match="version"):
        load_checkpoint(path)
    _rewrite_header(path, lambda meta: meta.update(version="1", config=json.dumps({"no_such_key": 1})))
    with pytest.raises(CheckpointError, match="no_such_key"):
        load_checkpoint(path)
