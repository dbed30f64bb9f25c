"""Losses: InfoNCE, batch-hard triplet, L_sem (classes present in both), L_seg (ignore index)."""

import pytest
import torch
import torch.nn.functional as F

from scmpr_ros.errors import ScmprError
from scmpr_ros.model import losses
from scmpr_ros.semantics import IGNORE_ID


def test_info_nce_prefers_aligned_pairs_and_matches_closed_form():
    torch.manual_seed(0)
    a = F.normalize(torch.randn(6, 16), dim=1)
    aligned = losses.info_nce(a, a, 0.1)
    shuffled = losses.info_nce(a, a[torch.randperm(6)], 0.1)
    assert aligned < shuffled
    # closed form for two orthogonal pairs: log(1 + exp(-1/τ)) in both directions
    e = torch.eye(2)
    assert torch.allclose(losses.info_nce(e, e, 0.5), torch.log1p(torch.exp(torch.tensor(-2.0))), atol=1e-6)
    # a learned temperature gets a gradient
    log_t = torch.tensor(-2.0, requires_grad=True)
    losses.info_nce(a, a[torch.randperm(6)], log_t.exp()).backward()
    assert log_t.grad is not None and log_t.grad != 0


def test_info_nce_positive_mask_removes_false_negatives():
    a = F.normalize(torch.tensor([[1.0, 0.0], [1.0, 0.01], [0.0, 1.0]]), dim=1)
    plain = losses.info_nce(a, a, 0.1)
    mask = torch.tensor([[1, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=torch.bool)
    masked = losses.info_nce(a, a, 0.1, positive_mask=mask)
    assert masked < plain * 0.1  # the near-duplicate no longer counts as a negative


def test_triplet_batch_hard():
    a = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert losses.triplet_loss(a, a, margin=0.3) == 0  # distance 0 to positive, sqrt(2) to negative
    b = torch.tensor([[0.0, 1.0], [1.0, 0.0]])  # swapped: positives far, negatives at 0
    expect = 0.3 + 2**0.5
    assert torch.allclose(losses.triplet_loss(a, b, margin=0.3), torch.tensor(expect), atol=1e-4)
    with pytest.raises(ScmprError):
        losses.triplet_loss(a[:1], b[:1])


def test_semantic_consistency_only_on_classes_present_in_both():
    f_rgb = torch.zeros(1, 3, 2)
    f_lid = torch.zeros(1, 3, 2)
    f_rgb[0, 0] = torch.tensor([1.0, 0.0])
    f_lid[0, 0] = torch.tensor([1.0, 0.0])  # same direction
    f_rgb[0, 1] = torch.tensor([1.0, 0.0])
    f_lid[0, 1] = torch.tensor([0.0, 1.0])  # orthogonal
    f_rgb[0, 2] = torch.tensor([1.0, 0.0])
    f_lid[0, 2] = torch.tensor([-1.0, 0.0])  # opposite
    present_rgb = torch.tensor([[True, True, True]])
    present_lid = torch.tensor([[True, True, False]])
    val = losses.semantic_consistency_loss(f_rgb, present_rgb, f_lid, present_lid)
    assert torch.allclose(val, torch.tensor(0.5))  # mean of 0 and 1; class 2 is not in both
    none = losses.semantic_consistency_loss(f_rgb, present_rgb & False, f_lid, present_lid)
    assert none == 0
    with pytest.raises(ScmprError):
        losses.semantic_consistency_loss(f_rgb, present_rgb, f_lid[:, :2], present_lid[:, :2])


def test_segmentation_loss_ignores_unlabelled_pixels():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 1] = 5.0
    labels = torch.full((1, 2, 2), IGNORE_ID)
    labels[0, 0, 0] = 1
    val = losses.segmentation_loss(logits, labels)
    expect = F.cross_entropy(logits[0, :, 0, 0].unsqueeze(0), torch.tensor([1]))
    assert torch.allclose(val, expect)
    all_ignored = losses.segmentation_loss(logits.requires_grad_(), torch.full((1, 2, 2), IGNORE_ID))
    assert all_ignored == 0 and all_ignored.requires_grad
    with pytest.raises(ScmprError, match="differ"):
        losses.segmentation_loss(logits, torch.zeros(1, 3, 3, dtype=torch.long))


def test_training_loss_is_eq12_with_the_configured_weights():
    """train.compute_losses combines its terms through losses.total_loss with lambda_sem and mu_seg."""
    import dataclasses

    from scmpr_ros.config import ScmprConfig
    from scmpr_ros.model.scmpr import ImageEncoding, LidarEncoding
    from scmpr_ros.training.train import compute_losses

    torch.manual_seed(0)
    b, n_s, c = 4, 3, 5
    img = ImageEncoding(
        torch.nn.functional.normalize(torch.randn(b, 8), dim=1),
        torch.randn(b, n_s, 6, 7),
        torch.randn(b, n_s, c),
        torch.ones(b, n_s, dtype=torch.bool),
    )
    lid = LidarEncoding(
        torch.nn.functional.normalize(torch.randn(b, 8), dim=1), torch.randn(b, n_s, c), img.class_present
    )
    cfg = ScmprConfig()
    cfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, lambda_sem=0.3, mu_seg=2.0))
    model = type("M", (), {"use_lsem": True})()
    batch = {"image_labels": torch.randint(0, n_s, (b, 6, 7))}
    terms = compute_losses(model, img, lid, torch.tensor(0.07), batch, cfg)
    assert set(terms) == {"l_con", "l_sem", "l_seg", "loss"}
    by_hand = terms["l_con"] + 0.3 * terms["l_sem"] + 2.0 * terms["l_seg"]
    assert torch.allclose(terms["loss"], by_hand)


def test_total_loss_weights():
    t = losses.total_loss(torch.tensor(1.0), torch.tensor(2.0), torch.tensor(3.0), lambda_sem=0.5, mu_seg=2.0)
    assert t == 1.0 + 1.0 + 6.0
    assert losses.total_loss(torch.tensor(1.0)) == 1.0
