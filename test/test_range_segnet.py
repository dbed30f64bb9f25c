"""RangeSegNet, the LiDAR range-image segmentation CNN: network, weights files, losses, training, the k-NN
clean-up of the per-point look-up, and the choice of segmenter by the map builder."""

from __future__ import annotations

import itertools
import json

import numpy as np
import pytest
import torch

from scmpr_ros.config import LidarConfig
from scmpr_ros.errors import CheckpointError
from scmpr_ros.lidar.range_image import RangeProjector
from scmpr_ros.lidar.segmentation import (
    SEGNET_CHANNELS,
    KnnCleanup,
    RangeImageSegmenter,
    point_labels,
    project_scan,
)
from scmpr_ros.model.range_segnet import (
    RangeSegNet,
    RangeSegNetConfig,
    SegNetFile,
    load_range_segnet,
    save_range_segnet,
)
from scmpr_ros.semantics import CLASS_ID, IGNORE_ID, NUM_CLASSES

TINY = RangeSegNetConfig(widths=(8, 16, 16, 24, 32))
C = len(SEGNET_CHANNELS)


def _info(cfg=TINY, meta=None):
    return SegNetFile(cfg, SEGNET_CHANNELS, torch.zeros(C), torch.ones(C), meta or {})


# -- network ----------------------------------------------------------------------------------------
def test_forward_shapes_and_batchnorm_folding():
    torch.manual_seed(0)
    net = RangeSegNet(TINY)
    x = torch.randn(2, C, 64, 256)
    net.train()
    net(x)  # running statistics that are not the identity
    net.eval()
    out = net(x)
    assert out.shape == (2, NUM_CLASSES, 64, 256)
    with torch.no_grad():
        ref = net(x)
        fused = net.fuse_batchnorm()(x)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert torch.allclose(ref, fused, atol=1e-4)
    with pytest.raises(ValueError, match="multiple of"):
        net(torch.randn(1, C, 64, 250))


# -- weights files ----------------------------------------------------------------------------------
def test_save_load_round_trip(tmp_path):
    torch.manual_seed(1)
    net = RangeSegNet(TINY).eval()
    mean, std = torch.arange(C, dtype=torch.float32), torch.full((C,), 2.0)
    path = tmp_path / "seg.pt"
    save_range_segnet(path, net, SegNetFile(TINY, SEGNET_CHANNELS, mean, std, {"steps": 7}))
    again, info = load_range_segnet(path, expected_channels=SEGNET_CHANNELS)
    x = torch.randn(1, C, 64, 128)
    with torch.no_grad():
        assert torch.equal(net(x), again(x))
    assert info.cfg == TINY and info.channels == SEGNET_CHANNELS and info.meta == {"steps": 7}
    assert torch.equal(info.mean, mean) and torch.equal(info.std, std)


def _rewrite_header(path, out, **changes):
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + n])
    header["__metadata__"].update(changes)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    out.write_bytes(len(raw).to_bytes(8, "little") + raw + data[8 + n :])
    return out


def test_bad_weights_files_are_refused_with_what_to_do(tmp_path):
    path = tmp_path / "seg.pt"
    save_range_segnet(path, RangeSegNet(TINY), _info())
    with pytest.raises(CheckpointError, match="not found.*train-segmenter"):
        load_range_segnet(tmp_path / "missing.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="not a range-segmenter weights file.*train-segmenter"):
        load_range_segnet(tmp_path / "cut.pt")
    (tmp_path / "junk.pt").write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError, match="not a range-segmenter weights file"):
        load_range_segnet(tmp_path / "junk.pt")
    other = _rewrite_header(path, tmp_path / "other.pt", format="scmpr-checkpoint")
    with pytest.raises(CheckpointError, match="'scmpr-checkpoint' file, not scmpr-range-segnet"):
        load_range_segnet(other)
    classes = _rewrite_header(path, tmp_path / "classes.pt", classes=json.dumps(["road", "car"]))
    with pytest.raises(CheckpointError, match="trained for the classes"):
        load_range_segnet(classes)
    version = _rewrite_header(path, tmp_path / "v.pt", version="99")
    with pytest.raises(CheckpointError, match="version 99"):
        load_range_segnet(version)
    with pytest.raises(CheckpointError, match="reads the channels"):
        load_range_segnet(path, expected_channels=("range", "z"))
    bigger = _rewrite_header(path, tmp_path / "cfg.pt", config=RangeSegNetConfig(widths=(8, 16, 16, 24, 64)).to_json())
    with pytest.raises(CheckpointError, match="do not fit the stored network config"):
        load_range_segnet(bigger)


# -- Lovasz-softmax ---------------------------------------------------------------------------------
def _jaccard_loss(wrong: set[int], fg: set[int]) -> float:
    """Delta_J(M) = |M| / |G u M| straight from the set definition."""
    return len(wrong) / len(fg | wrong) if fg | wrong else 0.0


def _lovasz_by_thresholds(errors: np.ndarray, fg: set[int]) -> float:
    """The Lovasz extension as the integral over thresholds t of Delta({i: e_i >= t}) (e >= 0)."""
    levels = sorted(set(errors.tolist()) | {0.0}, reverse=True)
    total = 0.0
    for hi, lo in itertools.pairwise(levels):
        total += (hi - lo) * _jaccard_loss({i for i, e in enumerate(errors) if e >= hi}, fg)
    return total


def test_lovasz_extension_matches_brute_force():
    from scmpr_ros.training.segmenter import lovasz_extension, lovasz_softmax

    rng = np.random.default_rng(0)
    n = 6
    fg_mask = np.array([1, 0, 1, 1, 0, 0], bool)
    fg = set(np.flatnonzero(fg_mask).tolist())
    fg_t = torch.from_numpy(fg_mask.astype(np.float64))
    for bits in itertools.product([0, 1], repeat=n):  # at 0/1 error vectors it is the set function itself
        wrong = {i for i, b in enumerate(bits) if b}
        got = float(lovasz_extension(torch.tensor(bits, dtype=torch.float64), fg_t))
        assert got == pytest.approx(_jaccard_loss(wrong, fg), abs=1e-12)
    for _ in range(20):  # in between, the threshold integral
        e = rng.random(n)
        assert float(lovasz_extension(torch.from_numpy(e), fg_t)) == pytest.approx(_lovasz_by_thresholds(e, fg))
    # softmax version: mean over the classes present of the extension at |1[y = c] - p_c|
    probs = torch.softmax(torch.from_numpy(rng.normal(size=(n, 3))), 1)
    labels = torch.tensor([0, 2, 0, 0, 2, 2])
    errors = {c: ((labels == c).double() - probs[:, c]).abs().numpy() for c in (0, 2)}
    want = np.mean([_lovasz_by_thresholds(errors[c], set(np.flatnonzero(labels == c))) for c in (0, 2)])
    assert float(lovasz_softmax(probs, labels)) == pytest.approx(want)
    p = probs.clone().requires_grad_(True)
    lovasz_softmax(p, labels).backward()
    assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0


# -- per-point look-up and k-NN clean-up ------------------------------------------------------------
def _pole_before_wall():
    """Rays at 8 azimuths per image column through 6 beam rows: a wall 12 m ahead, a pole 8 m ahead covering
    the middle of image column 512 (yaw -0.0055 .. -0.0025 rad); the rest of that column sees the wall, so
    wall points fall into the pole's pixels, behind the pole points that win them."""
    proj = RangeProjector(LidarConfig())
    rows = np.arange(28, 34)
    pitch = proj.row_pitch(rows)
    yaw = np.pi * (1.0 - 2.0 * (np.arange(508 * 8, 517 * 8) + 0.5) / (8 * proj.W))
    P, Y = np.meshgrid(pitch, yaw, indexing="ij")
    pole = (Y > -0.0055) & (Y < -0.0025)
    X = np.where(pole, 8.0, 12.0)
    pts = np.stack([X, X * np.tan(Y), X / np.cos(Y) * np.tan(P), np.full_like(X, 0.3)], -1).reshape(-1, 4)
    lab = np.where(pole, CLASS_ID["pole"], CLASS_ID["building"]).astype(np.uint8).ravel()
    return proj, pts.astype(np.float32), lab


def test_knn_cleanup_gives_wall_points_behind_a_pole_their_label_back():
    proj, pts, truth = _pole_before_wall()
    sp = project_scan(proj, pts, truth)
    pred = sp.image.labels  # a perfect image prediction: the bleeding comes from the look-up alone
    assert (pred == CLASS_ID["pole"]).sum() == 6  # one pixel per row
    plain = point_labels(pred, sp, knn=None)
    hidden = (truth == CLASS_ID["building"]) & (plain == CLASS_ID["pole"])
    assert hidden.sum() >= 6  # wall points behind the pole took its label
    cleaned = point_labels(pred, sp, KnnCleanup())
    assert np.array_equal(cleaned, truth)
    for rows, cols in ((3, 3), (5, 5), (1, 5)):
        assert np.array_equal(point_labels(pred, sp, KnnCleanup(k=5, rows=rows, cols=cols)), truth)
    assert np.array_equal(point_labels(pred, sp, KnnCleanup(k=0)), plain)  # k = 0: off
    # every window pixel voting (k = 9) with a cutoff wider than the pole-to-wall gap: the pole's own column
    # (3 of 9 pixels) is outvoted
    wide = point_labels(pred, sp, KnnCleanup(k=9, rows=3, cols=3, cutoff_m=10.0))
    assert (wide[hidden] == CLASS_ID["building"]).all()


def test_knn_vote_skips_only_points_it_cannot_change(lidar_scene):
    """point_labels votes only for points with a pixel of another class within the cutoff of their range;
    voting for every point gives the same labels."""
    from scmpr_ros.lidar.segmentation import _knn_vote

    proj = RangeProjector(LidarConfig())
    pts, lab = lidar_scene.scan(lidar_scene.pose(5.0), seed=3)
    sp = project_scan(proj, pts, lab)
    rng = np.random.default_rng(0)
    pred = sp.image.labels.copy()
    noisy = sp.image.valid & (rng.random(pred.shape) < 0.1)
    pred[noisy] = rng.integers(0, NUM_CLASSES, noisy.sum())
    knn = KnnCleanup()
    got = point_labels(pred, sp, knn)
    has = sp.rows >= 0
    every = np.full(len(pts), IGNORE_ID, np.uint8)
    every[has] = _knn_vote(pred, sp.image.range, sp.image.valid, sp.rows[has], sp.cols[has], sp.ranges[has], knn)
    assert np.array_equal(got, every)
    assert (got[has] != pred[sp.rows[has], sp.cols[has]]).sum() > 100  # the vote did change labels


def test_project_scan_matches_the_projector_and_labels_points_outside_the_image(lidar_scene):
    proj = RangeProjector(LidarConfig())
    pts, lab = lidar_scene.scan(lidar_scene.pose(3.0), seed=2)
    house = pts[np.flatnonzero(lab == CLASS_ID["building"])[0], :3]
    beyond = house / np.linalg.norm(house) * 100.0  # past max_range, in the direction of a house front
    far = np.array([[*beyond, 0.1], [5.0, 0.0, 3.0, 0.1], [0.0, 0.0, 0.0, 0.1]], np.float32)
    pts = np.concatenate([pts, far])
    lab = np.concatenate([lab, [2, 2, 2]]).astype(np.uint8)
    ref = proj.project(pts, lab)
    sp = project_scan(proj, pts, lab)
    for name in ("point_index", "range", "xyz", "reflectance", "normals", "labels", "valid"):
        assert np.array_equal(getattr(sp.image, name), getattr(ref, name)), name
    assert not sp.in_view[-3:].any()
    assert sp.rows[-3] >= 0 and sp.rows[-2] == 0 and sp.rows[-1] == -1  # too far: kept; above: top row
    got = point_labels(sp.image.labels, sp, KnnCleanup())
    assert got[-1] == IGNORE_ID and got[-3] == CLASS_ID["building"]  # the house front's pixel


# -- training ---------------------------------------------------------------------------------------
def test_training_steps_reduce_the_loss_and_resume(scene_kitti_dir, tmp_path):
    from scmpr_ros.training.segmenter import (
        SegTrainConfig,
        init_state,
        load_scan_set,
        make_batch,
        normalise,
        segmentation_loss,
        train_segnet,
        train_step,
    )

    torch.set_num_threads(2)
    lidar = LidarConfig(range_width=256)  # 64 x 256 range images keep the steps cheap
    scans = load_scan_set([(scene_kitti_dir, "00")], lidar, 6, tmp_path / "cache", log=lambda s: None)
    assert len(scans) == 4 and scans.inputs[0].dtype == np.float16 and scans.inputs[0].shape[-1] == 256
    cfg = SegTrainConfig(batch=2, crop_width=256, lr=1e-2, warmup=1, steps=15, net=TINY, val_every=3, log_every=3)
    st = init_state(scans, cfg)
    x, y = make_batch(scans, scans.index(), np.random.default_rng(0), SegTrainConfig(roll=False, flip=False))

    def loss() -> float:  # all four scans, batch statistics (running ones lag behind after a few steps)
        st.net.train()
        with torch.no_grad():
            return float(segmentation_loss(st.net(normalise(x, st.mean, st.std)), y, st.weights, 1.0)[0])

    before = loss()
    for _ in range(15):
        train_step(st, scans, scans.index(), cfg)
    assert loss() < 0.85 * before
    # the loop: export + checkpoint, then a resume that continues the step count
    out, ckpt = tmp_path / "seg.pt", tmp_path / "seg.ckpt"
    train_segnet(scans, scans, SegTrainConfig(**{**vars(cfg), "steps": 3}), out, ckpt, log=lambda s: None)
    logs = []
    st2 = train_segnet(scans, None, SegTrainConfig(**{**vars(cfg), "steps": 4}), out, ckpt, log=logs.append)
    assert st2.step == 4 and any("resumed" in s and "step 3" in s for s in logs)
    net, info = load_range_segnet(out, SEGNET_CHANNELS)
    assert info.cfg == TINY and info.meta["step"] == 4
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot resume"):
        train_segnet(scans, None, cfg, out, tmp_path / "bad.ckpt", log=lambda s: None)


# -- the builder's choice ---------------------------------------------------------------------------
def test_builder_picks_the_cnn_from_config(tmp_path, lidar_scene, repo_root):
    from types import SimpleNamespace

    from scmpr_ros.mapping.segmenters import RangeSegNetSegmenter, make_segmenter

    path = tmp_path / "seg.pt"
    save_range_segnet(path, RangeSegNet(TINY), _info())
    seq = SimpleNamespace(root="r", name="00", has_labels=True)
    seg = make_segmenter(LidarConfig(segmentation="learned", segmenter_weights=str(path)), seq)
    assert isinstance(seg, RangeSegNetSegmenter)
    pts, _ = lidar_scene.scan(lidar_scene.pose(0.0), seed=1)
    labels = seg.segment(seq, 0, pts)
    assert labels.shape == (len(pts),) and labels.dtype == np.uint8 and (labels < NUM_CLASSES).mean() > 0.95
    seg.use_trace = False  # eager mode: the same labels as the frozen trace
    assert np.array_equal(seg.segment_points(pts), labels)
    unlabelled = SimpleNamespace(root="r", name="07", has_labels=False)
    assert isinstance(make_segmenter(LidarConfig(segmenter_weights=str(path)), unlabelled), RangeSegNetSegmenter)
    npz = LidarConfig(segmentation="learned", segmenter_weights=str(repo_root / "models" / "range_segmenter.npz"))
    assert isinstance(make_segmenter(npz, seq), RangeImageSegmenter)
    (tmp_path / "bad.pt").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="train-segmenter"):
        make_segmenter(LidarConfig(segmentation="learned", segmenter_weights=str(tmp_path / "bad.pt")), seq)


# -- command line -----------------------------------------------------------------------------------
def test_train_and_evaluate_segmenter_commands(scene_kitti_dir, tmp_path, capsys):
    import re

    from scmpr_ros.cli import main

    out = tmp_path / "seg.pt"
    args = ["train-segmenter", str(scene_kitti_dir), "--out", str(out), "--stride", "8", "--val-sequence", "00"]
    args += ["--val-stride", "24", "--steps", "2", "--batch", "1", "--crop-width", "256", "--val-every", "2"]
    assert main([*args, "--time-budget", "5", "--threads", "2"]) == 0
    text = capsys.readouterr().out
    assert "training RangeSegNet on 3 scans" in text and re.search(r"held-out point mIoU \d\.\d{3}", text)
    assert (tmp_path / "seg.pt.ckpt").is_file()
    assert main(["evaluate-segmenter", str(scene_kitti_dir), "-s", "00", "--model", str(out), "--stride", "8"]) == 0
    assert re.fullmatch(r"mIoU \d\.\d{3} over \d+ points", capsys.readouterr().out.strip().splitlines()[-1])
    assert main([*args, "--arch", "nope"]) != 0
    mlp = tmp_path / "mlp.npz"
    assert main(["train-segmenter", str(scene_kitti_dir), "--arch", "mlp", "--out", str(mlp), "--steps", "5"]) == 0
    assert mlp.is_file()


def test_segmenter_benchmark_reports_network_and_full_times():
    from scmpr_ros.benchmarks.segmenter import format_segmenter_table, segmenter_benchmark, street_scan

    scan = street_scan(columns=600)
    assert scan.shape[1] == 4 and len(scan) > 20000
    res = segmenter_benchmark([scan], threads=2, iters=1, warmup=0)
    assert set(res["results"]) == {"network", "segment_points", "projection", "lookup_knn"}
    assert all(r["median_ms"] > 0 for r in res["results"].values())
    table = format_segmenter_table(res)
    assert "| network |" in table and "load average" in table
