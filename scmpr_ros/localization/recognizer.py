"""One camera image -> ordered place hypotheses in a map (what the ROS localizer and evaluate call).

D_RGB = model.encode_image(image, map prototypes) (CSA context from the map file); the query grid is
grid_from_labels(argmax of the segmentation logits); top ``rerank_k`` by cosine from the vector
index, then Sim = alpha * cos + beta * psi (rerank.py), best ``num_hypotheses`` (default ``top_k``) returned.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from scmpr_ros.config import ScmprConfig
from scmpr_ros.errors import InputError, MapFileError
from scmpr_ros.mapping.map_file import MapData
from scmpr_ros.retrieval.index import DescriptorIndex
from scmpr_ros.retrieval.rerank import Hypothesis, rerank
from scmpr_ros.semantics.grid import grid_from_labels


@dataclass
class RecognitionResult:
    hypotheses: list[Hypothesis]  # best first
    timings: dict[str, float] = field(default_factory=dict)  # ms: preprocess encode grid search rerank total
    descriptor: np.ndarray | None = None  # (D,) query descriptor
    query_grid: np.ndarray | None = None  # (rows, cols, N_S) bool, None without a segmentation head
    candidates: tuple[np.ndarray, np.ndarray] | None = None  # (cosines, map rows) of the index's top rerank_k


class PlaceRecognizer:
    """``PlaceRecognizer(model, map_data, cfg)``; ``recognize(rgb) -> RecognitionResult``.

    ``num_hypotheses``: re-ranked hypotheses returned per image (default ``top_k``, at most ``rerank_k``;
    the filter may weigh more than are published)."""

    def __init__(
        self, model: Any, map_data: MapData, cfg: ScmprConfig, device: Any = None, num_hypotheses: int | None = None
    ):
        import torch

        if int(model.descriptor_dim) != map_data.descriptor_dim:
            raise MapFileError(
                f"the map has {map_data.descriptor_dim}-d descriptors but the model produces {model.descriptor_dim}-d; "
                "use the model the map was built with or rebuild the map"
            )
        r = cfg.retrieval
        if r.top_k < 1 or r.rerank_k < 1:
            raise InputError(f"retrieval.top_k ({r.top_k}) and retrieval.rerank_k ({r.rerank_k}) must be >= 1")
        self.model = model
        self.map = map_data
        self.cfg = cfg
        wanted = r.top_k if num_hypotheses is None else int(num_hypotheses)
        self.num_hypotheses = max(r.top_k, min(wanted, r.rerank_k))  # never fewer than the published top_k
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.index = DescriptorIndex(map_data.descriptors, r)
        self.prototypes = None
        if getattr(model, "use_csa", False):
            protos = np.asarray(map_data.prototypes, dtype=np.float32)
            want = (int(model.num_classes), int(model.feature_dim))
            if protos.shape != want:
                raise MapFileError(
                    f"the map's semantic prototypes are {protos.shape}, the model needs {want}; "
                    "rebuild the map with this model"
                )
            self.prototypes = torch.from_numpy(protos.copy()).to(self.device)
        self.grid_rows, self.grid_cols = map_data.grid_shape[:2]

    def rank_again(
        self, result: RecognitionResult, *, alpha: float | None = None, beta: float | None = None
    ) -> list[Hypothesis]:
        """The hypotheses of an earlier ``result`` re-ranked with other weights (no encoder pass, no
        search): its index candidates (top ``rerank_k``), scored α·cos + β·ψ."""
        if result.candidates is None:
            raise InputError("rank_again needs a result of this recognizer's recognize / recognize_batch")
        r = self.cfg.retrieval
        return self._rerank(
            *result.candidates,
            result.query_grid,
            r.alpha if alpha is None else float(alpha),
            r.beta if beta is None else float(beta),
        )

    def _rerank(
        self, cosines: np.ndarray, rows: np.ndarray, grid: np.ndarray | None, alpha: float, beta: float
    ) -> list[Hypothesis]:
        return rerank(
            cosines,
            rows,
            grid,
            self.map.semantic_grids,
            alpha,
            beta,
            self.num_hypotheses,
            poses=self.map.poses,
            viewpoint_ids=self.map.viewpoint_ids,
        )

    def recognize(self, rgb: np.ndarray) -> RecognitionResult:
        return self.recognize_batch([rgb])[0]

    def recognize_batch(self, images: Sequence[np.ndarray]) -> list[RecognitionResult]:
        """Several RGB uint8 (H, W, 3) images in one encoder pass; timings are per batch / len."""
        import torch

        from scmpr_ros.model.preprocess import preprocess_images

        t0 = time.perf_counter()
        x = preprocess_images(list(images), self.model.cfg).to(self.device)
        t1 = time.perf_counter()
        with torch.inference_mode():
            enc = self.model.encode_image(x, self.prototypes)
            desc = enc.descriptor.float().cpu().numpy()
            labels = enc.seg_logits.argmax(1).cpu().numpy() if enc.seg_logits is not None else None
        t2 = time.perf_counter()
        grids = [None] * len(desc)
        if labels is not None:
            mf = self.map.grid_min_fraction
            grids = [grid_from_labels(lab, self.grid_rows, self.grid_cols, mf) for lab in labels]
        t3 = time.perf_counter()
        r = self.cfg.retrieval
        k = min(max(r.rerank_k, r.top_k), max(self.map.num_viewpoints, 1))
        scores, ids = self.index.search(desc, k)
        t4 = time.perf_counter()
        out = []
        for i in range(len(desc)):
            hyps = self._rerank(scores[i], ids[i], grids[i], r.alpha, r.beta)
            out.append(RecognitionResult(hyps, descriptor=desc[i], query_grid=grids[i], candidates=(scores[i], ids[i])))
        t5 = time.perf_counter()
        n = len(desc)
        timings = {
            "preprocess_ms": (t1 - t0) * 1e3 / n,
            "encode_ms": (t2 - t1) * 1e3 / n,
            "grid_ms": (t3 - t2) * 1e3 / n,
            "search_ms": (t4 - t3) * 1e3 / n,
            "rerank_ms": (t5 - t4) * 1e3 / n,
            "total_ms": (t5 - t0) * 1e3 / n,
        }
        for res in out:
            res.timings = dict(timings)
        return out
