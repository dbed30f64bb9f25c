"""Selective scan: the pure-torch CPU path against the sequential reference (forward + gradients)."""

import math

import pytest
import torch

from scmpr_ros.model import scan
from scmpr_ros.model.scan import (
    ScanBackendError,
    linear_recurrence,
    resolve_backend,
    selective_scan,
    selective_scan_reference,
)

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def _inputs(b, d, n, length, groups=None, with_z=True, seed=0):
    g = torch.Generator().manual_seed(seed)
    shape_bc = (b, n, length) if groups is None else (b, groups, n, length)
    return [
        torch.randn(b, d, length, generator=g),
        0.5 * torch.randn(b, d, length, generator=g),
        -(torch.rand(d, n, generator=g) + 0.1),
        torch.randn(*shape_bc, generator=g),
        torch.randn(*shape_bc, generator=g),
        torch.randn(d, generator=g),
        torch.randn(b, d, length, generator=g) if with_z else None,
        0.1 * torch.randn(d, generator=g),
    ]


def _run(fn, inputs, weight, **kw):
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in inputs]
    y = fn(*leaves, delta_softplus=True, **kw)
    (y * weight).sum().backward()
    return y.detach(), [None if t is None else t.grad for t in leaves]


@pytest.mark.parametrize(
    "b,d,n,length,groups,with_z",
    [
        (2, 8, 4, 4096, None, True),  # long sequence: several chunks, padding-free
        (2, 8, 2, 4099, 2, False),  # grouped B/C, a padded last chunk
        (1, 6, 1, 300, 3, True),  # d_state 1 as in VMamba
        (2, 4, 3, 17, None, True),  # shorter than two chunks: one sequential loop
        (1, 2, 1, 1, None, False),
    ],
)
def test_cpu_scan_matches_reference_forward_and_grads(b, d, n, length, groups, with_z):
    inputs = _inputs(b, d, n, length, groups, with_z)
    # loss weights ~ 1/sqrt(B L) keep gradients summed over all steps (A, D, delta_bias) O(1-10)
    weight = torch.randn(b, d, length, generator=torch.Generator().manual_seed(1)) / math.sqrt(b * length)
    y_fast, g_fast = _run(selective_scan, inputs, weight, backend="torch")
    y_ref, g_ref = _run(selective_scan_reference, inputs, weight)
    assert y_fast.shape == (b, d, length)
    assert (y_fast - y_ref).abs().max().item() < 1e-4
    for name, gf, gr in zip(NAMES, g_fast, g_ref):
        if gr is None:
            continue
        assert torch.isfinite(gf).all(), name
        if length > 1 or name != "A":  # with one step, A only multiplies the zero initial state
            assert gr.abs().max() > 0, name
        assert (gf - gr).abs().max().item() < 1e-4, name


def test_linear_recurrence_chunked_equals_sequential_with_initial_state():
    g = torch.Generator().manual_seed(3)
    a = torch.rand(2, 1000, 5, generator=g)
    b = torch.randn(2, 1000, 5, generator=g)
    h0 = torch.randn(2, 5, generator=g)
    expect = []
    h = h0
    for t in range(1000):
        h = a[:, t] * h + b[:, t]
        expect.append(h)
    expect = torch.stack(expect, 1)
    for chunk in (0, 7, 32, 999):
        assert torch.allclose(linear_recurrence(a, b, h0, chunk=chunk), expect, atol=1e-5)


def test_half_precision_input_keeps_dtype_and_is_close():
    inputs = _inputs(1, 4, 2, 64, None, True)
    half = [None if t is None else t.to(torch.bfloat16) for t in inputs]
    y = selective_scan(*half, delta_softplus=True, backend="torch")
    assert y.dtype == torch.bfloat16
    y_ref = selective_scan_reference(*[None if t is None else t.float() for t in half], delta_softplus=True)
    assert (y.float() - y_ref).abs().max() < 0.05 * y_ref.abs().max()


def test_backend_resolution_and_errors(monkeypatch):
    cpu = torch.device("cpu")
    fast = "numba" if scan.numba_available() else "torch"
    assert resolve_backend("auto", cpu) == fast  # inference: the compiled kernel when there is one
    assert resolve_backend("cpu", cpu) == fast
    assert resolve_backend("auto", cpu, grad=True) == "torch"  # training: the differentiable path
    assert resolve_backend("torch", cpu) == "torch"
    assert resolve_backend("reference", cpu) == "reference"
    with pytest.raises(ScanBackendError, match="unknown backend"):
        resolve_backend("triton", cpu)
    monkeypatch.setattr(scan, "_MAMBA_TRIED", True)
    monkeypatch.setattr(scan, "_MAMBA_FN", None)
    with pytest.raises(ScanBackendError, match=r"pip install \.\[cuda\]"):
        resolve_backend("cuda", cpu)
    inputs = _inputs(1, 4, 2, 8)
    with pytest.raises(ScanBackendError, match="A must be"):
        selective_scan(inputs[0], inputs[1], inputs[2][:3], *inputs[3:])


@pytest.mark.parametrize("n,groups", [(1, 4), (3, None), (1, None)])
def test_inference_path_matches_reference(n, groups):
    """Without autograd the CPU path runs in place; it must give the same numbers."""
    inputs = _inputs(2, 8, n, 777, groups, True, seed=5)
    with torch.no_grad():
        y_fast = selective_scan(*inputs, delta_softplus=True, backend="torch")
        y_ref = selective_scan_reference(*inputs, delta_softplus=True)
        # and without bias / softplus / D / z
        bare = [inputs[0], inputs[1].abs()] + inputs[2:5] + [None, None, None]  # delta > 0 without softplus
        y_bare = selective_scan(*bare, backend="torch")
        y_bare_ref = selective_scan_reference(*bare)
    assert (y_fast - y_ref).abs().max().item() < 1e-4
    assert (y_bare - y_bare_ref).abs().max().item() < 1e-4
    # the caller's tensors are not modified by the in-place path
    assert torch.equal(inputs[0], _inputs(2, 8, n, 777, groups, True, seed=5)[0])
    assert torch.equal(inputs[1], _inputs(2, 8, n, 777, groups, True, seed=5)[1])


def test_token_major_entry_matches_mamba_layout():
    inputs = _inputs(2, 8, 1, 200, 4, False, seed=9)
    u, delta, A, B, C, D, _, bias = inputs
    y = scan.selective_scan_token_major(
        u.transpose(1, 2),
        delta.transpose(1, 2),
        A,
        B.permute(0, 3, 1, 2),
        C.permute(0, 3, 1, 2),
        D,
        bias,
        True,
        backend="torch",
    )
    y_ref = scan.selective_scan_token_major(
        u.transpose(1, 2),
        delta.transpose(1, 2),
        A,
        B.permute(0, 3, 1, 2),
        C.permute(0, 3, 1, 2),
        D,
        bias,
        True,
        backend="reference",
    )
    assert y.shape == (2, 200, 8)
    assert (y - y_ref).abs().max().item() < 1e-4
