"""Model checkpoints: one safetensors file = the weights + header metadata (format tag, version,
ModelConfig as JSON, user meta as JSON, SHA-256 of the weights).  Loading verifies all of it and
builds the model from the stored config before returning, so a bad file never gives a half-loaded
model.  ``model_checksum`` = SHA-256 over (name, dtype, shape, bytes) of the sorted state dict.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from scmpr_ros.config import ConfigError, ModelConfig, update_section
from scmpr_ros.errors import CheckpointError
from scmpr_ros.io_utils import atomic_write_bytes

FORMAT = "scmpr-checkpoint"
VERSION = 1


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def state_checksum(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for name in sorted(state):
        t = state[name]
        h.update(f"{name}|{str(t.dtype).replace('torch.', '')}|{tuple(t.shape)}|".encode())
        h.update(_tensor_bytes(t))
    return h.hexdigest()


def model_checksum(model: nn.Module) -> str:
    """SHA-256 hex of the model's weights and buffers (identifies the model a map was built with)."""
    return state_checksum(model.state_dict())


def save_checkpoint(
    path: str | Path, model: nn.Module, cfg: ModelConfig | None = None, meta: dict[str, Any] | None = None
) -> str:
    """Write model + config (+ JSON-serialisable ``meta``) atomically to ``path``; returns the checksum."""
    from safetensors.torch import save

    cfg = cfg if cfg is not None else getattr(model, "cfg", None)
    if not isinstance(cfg, ModelConfig):
        raise CheckpointError(f"save_checkpoint {path}: a ModelConfig is needed (got {type(cfg).__name__})")
    model_cfg = getattr(model, "cfg", None)
    if isinstance(model_cfg, ModelConfig):  # the model's effective config wins (e.g. lidar_in_channels)
        cfg = model_cfg
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    checksum = state_checksum(state)
    try:
        meta_json = json.dumps(meta or {}, sort_keys=True, default=str)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"save_checkpoint {path}: meta is not JSON-serialisable: {exc}") from exc
    header = {
        "format": FORMAT,
        "version": str(VERSION),
        "config": json.dumps(dataclasses.asdict(cfg), sort_keys=True),
        "meta": meta_json,
        "checksum": checksum,
    }
    atomic_write_bytes(path, save(state, metadata=header))
    return checksum


def _read_header(data: bytes, path: Path) -> dict[str, str]:
    if len(data) < 8:
        raise CheckpointError(f"{path}: file is too short to be a checkpoint ({len(data)} bytes)")
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or 8 + n > len(data):
        raise CheckpointError(
            f"{path}: not a safetensors checkpoint (bad header length); is it a checkpoint written by scmpr?"
        )
    try:
        header = json.loads(data[8 : 8 + n])
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path}: corrupt checkpoint header ({exc})") from exc
    meta = header.get("__metadata__") if isinstance(header, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not an scmpr checkpoint (no '{FORMAT}' tag in the header)")
    if meta.get("version") != str(VERSION):
        raise CheckpointError(
            f"{path}: checkpoint version {meta.get('version')!r}, this scmpr_ros reads version {VERSION}"
        )
    for key in ("config", "meta", "checksum"):
        if key not in meta:
            raise CheckpointError(f"{path}: checkpoint header lacks '{key}'")
    return meta


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu"):
    """-> (model in eval mode on ``map_location``, ModelConfig, meta dict). Raises CheckpointError."""
    from safetensors import SafetensorError
    from safetensors.torch import load

    from scmpr_ros.model.scmpr import SCMPRModel

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    data = path.read_bytes()
    header = _read_header(data, path)
    try:
        state = load(data)
    except (SafetensorError, Exception) as exc:  # noqa: BLE001 - any parse failure is a corrupt file
        raise CheckpointError(f"{path}: corrupt checkpoint tensors ({exc})") from exc
    if state_checksum(state) != header["checksum"]:
        raise CheckpointError(
            f"{path}: checksum mismatch - the weights are corrupt or were modified; re-copy or retrain"
        )
    try:
        cfg_dict = json.loads(header["config"])
        meta = json.loads(header["meta"])
        cfg = update_section(ModelConfig(), cfg_dict, f"{path}: config")
    except (json.JSONDecodeError, ConfigError) as exc:
        raise CheckpointError(f"{path}: stored config is invalid: {exc}") from exc
    device = torch.device(map_location)
    if cfg.scan_backend == "cuda" and device.type != "cuda":
        cfg = dataclasses.replace(cfg, scan_backend="auto")
    try:
        model = SCMPRModel(cfg)
        missing, unexpected = model.load_state_dict(state, strict=False)
    except (ConfigError, RuntimeError) as exc:
        raise CheckpointError(f"{path}: weights do not fit the stored config: {exc}") from exc
    if missing or unexpected:
        raise CheckpointError(
            f"{path}: weights do not fit the model of its config "
            f"(missing {sorted(missing)[:5]}, unexpected {sorted(unexpected)[:5]})"
        )
    return model.to(device).eval(), cfg, meta
