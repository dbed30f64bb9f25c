"""Differentiable fused SS2D core on the CPU: numba forward (saving the states) and backward.

Forward (as ``scan_numba.ss2d_scan``), per direction k, scan step t (token p = p_k(t)) and channel c:
    raw = b_Δ + W_Δ,k δ_k[p] (R multiply-adds per channel, in the kernel),  Δ_t = softplus(raw),
    a_t = exp(Δ_t A),  h_t = a_t ⊙ h_{t-1} + Δ_t B_t u_t,  y_t = C_t · h_t + D u_t,  out[p] += y_t
with (δ | B | C) the x_proj outputs of token p and u = x.  Backward, t from L-1 down to 0 with the
adjoint state g (g ← g ⊙ a_t after each step, so g_t = C_t ∂out_t + a_{t+1} g_{t+1}):
    ∂C_t = Σ_c ∂out h_t,  ∂B_t = Σ_c g Δ u,  ∂u += g Δ B + D ∂out,  ∂A += g Δ a h_{t-1},
    ∂Δ = Σ_n g (A a h_{t-1} + B u),  ∂raw = ∂Δ σ(raw) = ∂Δ (1 - e^-Δ),  ∂D += ∂out u,  ∂b_Δ += ∂raw;
then ∂W_Δ,k = Σ_p ∂raw_k[p] ⊗ δ_k[p] and ∂δ_k = ∂raw_k W_Δ,k in one more pass over ∂raw (a third
kernel: torch's bmm is ~10x slower with R = 3 columns).  The forward saves every h_t (scan order) as a
tensor: autograd frees it after the backward, or keeps it for a second one under retain_graph; Δ is
recomputed in the backward (R multiply-adds and a softplus cost less than storing and re-reading it).
Nothing is flipped or copied into cross-scan tensors.
Tasks are (batch, channel block) as in the inference kernel, on the same GIL-free thread pool;
per-batch partial sums of ∂A, ∂D, ∂b_Δ (and per-block partial sums of ∂B, ∂C when a batch row is
split into several channel blocks) are reduced afterwards in numpy.
"""

from __future__ import annotations

import os
import threading

import numpy as np
import torch
from torch import Tensor

from scmpr_ros.model import scan_numba as _sn

if _sn.NUMBA_AVAILABLE:
    from scmpr_ros.model.scan_numba import _delta_into, _fexp, _row, _token

    # the backward's channel reductions (∂B, ∂C) vectorise only with reassociation
    _FASTMATH_BWD = set(_sn._FASTMATH) | {"reassoc"}

    @_sn.njit(**_sn._JIT_INLINE)
    def _one_minus_exp_neg(x):
        """1 - e^-x for x >= 0 without cancellation near 0 (= σ(raw) when x = softplus(raw))."""
        small = x * (np.float32(1.0) - x * (np.float32(0.5) - x * np.float32(1.0 / 6.0)))
        return small if x < np.float32(0.01) else np.float32(1.0) - _fexp(-x)

    def _ss2d_fwd_save_py(x, proj, Wdt, At, Dv, bias, out, hsave, height, width, nsub, task_lo, task_hi):
        """x, out (Bn, L, d); proj (Bn, L, K wp) = [δ (R) | B (N) | C (N)] per direction; Wdt (K, R, d);
        At (K, N, d); Dv, bias (K, d).  out (zeroed) += the cross-merged scan; hsave (Bn, K, L, N, d) = h
        in scan order."""
        bn, length, d = x.shape
        n_dir, rank, n_state = Wdt.shape[0], Wdt.shape[1], At.shape[1]
        wp = rank + 2 * n_state
        sub = (d + nsub - 1) // nsub
        for task in range(task_lo, task_hi):
            b = task // nsub
            lo = (task % nsub) * sub
            cnt = min(d, lo + sub) - lo
            if cnt <= 0:
                continue
            h = np.empty((n_state, cnt), np.float32)
            yb = np.empty(cnt, np.float32)
            dtb = np.empty(cnt, np.float32)
            for k in range(n_dir):
                h[:, :] = 0.0
                Db = _row(Dv, k * d + lo, cnt)
                bb = _row(bias, k * d + lo, cnt)
                for t in range(length):
                    p = _token(k, t, length, height, width)
                    row = b * length + p
                    ut = _row(x, row * d + lo, cnt)
                    pr = _row(proj, row * (n_dir * wp) + k * wp, wp)
                    _delta_into(dtb, pr, Wdt, bb, k, rank, d, lo, cnt)
                    for i in range(cnt):
                        yb[i] = Db[i] * ut[i]
                    step = (b * n_dir + k) * length + t
                    for s_i in range(n_state):
                        av = _row(At, (k * n_state + s_i) * d + lo, cnt)
                        hs = _row(h, s_i * cnt, cnt)
                        hv = _row(hsave, (step * n_state + s_i) * d + lo, cnt)
                        bt = pr[rank + s_i]
                        ct = pr[rank + n_state + s_i]
                        for i in range(cnt):
                            dt = dtb[i]
                            hh = _fexp(dt * av[i]) * hs[i] + dt * bt * ut[i]
                            hs[i] = hh
                            hv[i] = hh
                            yb[i] += hh * ct
                    ot = _row(out, row * d + lo, cnt)
                    for i in range(cnt):
                        ot[i] += yb[i]

    @_sn.njit(inline="always", fastmath=_FASTMATH_BWD, nogil=True)
    def _bwd_states(gt, ut, dt, pr, At, hsave, dh, dA, dd, du, dpr, zeros, k, step, t, base_a, lo, cnt, d, rank):
        """One reverse step over the N states: ∂C, ∂B into dpr, ∂A, ∂Δ (dd), ∂u (du); g ← g a_t."""
        n_state = dh.shape[0]
        for s_i in range(n_state):
            av = _row(At, (k * n_state + s_i) * d + lo, cnt)
            ht = _row(hsave, (step * n_state + s_i) * d + lo, cnt)
            hp = _row(hsave, ((step - 1) * n_state + s_i) * d + lo, cnt) if t > 0 else zeros
            gs = _row(dh, s_i * cnt, cnt)
            dAs = _row(dA, (base_a + s_i) * d + lo, cnt)
            bt = pr[rank + s_i]
            ct = pr[rank + n_state + s_i]
            s_b = np.float32(0.0)
            s_c = np.float32(0.0)
            for i in range(cnt):
                delta = dt[i]
                a = _fexp(delta * av[i])
                g = gs[i] + gt[i] * ct
                s_c += gt[i] * ht[i]
                ahp = a * hp[i]
                dAs[i] += g * delta * ahp
                dd[i] += g * (av[i] * ahp + bt * ut[i])
                gd = g * delta
                s_b += gd * ut[i]
                du[i] += gd * bt
                gs[i] = g * a
            dpr[rank + s_i] = s_b
            dpr[rank + n_state + s_i] = s_c

    def _ss2d_bwd_py(
        x, proj, Wdt, At, Dv, bias, hsave, gout, draw, dx, dproj, dA, dD, dbias, height, width, nsub, task_lo, task_hi
    ):
        """Reverse-time pass of every direction (Δ recomputed): draw (K, Bn, L, d) = ∂raw; dx (Bn, L, d) and the
        per-batch partials dA (Bn, K, N, d), dD, dbias (Bn, K, d) accumulate (zeroed by the caller); dproj
        (nsub, Bn, L, K wp) gets ∂B, ∂C: entry [j] holds channel block j's share of the channel sums."""
        bn, length, d = x.shape
        n_dir, rank, n_state = Wdt.shape[0], Wdt.shape[1], At.shape[1]
        wp = rank + 2 * n_state
        sub = (d + nsub - 1) // nsub
        for task in range(task_lo, task_hi):
            b = task // nsub
            j = task % nsub
            lo = j * sub
            cnt = min(d, lo + sub) - lo
            if cnt <= 0:
                continue
            dh = np.empty((n_state, cnt), np.float32)
            dd = np.empty(cnt, np.float32)
            du = np.empty(cnt, np.float32)
            dt = np.empty(cnt, np.float32)
            zeros = np.zeros(cnt, np.float32)
            for k in range(n_dir):
                dh[:, :] = 0.0
                Db = _row(Dv, k * d + lo, cnt)
                dDk = _row(dD, (b * n_dir + k) * d + lo, cnt)
                dbk = _row(dbias, (b * n_dir + k) * d + lo, cnt)
                bb = _row(bias, k * d + lo, cnt)
                for t in range(length - 1, -1, -1):
                    p = _token(k, t, length, height, width)
                    row = b * length + p
                    ut = _row(x, row * d + lo, cnt)
                    gt = _row(gout, row * d + lo, cnt)
                    pr = _row(proj, row * (n_dir * wp) + k * wp, wp)
                    dpr = _row(dproj, ((j * bn + b) * length + p) * (n_dir * wp) + k * wp, wp)
                    _delta_into(dt, pr, Wdt, bb, k, rank, d, lo, cnt)
                    dr = _row(draw, ((k * bn + b) * length + p) * d + lo, cnt)
                    for i in range(cnt):
                        dd[i] = 0.0
                        du[i] = gt[i] * Db[i]
                        dDk[i] += gt[i] * ut[i]
                    step = (b * n_dir + k) * length + t
                    base_a = (b * n_dir + k) * n_state
                    _bwd_states(
                        gt, ut, dt, pr, At, hsave, dh, dA, dd, du, dpr, zeros, k, step, t, base_a, lo, cnt, d, rank
                    )
                    dxt = _row(dx, row * d + lo, cnt)
                    for i in range(cnt):
                        v = dd[i] * _one_minus_exp_neg(dt[i])
                        dr[i] = v
                        dbk[i] += v
                        dxt[i] += du[i]

    def _dt_proj_bwd_py(draw, proj, Wdt, dW, dproj, nchunk, task_lo, task_hi):
        """∂W_Δ and ∂δ from ∂raw: draw (K, M, d) over the M = Bn L tokens; proj, dproj (M, K wp); Wdt (K, R, d).
        Task (k, chunk c of the tokens) adds Σ_m ∂raw[m] δ[m, r] to its own dW[task] (K nchunk, R, d) and
        writes ∂δ[m, r] = ∂raw[m] · W_Δ[:, r] into dproj (a GEMM with R columns: 10x faster here than bmm)."""
        n_dir, m_all, d = draw.shape
        rank = Wdt.shape[1]
        wp = proj.shape[1] // n_dir
        per = (m_all + nchunk - 1) // nchunk
        for task in range(task_lo, task_hi):
            k = task // nchunk
            c = task % nchunk
            for m in range(c * per, min(m_all, c * per + per)):
                dr = _row(draw, (k * m_all + m) * d, d)
                pr = _row(proj, m * n_dir * wp + k * wp, wp)
                dp = _row(dproj, m * n_dir * wp + k * wp, wp)
                for r in range(rank):
                    wr = _row(Wdt, (k * rank + r) * d, d)
                    dwr = _row(dW, (task * rank + r) * d, d)
                    pv = pr[r]
                    s = np.float32(0.0)
                    for i in range(d):
                        v = dr[i]
                        s += v * wr[i]
                        dwr[i] += v * pv
                    dp[r] = s


_KERNELS: dict | None = None
_LOCK = threading.Lock()


def kernels() -> dict | None:
    """The forward-with-save and backward kernels, or None without numba / with SCMPR_DISABLE_NUMBA=1."""
    global _KERNELS
    if _sn.kernels() is None:
        return None
    with _LOCK:
        if _KERNELS is None:
            cache = os.environ.get("SCMPR_NUMBA_CACHE", "1") not in ("0", "")
            _KERNELS = {
                "fwd": _compile_with(_ss2d_fwd_save_py, cache, {}),
                "bwd": _compile_with(_ss2d_bwd_py, cache, {"fastmath": _FASTMATH_BWD}),
                "dt_proj": _compile_with(_dt_proj_bwd_py, cache, {"fastmath": _FASTMATH_BWD}),
            }
    return _KERNELS


def _compile_with(fn, cache: bool, extra: dict):
    """``scan_numba._compile`` with extra njit options (the backward adds reassociation)."""
    opts = {**_sn._JIT_KERNEL, **extra}
    if cache:
        try:
            return _sn.njit(cache=True, **opts)(fn)
        except Exception:  # noqa: BLE001 - no writable cache dir: compile in memory
            pass
    return _sn.njit(cache=False, **opts)(fn)


def available() -> bool:
    return kernels() is not None


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).contiguous().numpy()


def ss2d_forward_save(x, proj, Wdt, At, Dv, bias, height: int, width: int, threads: int) -> tuple:
    """(out, h) of the fused core on float32 C-contiguous arrays: x (Bn, L, d); proj (Bn, L, K wp);
    Wdt (K, R, d) = W_Δ^T; At (K, N, d) = A^T per direction; Dv, bias (K, d)."""
    bn, length, d = x.shape
    n_dir, n_state = At.shape[0], At.shape[1]
    if length != height * width or n_dir != 4 or proj.shape != (bn, length, n_dir * (Wdt.shape[1] + 2 * n_state)):
        raise ValueError(f"ss2d_forward_save: 4 directions over H*W tokens needed, got {length} != {height}*{width}")
    out = np.zeros((bn, length, d), np.float32)
    hsave = np.empty((bn, n_dir, length, n_state, d), np.float32)
    nsub = _sn._nsub(bn, d, threads)
    args = (x, proj, Wdt, At, Dv, bias, out, hsave, int(height), int(width), nsub)
    _sn._run_tasks(kernels()["fwd"], args, bn * nsub, threads)
    return out, hsave


def ss2d_backward(x, proj, Wdt, At, Dv, bias, hsave, gout, height: int, width: int, threads: int) -> tuple:
    """(∂x, ∂proj, ∂W_Δ^T (K, R, d), ∂A^T (K, N, d), ∂D, ∂b_Δ (K, d)) from the saved states (unchanged)."""
    bn, length, d = x.shape
    n_dir, rank, n_state = Wdt.shape[0], Wdt.shape[1], At.shape[1]
    nsub = _sn._nsub(bn, d, threads)
    dx = np.zeros_like(x)
    dproj = np.zeros((nsub,) + proj.shape, np.float32)
    dA = np.zeros((bn, n_dir, n_state, d), np.float32)
    dD = np.zeros((bn, n_dir, d), np.float32)
    dbias = np.zeros((bn, n_dir, d), np.float32)
    draw = np.empty((n_dir, bn, length, d), np.float32)
    args = (x, proj, Wdt, At, Dv, bias, hsave, gout, draw, dx, dproj, dA, dD, dbias, int(height), int(width), nsub)
    _sn._run_tasks(kernels()["bwd"], args, bn * nsub, threads)
    dproj = dproj[0] if nsub == 1 else dproj.sum(0)
    nchunk = max(1, -(-threads // n_dir))
    dW = np.zeros((n_dir * nchunk, rank, d), np.float32)
    args = (
        draw.reshape(n_dir, bn * length, d),
        proj.reshape(bn * length, -1),
        Wdt,
        dW,
        dproj.reshape(bn * length, -1),
        nchunk,
    )
    _sn._run_tasks(kernels()["dt_proj"], args, n_dir * nchunk, threads)
    dW = dW.reshape(n_dir, nchunk, rank, d).sum(1)
    return dx, dproj, dW, dA.sum(0), dD.sum(0), dbias.sum(0)


def _kernel_arrays(x: Tensor, proj: Tensor, dt_weight: Tensor, A: Tensor, D: Tensor) -> tuple:
    """x, proj as they are; W_Δ^T (K, R, d), A^T (K, N, d), D (K, d): the kernels' float32 layouts."""
    n_dir, d, _ = dt_weight.shape
    at = A.reshape(n_dir, d, A.shape[1]).transpose(1, 2)
    return _np(x), _np(proj), _np(dt_weight.transpose(1, 2)), _np(at), _np(D.reshape(n_dir, d))


class SS2DScanFunction(torch.autograd.Function):
    """out = fused SS2D core(x, proj, W_Δ, A, D, b_Δ) with the numba backward (CPU, float32); shapes as in
    ``ss2d_scan_autograd``.  The states are saved as a tensor, so autograd frees them after the backward
    (or keeps them for another one with retain_graph)."""

    @staticmethod
    def forward(ctx, x, proj, dt_weight, A, D, delta_bias, height, width):  # type: ignore[override]
        bias = _np(delta_bias.reshape(dt_weight.shape[0], -1))
        arrays = _kernel_arrays(x, proj, dt_weight, A, D)
        out, hsave = ss2d_forward_save(*arrays, bias, height, width, torch.get_num_threads())
        ctx.save_for_backward(x, proj, dt_weight, A, D, delta_bias, torch.from_numpy(hsave))
        ctx.hw = (int(height), int(width))
        return torch.from_numpy(out).to(x.dtype)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        x, proj, dt_weight, A, D, delta_bias, hsave = ctx.saved_tensors
        arrays = _kernel_arrays(x, proj, dt_weight, A, D)
        bias = _np(delta_bias.reshape(dt_weight.shape[0], -1))
        gout = _np(grad_out)
        grads = ss2d_backward(*arrays, bias, hsave.numpy(), gout, *ctx.hw, torch.get_num_threads())
        dx, dproj, dwt, dat, dD, dbias = (torch.from_numpy(g) for g in grads)
        d_w = dwt.transpose(1, 2).reshape(dt_weight.shape)
        d_a = dat.transpose(1, 2).reshape(A.shape)
        out = (dx, dproj, d_w, d_a, dD.reshape(D.shape), dbias.reshape(delta_bias.shape), None, None)
        return tuple(g if need else None for g, need in zip(out, ctx.needs_input_grad))


def ss2d_scan_autograd(
    x: Tensor, proj: Tensor, dt_weight: Tensor, A: Tensor, D: Tensor, delta_bias: Tensor, height: int, width: int
) -> Tensor:
    """Differentiable fused SS2D core: x (Bn, H*W, d) row-major tokens; proj (Bn, H*W, K(R+2N)) the x_proj
    outputs [δ (R) | B (N) | C (N)] of every token for the K = 4 directions; dt_weight (K, d, R);
    A (K d, N); D, delta_bias (K d,).  Returns the cross-merged y (Bn, H*W, d), float32, CPU."""
    if kernels() is None:
        raise RuntimeError("ss2d_scan_autograd: numba is not importable or disabled by SCMPR_DISABLE_NUMBA")
    return SS2DScanFunction.apply(x, proj, dt_weight, A, D, delta_bias, int(height), int(width))


__all__ = ["SS2DScanFunction", "available", "kernels", "ss2d_backward", "ss2d_forward_save", "ss2d_scan_autograd"]
