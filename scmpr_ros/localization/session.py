"""Model + map loading shared by the ROS localizer and ``scmpr evaluate`` (one way to open them).

model = load_model(path, device="auto", threads=2)         # checkpoint -> LoadedModel on its device
cfg = model.config(load_config(...))                        # the checkpoint's model section wins
recognizer = open_recognizer(model, map_path, cfg)          # read + check the map, build the index
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# Idle OpenMP threads spin by default and steal the second core from the encoder (measured: the
# encoder ran ~3x slower under load). Must be set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from scmpr_ros.config import ModelConfig, ScmprConfig  # noqa: E402
from scmpr_ros.errors import ScmprError  # noqa: E402
from scmpr_ros.localization.recognizer import PlaceRecognizer  # noqa: E402
from scmpr_ros.mapping.map_file import read_map  # noqa: E402
from scmpr_ros.model import load_checkpoint, model_checksum  # noqa: E402

DEVICES = ("auto", "cpu", "cuda")


def resolve_device(device: str) -> str:
    """auto -> cuda when torch sees a GPU, else cpu; cuda without a GPU is an error."""
    if device not in DEVICES:
        raise ScmprError(f"device={device!r}: use auto, cpu or cuda")
    if device == "cuda" and not torch.cuda.is_available():
        raise ScmprError("device=cuda but torch sees no CUDA device; use device auto or cpu")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


@dataclass
class LoadedModel:
    network: Any  # SCMPRModel in eval mode on ``device``
    model_config: ModelConfig
    checksum: str
    device: str

    def config(self, base: ScmprConfig) -> ScmprConfig:
        """``base`` with the checkpoint's model section (a map and its model must agree on it)."""
        return dataclasses.replace(base, model=self.model_config)


def load_model(path: str | Path, device: str = "auto", threads: int = 0, warm_up: bool = True) -> LoadedModel:
    """Load a checkpoint for inference; on CPU compile the numba scan kernels now, not on the first image."""
    if not str(path):
        raise ScmprError("no model given; set it to a checkpoint (e.g. models/scmpr_nano.pt)")
    device = resolve_device(device)
    if threads > 0:
        torch.set_num_threads(int(threads))
    network, model_cfg, _meta = load_checkpoint(path, map_location=device)
    network = network.to(device).eval()
    if device == "cpu" and warm_up:
        from scmpr_ros.model.scan_numba import warmup

        warmup(max(1, torch.get_num_threads()))
    return LoadedModel(network, model_cfg, model_checksum(network), device)


def open_recognizer(
    model: LoadedModel, map_path: str | Path, cfg: ScmprConfig, verify_checksum: bool = True, min_hypotheses: int = 0
) -> PlaceRecognizer:
    """Read a map built with ``model`` and return the recognizer over it.

    ``top_k`` is clamped to the map size (and to at least two: the score margin needs the runner-up),
    ``rerank_k`` to [top_k, map size].  ``min_hypotheses``: return at least this many re-ranked
    hypotheses per image (e.g. the filter's ``hypothesis_count``; at most ``rerank_k``), of which the
    first ``top_k`` are the published ones."""
    data = read_map(
        map_path,
        expected_dim=model.network.descriptor_dim,
        expected_model_checksum=model.checksum,
        verify_checksum=verify_checksum,
    )
    n = data.num_viewpoints
    k = min(max(2, cfg.retrieval.top_k), n)
    retrieval = dataclasses.replace(cfg.retrieval, top_k=k, rerank_k=min(max(cfg.retrieval.rerank_k, k), n))
    return PlaceRecognizer(
        model.network, data, dataclasses.replace(cfg, retrieval=retrieval), num_hypotheses=min_hypotheses
    )
