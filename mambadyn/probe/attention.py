"""Hidden attention of Mamba-1 layers: which earlier tokens each position of a layer reads.

A selective-SSM layer is a data-dependent linear map of its scan inputs (Ali et al., "The Hidden Attention
of Mamba Models", arXiv 2403.01590). Per channel d, with u the scan input (after in_proj, conv, SiLU),
Δ = softplus(S_Δ u + b), B_j = S_B u_j, C_l = S_C u_l (in R^N), A_d in R^N (negative):

    y_l^d = Σ_{j<=l} M_lj^d u_j^d + D_d u_l^d,
    M_lj^d = Δ_j^d Σ_n C_{l,n} B_{j,n} exp(A_{d,n} (S_l^d - S_j^d)),   S_l^d = Σ_{k<=l} Δ_k^d,

which is the scan unrolled (the gate silu(z) multiplies y afterwards and is not part of M). The products
of many decays are never formed: each entry takes one exp of A (S_l - S_j) <= 0, from cumulative sums in
float64, so nothing underflows that the true product would not, and nothing overflows. Rows are computed
in blocks, so memory is O(block x L) per channel in flight, not O(d_inner x L^2).

Views, per layer: ``M`` for the channels asked (channels, L, L); ``mean_abs`` = mean over all channels of
|M_lj|; ``mean_rownorm`` = mean over channels of |M_lj| / Σ_j' |M_lj'| (each row a distribution over the
positions it reads). Both views are (L, L), lower-triangular. The D skip is left out of M (it is the
diagonal term D_d u_l, not a read of another token). Not yet compared with TransformerLens's
``compute_ssm_effective_attention`` (issue 31).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.load import check_ids
from ..refine.eigen import find_mixers
from ..refine.spectrum import selective_params

MAX_FULL_BYTES = 2 * 2**30  # the largest per-channel M a call returns without being asked for blocks


@dataclass
class ScanInputs:
    """One layer's scan, captured on real tokens (batch row 0): u, delta (L, D); B, C (L, N); A (D, N);
    D_skip (D,). delta is softplus(S_Δ u + b), what the layer's scan uses."""

    u: torch.Tensor
    delta: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    A: torch.Tensor
    D_skip: torch.Tensor

    def scan_output(self) -> torch.Tensor:
        """y (L, D) of the recurrence h_l = exp(Δ_l A) h_{l-1} + Δ_l u_l B_l, y_l = C_l h_l + D u_l (no gate)."""
        L, D = self.u.shape
        h = torch.zeros(D, self.A.shape[1], dtype=self.u.dtype)
        ys = []
        for l in range(L):
            h = torch.exp(self.delta[l, :, None] * self.A) * h + (self.delta[l] * self.u[l])[:, None] * self.B[l]
            ys.append(h @ self.C[l] + self.D_skip * self.u[l])
        return torch.stack(ys)


def capture_scan_inputs(model: nn.Module, ids: torch.Tensor, layers: list[int] | None = None,
                        dtype: torch.dtype = torch.float64) -> dict[int, ScanInputs]:
    """Run ``model`` (a MambaLM, or transformers' MambaForCausalLM: any model whose Mamba-1 mixers carry
    in_proj, conv1d, x_proj, dt_proj, A_log and D) on ids (L,) and return each asked layer's scan inputs, in
    ``dtype``."""
    mixers = [m for name, m in find_mixers(model) if not name.endswith("mixer_b")]
    if not mixers:
        raise ValueError("the model has no Mamba-1 mixer (a module with x_proj, dt_proj and A_log)")
    layers = list(range(len(mixers))) if layers is None else list(layers)
    bad = [k for k in layers if not 0 <= k < len(mixers)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {len(mixers)} mixer layers (0..{len(mixers) - 1})")
    captured: dict[int, ScanInputs] = {}

    def hook(k: int, m: nn.Module):
        # at in_proj's output, which every implementation calls as a module (transformers runs its conv
        # through causal_conv1d_fn, past the conv1d module's hooks): x, then the layer's own causal conv
        def run(_mod, _args, out):
            x = out.detach()[0].to(dtype).chunk(2, dim=-1)[0].T  # (D, L)
            w = m.conv1d.weight.detach().to(dtype)
            b = None if m.conv1d.bias is None else m.conv1d.bias.detach().to(dtype)
            u = F.silu(F.conv1d(x[None], w, b, padding=w.shape[-1] - 1, groups=x.shape[0])[0, :, : x.shape[1]]).T
            raw, bias, B, C = selective_params(m, u)
            captured[k] = ScanInputs(u, F.softplus(raw + bias), B, C, -torch.exp(m.A_log.detach().to(dtype)),
                                     m.D.detach().to(dtype))
        return run

    ids = torch.as_tensor(ids, dtype=torch.int64).flatten()
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None:
        check_ids(ids, vocab)
    handles = [mixers[k].in_proj.register_forward_hook(hook(k, mixers[k])) for k in layers]
    # the fused CUDA path multiplies by in_proj's weight itself, where no module hook sees it: per-op here
    fused = [(m, m.fused) for m in mixers if getattr(m, "fused", False)]
    for m, _ in fused:
        m.fused = False
    try:
        with torch.no_grad():
            model(ids[None].to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
        for m, was in fused:
            m.fused = was
    missing = [k for k in layers if k not in captured]
    if missing:
        raise ValueError(f"layers {missing} ran without calling their in_proj module: nothing was captured")
    return captured


def attention_rows(s: ScanInputs, rows: slice, channels: torch.Tensor) -> torch.Tensor:
    """M_lj for l in ``rows`` and every j (0 above the diagonal), for ``channels`` (c,): (c, rows, L)."""
    L = s.u.shape[0]
    S = torch.cumsum(s.delta[:, channels], dim=0)  # (L, c)
    l_idx = torch.arange(L)[rows]
    diff = S[l_idx][:, None, :] - S[None, :, :]  # (r, L, c): S_l - S_j
    causal = (torch.arange(L)[None, :] <= l_idx[:, None])[..., None]  # (r, L, 1)
    diff = torch.where(causal, diff, 0.0)  # above the diagonal: masked below, kept finite here
    A = s.A[channels]  # (c, N)
    acc = torch.zeros_like(diff)
    for n in range(A.shape[1]):  # one state at a time: memory stays (r, L, c)
        acc += (s.C[l_idx, n][:, None, None] * s.B[:, n][None, :, None]) * torch.exp(diff * A[:, n])
    M = acc * s.delta[:, channels][None] * causal
    return M.permute(2, 0, 1)


@dataclass
class LayerAttention:
    layer: int
    channels: list[int]
    M: torch.Tensor | None  # (len(channels), L, L) for the channels asked, None if none were
    mean_abs: torch.Tensor  # (L, L): mean over every channel of |M|
    mean_rownorm: torch.Tensor  # (L, L): mean over every channel of |M| normalised per row


def layer_attention(s: ScanInputs, layer: int = 0, channels: list[int] | None = None, block: int = 256,
                    channel_block: int = 64) -> LayerAttention:
    """The hidden attention of one layer from its scan inputs, computed ``block`` rows and ``channel_block``
    channels at a time: M for ``channels`` (if any), and the two aggregated views over every channel."""
    L, D = s.u.shape
    if block < 1 or channel_block < 1:
        raise ValueError(f"block and channel_block must be >= 1, got {block}, {channel_block}")
    channels = [] if channels is None else list(channels)
    bad = [c for c in channels if not 0 <= c < D]
    if bad:
        raise ValueError(f"channels {bad} out of range: the layer has {D} channels (0..{D - 1})")
    need = len(channels) * L * L * s.u.element_size()
    if need > MAX_FULL_BYTES:
        raise ValueError(f"M for {len(channels)} channels at L = {L} takes {need / 2**30:.1f} GiB (limit "
                         f"{MAX_FULL_BYTES / 2**30:g} GiB): ask for fewer channels, or use the aggregated views")
    full = torch.zeros(len(channels), L, L, dtype=s.u.dtype) if channels else None
    mean_abs = torch.zeros(L, L, dtype=s.u.dtype)
    mean_rownorm = torch.zeros(L, L, dtype=s.u.dtype)
    want = {c: i for i, c in enumerate(channels)}
    for c0 in range(0, D, channel_block):
        chans = torch.arange(c0, min(D, c0 + channel_block))
        for r0 in range(0, L, block):
            rows = slice(r0, min(L, r0 + block))
            M = attention_rows(s, rows, chans)  # (c, r, L)
            a = M.abs()
            mean_abs[rows] += a.sum(0) / D
            mean_rownorm[rows] += (a / a.sum(-1, keepdim=True).clamp_min(1e-300)).sum(0) / D
            for k, c in enumerate(chans.tolist()):
                if c in want:
                    full[want[c], rows] = M[k]
    return LayerAttention(layer, channels, full, mean_abs, mean_rownorm)


def hidden_attention(model: nn.Module, ids: torch.Tensor, layers: list[int] | None = None,
                     channels: list[int] | None = None, block: int = 256) -> list[LayerAttention]:
    """The hidden attention of ``model``'s Mamba-1 layers on ids (L,): per layer asked (default all), M for
    ``channels`` and the aggregated views (see the module docstring). Computed in float64."""
    inputs = capture_scan_inputs(model, ids, layers)
    return [layer_attention(s, k, channels, block) for k, s in sorted(inputs.items())]


def distance_profile(view: torch.Tensor) -> torch.Tensor:
    """How far back a layer reads: the mean over rows l of view[l, l - k], for k = 0..L-1 (L,)."""
    L = view.shape[0]
    out = torch.zeros(L, dtype=view.dtype)
    for k in range(L):
        out[k] = torch.diagonal(view, offset=-k).mean()
    return out
