"""Selective scan (Mamba S6) with the semantics of ``mamba_ssm.selective_scan_fn``.

    Δ = softplus(delta + delta_bias) (if delta_softplus);  h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t
    y_t = C_t · h_t + D u_t;  out = y ⊙ silu(z) (if z is given)

Backends: ``cuda`` (mamba_ssm kernel, imported lazily), ``numba`` (CPU inference: the fused
compiled kernel of ``scan_numba``, no autograd), ``torch`` (CPU/any device, pure torch with
autograd: a two-level *chunked* linear recurrence -- a sequential loop over the steps of a chunk,
all chunks at once, then a carry pass over chunks; the gradient is the same recurrence run in
reverse) and ``reference`` (the plain sequential loop, for tests).  Decays are multiplied, never
divided, so nothing overflows (a log-cumsum formulation would).  ``auto`` / ``cpu`` on a CPU take
numba when no gradient is needed and numba is importable, else torch.  (VMamba's SS2D does not go
through this dispatch on the CPU: its fused numba core has a numba backward, ``scan_numba_autograd``,
and serves training too.)
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from scmpr_ros.errors import ScmprError

BACKENDS = ("auto", "cuda", "cpu", "numba", "torch", "reference")
CUDA_INSTALL_HINT = (
    "the CUDA selective-scan kernel needs mamba-ssm: `pip install .[cuda]` "
    "(it builds with nvcc and needs a CUDA build of torch); or set model.scan_backend to 'torch'"
)


class ScanBackendError(ScmprError):
    """An unknown scan backend, or one that cannot run here."""


_MAMBA_FN = None
_MAMBA_TRIED = False


def _mamba_selective_scan_fn():
    """The mamba_ssm kernel entry point, or None if mamba_ssm is not importable."""
    global _MAMBA_FN, _MAMBA_TRIED
    if not _MAMBA_TRIED:
        _MAMBA_TRIED = True
        try:
            from mamba_ssm.ops.selective_scan_interface import selective_scan_fn  # type: ignore

            _MAMBA_FN = selective_scan_fn
        except Exception:  # noqa: BLE001 - any import failure means "not available"
            # mamba_ssm's package __init__ imports Mamba-2/3 extras (triton, tilelang, ...); the
            # compiled kernel it installs can still be present and is all we need.
            from scmpr_ros.model.scan_cuda import load_extension, make_selective_scan_fn

            ext = load_extension()
            _MAMBA_FN = make_selective_scan_fn(ext) if ext is not None else None
    return _MAMBA_FN


def cuda_kernel_available() -> bool:
    return torch.cuda.is_available() and _mamba_selective_scan_fn() is not None


def numba_available() -> bool:
    from scmpr_ros.model import scan_numba

    return scan_numba.available()


def resolve_backend(backend: str, device: torch.device, grad: bool = False) -> str:
    """Map a configured backend name to the one that runs on ``device``: cuda | numba | torch | reference.

    ``grad``: whether the call must be differentiable (the numba kernel has no backward)."""
    if backend not in BACKENDS:
        raise ScanBackendError(f"model.scan_backend: unknown backend {backend!r} (choose one of {', '.join(BACKENDS)})")
    if backend in ("auto", "cpu"):
        if backend == "auto" and device.type == "cuda" and _mamba_selective_scan_fn() is not None:
            return "cuda"
        if device.type == "cpu" and not grad and numba_available():
            return "numba"
        return "torch"
    if backend == "cuda":
        if _mamba_selective_scan_fn() is None:
            raise ScanBackendError(f"model.scan_backend=cuda: mamba_ssm is not importable; {CUDA_INSTALL_HINT}")
        if device.type != "cuda":
            raise ScanBackendError(
                f"model.scan_backend=cuda but the tensors are on {device}; move the model to a CUDA device "
                "or set model.scan_backend to 'auto'"
            )
        return "cuda"
    if backend == "numba":
        if not numba_available():
            from scmpr_ros.model.scan_numba import NUMBA_IMPORT_ERROR

            raise ScanBackendError(
                "model.scan_backend=numba: numba is not importable or disabled by SCMPR_DISABLE_NUMBA "
                f"({NUMBA_IMPORT_ERROR or 'disabled'}); `pip install numba` or set model.scan_backend to 'auto'"
            )
        if device.type != "cpu":
            raise ScanBackendError(
                f"model.scan_backend=numba runs on the CPU, but the tensors are on {device}; use 'auto'"
            )
        if grad:
            raise ScanBackendError(
                "model.scan_backend=numba has no backward pass for the generic selective scan (VMamba's fused "
                "SS2D core has one); train with 'auto' or 'torch' (or run inference under torch.no_grad)"
            )
    return backend


def _needs_grad(*tensors: Tensor | None) -> bool:
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def _np32(t: Tensor | None):
    """A float32 contiguous numpy view (a copy only when needed) of a CPU tensor, or None."""
    if t is None:
        return None
    return t.detach().to(torch.float32).contiguous().numpy()


def _numba_tokens(u, delta, A, B, C, D, z, delta_bias, delta_softplus) -> Tensor:
    """Token-major numba scan: u, delta, z (B, L, Dc); B, C (B, L, N) or (B, L, G, N)."""
    from scmpr_ros.model import scan_numba

    if B.dim() == 3:
        B, C = B.unsqueeze(2), C.unsqueeze(2)
    y = scan_numba.scan_tokens(
        _np32(u),
        _np32(delta),
        _np32(A),
        _np32(B),
        _np32(C),
        _np32(D),
        _np32(delta_bias),
        bool(delta_softplus),
        torch.get_num_threads(),
    )
    out = torch.from_numpy(y)
    if z is not None:
        out = out * F.silu(z.float())
    return out.to(u.dtype)


# --------------------------------------------------------------------------------------------
# linear recurrence h_t = a_t * h_{t-1} + b_t over dim 1 of (B, L, M) tensors
# --------------------------------------------------------------------------------------------


def _chunk_len(length: int) -> int:
    # 2T + L/T python steps; T = sqrt(L/2) minimises them
    return int(min(256, max(8, round(math.sqrt(length / 2)))))


def _sequential(a: Tensor, b: Tensor, h0: Tensor | None, out: Tensor) -> None:
    """out[:, t] = a[:, t] * out[:, t-1] + b[:, t] along dim 1 (any leading/trailing dims)."""
    if h0 is None:
        out[:, 0].copy_(b[:, 0])
    else:
        torch.addcmul(b[:, 0], a[:, 0], h0, out=out[:, 0])
    for t in range(1, a.shape[1]):
        torch.addcmul(b[:, t], a[:, t], out[:, t - 1], out=out[:, t])


@torch.no_grad()
def linear_recurrence(
    a: Tensor, b: Tensor, h0: Tensor | None = None, chunk: int = 0, out: Tensor | None = None
) -> Tensor:
    """All states of h_t = a_t h_{t-1} + b_t (h_{-1} = h0 or 0); a, b: (B, L, M) -> (B, L, M).

    Two levels over chunks of T steps: (1) the end state of every chunk from a zero start, all
    chunks at once (T steps); (2) the carries chunk by chunk with the chunk products of a;
    (3) the states again, every chunk from its carry (T steps).  2T + L/T python steps, not L.
    ``out`` may be ``b`` itself (b is then overwritten by the states).
    """
    bsz, length, m = a.shape
    T = chunk or _chunk_len(length)
    hs = out if out is not None else torch.empty_like(b)
    nc = length // T
    if nc < 2:  # short: one sequential loop
        _sequential(a, b, h0, hs)
        return hs
    main = nc * T
    a4 = a[:, :main].view(bsz, nc, T, m)
    b4 = b[:, :main].view(bsz, nc, T, m)
    h4 = hs[:, :main].view(bsz, nc, T, m)
    end = b4[:, :, 0].clone()  # (1) running state of every chunk
    for t in range(1, T):
        torch.addcmul(b4[:, :, t], a4[:, :, t], end, out=end)
    prods = torch.prod(a4, dim=2)  # (B, nc, M)
    carries = torch.empty(bsz, nc, m, dtype=b.dtype, device=b.device)  # (2) state entering chunk c
    carry = h0 if h0 is not None else torch.zeros(bsz, m, dtype=b.dtype, device=b.device)
    for c in range(nc):
        carries[:, c].copy_(carry)
        carry = torch.addcmul(end[:, c], prods[:, c], carry)
    _sequential(a4.transpose(1, 2), b4.transpose(1, 2), carries, h4.transpose(1, 2))  # (3)
    if main < length:  # the tail after the last whole chunk
        _sequential(a[:, main:], b[:, main:], hs[:, main - 1], hs[:, main:])
    return hs


class _LinearRecurrence(torch.autograd.Function):
    """Differentiable wrapper; the adjoint g_t = dh_t + a_{t+1} g_{t+1} is the reversed recurrence."""

    @staticmethod
    def forward(ctx, a: Tensor, b: Tensor, h0: Tensor) -> Tensor:  # type: ignore[override]
        hs = linear_recurrence(a, b, h0)
        ctx.save_for_backward(a, hs, h0)
        return hs

    @staticmethod
    def backward(ctx, grad_hs: Tensor):  # type: ignore[override]
        a, hs, h0 = ctx.saved_tensors
        a_next = torch.cat([a[:, 1:], torch.zeros_like(a[:, :1])], dim=1)
        g = linear_recurrence(a_next.flip(1), grad_hs.contiguous().flip(1)).flip(1)
        h_prev = torch.cat([h0.unsqueeze(1), hs[:, :-1]], dim=1)
        grad_a = g * h_prev
        grad_h0 = a[:, 0] * g[:, 0]
        return grad_a, g, grad_h0


def linear_recurrence_autograd(a: Tensor, b: Tensor, h0: Tensor | None = None) -> Tensor:
    if h0 is None:
        h0 = torch.zeros(a.shape[0], a.shape[2], dtype=a.dtype, device=a.device)
    if not (a.requires_grad or b.requires_grad or h0.requires_grad) or not torch.is_grad_enabled():
        return linear_recurrence(a.contiguous(), b.contiguous(), h0)
    return _LinearRecurrence.apply(a.contiguous(), b.contiguous(), h0)


# --------------------------------------------------------------------------------------------
# token-major scan (the CPU path): u, delta (B, L, Dc); B, C (B, L, G, N) or (B, L, N)
# --------------------------------------------------------------------------------------------


def selective_scan_tokens(
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
    """Selective scan on token-major tensors: u, delta, z (B, L, Dc); A (Dc, N);
    B, C (B, L, N) or (B, L, G, N) with Dc = G * channels-per-group. Returns (B, L, Dc) in u.dtype."""
    dtype_in = u.dtype
    bsz, length, dc = u.shape
    n = A.shape[1]
    if B.dim() == 3:
        B = B.unsqueeze(2)
        C = C.unsqueeze(2)
    g = B.shape[2]
    per = dc // g
    u32 = u.float()
    dt = delta.float()
    if delta_bias is not None:
        dt = dt + delta_bias.float()
    if delta_softplus:
        dt = F.softplus(dt)
    tensors = (u, delta, A, B, C, D, z, delta_bias)
    if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors):
        Bf = B.float().unsqueeze(3)  # (B, L, G, 1, N)
        Cf = C.float().unsqueeze(3)
        a = torch.exp(dt.unsqueeze(-1) * A.float())  # (B, L, Dc, N)
        bu = (dt * u32).view(bsz, length, g, per, 1) * Bf  # (B, L, G, per, N)
        hs = linear_recurrence_autograd(a.reshape(bsz, length, dc * n), bu.reshape(bsz, length, dc * n))
        y = (hs.view(bsz, length, g, per, n) * Cf).sum(-1).reshape(bsz, length, dc)
        if D is not None:
            y = y + u32 * D.float()
    else:  # inference: the same arithmetic in place, no autograd graph, fewer temporaries
        if n == 1:
            a = torch.mul(dt, A.float().reshape(-1)).exp_()
            bu = torch.mul(dt, u32)
            bu.view(bsz, length, g, per).mul_(B.float())
            hs = linear_recurrence(a, bu, out=bu)
            y = hs.view(bsz, length, g, per).mul_(C.float()).view(bsz, length, dc)
        else:
            a = torch.exp(dt.unsqueeze(-1) * A.float()).reshape(bsz, length, dc * n)
            bu = ((dt * u32).view(bsz, length, g, per, 1) * B.float().unsqueeze(3)).reshape(bsz, length, dc * n)
            hs = linear_recurrence(a, bu, out=bu)
            y = (hs.view(bsz, length, g, per, n) * C.float().unsqueeze(3)).sum(-1).reshape(bsz, length, dc)
        if D is not None:
            y.addcmul_(u32, D.float())
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype_in)


# --------------------------------------------------------------------------------------------
# public entry point (mamba layout)
# --------------------------------------------------------------------------------------------


def _check_shapes(u: Tensor, delta: Tensor, A: Tensor, B: Tensor, C: Tensor) -> None:
    if u.dim() != 3 or delta.shape != u.shape:
        raise ScanBackendError(
            f"selective_scan: u and delta must be (B, D, L) of one shape, got {tuple(u.shape)} and {tuple(delta.shape)}"
        )
    if A.dim() != 2 or A.shape[0] != u.shape[1]:
        raise ScanBackendError(f"selective_scan: A must be (D, N) with D={u.shape[1]}, got {tuple(A.shape)}")
    for name, t in (("B", B), ("C", C)):
        if t.dim() not in (3, 4) or t.shape[0] != u.shape[0] or t.shape[-1] != u.shape[2] or t.shape[-2] != A.shape[1]:
            raise ScanBackendError(f"selective_scan: {name} must be (B, N, L) or (B, G, N, L), got {tuple(t.shape)}")
        if t.dim() == 4 and u.shape[1] % t.shape[1]:
            raise ScanBackendError(
                f"selective_scan: {name} has {t.shape[1]} groups, which do not divide D={u.shape[1]}"
            )


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> Tensor:
    """``mamba_ssm.selective_scan_fn`` semantics: u, delta, z (B, D, L); A (D, N) real;
    B, C (B, N, L) or (B, G, N, L); D, delta_bias (D,). Returns (B, D, L) in u.dtype."""
    _check_shapes(u, delta, A, B, C)
    which = resolve_backend(backend, u.device, _needs_grad(u, delta, A, B, C, D, z, delta_bias))
    if which == "numba":
        tb = (lambda t: t.permute(0, 3, 1, 2)) if B.dim() == 4 else (lambda t: t.transpose(1, 2))
        y = _numba_tokens(
            u.transpose(1, 2),
            delta.transpose(1, 2),
            A,
            tb(B),
            tb(C),
            D,
            None if z is None else z.transpose(1, 2),
            delta_bias,
            delta_softplus,
        )
        return y.transpose(1, 2)
    if which == "cuda":
        fn = _mamba_selective_scan_fn()
        return fn(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if which == "reference":
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    tb = (lambda t: t.permute(0, 3, 1, 2)) if B.dim() == 4 else (lambda t: t.transpose(1, 2))
    y = selective_scan_tokens(
        u.transpose(1, 2).contiguous(),
        delta.transpose(1, 2).contiguous(),
        A,
        tb(B),
        tb(C),
        D,
        None if z is None else z.transpose(1, 2),
        delta_bias,
        delta_softplus,
    )
    return y.transpose(1, 2)


def selective_scan_reference(
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
    """The plain sequential loop (mamba layout), fp32 inside. For tests only: slow."""
    dtype_in = u.dtype
    u = u.float()
    delta = delta.float()
    if delta_bias is not None:
        delta = delta + delta_bias[..., None].float()
    if delta_softplus:
        delta = F.softplus(delta)
    bsz, dim, length = u.shape
    n = A.shape[1]
    if B.dim() == 3:
        Bx = B.float().unsqueeze(1).expand(bsz, dim, n, length)
        Cx = C.float().unsqueeze(1).expand(bsz, dim, n, length)
    else:
        rep = dim // B.shape[1]
        Bx = B.float().repeat_interleave(rep, dim=1)
        Cx = C.float().repeat_interleave(rep, dim=1)
    A = A.float()
    x = u.new_zeros(bsz, dim, n)
    ys = []
    # unbind (not indexing) so that the backward does not allocate a full-size gradient per step
    steps = zip(delta.unbind(2), u.unbind(2), Bx.unbind(3), Cx.unbind(3))
    for delta_i, u_i, b_i, c_i in steps:
        dA = torch.exp(delta_i[:, :, None] * A)
        x = dA * x + (delta_i * u_i)[:, :, None] * b_i
        ys.append((x * c_i).sum(-1))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.float()[:, None]
    if z is not None:
        y = y * F.silu(z.float())
    return y.to(dtype_in)


def selective_scan_token_major(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = False,
    backend: str = "auto",
) -> Tensor:
    """Dispatch for token-major callers (VMamba): u, delta (B, L, Dc); B, C (B, L, G, N).

    The numba and torch backends run token-major directly; cuda/reference transpose to the mamba layout."""
    which = resolve_backend(backend, u.device, _needs_grad(u, delta, A, B, C, D, delta_bias))
    if which == "numba":
        return _numba_tokens(u, delta, A, B, C, D, None, delta_bias, delta_softplus)
    if which == "torch":
        return selective_scan_tokens(u, delta, A, B, C, D, None, delta_bias, delta_softplus)
    y = selective_scan(
        u.transpose(1, 2).contiguous(),
        delta.transpose(1, 2).contiguous(),
        A,
        B.permute(0, 2, 3, 1).contiguous(),
        C.permute(0, 2, 3, 1).contiguous(),
        D,
        None,
        delta_bias,
        delta_softplus,
        backend=which,
    )
    return y.transpose(1, 2)
