"""Compiled CPU selective scan for inference (numba, no autograd), token-major.

Per step t and channel c (Δ = softplus(δ + b_Δ) = max(x, 0) + log1p(e^-|x|)):
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t,   y_t = C_t · h_t + D u_t
all fused in one pass that reads the contiguous channel vector of each token (no transposes, no
temporaries), parallel over (batch, group/direction, channel block).  ``exp`` / ``log`` are branch-free
Cephes-style float32 polynomials (≈1 ulp) so LLVM vectorises the channel loop (no SVML here).
``ss2d_scan`` runs the four VMamba cross-scan directions (row, column, both reversed) of a
channels-last map in one call and sums them back into place (the cross-merge), so neither the
cross-scan copies nor the merge exist as tensors.  Caching: ``cache=True`` in numba's cache dir
(falls back to an in-memory JIT when no cache directory is writable).
"""
from __future__ import annotations

import os
import threading
import time
from typing import Optional

import numpy as np

try:  # numba is optional: without it the pure-torch scan is used
    import numba
    from llvmlite import ir as _llir
    from numba import njit, prange
    from numba.core import types as _nbt
    from numba.extending import intrinsic

    NUMBA_AVAILABLE = True
    NUMBA_IMPORT_ERROR = ""
except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
    NUMBA_AVAILABLE = False
    NUMBA_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

# chosen so that each parallel task owns whole cache lines (16 floats) and there are a few tasks per
# thread (dynamic balance when another process steals a core)
_BLOCK_MULTIPLE = 16
_TASKS_PER_THREAD = 4

if NUMBA_AVAILABLE:

    @intrinsic
    def _i32_as_f32(typingctx, x):  # noqa: ARG001
        sig = _nbt.float32(_nbt.int32)

        def codegen(context, builder, signature, args):  # noqa: ARG001
            return builder.bitcast(args[0], _llir.FloatType())

        return sig, codegen

    @intrinsic
    def _f32_as_i32(typingctx, x):  # noqa: ARG001
        sig = _nbt.int32(_nbt.float32)

        def codegen(context, builder, signature, args):  # noqa: ARG001
            return builder.bitcast(args[0], _llir.IntType(32))

        return sig, codegen

    # fast-math without reassociation: log1p's (1 + y) - 1 must stay as written
    _FASTMATH = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}
    _JIT_INLINE = dict(inline="always", fastmath=_FASTMATH, nogil=True)

    @njit(**_JIT_INLINE)
    def _fexp(x):
        """e^x in float32 (≈1 ulp; clamped to [-87, 88]): 2^n · P(r), r = x - n ln2, P by Estrin."""
        x = min(max(x, np.float32(-87.0)), np.float32(88.0))
        n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
        r = x - n * np.float32(0.693359375) + n * np.float32(2.12194440e-4)
        r2 = r * r
        p01 = np.float32(1.6666665459e-1) * r + np.float32(5.0000001201e-1)
        p23 = np.float32(8.3334519073e-3) * r + np.float32(4.1665795894e-2)
        p45 = np.float32(1.9875691500e-4) * r + np.float32(1.3981999507e-3)
        p = p01 + r2 * (p23 + r2 * p45)
        p = p * r2 + r + np.float32(1.0)
        return p * _i32_as_f32((np.int32(n) + np.int32(127)) << np.int32(23))

    @njit(**_JIT_INLINE)
    def _log12(w):
        """ln w for w in [1, 2] (≈1 ulp): w = m 2^e, e in {0, 1}, m in [√½, √2), Cephes polynomial."""
        big = w > np.float32(1.41421356237309505)
        e = np.float32(1.0) if big else np.float32(0.0)
        m = (w * np.float32(0.5) if big else w) - np.float32(1.0)
        z = m * m
        z2 = z * z
        q0 = np.float32(-2.4999993993e-1) * m + np.float32(3.3333331174e-1)
        q1 = np.float32(-1.6668057665e-1) * m + np.float32(2.0000714765e-1)
        q2 = np.float32(-1.2420140846e-1) * m + np.float32(1.4249322787e-1)
        q3 = np.float32(-1.1514610310e-1) * m + np.float32(1.1676998740e-1)
        p = (q0 + z * q1) + z2 * ((q2 + z * q3) + z2 * np.float32(7.0376836292e-2))
        y = p * m * z - e * np.float32(2.12194440e-4) - np.float32(0.5) * z
        return m + y + e * np.float32(0.693359375)

    @njit(**_JIT_INLINE)
    def _softplus(x):
        """log(1 + e^x) = max(x, 0) + ln(1 + e^-|x|): no overflow; 1 + e^-|x| in (1, 2] so the
        absolute error stays below 1e-7 (where e^-|x| < 6e-8 it rounds away: error < 6e-8)."""
        return max(x, np.float32(0.0)) + _log12(np.float32(1.0) + _fexp(-abs(x)))

    _JIT_KERNEL = dict(parallel=True, fastmath=_FASTMATH, nogil=True, boundscheck=False, error_model="numpy")

    def _scan_tokens_py(u, delta, At, Bm, Cm, Dv, bias, softplus, out, per, nsub):
        """u, delta, out (Bn, L, Dc); At (N, Dc); Bm, Cm (Bn, L, G, N); Dv, bias (Dc,).

        Per step two passes over the channel block: Δ (softplus) into a small buffer, then the
        recurrence; two short loop bodies overlap better than one long dependency chain."""
        bn, length, dc = u.shape
        n_state = At.shape[0]
        groups = Bm.shape[2]
        sub = (per + nsub - 1) // nsub
        ntask = bn * groups * nsub
        for task in prange(ntask):
            b = task // (groups * nsub)
            g = (task // nsub) % groups
            s = task % nsub
            lo = g * per + s * sub
            hi = min(g * per + per, lo + sub)
            cnt = hi - lo
            if cnt <= 0:
                continue
            h = np.zeros((n_state, cnt), np.float32)
            dtb = np.empty(cnt, np.float32)
            yb = np.empty(cnt, np.float32)
            dv = Dv[lo:hi]
            bv = bias[lo:hi]
            for t in range(length):
                ut = u[b, t, lo:hi]
                xt = delta[b, t, lo:hi]
                ot = out[b, t, lo:hi]
                if softplus:
                    for c in range(cnt):
                        dtb[c] = _softplus(xt[c] + bv[c])
                else:
                    for c in range(cnt):
                        dtb[c] = xt[c] + bv[c]
                if n_state == 1:
                    av = At[0, lo:hi]
                    bt = Bm[b, t, g, 0]
                    ct = Cm[b, t, g, 0]
                    h0 = h[0]
                    for c in range(cnt):
                        dt = dtb[c]
                        hh = _fexp(dt * av[c]) * h0[c] + dt * bt * ut[c]
                        h0[c] = hh
                        ot[c] = hh * ct + dv[c] * ut[c]
                else:
                    for c in range(cnt):
                        yb[c] = dv[c] * ut[c]
                    for k in range(n_state):
                        bt = Bm[b, t, g, k]
                        ct = Cm[b, t, g, k]
                        av = At[k, lo:hi]
                        hk = h[k]
                        for c in range(cnt):
                            hh = _fexp(dtb[c] * av[c]) * hk[c] + dtb[c] * bt * ut[c]
                            hk[c] = hh
                            yb[c] += hh * ct
                    for c in range(cnt):
                        ot[c] = yb[c]

    def _ss2d_scan_py(x, proj, Wdt, At, Dv, bias, out, height, width, nsub):
        """Four-direction cross-scan + Δ projection + scan + cross-merge of a channels-last map.

        x, out (Bn, H*W, d); proj (Bn, H*W, K*(R+2N)): per direction k the x_proj outputs
        [Δ_r (R) | B (N) | C (N)] at k*(R+2N); Wdt (K, R, d) (W_Δ transposed); At (K, N, d);
        Dv, bias (K, d).  Direction k: 0 row-major, 1 column-major, 2 / 3 the same reversed.
        out (zeroed by the caller) += Σ_k y_k(token of direction k that lies at p)."""
        bn, length, d = x.shape
        n_dir = Wdt.shape[0]
        rank = Wdt.shape[1]
        n_state = At.shape[1]
        wp = rank + 2 * n_state
        sub = (d + nsub - 1) // nsub
        for task in prange(bn * nsub):
            b = task // nsub
            lo = (task % nsub) * sub
            hi = min(d, lo + sub)
            cnt = hi - lo
            if cnt <= 0:
                continue
            h = np.empty((n_state, cnt), np.float32)
            dtb = np.empty(cnt, np.float32)
            yb = np.empty(cnt, np.float32)
            for k in range(n_dir):
                h[:, :] = 0.0
                dv = Dv[k, lo:hi]
                bv = bias[k, lo:hi]
                base = k * wp
                for t in range(length):
                    tt = t if k < 2 else length - 1 - t
                    if k % 2 == 0:
                        p = tt
                    else:
                        p = (tt % height) * width + tt // height
                    ut = x[b, p, lo:hi]
                    ot = out[b, p, lo:hi]
                    pr = proj[b, p]
                    for c in range(cnt):
                        dtb[c] = bv[c]
                    for r in range(rank):
                        s = pr[base + r]
                        wr = Wdt[k, r, lo:hi]
                        for c in range(cnt):
                            dtb[c] += wr[c] * s
                    for c in range(cnt):
                        dtb[c] = _softplus(dtb[c])
                    if n_state == 1:
                        av = At[k, 0, lo:hi]
                        bt = pr[base + rank]
                        ct = pr[base + rank + 1]
                        h0 = h[0]
                        for c in range(cnt):
                            dt = dtb[c]
                            hh = _fexp(dt * av[c]) * h0[c] + dt * bt * ut[c]
                            h0[c] = hh
                            ot[c] += hh * ct + dv[c] * ut[c]
                    else:
                        for c in range(cnt):
                            yb[c] = dv[c] * ut[c]
                        for s_i in range(n_state):
                            bt = pr[base + rank + s_i]
                            ct = pr[base + rank + n_state + s_i]
                            av = At[k, s_i, lo:hi]
                            hs = h[s_i]
                            for c in range(cnt):
                                hh = _fexp(dtb[c] * av[c]) * hs[c] + dtb[c] * bt * ut[c]
                                hs[c] = hh
                                yb[c] += hh * ct
                        for c in range(cnt):
                            ot[c] += yb[c]

    def _recurrence_py(a, b, out, nsub):
        """The memory-traffic limit: h_t = a_t h_{t-1} + b_t over contiguous (L, d) arrays."""
        length, d = a.shape
        sub = (d + nsub - 1) // nsub
        for task in prange(nsub):
            lo = task * sub
            hi = min(d, lo + sub)
            cnt = hi - lo
            if cnt <= 0:
                continue
            h = np.zeros(cnt, np.float32)
            for t in range(length):
                at = a[t, lo:hi]
                bt = b[t, lo:hi]
                ot = out[t, lo:hi]
                for c in range(cnt):
                    hh = at[c] * h[c] + bt[c]
                    h[c] = hh
                    ot[c] = hh

    def _math_check_py(x):
        """(exp, softplus) of a float32 vector through the kernels' own functions (for tests)."""
        e = np.empty_like(x)
        s = np.empty_like(x)
        for i in range(x.shape[0]):
            e[i] = _fexp(x[i])
            s[i] = _softplus(x[i])
        return e, s


_KERNELS: Optional[dict] = None
_KERNEL_LOCK = threading.Lock()
CACHE_INFO: dict = {"cached": None, "compile_s": None, "reason": ""}


def _compile(fn, cache: bool, parallel: bool = True):
    opts = dict(_JIT_KERNEL) if parallel else dict(fastmath=_FASTMATH, nogil=True, error_model="numpy")
    if cache:
        try:
            return njit(cache=True, **opts)(fn)
        except Exception as exc:  # noqa: BLE001 - e.g. "no locator available": no writable cache dir
            CACHE_INFO["reason"] = f"numba cache unavailable ({type(exc).__name__}: {exc}); compiling in memory"
    return njit(cache=False, **opts)(fn)


def kernels() -> Optional[dict]:
    """The compiled kernels (dispatchers; compiled per signature on first call), or None without numba."""
    global _KERNELS
    if not NUMBA_AVAILABLE or os.environ.get("SCMPR_DISABLE_NUMBA", "") not in ("", "0"):
        return None
    with _KERNEL_LOCK:
        if _KERNELS is None:
            cache = os.environ.get("SCMPR_NUMBA_CACHE", "1") not in ("0", "")
            _KERNELS = {
                "tokens": _compile(_scan_tokens_py, cache),
                "ss2d": _compile(_ss2d_scan_py, cache),
                "recurrence": _compile(_recurrence_py, cache),
                "math": _compile(_math_check_py, cache, parallel=False),
            }
            CACHE_INFO["cached"] = bool(getattr(_KERNELS["ss2d"], "_cache", None)) and not CACHE_INFO["reason"]
    return _KERNELS


def available() -> bool:
    return kernels() is not None


def _nsub(parts: int, channels: int, threads: int) -> int:
    """Channel blocks per (batch, group): enough tasks for every thread, blocks of whole cache lines."""
    want = max(1, -(-threads * _TASKS_PER_THREAD // max(parts, 1)))
    return max(1, min(want, channels // _BLOCK_MULTIPLE))


def _set_threads(threads: int) -> int:
    n = max(1, min(int(threads), numba.config.NUMBA_NUM_THREADS))
    numba.set_num_threads(n)
    return n


def scan_tokens(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: Optional[np.ndarray],
    delta_bias: Optional[np.ndarray],
    delta_softplus: bool,
    threads: int,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Token-major selective scan on float32 numpy arrays: u, delta (Bn, L, Dc); A (Dc, N);
    B, C (Bn, L, G, N) with G | Dc.  Returns y (Bn, L, Dc)."""
    k = kernels()
    bn, length, dc = u.shape
    groups = B.shape[2]
    f32 = np.float32
    At = np.ascontiguousarray(A.T, dtype=f32)
    Dv = np.zeros(dc, f32) if D is None else np.ascontiguousarray(D, dtype=f32)
    bias = np.zeros(dc, f32) if delta_bias is None else np.ascontiguousarray(delta_bias, dtype=f32)
    if out is None:
        out = np.empty((bn, length, dc), f32)
    nt = _set_threads(threads)
    per = dc // groups
    k["tokens"](u, delta, At, np.ascontiguousarray(B, f32), np.ascontiguousarray(C, f32), Dv, bias,
                bool(delta_softplus), out, per, _nsub(bn * groups, per, nt))
    return out


def ss2d_scan(
    x: np.ndarray,
    proj: np.ndarray,
    dt_weight: np.ndarray,
    A: np.ndarray,
    D: np.ndarray,
    delta_bias: np.ndarray,
    height: int,
    width: int,
    threads: int,
    out: Optional[np.ndarray] = None,
) -> np.ndarray:
    """Fused 4-direction SS2D core (see the module docstring) on float32 arrays: x (Bn, H*W, d)
    channels-last tokens; proj (Bn, H*W, K(R+2N)) = x @ [W_x,0; ...; W_x,K-1]^T; dt_weight (K, d, R);
    A (K d, N); D, delta_bias (K d,).  Returns the merged y (Bn, H*W, d)."""
    k = kernels()
    bn, length, d = x.shape
    n_dir, _, rank = dt_weight.shape
    n_state = A.shape[1]
    f32 = np.float32
    Wdt = np.ascontiguousarray(dt_weight.transpose(0, 2, 1), dtype=f32)
    At = np.ascontiguousarray(A.reshape(n_dir, d, n_state).transpose(0, 2, 1), dtype=f32)
    Dv = np.ascontiguousarray(D.reshape(n_dir, d), dtype=f32)
    bias = np.ascontiguousarray(delta_bias.reshape(n_dir, d), dtype=f32)
    if out is None:
        out = np.zeros((bn, length, d), f32)
    else:
        out.fill(0.0)
    nt = _set_threads(threads)
    k["ss2d"](x, proj, Wdt, At, Dv, bias, out, int(height), int(width), _nsub(bn, d, nt))
    return out


def recurrence(a: np.ndarray, b: np.ndarray, threads: int, out: Optional[np.ndarray] = None) -> np.ndarray:
    """h_t = a_t h_{t-1} + b_t over contiguous float32 (L, d) arrays (the benchmark's limit)."""
    k = kernels()
    if out is None:
        out = np.empty_like(b)
    nt = _set_threads(threads)
    k["recurrence"](a, b, out, _nsub(1, a.shape[1], nt))
    return out


def math_check(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return kernels()["math"](np.ascontiguousarray(x, dtype=np.float32))


def warmup(threads: int = 1) -> dict:
    """Compile (or load from the cache) the kernels for float32 on tiny inputs; returns seconds taken."""
    t0 = time.perf_counter()
    if kernels() is None:
        return {"available": False, "seconds": 0.0, "reason": NUMBA_IMPORT_ERROR or "disabled"}
    r = np.random.default_rng(0)
    f32 = np.float32
    for n in (1, 2):
        u = r.standard_normal((1, 6, 4), dtype=f32)
        bc = r.standard_normal((1, 6, 2, n), dtype=f32)
        scan_tokens(u, u, -np.ones((4, n), f32), bc, bc, np.ones(4, f32), np.zeros(4, f32), True, threads)
    x = r.standard_normal((1, 6, 4), dtype=f32)
    for n in (1, 2):
        ss2d_scan(x, r.standard_normal((1, 6, 4 * (1 + 2 * n)), dtype=f32), r.standard_normal((4, 4, 1), dtype=f32),
                  -np.ones((16, n), f32), np.ones(16, f32), np.zeros(16, f32), 2, 3, threads)
    seconds = time.perf_counter() - t0
    CACHE_INFO["compile_s"] = seconds
    return {"available": True, "seconds": seconds, "cached": CACHE_INFO["cached"], "reason": CACHE_INFO["reason"]}


__all__ = [
    "NUMBA_AVAILABLE",
    "available",
    "kernels",
    "scan_tokens",
    "ss2d_scan",
    "recurrence",
    "math_check",
    "warmup",
    "CACHE_INFO",
]
