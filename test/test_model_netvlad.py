"""NetVLAD: unit-norm output, residual aggregation, k-means and PCA initialisation."""

import pytest
import torch
import torch.nn.functional as F

from scmpr_ros.errors import ScmprError
from scmpr_ros.model.netvlad import NetVLAD, init_netvlad_from_features, spherical_kmeans


def test_output_unit_norm_with_and_without_projection():
    torch.manual_seed(0)
    x = torch.randn(3, 16, 5, 7)
    for out_dim, expect in ((0, 8 * 16), (32, 32)):
        v = NetVLAD(16, 8, out_dim)(x)
        assert v.shape == (3, expect)
        assert torch.allclose(v.norm(dim=1), torch.ones(3), atol=1e-5)
        assert torch.isfinite(v).all()


def test_intra_normalised_blocks_and_hard_assignment_residuals():
    """With a very sharp assignment each block is the normalised sum of residuals to its centroid."""
    torch.manual_seed(1)
    nv = NetVLAD(4, 2, 0, alpha=1e4)
    c = F.normalize(torch.tensor([[1.0, 0, 0, 0], [0, 1.0, 0, 0]]), dim=1)
    nv.centroids.data.copy_(c)
    nv._set_assignment(1e4)
    feats = torch.tensor([[1.0, 0.1, 0, 0], [0.9, 0, 0.2, 0], [0.1, 1.0, 0, 0.3]])  # 2 near c0, 1 near c1
    v = nv(feats.t().unsqueeze(0)).view(2, 4)
    xs = F.normalize(feats, dim=1)
    r0 = F.normalize((xs[0] - c[0]) + (xs[1] - c[0]), dim=0)
    r1 = F.normalize(xs[2] - c[1], dim=0)
    expect = torch.cat([r0, r1]) / (2**0.5)
    assert torch.allclose(v.flatten(), expect, atol=1e-4)


def test_kmeans_init_finds_the_clusters():
    torch.manual_seed(2)
    centers = F.normalize(torch.randn(4, 8), dim=1)
    feats = torch.cat([c + 0.05 * torch.randn(200, 8) for c in centers])
    nv = NetVLAD(8, 4)
    init_netvlad_from_features(nv, feats, seed=0)
    sims = nv.centroids.detach() @ centers.t()
    assert (sims.max(dim=0).values > 0.98).all()  # every true centre has a centroid next to it
    # the assignment is now sharp: each feature goes mostly to its own cluster
    soft = torch.softmax(nv.assign(F.normalize(feats, dim=1).t().unsqueeze(0)), dim=1)[0]
    assert soft.max(dim=0).values.mean() > 0.9


def test_kmeans_needs_enough_features():
    with pytest.raises(ScmprError, match="at least"):
        spherical_kmeans(torch.randn(3, 4), 8)
    with pytest.raises(ScmprError, match="expected"):
        init_netvlad_from_features(NetVLAD(8, 2), torch.randn(10, 5))
