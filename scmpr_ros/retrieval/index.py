"""Vector index over unit-norm viewpoint descriptors: inner product = cosine (faiss).

Exact ``IndexFlatIP`` up to ``RetrievalConfig.ann_threshold`` viewpoints, above it an ANN index:
HNSW (``IndexHNSWFlat``, inner product) or IVF (``IndexIVFFlat`` with a flat IP coarse quantizer).
"""

from __future__ import annotations

import numpy as np

from scmpr_ros.config import RetrievalConfig
from scmpr_ros.errors import InputError

INDEX_KINDS = ("auto", "flat", "hnsw", "ivf")


def _faiss():
    import faiss  # noqa: PLC0415 - heavy import kept out of module import

    return faiss


class DescriptorIndex:
    """``DescriptorIndex(descriptors (N, D), cfg)``; ``search(queries, k) -> (scores, ids)``."""

    def __init__(
        self,
        descriptors: np.ndarray,
        cfg: RetrievalConfig | None = None,
        kind: str = "auto",
        threads: int | None = None,
    ):
        cfg = cfg if cfg is not None else RetrievalConfig()
        if kind not in INDEX_KINDS:
            raise InputError(f"index kind '{kind}' unknown (known: {', '.join(INDEX_KINDS)})")
        x = np.asarray(descriptors)
        if x.ndim != 2 or x.shape[1] < 1:
            raise InputError(f"descriptors must be (N, D), got shape {x.shape}")
        faiss = _faiss()
        if threads:
            faiss.omp_set_num_threads(int(threads))
        n, d = x.shape
        if kind == "auto":
            kind = "flat" if n <= cfg.ann_threshold else cfg.ann_type
        if kind not in ("flat", "hnsw", "ivf"):
            raise InputError(f"retrieval.ann_type '{cfg.ann_type}' unknown (use hnsw or ivf)")
        self.kind = kind
        self.dim = int(d)
        self.cfg = cfg
        if kind == "flat":
            index = faiss.IndexFlatIP(d)
        elif kind == "hnsw":
            index = faiss.IndexHNSWFlat(d, int(cfg.hnsw_m), faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = int(cfg.hnsw_ef_construction)
            index.hnsw.efSearch = int(cfg.hnsw_ef_search)
        else:
            nlist = int(max(1, min(cfg.ivf_nlist, n // 39 if n >= 39 else 1)))
            quantizer = faiss.IndexFlatIP(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_INNER_PRODUCT)
            self._quantizer = quantizer  # keep alive: the IVF index does not own it
        # add in chunks so that a float16 memory map is never copied whole as float32 twice
        step = 1 << 17
        if kind == "ivf":
            sample = np.asarray(x[np.linspace(0, n - 1, min(n, 64 * index.nlist)).astype(np.int64)], np.float32)
            if len(sample):
                index.train(np.ascontiguousarray(sample))
            index.nprobe = int(min(cfg.ivf_nprobe, index.nlist))
        for s in range(0, n, step):
            chunk = np.ascontiguousarray(x[s : s + step], dtype=np.float32)
            if not np.isfinite(chunk).all():
                raise InputError(f"descriptors {s}..{s + len(chunk)} contain NaN or inf")
            index.add(chunk)
        self.index = index

    @property
    def ntotal(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k by inner product: scores (Q, k) float32 descending, ids (Q, k) int64 (-1 past the end)."""
        q = np.asarray(queries, dtype=np.float32)
        if q.ndim == 1:
            q = q[None]
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise InputError(f"query descriptors must be (Q, {self.dim}), got shape {np.asarray(queries).shape}")
        if not np.isfinite(q).all():
            raise InputError("query descriptor contains NaN or inf")
        if k < 1:
            raise InputError(f"k must be >= 1, got {k}")
        scores, ids = self.index.search(np.ascontiguousarray(q), int(k))
        return scores, ids.astype(np.int64, copy=False)
