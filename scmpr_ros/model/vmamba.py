"""VMamba backbone (SS2D, the "v05_noz" variant of VMamba v2) written channels-last.

SS2D: x -> Linear -> depthwise 3x3 conv -> SiLU -> 4-direction cross-scan (row, column and both
reversed) -> selective scan (d_state N, Δ = softplus(W_Δ x_Δ + b)) -> cross-merge (sum of the four
directions mapped back) -> LayerNorm -> Linear.  Block: x += SS2D(LN(x)); x += MLP(LN(x)).
Patch embedding: two stride-2 3x3 convs (stride 4); downsampling: a stride-2 3x3 conv + LN.
Activations stay (B, H, W, C) so the scan reads token-major tensors without transposes.
On the CPU (float32, scan backend auto | cpu | numba) the SS2D core is one x_proj matmul plus one fused
numba kernel (Δ projection, 4-direction scan and cross-merge in place, no copies); with gradients the
kernel's autograd version (``scan_numba_autograd``: it saves the states, and its backward is a
numba reverse-time pass) serves training.  The other backends (and SCMPR_DISABLE_NUMBA=1) keep the
differentiable cross-scan -> scan -> merge in torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from scmpr_ros.errors import ScmprError
from scmpr_ros.model.scan import resolve_backend, selective_scan_token_major


@dataclass(frozen=True)
class VMambaSpec:
    dims: tuple[int, int, int, int]
    depths: tuple[int, int, int, int]
    mlp_ratio: float


# tiny = VMamba-T (v2, "v05_noz"); micro / nano are the project's CPU sizes.
VMAMBA_CONFIGS: dict[str, VMambaSpec] = {
    "tiny": VMambaSpec(dims=(96, 192, 384, 768), depths=(2, 2, 5, 2), mlp_ratio=4.0),
    "micro": VMambaSpec(dims=(64, 128, 256, 512), depths=(1, 2, 4, 1), mlp_ratio=4.0),
    "nano": VMambaSpec(dims=(48, 96, 192, 384), depths=(1, 1, 3, 1), mlp_ratio=2.0),
}


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channels-last (B, H, W, C) tensor (plain nn.LayerNorm)."""


class DropPath(nn.Module):
    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = float(p)

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = torch.rand(x.shape[0], *([1] * (x.dim() - 1)), device=x.device, dtype=x.dtype) >= self.p
        return x * keep / (1.0 - self.p)


def _conv_cl(conv: nn.Conv2d, x: Tensor) -> Tensor:
    """Apply a Conv2d to a channels-last (B, H, W, C) tensor; returns channels-last."""
    return conv(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class SS2D(nn.Module):
    """2D selective scan with four scan directions (K = 4)."""

    K = 4

    def __init__(
        self,
        d_model: int,
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        dt_rank: int | None = None,
        d_conv: int = 3,
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        scan_backend: str = "auto",
    ):
        super().__init__()
        d_inner = int(ssm_ratio * d_model)
        self.d_inner = d_inner
        self.d_state = d_state
        self.dt_rank = dt_rank or math.ceil(d_model / 16)
        self.scan_backend = scan_backend
        self.in_proj = nn.Linear(d_model, d_inner, bias=False)
        self.conv2d = nn.Conv2d(d_inner, d_inner, d_conv, padding=(d_conv - 1) // 2, groups=d_inner, bias=False)
        k = self.K
        r = self.dt_rank
        # x_proj for the four directions, packed so that one matmul serves a direction and its reverse
        bound = d_inner**-0.5
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * d_state, d_inner).uniform_(-bound, bound))
        std = r**-0.5
        self.dt_projs_weight = nn.Parameter(torch.empty(k, d_inner, r).uniform_(-std, std))
        dt = torch.exp(torch.rand(k, d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=dt_init_floor)
        self.dt_projs_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))  # softplus^-1(dt)
        a = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(k * d_inner, 1)
        self.A_logs = nn.Parameter(torch.log(a))  # (K*d_inner, N); A = -exp(A_logs)
        self.Ds = nn.Parameter(torch.ones(k * d_inner))
        self.out_norm = nn.LayerNorm(d_inner)
        self.out_proj = nn.Linear(d_inner, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        bsz, h, w, _ = x.shape
        x = self.in_proj(x)
        x = F.silu(_conv_cl(self.conv2d, x))
        y = self.forward_core(x)
        return self.out_proj(self.out_norm(y))

    def _fused_ok(self, x: Tensor) -> bool:
        """The numba path serves this call: CPU float32 and the backend allows it (the fused core has a
        numba backward, so this holds with or without gradients; SCMPR_DISABLE_NUMBA=1 turns it off)."""
        if x.device.type != "cpu" or x.dtype != torch.float32 or self.scan_backend not in ("auto", "cpu", "numba"):
            return False
        return resolve_backend(self.scan_backend, x.device, grad=False) == "numba"

    def _needs_grad(self, x: Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def forward_core(self, x: Tensor) -> Tensor:
        """Cross-scan -> selective scan -> cross-merge on a channels-last (B, H, W, d_inner) map."""
        if self._fused_ok(x):
            return self.forward_core_fused(x)
        return self.forward_core_torch(x)

    def forward_core_fused(self, x: Tensor) -> Tensor:
        """The same as ``forward_core_torch``: one matmul for the x_proj of all four directions at every
        pixel, then the fused numba kernel reads the map in each scan order (with gradients: the
        autograd version, which saves the states for its numba backward)."""
        if self._needs_grad(x):
            return self.forward_core_numba_autograd(x)
        from scmpr_ros.model import scan_numba

        bsz, h, w, d = x.shape
        xt = x.detach().reshape(bsz, h * w, d).contiguous()
        proj = xt @ self.x_proj_weight.detach().reshape(-1, d).t()  # (B, L, K (R + 2N))
        A = -torch.exp(self.A_logs.detach().float())
        y = scan_numba.ss2d_scan(
            xt.numpy(),
            proj.numpy(),
            self.dt_projs_weight.detach().numpy(),
            A.numpy(),
            self.Ds.detach().numpy(),
            self.dt_projs_bias.detach().numpy(),
            h,
            w,
            torch.get_num_threads(),
        )
        return torch.from_numpy(y).view(bsz, h, w, d)

    def forward_core_numba_autograd(self, x: Tensor) -> Tensor:
        """Differentiable fused core (training on the CPU): x_proj in torch, the rest in numba kernels."""
        from scmpr_ros.model.scan_numba_autograd import ss2d_scan_autograd

        bsz, h, w, d = x.shape
        xt = x.reshape(bsz, h * w, d)
        proj = xt @ self.x_proj_weight.reshape(-1, d).t()  # (B, L, K (R + 2N))
        A = -torch.exp(self.A_logs.float())
        y = ss2d_scan_autograd(xt, proj, self.dt_projs_weight, A, self.Ds, self.dt_projs_bias, h, w)
        return y.view(bsz, h, w, d)

    def forward_core_torch(self, x: Tensor) -> Tensor:
        """Differentiable cross-scan -> selective scan -> cross-merge (any backend)."""
        bsz, h, w, d = x.shape
        length = h * w
        k, r, n = self.K, self.dt_rank, self.d_state
        x_hw = x.reshape(bsz, length, d)  # row-major tokens
        x_wh = x.transpose(1, 2).reshape(bsz, length, d)  # column-major tokens
        wx = self.x_proj_weight  # (K, R+2N, d)
        # directions 0/2 share x_hw (2 = reversed), 1/3 share x_wh
        p_hw = x_hw @ torch.cat([wx[0], wx[2]], 0).t()  # (B, L, 2(R+2N))
        p_wh = x_wh @ torch.cat([wx[1], wx[3]], 0).t()
        c = r + 2 * n
        proj = torch.stack(
            [p_hw[..., :c], p_wh[..., :c], p_hw[..., c:].flip(1), p_wh[..., c:].flip(1)], 2
        )  # (B, L, K, c)
        xs = torch.stack([x_hw, x_wh, x_hw.flip(1), x_wh.flip(1)], 2)  # (B, L, K, d)
        dts_r, b_mat, c_mat = proj.split([r, n, n], dim=-1)
        # Δ of all directions in one matmul: (B L, K R) @ blockdiag(W_Δ,k^T) + b_Δ -> (B L, K d)
        w_dt = torch.block_diag(*self.dt_projs_weight.transpose(1, 2))
        dts = torch.addmm(self.dt_projs_bias.reshape(-1), dts_r.reshape(bsz * length, k * r), w_dt)
        A = -torch.exp(self.A_logs.float())
        ys = selective_scan_token_major(
            xs.reshape(bsz, length, k * d),
            dts.view(bsz, length, k * d),
            A,
            b_mat,
            c_mat,
            self.Ds.float(),
            None,
            delta_softplus=True,
            backend=self.scan_backend,
        ).view(bsz, length, k, d)
        y_row = ys[:, :, 0] + ys[:, :, 2].flip(1)
        y_col = (ys[:, :, 1] + ys[:, :, 3].flip(1)).view(bsz, w, h, d).transpose(1, 2)
        return y_row.view(bsz, h, w, d) + y_col


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VSSBlock(nn.Module):
    def __init__(self, dim: int, d_state: int, ssm_ratio: float, mlp_ratio: float, drop_path: float, scan_backend: str):
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.op = SS2D(dim, d_state=d_state, ssm_ratio=ssm_ratio, scan_backend=scan_backend)
        self.drop_path = DropPath(drop_path)
        self.mlp = None
        if mlp_ratio > 0:
            self.norm2 = nn.LayerNorm(dim)
            self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path(self.op(self.norm(x)))
        if self.mlp is not None:
            x = x + self.drop_path(self.mlp(self.norm2(x)))
        return x


class PatchEmbed(nn.Module):
    """Stride 4: conv3x3/2 -> LN -> GELU -> conv3x3/2 -> LN (VMamba v2 "patchembed v2")."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_chans, dim // 2, 3, stride=2, padding=1)
        self.norm1 = nn.LayerNorm(dim // 2)
        self.conv2 = nn.Conv2d(dim // 2, dim, 3, stride=2, padding=1)
        self.norm2 = nn.LayerNorm(dim)

    def forward(self, x: Tensor) -> Tensor:  # (B, 3, H, W) -> (B, H/4, W/4, C)
        # channels-last input: the conv writes NHWC, so the permute below is free (no copy before the LN)
        x = self.conv1(x.contiguous(memory_format=torch.channels_last)).permute(0, 2, 3, 1)
        x = F.gelu(self.norm1(x))
        return self.norm2(_conv_cl(self.conv2, x))


class Downsample(nn.Module):
    """Stride 2: conv3x3/2 -> LN (VMamba v2 "downsample v3")."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.conv = nn.Conv2d(dim, out_dim, 3, stride=2, padding=1)
        self.norm = nn.LayerNorm(out_dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(_conv_cl(self.conv, x))


class VMamba(nn.Module):
    """Four stages of VSS blocks; ``forward_features`` returns the stage maps (B, C_i, H/2^(i+2), W/2^(i+2))."""

    def __init__(
        self,
        config: str | VMambaSpec = "nano",
        d_state: int = 1,
        ssm_ratio: float = 2.0,
        drop_path_rate: float = 0.0,
        scan_backend: str = "auto",
        in_chans: int = 3,
    ):
        super().__init__()
        if isinstance(config, str):
            if config not in VMAMBA_CONFIGS:
                raise ScmprError(
                    f"model.backbone: unknown VMamba size {config!r} (choose one of {', '.join(VMAMBA_CONFIGS)})"
                )
            config = VMAMBA_CONFIGS[config]
        self.spec = config
        dims, depths = config.dims, config.depths
        self.out_channels: tuple[int, ...] = tuple(dims)
        self.patch_embed = PatchEmbed(in_chans, dims[0])
        rates = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        self.stages = nn.ModuleList()
        self.downsamples = nn.ModuleList()
        self.out_norms = nn.ModuleList()
        k = 0
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            self.downsamples.append(nn.Identity() if i == 0 else Downsample(dims[i - 1], dim))
            blocks = [
                VSSBlock(dim, d_state, ssm_ratio, config.mlp_ratio, rates[k + j], scan_backend) for j in range(depth)
            ]
            k += depth
            self.stages.append(nn.Sequential(*blocks))
            self.out_norms.append(nn.LayerNorm(dim))
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def set_scan_backend(self, backend: str) -> None:
        for m in self.modules():
            if isinstance(m, SS2D):
                m.scan_backend = backend

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """(B, 3, H, W) -> four channels-first stage maps (channels-last in memory)."""
        x = self.patch_embed(x)
        outs = []
        for down, stage, norm in zip(self.downsamples, self.stages, self.out_norms):
            x = stage(down(x))
            outs.append(norm(x).permute(0, 3, 1, 2))
        return outs

    def forward(self, x: Tensor) -> list[Tensor]:
        return self.forward_features(x)
