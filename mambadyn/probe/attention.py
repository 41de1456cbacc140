"""Hidden attention: which earlier tokens each position of an SSM layer reads.

A selective-SSM layer is a data-dependent linear map of its scan inputs (Ali et al., "The Hidden Attention
of Mamba Models", arXiv 2403.01590). With u the scan input (after in_proj, conv, SiLU), per unit k with
Δ^k its step, A_k its decay and B, C its group's input and output vectors (in R^N):

    y_l^d = Σ_{j<=l} M_lj^k u_j^d + D_k u_l^d,
    M_lj^k = Δ_j^k Σ_n C_{l,n} B_{j,n} exp(A_{k,n} (S_l^k - S_j^k)),   S_l^k = Σ_{i<=l} Δ_i^k,

for every channel d of unit k. Mamba-1 kinds: a unit is a channel (Δ and A per channel, one B and C).
Mamba-2 kinds: a unit is a head (a scalar Δ and A per head, shared by its head_dim channels; B and C per
group of heads). This is the scan unrolled: the gate (silu(z) in Mamba-1, the gated norm in Mamba-2) acts
on y afterwards and is not part of M. The products of many decays are never formed: each entry takes one
exp of A (S_l - S_j) <= 0, from cumulative sums in float64, so nothing underflows that the true product
would not, and nothing overflows. Rows are computed in blocks, so memory is O(block x L) per unit in
flight, not O(units x L^2).

Views, per layer: ``M`` for the units asked (units, L, L); ``mean_abs`` = mean over all units of |M_lj|;
``mean_rownorm`` = mean over units of |M_lj| / Σ_j' |M_lj'| (each row a distribution over the positions it
reads). Both views are (L, L), lower-triangular. The D skip is left out of M (it is the diagonal term
D u_l, not a read of another token). The views average |M|, so that reads of opposite sign do not cancel.
TransformerLens 4 (``compute_effective_attention`` of its Mamba and Mamba-2 mixer bridges) returns by default
the attention-like form without Δ_j, Σ_n C_{l,n} B_{j,n} exp(...); its ``include_dt_scaling=True`` form is M
above, and equals mambadyn's to float32 precision on the same tiny Mamba-1 (per channel) and Mamba-2 (per head)
models (``tests/test_transformerlens.py``, which runs where TransformerLens is installed: 4.3.0 with
transformers 5.25 passes it). TransformerLens materialises the (units, N, L, L) decay tensor; here it is never
formed.
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.load import check_ids
from ..nn.mixer import per_op_path
from ..refine.eigen import find_mixers
from ..refine.spectrum import selective_params


class _HeadReached(Exception):
    """Raised at the output head by ``until_head``: everything a capture reads lies before it."""


@contextlib.contextmanager
def until_head(model: nn.Module, enabled: bool = True):
    """Within the block, a forward pass of ``model`` stops where its ``lm_head`` would run (at vocabulary 50280
    the head is a fifth of a 130M model's forward on a CPU); no logits come out. Nothing is skipped where the
    model has no ``lm_head`` or ``enabled`` is False."""
    head = getattr(model, "lm_head", None) if enabled else None

    def stop(*_):
        raise _HeadReached

    handle = None if not isinstance(head, nn.Module) else head.register_forward_pre_hook(stop)
    try:
        yield
    except _HeadReached:
        pass
    finally:
        if handle is not None:
            handle.remove()


MAX_FULL_BYTES = 2 * 2**30  # the largest per-channel M a call returns without being asked for blocks


@dataclass
class ScanInputs:
    """One layer's scan, captured on real tokens (batch row 0), by unit: a unit is a channel (Mamba-1 kinds,
    K = D) or a head (Mamba-2 kinds, K = heads, each over D / K channels).

    u (L, D) the scan input; delta (L, K) the Δ the scan uses; B, C (L, G, N) per group of units; A (K, N);
    D_skip (K,); unit (D,) the unit of each channel; group (K,) the group of each unit."""

    u: torch.Tensor
    delta: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    A: torch.Tensor
    D_skip: torch.Tensor
    unit: torch.Tensor
    group: torch.Tensor

    @classmethod
    def per_channel(cls, u, delta, B, C, A, D_skip) -> "ScanInputs":
        """Mamba-1: every channel its own unit, one group: B, C (L, N), A (D, N)."""
        D = u.shape[1]
        return cls(u, delta, B[:, None], C[:, None], A, D_skip, torch.arange(D), torch.zeros(D, dtype=torch.int64))

    @classmethod
    def of_mixer(cls, m: nn.Module, u: torch.Tensor) -> "ScanInputs":
        """A mambadyn (or transformers Mamba-1) mixer's scan on its scan inputs u (L, D), in u's dtype: Δ, B and C
        as the mixer forms them from u, its A and D."""
        raw, bias, B, C = selective_params(m, u)
        return cls.per_channel(u, F.softplus(raw + bias), B, C, -torch.exp(m.A_log.detach().to(u.dtype)),
                               m.D.detach().to(u.dtype))

    def to(self, dtype: torch.dtype | None = None, device=None) -> "ScanInputs":
        """The same inputs in another float dtype and/or on another device (the index maps keep theirs)."""
        return ScanInputs(*(t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
                            for t in (self.u, self.delta, self.B, self.C, self.A, self.D_skip, self.unit, self.group)))

    @property
    def units(self) -> int:
        return self.delta.shape[1]

    def scan_output(self) -> torch.Tensor:
        """y (L, D) of the recurrence h_l = exp(Δ_l A) h_{l-1} + Δ_l u_l B_l, y_l = C_l h_l + D u_l (no gate),
        per channel with its unit's Δ, A, D and its group's B, C: the library's selective scan, one call per
        group of units (the numba kernel on a CPU, float64 included)."""
        from ..scan import selective_scan

        L, D = self.u.shape
        col = lambda t: t.T[None].contiguous()  # noqa: E731  (L, c) -> (1, c, L)
        if self.B.shape[1] == 1 and torch.equal(self.unit, torch.arange(D)):
            # Mamba-1: one group, every channel its own unit; no gathers (u is often a transposed (D, L) tensor,
            # whose column view is free: the copies cost a 130M capture as much as the float64 scan)
            return selective_scan(col(self.u), col(self.delta), self.A, col(self.B[:, 0]), col(self.C[:, 0]),
                                  self.D_skip)[0].T
        y = torch.empty_like(self.u)
        owner = self.group[self.unit]  # (D,): the group of each channel
        for g in owner.unique().tolist():
            ch = torch.nonzero(owner == g).flatten()
            k = self.unit[ch]
            y[:, ch] = selective_scan(col(self.u[:, ch]), col(self.delta[:, k]), self.A[k], col(self.B[:, g]),
                                      col(self.C[:, g]), self.D_skip[k])[0].T
        return y


def causal_depthwise_conv(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """A Mamba layer's causal depthwise convolution: x (D, L), w (D, K), b (D,) or None -> (D, L), out[:, t] =
    b + sum_k w[:, k] x[:, t - K + 1 + k], as K shifted multiply-adds. torch's float64 conv1d on a CPU took
    2.7 s a call here when interleaved with the model's float32 ones (a 130M layer, L = 2048), 100x this."""
    D, L = x.shape
    K = w.shape[1]
    out = torch.zeros_like(x) if b is None else b[:, None].expand(D, L).clone()
    for k in range(K):
        s = K - 1 - k  # tap k reads x[t - s]
        if s < L:
            out[:, s:].addcmul_(x[:, :L - s], w[:, k:k + 1])
    return out


def capture_scan_inputs(model: nn.Module, ids: torch.Tensor, layers: list[int] | None = None,
                        dtype: torch.dtype = torch.float64, skip_head: bool = False) -> dict[int, ScanInputs]:
    """Run ``model`` (a MambaLM, or transformers' MambaForCausalLM: any model whose Mamba-1 mixers carry
    in_proj, conv1d, x_proj, dt_proj, A_log and D) on ids (L,) and return each asked layer's scan inputs, in
    ``dtype``; ``skip_head``: stop the pass before the output head (``until_head``)."""
    mixers = [m for name, m in find_mixers(model) if not name.endswith("mixer_b")]
    if not mixers:
        raise ValueError("the model has no Mamba-1 mixer (a module with x_proj, dt_proj and A_log)")
    layers = _check_layers(layers, len(mixers))
    captured: dict[int, ScanInputs] = {}

    def hook(k: int, m: nn.Module):
        # at in_proj's output, which every implementation calls as a module (transformers runs its conv
        # through causal_conv1d_fn, past the conv1d module's hooks): x, then the layer's own causal conv
        def run(_mod, _args, out):
            x = out.detach()[0].to(dtype).chunk(2, dim=-1)[0].T  # (D, L)
            w = m.conv1d.weight.detach().to(dtype)
            b = None if m.conv1d.bias is None else m.conv1d.bias.detach().to(dtype)
            u = F.silu(causal_depthwise_conv(x, w[:, 0], b)).T
            captured[k] = ScanInputs.of_mixer(m, u)
        return run

    ids = torch.as_tensor(ids, dtype=torch.int64).flatten()
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None:
        check_ids(ids, vocab)
    handles = [mixers[k].in_proj.register_forward_hook(hook(k, mixers[k])) for k in layers]
    # the fused CUDA path multiplies by in_proj's weight itself, where no module hook sees it: per-op here
    try:
        with torch.no_grad(), per_op_path(model), until_head(model, skip_head):
            model(ids[None].to(next(model.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    missing = [k for k in layers if k not in captured]
    if missing:
        raise ValueError(f"layers {missing} ran without calling their in_proj module: nothing was captured")
    return captured


class _Units:
    """M for a set of units, row block by row block (blocks of ``block`` rows starting at multiples of it).

    Entry (l, j) needs exp(A (S_l - S_j)) <= 0 in the exponent. Columns are grouped in blocks of the same
    size; for column j in block J (last step e_J) the factor exp(A (S_e_J - S_j)) <= 1 is taken once, and
    a row block starting at r0 (b = r0 - 1) multiplies it by exp(A (S_b - S_e_J)) <= 1 per column block and
    its rows by exp(A (S_l - S_b)) <= 1: no exponent is positive, so nothing overflows, and a factor that
    underflows stands for an entry that small. The row block's own columns take exp(A (S_b - S_j)) >= 1 where
    A (S_l - S_b) stays within the dtype's exponent range (one product for the whole block), else the block is
    halved until it does (``_diag``)."""

    def __init__(self, s: ScanInputs, units: torch.Tensor, block: int):
        self.dtype, self.block = s.u.dtype, block
        L = s.u.shape[0]
        # unit-major layouts, so that every product below reads contiguous rows: S (c, L), C and Δ B (c, L, N),
        # R (c, N, L)
        self.S = torch.cumsum(s.delta[:, units], dim=0).T.contiguous()  # S_l = Σ_{i<=l} Δ_i
        g = s.group[units]
        self.A = s.A[units]  # (c, N)
        self.C = s.C[:, g].transpose(0, 1).contiguous()
        self.dB = (s.B[:, g] * s.delta[:, units, None]).transpose(0, 1).contiguous()
        ends = ((torch.arange(L, device=s.u.device) // block + 1) * block - 1).clamp_max(L - 1)  # the last step of j's column block
        decay = torch.exp(self.A[:, None, :] * (self.S[:, ends] - self.S)[..., None])  # (c, L, N), <= 1
        self.R = (self.dB * decay).transpose(1, 2).contiguous()
        # exp(x) and exp(-x) stay normal numbers for x below this
        self.safe = 0.9 * min(-math.log(torch.finfo(self.dtype).tiny), math.log(torch.finfo(self.dtype).max))

    def rows(self, r0: int, r1: int) -> torch.Tensor:
        """(c, r1 - r0, r1): M for rows r0..r1-1 and columns 0..r1-1 (the later columns are 0)."""
        S, A = self.S, self.A
        c, N = A.shape
        Sb = S[:, r0 - 1] if r0 > 0 else torch.zeros_like(S[:, 0])  # (c,)
        left = self.C[:, r0:r1] * torch.exp(A[:, None, :] * (S[:, r0:r1] - Sb[:, None])[..., None])  # (c, r, N)
        M = torch.empty(c, r1 - r0, r1, dtype=self.dtype, device=S.device)
        if r0 > 0:
            # per column block J < this one: exp(A (S_b - S_e_J)), one (c, N) factor for its columns
            nJ = r0 // self.block
            scale = torch.exp(A[:, :, None] * (Sb[:, None] - S[:, self.block - 1:r0:self.block])[:, None, :])
            right = (self.R[:, :, :r0].reshape(c, N, nJ, self.block) * scale[..., None]).view(c, N, r0)
            torch.bmm(left, right, out=M[:, :, :r0])
        tril = torch.ones(r1 - r0, r1 - r0, dtype=torch.bool, device=S.device).tril()
        M[:, :, r0:r1] = self._diag(r0, r1, left) * tril
        return M

    def _diag(self, a: int, b: int, left: torch.Tensor | None = None) -> torch.Tensor:
        """(c, b - a, b - a): the entries l, j in a..b-1 with j <= l (above the diagonal: finite values the
        caller masks). Where exp(A (S_p - S_j)) >= 1 stays finite for the pivot p = a - 1, one product; else
        the range is halved: the lower-left quadrant pivots on the step before its columns end, so both of its
        factors are <= 1, and each half recurses. A single step is C_a . Δ_a B_a, with no exponential at all.
        ``left``: C_l exp(A (S_l - S_p)) for l in a..b-1 where the caller has it."""
        S, A = self.S, self.A
        if b - a == 1:
            return (self.C[:, a] * self.dB[:, a]).sum(-1)[:, None, None]
        Sp = S[:, a - 1] if a > 0 else torch.zeros_like(S[:, 0])
        if (A.abs() * (S[:, b - 1] - Sp)[:, None]).max() < self.safe:
            if left is None:
                left = self.C[:, a:b] * torch.exp(A[:, None, :] * (S[:, a:b] - Sp[:, None])[..., None])
            right = self.dB[:, a:b] * torch.exp(A[:, None, :] * (Sp[:, None] - S[:, a:b])[..., None])
            return torch.bmm(left, right.transpose(1, 2))  # (c, r, r)
        m = (a + b) // 2
        out = torch.zeros(A.shape[0], b - a, b - a, dtype=self.dtype, device=S.device)
        out[:, :m - a, :m - a] = self._diag(a, m)
        out[:, m - a:, m - a:] = self._diag(m, b)
        Sm = S[:, m - 1]
        left = self.C[:, m:b] * torch.exp(A[:, None, :] * (S[:, m:b] - Sm[:, None])[..., None])  # <= 1
        right = self.dB[:, a:m] * torch.exp(A[:, None, :] * (Sm[:, None] - S[:, a:m])[..., None])  # <= 1
        out[:, m - a:, :m - a] = torch.bmm(left, right.transpose(1, 2))
        return out


def attention_rows(s: ScanInputs, rows: slice, units: torch.Tensor) -> torch.Tensor:
    """M_lj for l in ``rows`` and j up to the block's last row (every later column is 0), for ``units`` (c,):
    (c, rows, rows.stop)."""
    L = s.u.shape[0]
    r0, r1 = rows.start or 0, min(rows.stop, L)
    return _Units(s, units, max(1, r1 - r0)).rows(r0, r1)


def check_view_size(L: int, dtype: torch.dtype = torch.float32, unit: str = "channel") -> None:
    """Refuse, with the size, an L whose two aggregated (L, L) views would exceed MAX_FULL_BYTES."""
    need = 2 * L * L * torch.finfo(dtype).bits // 8
    if need > MAX_FULL_BYTES:
        raise ValueError(f"hidden attention at L = {L} tokens needs {need / 2**30:.1f} GiB for its two (L, L) views "
                         f"(limit {MAX_FULL_BYTES / 2**30:g} GiB): probe fewer tokens (--tokens)")


@dataclass
class LayerAttention:
    layer: int
    channels: list[int]  # the units asked for: channels (Mamba-1 kinds) or heads (Mamba-2 kinds)
    M: torch.Tensor | None  # (len(channels), L, L) for the units asked, None if none were
    mean_abs: torch.Tensor  # (L, L): mean over every unit of |M|
    mean_rownorm: torch.Tensor  # (L, L): mean over every unit of |M| normalised per row
    unit: str = "channel"  # "channel" | "head"


def layer_attention(s: ScanInputs, layer: int = 0, channels: list[int] | None = None, block: int = 256,
                    channel_block: int = 64, unit: str = "channel") -> LayerAttention:
    """The hidden attention of one layer from its scan inputs, computed ``block`` rows and ``channel_block``
    units at a time: M for ``channels`` (the units asked: channels or heads, ``unit``), and the two
    aggregated views over every unit."""
    L, K = s.u.shape[0], s.units
    if block < 1 or channel_block < 1:
        raise ValueError(f"block and channel_block must be >= 1, got {block}, {channel_block}")
    channels = [] if channels is None else list(channels)
    bad = [c for c in channels if not 0 <= c < K]
    if bad:
        raise ValueError(f"{unit}s {bad} out of range: the layer has {K} {unit}s (0..{K - 1})")
    check_view_size(L, s.u.dtype, unit)
    need = len(channels) * L * L * s.u.element_size()
    if need > MAX_FULL_BYTES:
        raise ValueError(f"M for {len(channels)} {unit}s at L = {L} takes {need / 2**30:.1f} GiB (limit "
                         f"{MAX_FULL_BYTES / 2**30:g} GiB): ask for fewer {unit}s, or use the aggregated views")
    like = {"dtype": s.u.dtype, "device": s.u.device}
    full = torch.zeros(len(channels), L, L, **like) if channels else None
    mean_abs = torch.zeros(L, L, **like)
    mean_rownorm = torch.zeros(L, L, **like)
    want = {c: i for i, c in enumerate(channels)}
    tiny = torch.finfo(s.u.dtype).tiny
    for c0 in range(0, K, channel_block):
        chans = torch.arange(c0, min(K, c0 + channel_block), device=s.u.device)
        keep = [(k, want[c]) for k, c in enumerate(chans.tolist()) if c in want]
        unit_block = _Units(s, chans, block)
        for r0 in range(0, L, block):
            rows = slice(r0, min(L, r0 + block))
            M = unit_block.rows(r0, rows.stop)  # (c, r, r1): the columns after r1 are 0
            r1 = M.shape[2]
            for k, i in keep:
                full[i, rows, :r1] = M[k]
            a = M.abs_()
            inv = 1 / a.sum(-1).clamp_min(tiny)  # (c, r): each row's total |M|
            mean_abs[rows, :r1] += a.sum(0) / K
            # Σ_c a[c, l, j] inv[c, l] as one batched product over rows (einsum takes a slower route here)
            mean_rownorm[rows, :r1] += torch.bmm(inv.T[:, None, :], a.transpose(0, 1)).squeeze(1) / K
    return LayerAttention(layer, channels, full, mean_abs, mean_rownorm, unit)


def family_scan_inputs(model: nn.Module, ids: torch.Tensor, layers: list[int] | None = None,
                       dtype: torch.dtype = torch.float64, skip_head: bool = False
                       ) -> tuple[dict[int, ScanInputs], dict[int, torch.Tensor], dict[int, torch.Tensor | None]]:
    """For a transformers model of any family in ``nn.families``: each asked SSM layer's scan inputs (by SSM
    layer index) from the family's own forward pass; the scan output the family computed, y (L, D), and the
    gate z (L, D) its scan applied (Mamba-1 kinds: y = (Σ_j M_lj u_j + D u_l) silu(z_l); None for the Mamba-2
    kinds, whose gate comes later), to check M against."""
    from ..nn.families import capture, family_of, ssm_mixers

    family = family_of(model)
    mixers = ssm_mixers(model, family)
    layers = _check_layers(layers, len(mixers))
    ids = torch.as_tensor(ids, dtype=torch.int64).flatten()
    check_ids(ids, model.config.vocab_size)
    with torch.no_grad(), capture(model, family) as got, until_head(model, skip_head):
        model(ids[None].to(model.device))
    out, ys, gates = {}, {}, {}
    for k in layers:
        name, m = mixers[k]
        out[k] = captured_scan_inputs(got[name], m, family, dtype)
        ys[k], gates[k] = got[name].y.to(dtype), None if got[name].z is None else got[name].z.to(dtype)
    return out, ys, gates


def captured_scan_inputs(c, m: nn.Module, family, dtype: torch.dtype = torch.float64) -> ScanInputs:
    """The ScanInputs of one SSM layer of a transformers family from what ``nn.families.capture`` recorded
    (``c``, a Captured) and the mixer ``m``: Δ as the layer's scan forms it, A as the family forms it."""
    from ..nn.families import MAMBA1

    def param(t):  # the capture is on the CPU wherever the model runs
        return t.detach().to("cpu", dtype)

    A = -torch.exp(param(m.A_log).float()).to(dtype)  # the families form A in float32, whatever the model
    if family.kind == MAMBA1:
        delta = F.softplus(c.dt_raw.to(dtype) + param(m.dt_proj.bias))
        return ScanInputs.per_channel(c.u.to(dtype), delta, c.B.to(dtype), c.C.to(dtype), A, param(m.D))
    delta = F.softplus(c.dt_raw.to(dtype) + param(m.dt_bias))
    lo, hi = getattr(m, "time_step_limit", (0.0, float("inf")))
    delta = delta.clamp(lo, hi)
    H, G, n = m.num_heads, m.n_groups, m.ssm_state_size
    L, D = c.u.shape
    return ScanInputs(c.u.to(dtype), delta, c.B.to(dtype).view(L, G, n), c.C.to(dtype).view(L, G, n),
                      A[:, None].expand(H, n).contiguous(), param(m.D),
                      torch.arange(D) // (D // H), torch.arange(H) // (H // G))


def _check_layers(layers, n: int) -> list[int]:
    layers = list(range(n)) if layers is None else list(layers)
    bad = [k for k in layers if not 0 <= k < n]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {n} SSM layers (0..{n - 1})")
    return layers


def hidden_attention(model: nn.Module, ids: torch.Tensor, layers: list[int] | None = None,
                     channels: list[int] | None = None, heads: list[int] | None = None,
                     block: int = 256) -> list[LayerAttention]:
    """The hidden attention of ``model``'s SSM layers on ids (L,): per layer asked (by SSM layer index,
    default all), M for the ``channels`` (Mamba-1 kinds) or ``heads`` (Mamba-2 kinds) asked and the aggregated
    views (see the module docstring). A mambadyn model or any transformers family in ``nn.families``;
    computed in float64."""
    from .hf_models import is_transformers_model

    if channels is not None and heads is not None:
        raise ValueError("give channels (Mamba-1 kinds) or heads (Mamba-2 kinds), not both")
    if is_transformers_model(model):
        inputs = family_scan_inputs(model, ids, layers)[0]
    else:
        inputs = capture_scan_inputs(model, ids, layers)
    per_head = any(s.units != s.u.shape[1] for s in inputs.values())
    if per_head and channels is not None:
        raise ValueError("this model's SSM layers are Mamba-2 kinds: their hidden attention is per head; pass heads")
    if not per_head and heads is not None:
        raise ValueError("this model's SSM layers are Mamba-1 kinds: their hidden attention is per channel; "
                         "pass channels")
    unit = "head" if per_head else "channel"
    return [layer_attention(s, k, heads if per_head else channels, block, unit=unit) for k, s in sorted(inputs.items())]


def distance_profile(view: torch.Tensor) -> torch.Tensor:
    """How far back a layer reads: the mean over rows l of view[l, l - k], for k = 0..L-1 (L,)."""
    L = view.shape[0]
    # row l, column j sits at distance l - j: sum each distance with one scatter, then divide by its count
    dist = (torch.arange(L)[:, None] - torch.arange(L)[None, :]).clamp_min(0)
    lower = torch.ones(L, L, dtype=torch.bool).tril()
    sums = torch.zeros(L, dtype=view.dtype).index_add_(0, dist[lower], view[lower])
    return sums / torch.arange(L, 0, -1, dtype=view.dtype)


@dataclass
class AttentionSummary:
    """What one layer's hidden attention says, from its row-normalised view (every row a distribution over
    the positions the row reads)."""

    layer: int  # SSM layer index
    unit: str
    distance_profile: list[float]  # mean over rows l of the mass at l - k, k = 0..L-1
    first_token_mass: float  # mean over rows l >= 1 of the mass on position 0
    received: list[float]  # per position j: mean over rows l >= j of the mass on j
    spearman_grad: float | None  # rank correlation over positions of received mass and gradient share
    spearman_growth: float | None  # ... and of received mass and fitted growth across depth
    map_size: int  # side of the block-averaged view kept for the heatmap


def _spearman(a: list[float], b: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(a) < 3 or len(set(a)) < 2 or len(set(b)) < 2:
        return None
    return float(spearmanr(a, b).statistic)


def summarize(att: LayerAttention, grad_share: list[float] | None = None,
              growth: list[float] | None = None) -> AttentionSummary:
    """The distance profile, the first token's mass, the mass each position receives and its rank
    correlation with the position's gradient share and growth (None where those are not given)."""
    view = att.mean_rownorm.cpu()  # (L, L): small beside the model; the summaries gather on the CPU
    L = view.shape[0]
    rows_reading = torch.arange(L, 0, -1, dtype=view.dtype)  # rows l >= j: L - j of them
    received = (view.sum(0) / rows_reading).tolist()
    first = float(view[1:, 0].mean()) if L > 1 else float("nan")
    return AttentionSummary(att.layer, att.unit, distance_profile(view).tolist(), first, received,
                            None if grad_share is None else _spearman(received, grad_share),
                            None if growth is None else _spearman(received, growth), min(L, MAP_SIDE))


MAP_SIDE = 512  # the heatmap keeps a block-averaged view at most this wide


def block_average(view: torch.Tensor, side: int = MAP_SIDE) -> torch.Tensor:
    """view (L, L) averaged over blocks to at most (side, side), for a heatmap."""
    L = view.shape[0]
    if L <= side:
        return view.clone()
    f = -(-L // side)
    pad = f * side - L
    v = F.pad(view, (0, pad, 0, pad))
    return v.reshape(side, f, side, f).mean((1, 3))
