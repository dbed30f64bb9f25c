"""CUDA selective scan (mamba-ssm kernel) against the sequential reference. Runs where a GPU and
mamba-ssm (`pip install .[cuda]`) are present; skipped elsewhere (CI has no GPU)."""

import pytest
import torch

from scmpr_ros.model.scan import cuda_kernel_available, selective_scan, selective_scan_reference

pytestmark = pytest.mark.skipif(not cuda_kernel_available(), reason="needs a CUDA GPU and mamba-ssm's kernel")


@pytest.mark.parametrize("length, d_state, with_z", [(4096, 1, False), (777, 4, True)])
def test_cuda_kernel_matches_reference(length: int, d_state: int, with_z: bool) -> None:
    torch.manual_seed(0)
    dev = torch.device("cuda")
    bsz, dim = 2, 16
    u = torch.randn(bsz, dim, length, device=dev, requires_grad=True)
    delta = (0.5 * torch.randn(bsz, dim, length, device=dev)).requires_grad_()
    A = (-torch.rand(dim, d_state, device=dev) - 0.5).requires_grad_()
    B = torch.randn(bsz, d_state, length, device=dev, requires_grad=True)
    C = torch.randn(bsz, d_state, length, device=dev, requires_grad=True)
    D = torch.randn(dim, device=dev, requires_grad=True)
    z = torch.randn(bsz, dim, length, device=dev, requires_grad=True) if with_z else None
    bias = torch.randn(dim, device=dev, requires_grad=True)
    inputs = [t for t in (u, delta, A, B, C, D, z, bias) if t is not None]
    weight = torch.randn(bsz, dim, length, device=dev) / (bsz * length) ** 0.5

    outs, grads = [], []
    for backend in ("cuda", "reference"):
        y = (
            selective_scan(u, delta, A, B, C, D, z, bias, True, backend=backend)
            if backend == "cuda"
            else selective_scan_reference(u, delta, A, B, C, D, z, bias, True)
        )
        outs.append(y.detach())
        grads.append(torch.autograd.grad((y * weight).sum(), inputs))
    assert (outs[0] - outs[1]).abs().max().item() < 1e-4
    for g_cuda, g_ref in zip(*grads):
        assert (g_cuda - g_ref).abs().max().item() < 1e-4 * max(1.0, g_ref.abs().max().item())
