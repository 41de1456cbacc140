"""The S6 mixer of Mamba-1, with the parameter names of Hugging Face's ``MambaMixer``.

    xz = in_proj(h);  x, z = split(xz)
    x  = silu(causal depthwise conv(x))
    (Δ_raw, B, C) = x_proj(x);  Δ = softplus(dt_proj(Δ_raw))        # selective parameters
    y  = selective_scan(x, Δ, A = -exp(A_log), B, C, D) · silu(z)
    out = out_proj(y)

A token-reordering module (``mambadyn.refine.TokenReorder``) can be attached as ``self.reorder``:
tokens are then permuted by importance before Δ, B, C are computed and the scan runs.

Two settings, one meaning each. ``config.fused``: where ``mambadyn.fused.usable`` says the fused kernels can
run (CUDA with Triton), a plain forward takes the fused path of ``mambadyn.fused.mixer``: in_proj writes
(2 d_inner, batch L) and everything after it is one autograd function over Triton kernels, with no layout
copies (custom ops under torch.compile). ``scan_backend``: which selective scan the per-op path below
calls; the fused path has its own (the Triton scan's kernels), so naming another scan there is refused
rather than ignored. The per-op path serves CPU, float64, reordering and recurrent state.
"""

from __future__ import annotations

import contextlib
import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import fused as fused_path
from ..scan import selective_scan
from .config import MambaConfig


@contextlib.contextmanager
def per_op_path(model: nn.Module):
    """Within the block, every MambaMixer of ``model`` takes the per-op path (module calls that hooks see:
    the norms, conv1d, in_proj), whatever ``config.fused`` says; the setting is restored after. What the
    probe's captures need: the fused path runs the mixer and the add+norm as kernels no module hook sees."""
    mixers = [m for m in model.modules() if isinstance(m, MambaMixer) and m.fused]
    for m in mixers:
        m.fused = False
    try:
        yield model
    finally:
        for m in mixers:
            m.fused = True


class MambaMixer(nn.Module):
    def __init__(self, config: MambaConfig, layer_idx: int = 0):
        super().__init__()
        self.layer_idx = layer_idx
        self.d_inner, self.d_state, self.dt_rank = config.d_inner, config.d_state, config.time_step_rank
        self.d_conv = config.d_conv
        self.scan_backend = config.scan_backend
        self.fused = config.fused
        di = self.d_inner
        self.in_proj = nn.Linear(config.d_model, 2 * di, bias=config.bias)
        self.conv1d = nn.Conv1d(di, di, config.d_conv, groups=di, padding=config.d_conv - 1, bias=config.conv_bias)
        self.x_proj = nn.Linear(di, self.dt_rank + 2 * self.d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, di, bias=True)
        self.A_log = nn.Parameter(torch.empty(di, self.d_state))
        self.D = nn.Parameter(torch.empty(di))
        self.out_proj = nn.Linear(di, config.d_model, bias=config.bias)
        self.reorder: nn.Module | None = None
        self.reset_parameters(config)

    @torch.no_grad()
    def reset_parameters(self, config: MambaConfig) -> None:
        """Mamba's initialisation: S4D-real A, D = 1, Δ's bias so that softplus(bias) ~ LogUniform(dt_min, dt_max)."""
        self.A_log.copy_(torch.log(torch.arange(1, self.d_state + 1, dtype=torch.float32)).expand(self.d_inner, -1))
        self.D.fill_(1.0)
        std = self.dt_rank**-0.5 * config.dt_scale
        nn.init.uniform_(self.dt_proj.weight, -std, std)
        dt = torch.exp(
            torch.rand(self.d_inner) * (math.log(config.dt_max) - math.log(config.dt_min)) + math.log(config.dt_min)
        ).clamp(min=config.dt_init_floor)
        self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

    @property
    def A(self) -> torch.Tensor:
        return -torch.exp(self.A_log.float())

    def ssm_params(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """x (batch, d_inner, L) -> Δ before softplus *without* dt_proj's bias (batch, d_inner, L),
        B (batch, n, L), C (batch, n, L)."""
        p = self.x_proj(x.transpose(1, 2))
        dt, B, C = torch.split(p, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = (dt @ self.dt_proj.weight.T).transpose(1, 2)
        return dt, B.transpose(1, 2), C.transpose(1, 2)

    def conv(self, x: torch.Tensor) -> torch.Tensor:
        """Causal depthwise convolution + SiLU: (batch, d_inner, L) -> (batch, d_inner, L)."""
        return F.silu(self.conv1d(x)[..., : x.shape[-1]])

    def uses_fused_kernels(self, t: torch.Tensor) -> bool:
        """Whether the fused Triton kernels serve activations like ``t``: ``config.fused`` is on and the fused
        room can run here (``mambadyn.fused.usable``)."""
        if not (self.fused and fused_path.usable(t)):
            return False
        if self.scan_backend not in ("auto", "triton"):
            raise ValueError(f"scan_backend={self.scan_backend!r} picks the scan of the per-op path, but the fused "
                             "path (config.fused, on here) carries its own Triton scan: set fused=False to use "
                             f"{self.scan_backend!r}")
        return True

    def _takes_fused_path(self, hidden: torch.Tensor, return_state: bool) -> bool:
        return not return_state and self.reorder is None and self.uses_fused_kernels(hidden)

    def _fused_forward(self, hidden: torch.Tensor) -> torch.Tensor:
        from ..fused.mixer import mixer_inner  # imports triton: only where the fused path runs

        batch, L, d_model = hidden.shape
        # (2 d_inner, batch L): the layout every later product and kernel reads without a copy
        xz = self.in_proj.weight @ hidden.reshape(batch * L, d_model).t()
        if self.in_proj.bias is not None:
            xz = xz + self.in_proj.bias[:, None]
        xz = xz.view(xz.shape[0], batch, L).transpose(0, 1)
        # A_log, D and Δ's bias as they are: the kernels form A = -exp(A_log) and read in float32, so the step
        # records no exp, negation or casts for them
        return mixer_inner(xz, self.conv1d.weight, self.conv1d.bias, self.x_proj.weight, self.dt_proj.weight,
                           self.out_proj.weight, self.out_proj.bias, self.A_log, self.D, self.dt_proj.bias)

    def forward(self, hidden: torch.Tensor, return_state: bool = False):
        """hidden (batch, L, d_model) -> (batch, L, d_model) [, (conv_state, ssm_state)]."""
        if self._takes_fused_path(hidden, return_state):
            return self._fused_forward(hidden)
        L = hidden.shape[1]
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
        # contiguous: the decoding step updates it in place, in kernels that walk its last dimension
        conv_state = F.pad(x, (self.d_conv - L, 0))[..., -self.d_conv :].contiguous() if return_state else None
        x = self.conv(x)
        perm = None
        if self.reorder is not None:
            if return_state:
                raise ValueError("a reordering mixer has no recurrent state: reordering is not causal")
            dt, _, _ = self.ssm_params(x)
            perm = self.reorder.permutation(dt + self.dt_proj.bias[:, None])
            x = self.reorder.apply(perm, x)
        dt, B, C = self.ssm_params(x)
        y = selective_scan(
            x, dt, self.A, B, C, self.D.float(), z=None if perm is not None else z,
            delta_bias=self.dt_proj.bias.float(), delta_softplus=True, return_last_state=return_state,
            backend=self.scan_backend,
        )
        y, ssm_state = y if return_state else (y, None)
        if perm is not None:
            y = self.reorder.restore(perm, y) * F.silu(z)
        out = self.out_proj(y.transpose(1, 2))
        return (out, (conv_state, ssm_state)) if return_state else out

    def step(self, hidden: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """One recurrent step. hidden (batch, d_model); state (conv (batch, d_inner, d_conv),
        ssm (batch, d_inner, n)) is updated in place. Returns (batch, d_model)."""
        conv_state, ssm_state = state
        x, z = self.in_proj(hidden).chunk(2, dim=-1)
        # one Triton kernel per elementwise stage, where the fused kernels run (a dozen PyTorch ops each)
        if self.uses_fused_kernels(x):
            from ..fused.step import conv_step, ssm_step

            x = conv_step(x, conv_state, self.conv1d.weight, self.conv1d.bias)
            dt, B, C = self.ssm_params(x[:, :, None])
            # the parameters as they are: the kernel reads them as float32 and takes -exp(A_log) itself
            y = ssm_step(x, dt[..., 0], self.A_log, B[..., 0], C[..., 0], self.D, z, self.dt_proj.bias, ssm_state,
                         A_is_log=True)
            return self.out_proj(y.to(hidden.dtype))
        conv_state.copy_(torch.roll(conv_state, shifts=-1, dims=-1))
        conv_state[:, :, -1] = x
        x = (conv_state * self.conv1d.weight[:, 0, :]).sum(-1)
        if self.conv1d.bias is not None:
            x = x + self.conv1d.bias
        x = F.silu(x)
        dt, B, C = self.ssm_params(x[:, :, None])
        dt = F.softplus(dt[..., 0].float() + self.dt_proj.bias.float())  # (batch, d_inner)
        dA = torch.exp(dt[..., None] * self.A)
        ssm_state.copy_(dA * ssm_state + (dt * x.float())[..., None] * B[:, None, :, 0].float())
        y = (ssm_state * C[:, None, :, 0].float()).sum(-1) + self.D.float() * x.float()
        y = (y * F.silu(z.float())).to(hidden.dtype)
        return self.out_proj(y)
