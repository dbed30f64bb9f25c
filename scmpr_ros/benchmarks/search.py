"""``scmpr benchmark search``: per-query time of top-k + semantic re-rank, and ANN recall@10 vs exact.

Map descriptors are random unit vectors of the model's dimension, either ``walk`` (place-like: random
walks on the sphere restarted every 1000 viewpoints, consecutive cosine ~0.9) or ``iid`` (the worst
case for any ANN); queries are noisy copies of random map entries (cosine ~0.8 to their source).
"""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np

from scmpr_ros.config import RetrievalConfig
from scmpr_ros.mapping.map_file import PackedGrids
from scmpr_ros.retrieval.index import DescriptorIndex
from scmpr_ros.retrieval.rerank import rerank
from scmpr_ros.semantics import NUM_CLASSES

DISTRIBUTIONS = ("walk", "iid")


def random_descriptors(
    n: int, dim: int, rng: np.random.Generator, distribution: str = "walk", segment: int = 1000
) -> np.ndarray:
    out = np.empty((n, dim), np.float32)
    step = float(np.sqrt(0.2346 / dim))  # consecutive cosine ~0.9
    for s in range(0, n, segment):
        m = min(segment, n - s)
        if distribution == "iid":
            out[s : s + m] = rng.standard_normal((m, dim), dtype=np.float32)
        else:
            steps = rng.standard_normal((m, dim), dtype=np.float32) * step
            steps[0] = rng.standard_normal(dim, dtype=np.float32) / np.sqrt(dim)
            out[s : s + m] = np.cumsum(steps, axis=0)
    out /= np.linalg.norm(out, axis=1, keepdims=True)
    return out


def _time_queries(
    index: DescriptorIndex, queries: np.ndarray, k: int, grids, qgrids, cfg: RetrievalConfig, top_k: int
) -> tuple[float, float, np.ndarray]:
    """Median ms of search and of re-rank, one query at a time; returns the top_k rows per query."""
    t_s, t_r, tops = [], [], []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        scores, ids = index.search(queries[i], k)
        t1 = time.perf_counter()
        hyps = rerank(scores[0], ids[0], qgrids[i], grids, cfg.alpha, cfg.beta, top_k)
        t2 = time.perf_counter()
        t_s.append(t1 - t0)
        t_r.append(t2 - t1)
        tops.append([h.index for h in hyps])
    return 1e3 * float(np.median(t_s)), 1e3 * float(np.median(t_r)), np.asarray(tops)


def search_benchmark(
    sizes: list[int],
    dim: int,
    cfg: RetrievalConfig | None = None,
    queries: int = 200,
    top_k: int = 10,
    distribution: str = "walk",
    exact_timed_queries: int = 30,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> list[dict]:
    cfg = cfg if cfg is not None else RetrievalConfig()
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"distribution '{distribution}' unknown (use {' | '.join(DISTRIBUTIONS)})")
    rng = np.random.default_rng(seed)
    results = []
    for n in sizes:
        t0 = time.perf_counter()
        x = random_descriptors(n, dim, rng, distribution)
        db = x.astype(np.float16)  # maps store float16 by default
        del x
        src = rng.integers(0, n, queries)
        q = db[src].astype(np.float32) + rng.standard_normal((queries, dim), dtype=np.float32) * np.float32(
            0.75 / np.sqrt(dim)
        )
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        grids = (
            PackedGrids.pack(rng.random((n, 4, 8, NUM_CLASSES)) < 0.15)
            if n <= 200_000
            else PackedGrids(
                rng.integers(0, 256, (n, (4 * 8 * NUM_CLASSES + 7) // 8), dtype=np.uint8), 4, 8, NUM_CLASSES
            )
        )
        qgrids = rng.random((queries, 4, 8, NUM_CLASSES)) < 0.15
        k = max(cfg.rerank_k, top_k)
        if log:
            log(f"n={n}: data ready ({time.perf_counter() - t0:.1f} s); exact index")
        exact = DescriptorIndex(db, cfg, kind="flat")
        _, truth = exact.search(q, k)  # batched: ground truth for every query
        te = min(exact_timed_queries, queries)
        ex_search, ex_rerank, _ = _time_queries(exact, q[:te], k, grids, qgrids, cfg, top_k)
        row = {
            "n": n,
            "dim": dim,
            "distribution": distribution,
            "queries": queries,
            "exact": {"search_ms": ex_search, "rerank_ms": ex_rerank, "total_ms": ex_search + ex_rerank},
        }
        del exact
        if log:
            log(f"n={n}: exact {ex_search:.2f} ms/query; building {cfg.ann_type}")
        t0 = time.perf_counter()
        ann = DescriptorIndex(db, cfg, kind=cfg.ann_type)
        build_s = time.perf_counter() - t0
        a_search, a_rerank, _ = _time_queries(ann, q, k, grids, qgrids, cfg, top_k)
        _, got = ann.search(q, k)
        recall10 = float(np.mean([len(set(a[:10]) & set(b[:10])) / 10 for a, b in zip(got, truth)]))
        top1 = float(np.mean(got[:, 0] == truth[:, 0]))
        row["ann"] = {
            "kind": cfg.ann_type,
            "build_s": build_s,
            "search_ms": a_search,
            "rerank_ms": a_rerank,
            "total_ms": a_search + a_rerank,
            "recall_at_10": recall10,
            "top1_agreement": top1,
        }
        used = "flat" if n <= cfg.ann_threshold else cfg.ann_type
        row["used_by_recognizer"] = used
        row["query_ms"] = row["exact" if used == "flat" else "ann"]["total_ms"]
        results.append(row)
        if log:
            log(f"n={n}: {cfg.ann_type} {a_search:.2f} ms/query + re-rank {a_rerank:.2f} ms, recall@10 {recall10:.4f}")
        del ann, db
    return results


def format_search_table(rows: list[dict]) -> str:
    lines = [
        f"{'viewpoints':>10} {'exact ms':>9} {'ann':>5} {'ann ms':>7} {'rerank ms':>9} {'recall@10':>9} "
        f"{'top-1':>6} {'build s':>7}  used  -> ms/query",
    ]
    for r in rows:
        a = r["ann"]
        lines.append(
            f"{r['n']:>10} {r['exact']['search_ms']:>9.2f} {a['kind']:>5} {a['search_ms']:>7.2f} "
            f"{a['rerank_ms']:>9.2f} {a['recall_at_10']:>9.4f} {a['top1_agreement']:>6.3f} {a['build_s']:>7.1f}  "
            f"{r['used_by_recognizer']:>4}  -> "
            f"{r['query_ms']:.2f}"
        )
    if rows:
        lines.append(
            f"(dim {rows[0]['dim']}, {rows[0]['distribution']} descriptors, {rows[0]['queries']} single queries, "
            "top-10 after re-ranking the top rerank_k; exact ms = IndexFlatIP)"
        )
    return "\n".join(lines)
