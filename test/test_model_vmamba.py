"""VMamba backbone: stage shapes per config, 4-direction cross-scan, backend parity, gradients."""

import pytest
import torch

from scmpr_ros.errors import ScmprError
from scmpr_ros.model.vmamba import SS2D, VMAMBA_CONFIGS, VMamba


@pytest.mark.parametrize(
    "name,size",
    [("nano", (64, 128)), ("micro", (64, 128)), ("tiny", (32, 64))],  # tiny only at a tiny input
)
def test_stage_shapes_per_config(name, size):
    torch.manual_seed(0)
    m = VMamba(name).eval()
    spec = VMAMBA_CONFIGS[name]
    assert m.out_channels == spec.dims
    h, w = size
    with torch.no_grad():
        outs = m.forward_features(torch.randn(2, 3, h, w))
    assert len(outs) == 4
    for i, (o, c) in enumerate(zip(outs, spec.dims)):
        s = 2 ** (i + 2)
        assert tuple(o.shape) == (2, c, -(-h // s), -(-w // s))
        assert torch.isfinite(o).all()


def test_tiny_is_vmamba_t():
    spec = VMAMBA_CONFIGS["tiny"]
    assert spec.dims == (96, 192, 384, 768) and spec.depths == (2, 2, 5, 2)
    m = VMamba("tiny")
    op = m.stages[0][0].op
    assert op.d_inner == 192 and op.d_state == 1  # ssm_ratio 2, d_state 1
    assert op.in_proj.out_features == op.d_inner  # "noz": no gating branch
    n = sum(p.numel() for p in m.parameters())
    assert 25e6 < n < 35e6  # VMamba-T backbone is ~30 M parameters


def test_unknown_config_is_refused():
    with pytest.raises(ScmprError, match="unknown VMamba size"):
        VMamba("huge")


def test_ss2d_output_depends_on_every_pixel():
    """Four scan directions: every output location sees the whole map (one direction would not)."""
    torch.manual_seed(0)
    op = SS2D(8, d_state=1, ssm_ratio=2.0)
    x = torch.randn(1, 5, 6, 8, requires_grad=True)
    y = op(x)
    for i, j in [(0, 0), (4, 5), (2, 3)]:
        (g,) = torch.autograd.grad(y[0, i, j].sum(), x, retain_graph=True)
        assert (g.abs().sum(-1) > 0).all(), f"output ({i},{j}) misses some inputs"


def test_ss2d_cross_scan_matches_explicit_directions():
    """forward_core equals scanning the four sequences explicitly and merging them back."""
    torch.manual_seed(1)
    op = SS2D(8, d_state=1, ssm_ratio=1.0, scan_backend="reference").eval()
    b, h, w, d = 1, 3, 4, 8
    x = torch.randn(b, h, w, d)
    with torch.no_grad():
        y = op.forward_core(x)
        from scmpr_ros.model.scan import selective_scan_reference

        seqs = [x.reshape(b, h * w, d), x.transpose(1, 2).reshape(b, h * w, d)]
        seqs += [s.flip(1) for s in seqs]
        total = torch.zeros(b, h, w, d)
        A = -torch.exp(op.A_logs)
        for k, s in enumerate(seqs):
            proj = s @ op.x_proj_weight[k].t()
            dt_r, bm, cm = proj.split([op.dt_rank, 1, 1], -1)
            dt = dt_r @ op.dt_projs_weight[k].t()
            yk = selective_scan_reference(
                s.transpose(1, 2),
                dt.transpose(1, 2),
                A[k * d : (k + 1) * d],
                bm.transpose(1, 2),
                cm.transpose(1, 2),
                op.Ds[k * d : (k + 1) * d],
                None,
                op.dt_projs_bias[k],
                True,
            ).transpose(1, 2)
            if k >= 2:
                yk = yk.flip(1)
            if k % 2 == 1:
                yk = yk.reshape(b, w, h, d).transpose(1, 2)
            total += yk.reshape(b, h, w, d)
    assert (y - total).abs().max() < 1e-5


def test_torch_backend_matches_reference_backend_in_the_backbone():
    torch.manual_seed(2)
    m = VMamba("nano").eval()
    x = torch.randn(1, 3, 32, 64)
    with torch.no_grad():
        fast = m.forward_features(x)
        m.set_scan_backend("reference")
        ref = m.forward_features(x)
    for a, b in zip(fast, ref):
        assert (a - b).abs().max() < 1e-4


def test_backbone_gradients_reach_every_parameter():
    torch.manual_seed(3)
    m = VMamba("nano").train()
    outs = m.forward_features(torch.randn(2, 3, 32, 64))
    sum(o.square().mean() for o in outs).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().max() > 0, name
