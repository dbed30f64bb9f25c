"""scmpr evaluate-segmenter: per-class IoU of a point segmenter against a labelled KITTI-layout sequence."""

from __future__ import annotations

import re

import numpy as np
import pytest

from scmpr_ros.cli import main
from scmpr_ros.config import LidarConfig
from scmpr_ros.errors import DatasetError
from scmpr_ros.lidar.segmentation import evaluate_segmenter, segmentation_miou
from scmpr_ros.semantics import CLASS_NAMES


def test_cli_scores_the_shipped_segmenter_like_a_direct_computation(scene_kitti_dir, repo_root, capsys):
    from scmpr_ros.datasets import open_sequence

    assert main(["evaluate-segmenter", str(scene_kitti_dir), "--sequence", "00", "--stride", "2"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    last = re.fullmatch(r"mIoU (\d\.\d{3}) over (\d+) points", lines[-1])
    assert last, lines[-1]
    # the same figure from all predictions concatenated (what segmentation_miou computes)
    from scmpr_ros.mapping.segmenters import default_segmenter_weights, load_segmenter

    seq = open_sequence(scene_kitti_dir, "00")
    weights = default_segmenter_weights()  # the shipped CNN (models/range_segnet.pt), else the MLP
    assert weights.parent == repo_root / "models"
    seg = load_segmenter(weights, LidarConfig())
    frames = range(0, seq.num_frames, 2)
    pred = np.concatenate([seg.segment_points(seq.load_scan(i)) for i in frames])
    truth = np.concatenate([seq.load_labels(i) for i in frames])
    miou, per = segmentation_miou(pred, truth)
    assert float(last.group(1)) == pytest.approx(miou, abs=5e-4)
    assert int(last.group(2)) == int((truth != 255).sum())
    assert any(line.strip().startswith(name) for name in per for line in lines[1:-1])


class _Oracle:
    def __init__(self, seq, constant=None):
        self.seq, self.constant, self.i = seq, constant, -1

    def segment_points(self, points):
        self.i += 1
        truth = self.seq.load_labels(self.i)
        return truth.copy() if self.constant is None else np.full_like(truth, self.constant)


def test_perfect_and_constant_segmenters_bound_the_score(scene_kitti_dir):
    from scmpr_ros.datasets import open_sequence

    seq = open_sequence(scene_kitti_dir, "00")
    assert evaluate_segmenter(_Oracle(seq), seq).miou == 1.0
    truth = np.concatenate([seq.load_labels(i) for i in range(seq.num_frames)])
    labelled = truth[truth != 255]
    majority = int(np.bincount(labelled).argmax())
    score = evaluate_segmenter(_Oracle(seq, constant=majority), seq)
    share = float(np.mean(labelled == majority))
    assert score.per_class[CLASS_NAMES[majority]] == pytest.approx(share)  # IoU of "everything is X" = X's share
    assert all(v == 0.0 for k, v in score.per_class.items() if k != CLASS_NAMES[majority])


def test_unlabelled_sequence_is_refused(tmp_path):
    class Unlabelled:
        has_labels, root, name, num_frames = False, tmp_path, "05", 3

    with pytest.raises(DatasetError, match="has no per-point labels"):
        evaluate_segmenter(_Oracle(None), Unlabelled())
