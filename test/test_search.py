"""Semantic grids, psi, the vector index (exact and ANN) and the alpha/beta re-rank."""

from __future__ import annotations

import numpy as np
import pytest

from scmpr_ros.config import CameraConfig, RetrievalConfig
from scmpr_ros.errors import InputError
from scmpr_ros.mapping.map_file import PackedGrids
from scmpr_ros.retrieval.index import DescriptorIndex
from scmpr_ros.retrieval.rerank import rerank
from scmpr_ros.semantics import CLASS_ID, IGNORE_ID, NUM_CLASSES
from scmpr_ros.semantics.grid import (
    grid_from_labels,
    grid_from_points,
    semantic_overlap,
)


# -- semantic grids -----------------------------------------------------------------------------
def test_grid_from_labels_bins_cells():
    lab = np.full((40, 80), IGNORE_ID, np.uint8)
    lab[30:, :] = CLASS_ID["road"]  # bottom quarter: road everywhere
    lab[:20, :20] = CLASS_ID["building"]  # top-left block
    lab[5, 70] = CLASS_ID["pole"]  # one pixel
    g = grid_from_labels(lab, rows=4, cols=8)
    assert g.shape == (4, 8, NUM_CLASSES) and g.dtype == bool
    assert g[3, :, CLASS_ID["road"]].all() and not g[:3, :, CLASS_ID["road"]].any()
    assert g[:2, :2, CLASS_ID["building"]].all() and g[:, 2:, CLASS_ID["building"]].sum() == 0
    assert g[0, 7, CLASS_ID["pole"]] and g.sum() == 8 + 4 + 1
    # min_fraction drops the lonely pole pixel in a cell that also holds 99 road pixels
    lab[0:10, 70:80] = CLASS_ID["road"]
    lab[5, 70] = CLASS_ID["pole"]
    assert grid_from_labels(lab, 4, 8)[0, 7, CLASS_ID["pole"]]
    assert not grid_from_labels(lab, 4, 8, min_fraction=0.05)[0, 7, CLASS_ID["pole"]]


def test_grid_is_resolution_independent():
    rng = np.random.default_rng(0)
    coarse = rng.integers(0, NUM_CLASSES, size=(8, 16)).astype(np.uint8)
    fine = np.kron(coarse, np.ones((5, 7), np.uint8))  # same picture at another resolution
    np.testing.assert_array_equal(grid_from_labels(coarse, 4, 8), grid_from_labels(fine, 4, 8))


def test_lidar_and_camera_grids_agree():
    """Points projected into the camera give the same grid as the label image they paint."""
    cam = CameraConfig(width=320, height=96, fx=180.0, fy=180.0, cx=160.0, cy=48.0)
    rng = np.random.default_rng(1)
    # LiDAR frame points in front of a KITTI-like camera (cam z = velo x, cam x = -velo y, cam y = -velo z)
    T = np.eye(4)
    T[:3, :3] = [[0, -1, 0], [0, 0, -1], [1, 0, 0]]
    pts = np.stack([rng.uniform(3, 40, 3000), rng.uniform(-15, 15, 3000), rng.uniform(-2, 2, 3000)], 1)
    lab = rng.integers(0, NUM_CLASSES, 3000).astype(np.uint8)
    g_pts = grid_from_points(pts, lab, T, cam, 4, 8)
    pc = pts @ T[:3, :3].T
    u = np.floor(cam.fx * pc[:, 0] / pc[:, 2] + cam.cx).astype(int)
    v = np.floor(cam.fy * pc[:, 1] / pc[:, 2] + cam.cy).astype(int)
    ok = (u >= 0) & (u < cam.width) & (v >= 0) & (v < cam.height)
    image = np.full((cam.height, cam.width), IGNORE_ID, np.uint8)
    image[v[ok], u[ok]] = lab[ok]  # later points overwrite earlier ones in a shared pixel
    g_img = grid_from_labels(image, 4, 8)
    # every class the image shows is in the point grid; the point grid may also hold overwritten ones
    assert np.all(g_img <= g_pts)
    assert (g_pts & ~g_img).sum() <= 0.05 * g_pts.sum()
    # behind the camera nothing is binned
    assert not grid_from_points(-pts, lab, T, cam, 4, 8).any()


def test_semantic_overlap_iou_on_visible_cells():
    q = np.zeros((2, 2, NUM_CLASSES), bool)
    q[0, 0, 0] = q[0, 1, 1] = q[1, 0, 2] = q[1, 1, 3] = True
    v = np.zeros((4, 2, 2, NUM_CLASSES), bool)
    v[0] = q  # identical
    v[1, 0, 0, 0] = True  # sees one cell, agrees there
    v[1, 0, 0, 5] = True  # ... plus one extra class
    v[2, 1, 1, 4] = True  # sees one cell and disagrees
    # v[3] sees nothing
    psi = semantic_overlap(q, v)
    np.testing.assert_allclose(psi, [1.0, 0.5, 0.0, 0.0])
    assert psi.dtype == np.float32
    with pytest.raises(InputError, match="do not match"):
        semantic_overlap(q, np.zeros((3, 2, 3, NUM_CLASSES), bool))


# -- re-rank ------------------------------------------------------------------------------------
def _rerank_case():
    rng = np.random.default_rng(3)
    n = 50
    grids = rng.random((n, 4, 8, NUM_CLASSES)) < 0.3
    q = rng.random((4, 8, NUM_CLASSES)) < 0.3
    cos = np.sort(rng.uniform(0.5, 0.9, n))[::-1]
    ids = rng.permutation(200)[:n]
    all_grids = np.zeros((200, 4, 8, NUM_CLASSES), bool)
    all_grids[ids] = grids
    poses = np.concatenate([rng.normal(size=(200, 3)), np.tile([0, 0, 0, 1.0], (200, 1))], 1)
    return cos, ids, q, all_grids, poses


def test_beta_zero_keeps_cosine_order():
    cos, ids, q, grids, poses = _rerank_case()
    shuffled = np.random.default_rng(0).permutation(len(ids))
    hyps = rerank(
        cos[shuffled],
        ids[shuffled],
        q,
        grids,
        alpha=1.0,
        beta=0.0,
        top_k=10,
        poses=poses,
        viewpoint_ids=np.arange(200) + 1000,
    )
    assert [h.index for h in hyps] == list(ids[:10])
    assert [h.viewpoint_id for h in hyps] == list(ids[:10] + 1000)
    np.testing.assert_allclose([h.score for h in hyps], cos[:10])
    np.testing.assert_array_equal(hyps[0].pose, poses[ids[0]])
    assert all(0 <= h.psi <= 1 for h in hyps)


def test_larger_beta_reorders_by_psi():
    cos, ids, q, grids, poses = _rerank_case()
    psi = semantic_overlap(q, grids[ids])
    big = rerank(cos, ids, q, grids, alpha=1.0, beta=1e6, top_k=len(ids))
    got_psi = np.array([h.psi for h in big])
    assert np.all(np.diff(got_psi) <= 1e-7), "beta >> alpha must order by psi"
    np.testing.assert_allclose(sorted(psi, reverse=True), got_psi, rtol=1e-6)
    # a moderate beta swaps exactly the pairs whose psi gain beats their cosine gap
    two = rerank(
        np.array([0.80, 0.78]), np.array([0, 1]), q, np.stack([np.zeros_like(q), q]), alpha=1.0, beta=0.1, top_k=2
    )
    assert [h.index for h in two] == [1, 0] and two[0].psi == 1.0 and two[1].psi == 0.0
    assert two[0].score == pytest.approx(0.78 + 0.1)
    small = rerank(
        np.array([0.80, 0.78]), np.array([0, 1]), q, np.stack([np.zeros_like(q), q]), alpha=1.0, beta=0.01, top_k=2
    )
    assert [h.index for h in small] == [0, 1]


def test_rerank_with_packed_grids_and_padding():
    cos, ids, q, grids, poses = _rerank_case()
    packed = PackedGrids.pack(grids)
    a = rerank(cos, ids, q, grids, 1.0, 0.3, 10)
    b = rerank(np.append(cos, 0.0), np.append(ids, -1), q, packed, 1.0, 0.3, 10)
    assert [(h.index, h.score) for h in a] == [(h.index, h.score) for h in b]
    none = rerank(cos, ids, None, grids, 1.0, 0.3, 5)
    assert [h.index for h in none] == list(ids[:5]) and all(h.psi == 0 for h in none)


# -- vector index -------------------------------------------------------------------------------
def _unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def place_like_descriptors(n, d, rng, segment=500, step=0.03):
    """Descriptors of places along routes: random walks on the sphere, restarted every ``segment``."""
    steps = rng.standard_normal((n, d)).astype(np.float32) * step
    steps[::segment] = rng.standard_normal((len(steps[::segment]), d))
    out = np.empty_like(steps)
    for s in range(0, n, segment):
        out[s : s + segment] = np.cumsum(steps[s : s + segment], axis=0)
    return _unit(out)


def test_flat_index_is_exact():
    rng = np.random.default_rng(0)
    x = _unit(rng.standard_normal((2000, 32)))
    q = _unit(rng.standard_normal((20, 32)))
    idx = DescriptorIndex(x.astype(np.float16), RetrievalConfig())
    assert idx.kind == "flat" and idx.ntotal == 2000
    scores, ids = idx.search(q, 10)
    ref = q @ x.astype(np.float16).astype(np.float32).T
    np.testing.assert_array_equal(ids, np.argsort(-ref, axis=1, kind="stable")[:, :10])
    np.testing.assert_allclose(scores, np.take_along_axis(ref, ids, 1), rtol=1e-5, atol=1e-6)
    s1, i1 = idx.search(q[0], 3)  # a single (D,) query
    assert i1.shape == (1, 3) and np.array_equal(i1[0], ids[0, :3])
    s2, i2 = DescriptorIndex(x[:5]).search(q[:1], 8)
    assert (i2[0, 5:] == -1).all()


def test_index_refuses_bad_input():
    x = _unit(np.random.default_rng(0).standard_normal((100, 16)))
    idx = DescriptorIndex(x)
    with pytest.raises(InputError, match=r"\(Q, 16\)"):
        idx.search(np.zeros((1, 8), np.float32), 5)
    with pytest.raises(InputError, match="NaN"):
        idx.search(np.full(16, np.nan, np.float32), 5)
    with pytest.raises(InputError, match="unknown"):
        DescriptorIndex(x, kind="lsh")
    bad = x.copy()
    bad[3, 0] = np.inf
    with pytest.raises(InputError, match="NaN or inf"):
        DescriptorIndex(bad)


@pytest.mark.parametrize("ann", ["ivf", "hnsw"])
def test_ann_agrees_with_exact_on_top1(ann):
    rng = np.random.default_rng(7)
    n, d, nq = 20_000, 64, 300
    x = place_like_descriptors(n, d, rng)
    # queries: noisy copies of map viewpoints (cos ~ 0.8 to their source)
    src = rng.integers(0, n, nq)
    q = _unit(x[src] + rng.standard_normal((nq, d)).astype(np.float32) * (0.75 / np.sqrt(d)))
    cfg = RetrievalConfig(ann_threshold=1000, ann_type=ann, ivf_nlist=256, ivf_nprobe=16)
    approx = DescriptorIndex(x, cfg)
    assert approx.kind == ann
    exact = DescriptorIndex(x, RetrievalConfig(ann_threshold=10**9))
    assert exact.kind == "flat"
    _, ia = approx.search(q, 10)
    _, ie = exact.search(q, 10)
    top1 = float(np.mean(ia[:, 0] == ie[:, 0]))
    recall10 = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ia, ie)]))
    print(f"\n[search] {ann} n={n} d={d}: top-1 agreement {top1:.3f}, recall@10 {recall10:.3f}")
    assert top1 >= 0.99


# -- PlaceRecognizer on a map built by `scmpr build-map` ----------------------------------------
@pytest.fixture(scope="module")
def recognizer_parts(built_map, small_model_file):
    from scmpr_ros.mapping.map_file import read_map
    from scmpr_ros.model.checkpoint import load_checkpoint, model_checksum

    model, model_cfg, _ = load_checkpoint(small_model_file)
    m = read_map(built_map, expected_dim=model.descriptor_dim, expected_model_checksum=model_checksum(model))
    return model, model_cfg, m


def _cfg(model_cfg, **retrieval):
    from scmpr_ros.config import ScmprConfig

    return ScmprConfig(model=model_cfg, retrieval=RetrievalConfig(**retrieval))


def test_recognizer_ranks_like_brute_force(recognizer_parts):
    from scmpr_ros.localization.recognizer import PlaceRecognizer

    model, model_cfg, m = recognizer_parts
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (376, 1241, 3), dtype=np.uint8)
    rec = PlaceRecognizer(model, m, _cfg(model_cfg, top_k=5, rerank_k=20, beta=0.0))
    res = rec.recognize(rgb)
    assert len(res.hypotheses) == 5
    d = res.descriptor
    assert d.shape == (64,) and np.linalg.norm(d) == pytest.approx(1.0, abs=1e-4)
    cos = np.asarray(m.descriptors, np.float32) @ d
    assert [h.index for h in res.hypotheses] == list(np.argsort(-cos, kind="stable")[:5])
    for h in res.hypotheses:
        assert h.cosine == pytest.approx(cos[h.index], abs=1e-5)
        np.testing.assert_array_equal(h.pose, m.poses[h.index])
        assert h.viewpoint_id == m.viewpoint_ids[h.index]
    assert set(res.timings) >= {"preprocess_ms", "encode_ms", "search_ms", "rerank_ms", "total_ms"}
    assert res.query_grid.shape == m.grid_shape

    # beta > 0: the score is alpha * cos + beta * psi with psi against the map's frustum grids
    rec2 = PlaceRecognizer(model, m, _cfg(model_cfg, top_k=20, rerank_k=20, alpha=1.0, beta=0.5))
    res2 = rec2.recognize(rgb)
    psi = semantic_overlap(res2.query_grid, m.semantic_grids[[h.index for h in res2.hypotheses]])
    np.testing.assert_allclose([h.psi for h in res2.hypotheses], psi, atol=1e-6)
    np.testing.assert_allclose(
        [h.score for h in res2.hypotheses], [h.cosine + 0.5 * h.psi for h in res2.hypotheses], atol=1e-6
    )
    assert all(a.score >= b.score for a, b in zip(res2.hypotheses, res2.hypotheses[1:]))
    # a batch gives the same answers as single images
    batch = rec2.recognize_batch([rgb, rgb[::-1].copy()])
    assert [h.index for h in batch[0].hypotheses] == [h.index for h in res2.hypotheses]


def test_recognizer_refuses_a_map_of_another_model(recognizer_parts):
    import dataclasses

    from scmpr_ros.errors import MapFileError
    from scmpr_ros.localization.recognizer import PlaceRecognizer

    model, model_cfg, m = recognizer_parts
    other = dataclasses.replace(m, descriptors=np.zeros((m.num_viewpoints, 32), np.float16))
    with pytest.raises(MapFileError, match="32-d descriptors but the model produces 64-d"):
        PlaceRecognizer(model, other, _cfg(model_cfg))
    bad = dataclasses.replace(m, prototypes=np.zeros((NUM_CLASSES, 7), np.float32))
    with pytest.raises(MapFileError, match="prototypes"):
        PlaceRecognizer(model, bad, _cfg(model_cfg))
