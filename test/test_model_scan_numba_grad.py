"""The numba backward of the fused SS2D core (scan_numba_autograd): gradients of every input against a
float64 autograd reference (each direction alone and all four, odd sizes, d_state 1 and > 1, with and
without D / b_Δ), thread-count invariance, SS2D / VSSBlock parity with the torch backend, and dispatch
(training takes the numba backward under ``auto``; SCMPR_DISABLE_NUMBA=1 forces torch)."""

import pytest
import torch
import torch.nn.functional as F

from scmpr_ros.model import scan_numba
from scmpr_ros.model.vmamba import SS2D, VSSBlock

pytestmark = pytest.mark.skipif(not scan_numba.NUMBA_AVAILABLE, reason="numba is not installed")

K = 4
NAMES = ("x", "proj", "dt_weight", "A", "D", "delta_bias")


def _order(k: int, h: int, w: int) -> torch.Tensor:
    """Row-major token index of each scan step of direction k (0 rows, 1 columns, 2 / 3 reversed)."""
    idx = torch.arange(h * w).view(h, w)
    o = idx.reshape(-1) if k % 2 == 0 else idx.t().reshape(-1)
    return o if k < 2 else o.flip(0)


def _reference(x, proj, dt_weight, A, D, delta_bias, h, w):
    """The fused core as a plain sequential loop (differentiable in any dtype; float64 here)."""
    bn, length, d = x.shape
    rank, n = dt_weight.shape[2], A.shape[1]
    wp = rank + 2 * n
    out = torch.zeros_like(x)
    for k in range(K):
        o = _order(k, h, w)
        u = x[:, o]
        dt_r, b_k, c_k = proj[:, o, k * wp : (k + 1) * wp].split([rank, n, n], -1)
        delta = F.softplus(dt_r @ dt_weight[k].t() + delta_bias.view(K, d)[k])
        a_k = A.view(K, d, n)[k]
        state = x.new_zeros(bn, d, n)
        ys = []
        for t in range(length):
            state = torch.exp(delta[:, t, :, None] * a_k) * state + (delta[:, t] * u[:, t])[..., None] * b_k[:, t, None]
            ys.append((state * c_k[:, t, None]).sum(-1))
        out = out.index_add(1, o, torch.stack(ys, 1) + u * D.view(K, d)[k])
    return out


def _inputs(bn, h, w, d, rank, n, seed=0, direction=None, with_d=True, with_bias=True):
    g = torch.Generator().manual_seed(seed)
    wp = rank + 2 * n
    x = torch.randn(bn, h * w, d, generator=g)
    proj = torch.randn(bn, h * w, K * wp, generator=g)
    dt_weight = 0.5 * torch.randn(K, d, rank, generator=g)
    A = -(2 * torch.rand(K * d, n, generator=g) + 0.05)
    D = torch.randn(K * d, generator=g) if with_d else torch.zeros(K * d)
    bias = torch.randn(K * d, generator=g) - 1.0 if with_bias else torch.zeros(K * d)
    if direction is not None:  # only this direction reaches the output: the others' C and D are 0
        for k in set(range(K)) - {direction}:
            proj[..., k * wp + rank + n : (k + 1) * wp] = 0.0
            D[k * d : (k + 1) * d] = 0.0
    return [x, proj, dt_weight, A, D, bias]


def _grads(fn, inputs, weight, dtype):
    leaves = [t.to(dtype).requires_grad_() for t in inputs]
    y = fn(*leaves)
    grads = torch.autograd.grad((y * weight.to(dtype)).sum(), leaves)
    return y, grads


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm().clamp_min(1e-30)).item()


@pytest.mark.parametrize(
    "bn,h,w,d,rank,n,threads,direction,with_d,with_bias",
    [
        (2, 3, 5, 8, 2, 1, 1, 0, True, True),  # each direction alone, odd sides, d_state 1 and > 1
        (2, 5, 3, 8, 2, 1, 2, 1, True, True),
        (1, 3, 7, 12, 3, 2, 1, 2, True, True),
        (2, 7, 3, 6, 1, 3, 2, 3, True, True),
        (1, 5, 7, 70, 2, 1, 2, None, True, True),  # all four; 70 channels over 2 threads: 2 channel blocks
        (2, 5, 3, 10, 2, 2, 2, None, False, False),  # D = 0 and b_Δ = 0
        (1, 1, 9, 5, 1, 1, 1, None, True, True),  # one row: columns are single tokens
        (1, 1, 1, 4, 1, 2, 1, None, True, True),  # a single token
    ],
)
def test_gradients_match_float64_reference(bn, h, w, d, rank, n, threads, direction, with_d, with_bias):
    from scmpr_ros.model.scan_numba_autograd import ss2d_scan_autograd

    inputs = _inputs(bn, h, w, d, rank, n, seed=h * w + d, direction=direction, with_d=with_d, with_bias=with_bias)
    weight = torch.randn(bn, h * w, d, generator=torch.Generator().manual_seed(1))
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        y, got = _grads(lambda *a: ss2d_scan_autograd(*a, h, w), inputs, weight, torch.float32)
    finally:
        torch.set_num_threads(old)
    y_ref, want = _grads(lambda *a: _reference(*a, h, w), inputs, weight, torch.float64)
    assert y.dtype == torch.float32 and _rel(y, y_ref) < 1e-5
    for name, g, g_ref in zip(NAMES, got, want):
        assert g.shape == g_ref.shape and g.dtype == torch.float32, name
        assert _rel(g, g_ref) < 1e-4, (name, _rel(g, g_ref))
        assert g_ref.norm() > 0 or (name == "A" and h * w == 1), name  # one token: h_{-1} = 0, no ∂A


def test_gradients_do_not_depend_on_the_thread_count():
    from scmpr_ros.model.scan_numba_autograd import ss2d_scan_autograd

    inputs = _inputs(3, 4, 9, 96, 3, 1, seed=5)  # 96 channels: 1, 2 or 3 blocks per batch row
    weight = torch.randn(3, 36, 96)
    old = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2, 6):
            torch.set_num_threads(threads)
            results.append(_grads(lambda *a: ss2d_scan_autograd(*a, 4, 9), inputs, weight, torch.float32))
    finally:
        torch.set_num_threads(old)
    (y0, g0), rest = results[0], results[1:]
    for y, grads in rest:
        assert torch.equal(y, y0)
        for name, a, b in zip(NAMES, grads, g0):
            assert _rel(a, b) < 1e-6, name  # only the order of the channel-block sums differs


def _perturbed(module: torch.nn.Module, seed: int) -> None:
    """Move the SS2D parameters away from their initialisation so every gradient term matters."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, SS2D):
                m.A_logs.add_(0.5 * torch.randn_like(m.A_logs))
                m.dt_projs_bias.add_(torch.randn_like(m.dt_projs_bias))
                m.Ds.add_(torch.randn_like(m.Ds))


def _loss_and_grads(module, x, weight, backend):
    for m in module.modules():
        if isinstance(m, SS2D):
            m.scan_backend = backend
    module.zero_grad(set_to_none=True)
    xg = x.clone().requires_grad_()
    loss = (module(xg) * weight).sum()
    loss.backward()
    return loss.item(), [xg.grad] + [p.grad for p in module.parameters()]


@pytest.mark.parametrize(
    "make,shape",
    [
        (lambda: SS2D(16, d_state=1), (2, 5, 7, 16)),
        (
            lambda: VSSBlock(24, d_state=2, ssm_ratio=2.0, mlp_ratio=2.0, drop_path=0.0, scan_backend="auto"),
            (2, 3, 8, 24),
        ),
    ],
)
def test_module_backward_matches_torch_backend(make, shape, monkeypatch):
    torch.manual_seed(0)
    module = make().train()
    _perturbed(module, seed=1)
    x = torch.randn(*shape)
    weight = torch.randn(*shape)
    calls = []
    from scmpr_ros.model import scan_numba_autograd

    real = scan_numba_autograd.ss2d_scan_autograd
    monkeypatch.setattr(scan_numba_autograd, "ss2d_scan_autograd", lambda *a: calls.append(1) or real(*a))
    loss_numba, g_numba = _loss_and_grads(module, x, weight, "auto")
    assert calls, "training under backend auto should take the numba backward"
    loss_torch, g_torch = _loss_and_grads(module, x, weight, "torch")
    assert len(calls) == 1
    assert abs(loss_numba - loss_torch) <= 1e-5 * max(1.0, abs(loss_torch))
    names = ["input"] + [name for name, _ in module.named_parameters()]
    for name, a, b in zip(names, g_numba, g_torch):
        assert a is not None and b is not None, name
        assert _rel(a, b) < 1e-4, (name, _rel(a, b))


def test_disable_numba_forces_the_torch_path_in_training(monkeypatch):
    op = SS2D(8, d_state=1).train()
    x = torch.randn(1, 3, 5, op.d_inner)
    assert op._fused_ok(x) and op._needs_grad(x)
    monkeypatch.setenv("SCMPR_DISABLE_NUMBA", "1")
    assert not op._fused_ok(x)
    monkeypatch.setattr(op, "forward_core_fused", lambda x: pytest.fail("numba path taken while disabled"))
    op(torch.randn(1, 3, 5, 8)).sum().backward()
    assert op.A_logs.grad is not None


def test_retain_graph_allows_a_second_backward():
    from scmpr_ros.model.scan_numba_autograd import ss2d_scan_autograd

    inputs = [t.requires_grad_() for t in _inputs(1, 3, 4, 8, 2, 1, seed=9)]
    y = ss2d_scan_autograd(*inputs, 3, 4)
    first = torch.autograd.grad(y[0, 0].sum(), inputs, retain_graph=True)
    second = torch.autograd.grad(y[0, 0].sum(), inputs)  # the saved Δ and states were not consumed
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_explicit_numba_backend_trains_the_fused_core():
    torch.manual_seed(2)
    op = SS2D(8, d_state=2, scan_backend="numba").train()
    y = op(torch.randn(1, 4, 3, 8))
    assert y.grad_fn is not None
    y.square().mean().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in op.parameters())
