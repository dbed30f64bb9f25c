"""Autograd wrapper over mamba-ssm's compiled selective-scan extension (``selective_scan_cuda``).

Used when the ``mamba_ssm`` Python package itself does not import (its top-level ``__init__``
pulls in triton / tilelang / transformers for Mamba-2/3 models we do not use) but the compiled
kernel that ``pip install .[cuda]`` built is present.  Same call and layout as
``mamba_ssm.selective_scan_fn``: u, delta, z (B, D, L); A (D, N); B, C (B, N, L) or (B, G, N, L).
"""

from __future__ import annotations

import torch
from torch import Tensor


def load_extension():
    """The compiled extension module, or None when it is not installed."""
    try:
        import selective_scan_cuda  # type: ignore  # built by mamba-ssm

        return selective_scan_cuda
    except Exception:  # noqa: BLE001 - any import failure means "not available"
        return None


class _CudaSelectiveScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, delta_softplus, ext):  # type: ignore[override]
        u, delta = u.contiguous(), delta.contiguous()
        grouped_b, grouped_c = B.dim() == 4, C.dim() == 4
        B = (B if grouped_b else B.unsqueeze(1)).contiguous()
        C = (C if grouped_c else C.unsqueeze(1)).contiguous()
        D = None if D is None else D.contiguous()
        z = None if z is None else z.contiguous()
        out, states, *rest = ext.fwd(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
        ctx.ext, ctx.delta_softplus = ext, delta_softplus
        ctx.grouped = (grouped_b, grouped_c)
        ctx.has = (D is not None, z is not None, delta_bias is not None)
        ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, states, out if z is not None else None)
        return rest[0] if z is not None else out

    @staticmethod
    def backward(ctx, dout):  # type: ignore[override]
        u, delta, A, B, C, D, z, delta_bias, states, out = ctx.saved_tensors
        grads = ctx.ext.bwd(
            u, delta, A, B, C, D, z, delta_bias, dout.contiguous(), states, out, None, ctx.delta_softplus, False
        )
        du, ddelta, dA, dB, dC, dD, ddelta_bias, *rest = grads
        has_d, has_z, has_bias = ctx.has
        grouped_b, grouped_c = ctx.grouped
        return (
            du,
            ddelta,
            dA,
            dB if grouped_b else dB.squeeze(1),
            dC if grouped_c else dC.squeeze(1),
            dD if has_d else None,
            rest[0] if has_z else None,
            ddelta_bias if has_bias else None,
            None,
            None,
        )


def make_selective_scan_fn(ext):
    """A function with ``selective_scan_fn``'s signature running on the extension ``ext``."""

    def selective_scan_fn(
        u: Tensor,
        delta: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        D: Tensor | None = None,
        z: Tensor | None = None,
        delta_bias: Tensor | None = None,
        delta_softplus: bool = False,
    ) -> Tensor:
        return _CudaSelectiveScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, ext)

    return selective_scan_fn
