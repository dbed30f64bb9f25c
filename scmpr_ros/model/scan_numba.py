"""Compiled CPU selective scan for inference (numba, no autograd), token-major.

Per step t and channel c (Δ = softplus(δ + b_Δ) = max(x, 0) + log1p(e^-|x|)):
    h_t = exp(Δ_t A) ⊙ h_{t-1} + Δ_t B_t u_t,   y_t = C_t · h_t + D u_t
all fused in one pass that reads the contiguous channel vector of each token (no transposes, no
temporaries), parallel over (batch, group, channel block) on a small pool of GIL-free threads.
``exp`` (Cephes-style, ≈1 ulp) and ``ln(1 + t)`` on [0, 1] (one degree-8 polynomial, < 2e-7) are
branch-free float32 polynomials so LLVM vectorises the channel loop (no SVML here).
``ss2d_scan`` runs the four VMamba cross-scan directions (row, column, both reversed) of a
channels-last map in one call and sums them back into place (the cross-merge), so neither the
cross-scan copies nor the merge exist as tensors.  Caching: ``cache=True`` in numba's cache dir
(falls back to an in-memory JIT when no cache directory is writable).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

try:  # numba is optional: without it the pure-torch scan is used
    from llvmlite import ir as _llir
    from numba import carray, njit
    from numba.core import types as _nbt
    from numba.extending import intrinsic

    NUMBA_AVAILABLE = True
    NUMBA_IMPORT_ERROR = ""
except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
    NUMBA_AVAILABLE = False
    NUMBA_IMPORT_ERROR = f"{type(exc).__name__}: {exc}"

# one channel block per thread, at least 32 channels wide (each step of a block has a fixed cost, so
# narrower blocks run measurably slower per element: 1.97 / 3.12 / 4.49 ns at 768 / 192 / 96 channels)
_BLOCK_MULTIPLE = 32
_TASKS_PER_THREAD = 1

if NUMBA_AVAILABLE:

    @intrinsic
    def _i32_as_f32(typingctx, x):  # noqa: ARG001
        sig = _nbt.float32(_nbt.int32)

        def codegen(context, builder, signature, args):  # noqa: ARG001
            return builder.bitcast(args[0], _llir.FloatType())

        return sig, codegen

    @intrinsic
    def _ptr(typingctx, arr, offset):  # noqa: ARG001
        """Pointer to element ``offset`` of a C-contiguous array's flat data."""
        sig = _nbt.CPointer(arr.dtype)(arr, _nbt.intp)

        def codegen(context, builder, signature, args):
            ary = context.make_array(signature.args[0])(context, builder, args[0])
            return builder.gep(ary.data, [args[1]])

        return sig, codegen

    @intrinsic
    def _f32_as_i32(typingctx, x):  # noqa: ARG001
        sig = _nbt.int32(_nbt.float32)

        def codegen(context, builder, signature, args):  # noqa: ARG001
            return builder.bitcast(args[0], _llir.IntType(32))

        return sig, codegen

    # fast-math without reassociation: log1p's (1 + y) - 1 must stay as written
    _FASTMATH = {"nnan", "ninf", "nsz", "arcp", "contract", "afn"}
    _JIT_INLINE = {"inline": "always", "fastmath": _FASTMATH, "nogil": True}

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
    def _log1p01(t):
        """ln(1 + t) for t in [0, 1]: t * q(t), q of degree 8 fitted on Chebyshev nodes (abs error
        < 1.1e-7 in float32, no range reduction), Estrin order."""
        t2 = t * t
        t4 = t2 * t2
        a = np.float32(-0.49999502301216125) * t + np.float32(1.0)
        b = np.float32(-0.24844379723072052) * t + np.float32(0.33319273591041565)
        c = np.float32(-0.13674813508987427) * t + np.float32(0.19111457467079163)
        d = np.float32(-0.029588690027594566) * t + np.float32(0.07836206257343292)
        q = (a + t2 * b) + t4 * ((c + t2 * d) + t4 * np.float32(0.005253490526229143))
        return t * q

    @njit(**_JIT_INLINE)
    def _softplus(x):
        """log(1 + e^x) = max(x, 0) + ln(1 + e^-|x|): no overflow; e^-|x| in (0, 1], so ln(1 + .) is
        one polynomial on [0, 1] (absolute error < 2e-7); below e^-80 the term is 0 (no denormals)."""
        ax = abs(x)
        tail = _log1p01(_fexp(-ax))
        return max(x, np.float32(0.0)) + (tail if ax < np.float32(80.0) else np.float32(0.0))

    # Kernels are serial over a range of tasks and release the GIL; ``_run_tasks`` spreads the tasks
    # over a small pool of Python threads.  (numba's parallel=True would bring a second OpenMP runtime
    # next to torch's: its idle threads spin against torch's on a loaded machine, it is not fork-safe,
    # and it compiles several times slower.)
    _JIT_KERNEL = {"fastmath": _FASTMATH, "nogil": True, "boundscheck": False, "error_model": "numpy"}

    # Rows are taken as carray(_ptr(a, flat offset), n): C-contiguous 1-D arrays without a reference
    # count, so the channel loops vectorise and a new row per step costs nothing.  Blocks are as wide
    # as possible (one per thread): each step has a fixed cost, and wide rows stream better.

    @njit(**_JIT_INLINE)
    def _row(a, offset, n):
        return carray(_ptr(a, offset), n)

    def _scan_tokens_py(u, delta, At, Bm, Cm, Dv, bias, softplus, out, per, nsub, task_lo, task_hi):
        """u, delta, out (Bn, L, Dc); At (N, Dc); Bm, Cm (Bn, L, G, N); Dv, bias (Dc,); all C-contiguous.

        Per step two passes over the channel block: Δ (softplus) into a small buffer, then the
        recurrence; two short loop bodies overlap better than one long dependency chain."""
        bn, length, dc = u.shape
        n_state = At.shape[0]
        groups = Bm.shape[2]
        sub = (per + nsub - 1) // nsub
        for task in range(task_lo, task_hi):  # tasks: bn * groups * nsub
            b = task // (groups * nsub)
            g = (task // nsub) % groups
            lo = g * per + (task % nsub) * sub
            hi = min(g * per + per, lo + sub)
            cnt = hi - lo
            if cnt <= 0:
                continue
            Db = _row(Dv, lo, cnt)
            bb = _row(bias, lo, cnt)
            h = np.zeros((n_state, cnt), np.float32)
            dtb = np.empty(cnt, np.float32)
            yb = np.empty(cnt, np.float32)
            for t in range(length):
                off = (b * length + t) * dc + lo
                ut = _row(u, off, cnt)
                xt = _row(delta, off, cnt)
                ot = _row(out, off, cnt)
                if softplus:
                    for i in range(cnt):
                        dtb[i] = _softplus(xt[i] + bb[i])
                else:
                    for i in range(cnt):
                        dtb[i] = xt[i] + bb[i]
                if n_state == 1:
                    av = _row(At, lo, cnt)
                    h0 = _row(h, 0, cnt)
                    bt = Bm[b, t, g, 0]
                    ct = Cm[b, t, g, 0]
                    for i in range(cnt):
                        dt = dtb[i]
                        uc = ut[i]
                        hh = _fexp(dt * av[i]) * h0[i] + dt * bt * uc
                        h0[i] = hh
                        ot[i] = hh * ct + Db[i] * uc
                else:
                    for i in range(cnt):
                        yb[i] = Db[i] * ut[i]
                    for k in range(n_state):
                        av = _row(At, k * dc + lo, cnt)
                        hk = _row(h, k * cnt, cnt)
                        bt = Bm[b, t, g, k]
                        ct = Cm[b, t, g, k]
                        for i in range(cnt):
                            dt = dtb[i]
                            hh = _fexp(dt * av[i]) * hk[i] + dt * bt * ut[i]
                            hk[i] = hh
                            yb[i] += hh * ct
                    for i in range(cnt):
                        ot[i] = yb[i]

    @njit(**_JIT_INLINE)
    def _token(k, t, length, height, width):
        """Row-major token index of scan step t in direction k (0 rows, 1 columns, 2 / 3 reversed)."""
        tt = t if k < 2 else length - 1 - t
        if k % 2 == 0:
            return tt
        return (tt % height) * width + tt // height

    @njit(**_JIT_INLINE)
    def _delta_into(dtb, pr, Wdt, bb, k, rank, d, lo, cnt):
        """dtb = softplus(b_Δ + W_Δ δ) over the channel block of direction k."""
        for i in range(cnt):
            dtb[i] = bb[i]
        for r in range(rank):
            s = pr[r]
            wr = _row(Wdt, (k * rank + r) * d + lo, cnt)
            for i in range(cnt):
                dtb[i] += wr[i] * s
        for i in range(cnt):
            dtb[i] = _softplus(dtb[i])

    def _ss2d_scan_py(x, proj, Wdt, At, Dv, bias, out, height, width, nsub, task_lo, task_hi):
        """Four-direction cross-scan + Δ projection + scan + cross-merge of a channels-last map.

        x, out (Bn, H*W, d); proj (Bn, H*W, K*(R+2N)): per direction k the x_proj outputs
        [Δ_r (R) | B (N) | C (N)] at k*(R+2N); Wdt (K, R, d) (W_Δ transposed); At (K, N, d);
        Dv, bias (K, d); all C-contiguous.  Direction k: 0 row-major, 1 column-major, 2 / 3 the
        same reversed.  out (zeroed by the caller) += Σ_k y_k(token of direction k that lies at p)."""
        bn, length, d = x.shape
        n_dir = Wdt.shape[0]
        rank = Wdt.shape[1]
        n_state = At.shape[1]
        wp = rank + 2 * n_state
        sub = (d + nsub - 1) // nsub
        for task in range(task_lo, task_hi):  # tasks: bn * nsub
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
                base = k * wp
                Db = _row(Dv, k * d + lo, cnt)
                bb = _row(bias, k * d + lo, cnt)
                for t in range(length):
                    row = b * length + _token(k, t, length, height, width)
                    ut = _row(x, row * d + lo, cnt)
                    ot = _row(out, row * d + lo, cnt)
                    pr = _row(proj, row * (n_dir * wp) + base, wp)
                    _delta_into(dtb, pr, Wdt, bb, k, rank, d, lo, cnt)
                    if n_state == 1:
                        av = _row(At, k * d + lo, cnt)
                        h0 = _row(h, 0, cnt)
                        bt = pr[rank]
                        ct = pr[rank + 1]
                        for i in range(cnt):
                            dt = dtb[i]
                            uc = ut[i]
                            hh = _fexp(dt * av[i]) * h0[i] + dt * bt * uc
                            h0[i] = hh
                            ot[i] += hh * ct + Db[i] * uc
                    else:
                        for i in range(cnt):
                            yb[i] = Db[i] * ut[i]
                        for s_i in range(n_state):
                            av = _row(At, (k * n_state + s_i) * d + lo, cnt)
                            hs = _row(h, s_i * cnt, cnt)
                            bt = pr[rank + s_i]
                            ct = pr[rank + n_state + s_i]
                            for i in range(cnt):
                                dt = dtb[i]
                                hh = _fexp(dt * av[i]) * hs[i] + dt * bt * ut[i]
                                hs[i] = hh
                                yb[i] += hh * ct
                        for i in range(cnt):
                            ot[i] += yb[i]

    def _recurrence_py(a, b, out, nsub, task_lo, task_hi):
        """The memory-traffic limit: h_t = a_t h_{t-1} + b_t over contiguous (L, d) arrays."""
        length, d = a.shape
        sub = (d + nsub - 1) // nsub
        for task in range(task_lo, task_hi):  # tasks: nsub
            lo = task * sub
            hi = min(d, lo + sub)
            cnt = hi - lo
            if cnt <= 0:
                continue
            h = np.zeros(cnt, np.float32)
            for t in range(length):
                at = _row(a, t * d + lo, cnt)
                bt = _row(b, t * d + lo, cnt)
                ot = _row(out, t * d + lo, cnt)
                for i in range(cnt):
                    hh = at[i] * h[i] + bt[i]
                    h[i] = hh
                    ot[i] = hh

    def _math_check_py(x):
        """(exp, softplus) of a float32 vector through the kernels' own functions (for tests)."""
        e = np.empty_like(x)
        s = np.empty_like(x)
        for i in range(x.shape[0]):
            e[i] = _fexp(x[i])
            s[i] = _softplus(x[i])
        return e, s


_KERNELS: dict | None = None
_KERNEL_LOCK = threading.Lock()
CACHE_INFO: dict = {"cached": None, "compile_s": None, "reason": ""}


def _compile(fn, cache: bool):
    opts = dict(_JIT_KERNEL)
    if cache:
        try:
            return njit(cache=True, **opts)(fn)
        except Exception as exc:  # noqa: BLE001 - e.g. "no locator available": no writable cache dir
            CACHE_INFO["reason"] = f"numba cache unavailable ({type(exc).__name__}: {exc}); compiling in memory"
    return njit(cache=False, **opts)(fn)


def kernels() -> dict | None:
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
                "math": _compile(_math_check_py, cache),
            }
            CACHE_INFO["cached"] = cache and not CACHE_INFO["reason"]
    return _KERNELS


def available() -> bool:
    return kernels() is not None


def _nsub(parts: int, channels: int, threads: int) -> int:
    """Channel blocks per (batch, group): one per thread over all parts, at least 32 channels each."""
    want = max(1, -(-threads * _TASKS_PER_THREAD // max(parts, 1)))
    return max(1, min(want, channels // _BLOCK_MULTIPLE))


_POOL: ThreadPoolExecutor | None = None
_POOL_PID = 0
_POOL_LOCK = threading.Lock()


def _pool(workers: int) -> ThreadPoolExecutor:
    """A process-wide pool of idle-blocking worker threads (re-created after a fork, grown on demand)."""
    global _POOL, _POOL_PID
    with _POOL_LOCK:
        if _POOL is None or os.getpid() != _POOL_PID or _POOL._max_workers < workers:
            _POOL = ThreadPoolExecutor(max_workers=max(workers, 1), thread_name_prefix="scmpr-scan")
            _POOL_PID = os.getpid()
        return _POOL


def _run_tasks(kernel, args: tuple, ntask: int, threads: int) -> int:
    """kernel(*args, lo, hi) over tasks [0, ntask) split into ``threads`` contiguous ranges; the
    calling thread runs the first range.  Returns the number of threads used."""
    n = max(1, min(int(threads), ntask))
    if n == 1:
        kernel(*args, 0, ntask)
        return 1
    bounds = [ntask * i // n for i in range(n + 1)]
    pool = _pool(n - 1)
    futures = [pool.submit(kernel, *args, bounds[i], bounds[i + 1]) for i in range(1, n)]
    try:
        kernel(*args, bounds[0], bounds[1])
    finally:
        for f in futures:
            f.result()
    return n


def _c32(a: np.ndarray, name: str, shape: tuple) -> np.ndarray:
    """C-contiguous float32 (the kernels address rows by flat offset), shape checked."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    if a.shape != shape:
        raise ValueError(f"scan_numba: {name} must have shape {shape}, got {a.shape}")
    return a


def _out(out: np.ndarray | None, shape: tuple, zero: bool) -> np.ndarray:
    if out is None:
        return np.zeros(shape, np.float32) if zero else np.empty(shape, np.float32)
    if out.shape != shape or out.dtype != np.float32 or not out.flags.c_contiguous or not out.flags.writeable:
        raise ValueError(f"scan_numba: out must be a writeable C-contiguous float32 array of shape {shape}")
    if zero:
        out.fill(0.0)
    return out


def scan_tokens(
    u: np.ndarray,
    delta: np.ndarray,
    A: np.ndarray,
    B: np.ndarray,
    C: np.ndarray,
    D: np.ndarray | None,
    delta_bias: np.ndarray | None,
    delta_softplus: bool,
    threads: int,
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Token-major selective scan on float32 numpy arrays: u, delta (Bn, L, Dc); A (Dc, N);
    B, C (Bn, L, G, N) with G | Dc.  Returns y (Bn, L, Dc)."""
    k = kernels()
    bn, length, dc = u.shape
    n_state = A.shape[1]
    groups = B.shape[2]
    if groups < 1 or dc % groups:
        raise ValueError(f"scan_numba: {groups} B/C groups do not divide {dc} channels")
    u = _c32(u, "u", (bn, length, dc))
    delta = _c32(delta, "delta", (bn, length, dc))
    At = _c32(A.T, "A^T", (n_state, dc))
    B = _c32(B, "B", (bn, length, groups, n_state))
    C = _c32(C, "C", (bn, length, groups, n_state))
    Dv = np.zeros(dc, np.float32) if D is None else _c32(D, "D", (dc,))
    bias = np.zeros(dc, np.float32) if delta_bias is None else _c32(delta_bias, "delta_bias", (dc,))
    out = _out(out, (bn, length, dc), zero=False)
    per = dc // groups
    nsub = _nsub(bn * groups, per, threads)
    _run_tasks(
        k["tokens"], (u, delta, At, B, C, Dv, bias, bool(delta_softplus), out, per, nsub), bn * groups * nsub, threads
    )
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
    out: np.ndarray | None = None,
) -> np.ndarray:
    """Fused 4-direction SS2D core (see the module docstring) on float32 arrays: x (Bn, H*W, d)
    channels-last tokens; proj (Bn, H*W, K(R+2N)) = x @ [W_x,0; ...; W_x,K-1]^T; dt_weight (K, d, R);
    A (K d, N); D, delta_bias (K d,).  Returns the merged y (Bn, H*W, d)."""
    k = kernels()
    bn, length, d = x.shape
    n_dir, _, rank = dt_weight.shape
    n_state = A.shape[1]
    if n_dir != 4 or length != height * width:
        raise ValueError(
            f"scan_numba.ss2d_scan: 4 directions over H*W tokens needed, got {n_dir} and {length} != {height}*{width}"
        )
    x = _c32(x, "x", (bn, length, d))
    proj = _c32(proj, "proj", (bn, length, n_dir * (rank + 2 * n_state)))
    Wdt = _c32(dt_weight.transpose(0, 2, 1), "dt_weight^T", (n_dir, rank, d))
    At = _c32(A.reshape(n_dir, d, n_state).transpose(0, 2, 1), "A", (n_dir, n_state, d))
    Dv = _c32(D.reshape(n_dir, d), "D", (n_dir, d))
    bias = _c32(delta_bias.reshape(n_dir, d), "delta_bias", (n_dir, d))
    out = _out(out, (bn, length, d), zero=True)
    nsub = _nsub(bn, d, threads)
    _run_tasks(k["ss2d"], (x, proj, Wdt, At, Dv, bias, out, int(height), int(width), nsub), bn * nsub, threads)
    return out


def recurrence(a: np.ndarray, b: np.ndarray, threads: int, out: np.ndarray | None = None) -> np.ndarray:
    """h_t = a_t h_{t-1} + b_t over contiguous float32 (L, d) arrays (the benchmark's limit)."""
    k = kernels()
    a = _c32(a, "a", b.shape)
    b = _c32(b, "b", a.shape)
    out = _out(out, a.shape, zero=False)
    nsub = _nsub(1, a.shape[1], threads)
    _run_tasks(k["recurrence"], (a, b, out, nsub), nsub, threads)
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
        ss2d_scan(
            x,
            r.standard_normal((1, 6, 4 * (1 + 2 * n)), dtype=f32),
            r.standard_normal((4, 4, 1), dtype=f32),
            -np.ones((16, n), f32),
            np.ones(16, f32),
            np.zeros(16, f32),
            2,
            3,
            threads,
        )
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
