"""NetVLAD (Arandjelović et al.): V_k = Σ_i softmax_k(w_k·x_i + b_k) (x_i − c_k), x_i L2-normalised;
intra-normalise each V_k, flatten, L2; optional linear projection to d_D (learned end to end) followed
by L2.  ``init_netvlad_from_features`` sets c_k by spherical
k-means and w_k = 2α c_k, b_k = −α‖c_k‖² (α from the top-1/top-2 assignment gap).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scmpr_ros.errors import ScmprError


class NetVLAD(nn.Module):
    def __init__(self, dim: int, clusters: int = 16, out_dim: int = 0, alpha: float = 50.0):
        super().__init__()
        if dim < 1 or clusters < 1:
            raise ScmprError(f"NetVLAD: dim and clusters must be >= 1, got {dim}, {clusters}")
        self.dim = dim
        self.clusters = clusters
        self.centroids = nn.Parameter(F.normalize(torch.randn(clusters, dim), dim=1))
        self.assign = nn.Conv1d(dim, clusters, 1, bias=True)
        self._set_assignment(float(alpha))
        self.proj = nn.Linear(clusters * dim, out_dim, bias=True) if out_dim > 0 else None
        if self.proj is not None:
            nn.init.normal_(self.proj.weight, std=1.0 / math.sqrt(clusters * dim))
            nn.init.zeros_(self.proj.bias)
        self.out_dim = out_dim if out_dim > 0 else clusters * dim

    @torch.no_grad()
    def _set_assignment(self, alpha: float) -> None:
        c = self.centroids.data
        self.assign.weight.data.copy_((2.0 * alpha * c).unsqueeze(-1))
        self.assign.bias.data.copy_(-alpha * c.pow(2).sum(1))

    def forward(self, x: Tensor, weights: Tensor | None = None) -> Tensor:
        """x: (B, C, H, W) or (B, C, N) local features; weights (B, N) optional per-feature weights.
        Returns (B, out_dim) unit-norm descriptors."""
        bsz = x.shape[0]
        x = x.reshape(bsz, self.dim, -1)
        x = F.normalize(x, dim=1)
        soft = torch.softmax(self.assign(x), dim=1)  # (B, K, N)
        if weights is not None:
            soft = soft * weights.reshape(bsz, 1, -1)
        vlad = torch.bmm(soft, x.transpose(1, 2)) - soft.sum(-1, keepdim=True) * self.centroids  # (B, K, C)
        vlad = F.normalize(vlad, dim=2).reshape(bsz, -1)  # intra-normalisation
        vlad = F.normalize(vlad, dim=1)
        if self.proj is not None:
            vlad = F.normalize(self.proj(vlad), dim=1)
        return vlad

    def vlad_raw(self, x: Tensor) -> Tensor:
        """The normalised VLAD vector before the projection (for PCA initialisation)."""
        proj, self.proj = self.proj, None
        try:
            return self.forward(x)
        finally:
            self.proj = proj


def spherical_kmeans(x: Tensor, k: int, iters: int = 30, seed: int = 0) -> Tensor:
    """k unit-norm centroids of the rows of x (N, C) by cosine k-means with k-means++ seeding."""
    x = F.normalize(x.float(), dim=1)
    n = x.shape[0]
    if n < k:
        raise ScmprError(f"k-means: need at least {k} features for {k} clusters, got {n}; use more images")
    g = torch.Generator(device="cpu").manual_seed(seed)
    first = int(torch.randint(n, (1,), generator=g))
    centers = [x[first]]
    dist = 1.0 - x @ x[first]
    for _ in range(1, k):
        p = dist.clamp_min(0).cpu()
        idx = int(torch.multinomial(p, 1, generator=g)) if p.sum() > 0 else int(torch.randint(n, (1,), generator=g))
        centers.append(x[idx])
        dist = torch.minimum(dist, 1.0 - x @ x[idx])
    c = torch.stack(centers)
    for _ in range(iters):
        assign = (x @ c.t()).argmax(1)
        new = torch.zeros_like(c).index_add_(0, assign, x)
        counts = torch.bincount(assign, minlength=k)
        empty = counts == 0
        if empty.any():  # re-seed empty clusters with the worst-fitting features
            worst = (x * c[assign]).sum(1).argsort()[: int(empty.sum())]
            new[empty] = x[worst]
        c = F.normalize(new, dim=1)
    return c


@torch.no_grad()
def init_netvlad_from_features(
    netvlad: NetVLAD, features: Tensor, iters: int = 30, seed: int = 0, max_features: int = 50000
) -> None:
    """Centroids from k-means over local features (N, C) (or (B, C, H, W)); α from the assignment gap."""
    if features.dim() == 4:
        features = features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])
    if features.dim() != 2 or features.shape[1] != netvlad.dim:
        raise ScmprError(
            f"init_netvlad_from_features: expected (N, {netvlad.dim}) features, got {tuple(features.shape)}"
        )
    features = features[torch.isfinite(features).all(1)]
    if features.shape[0] > max_features:
        g = torch.Generator(device="cpu").manual_seed(seed)
        features = features[torch.randperm(features.shape[0], generator=g)[:max_features].to(features.device)]
    c = spherical_kmeans(features, netvlad.clusters, iters=iters, seed=seed)
    x = F.normalize(features.float(), dim=1)
    dots = (x @ c.t()).sort(dim=1, descending=True).values
    gap = (dots[:, 0] - dots[:, 1]).mean().clamp_min(1e-4) if netvlad.clusters > 1 else torch.tensor(0.1)
    alpha = float(-math.log(0.01) / gap)
    netvlad.centroids.data.copy_(c.to(netvlad.centroids))
    netvlad._set_assignment(alpha)
