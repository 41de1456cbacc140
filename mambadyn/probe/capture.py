"""``capture(model, ids, names)``: the tensors a user asks for, per layer, from one forward pass of a mambadyn
model or of any transformers family in ``nn.families``.

Names (per SSM layer k, batch row 0, on the CPU):

    ssm_input   (L, D)     u, the scan's input (after in_proj, the conv and SiLU)
    ssm_dt      (L, K)     Δ as the scan uses it (bias added, softplus applied; K = channels or heads)
    ssm_B       (L, G, N)  B per group (G = 1 for the Mamba-1 kinds)
    ssm_C       (L, G, N)  C per group
    ssm_output  (L, D)     y = C h + D u, the scan's output before any gate
    ssm_state   (L, c, N)  the state h_l after step l, for the ``channels`` asked (all by default; a state
                           of (L, D, N) for every channel is what a long input cannot afford)
    resid_pre   (L, d_model)  the residual stream entering decoder layer k (every decoder layer, SSM or not)
    resid_post  (L, d_model)  the residual stream leaving it

The ssm_* names index SSM layers, the resid_* names decoder layers (the same in a pure Mamba stack). The
scan quantities come from the capture the probe uses (``probe.attention``), the states from the float64
recurrence on them, computed in chunks of positions so that only the asked channels' (L, c, N) is held.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..nn.mixer import per_op_path
from .attention import ScanInputs, capture_scan_inputs, family_scan_inputs, until_head
from .hf_models import is_transformers_model

SSM_NAMES = ("ssm_input", "ssm_dt", "ssm_B", "ssm_C", "ssm_output", "ssm_state")
RESID_NAMES = ("resid_pre", "resid_post")
NAMES = SSM_NAMES + RESID_NAMES


def states(s: ScanInputs, channels: list[int] | None = None) -> torch.Tensor:
    """h_l (L, c, N) of the recurrence h_l = exp(Δ_l A) h_{l-1} + Δ_l u_l B_l for ``channels`` (default all)."""
    D = s.u.shape[1]
    ch = torch.arange(D) if channels is None else torch.as_tensor(channels)
    bad = ch[(ch < 0) | (ch >= D)]
    if bad.numel():
        raise ValueError(f"channels {bad.tolist()} out of range: the layer has {D} channels (0..{D - 1})")
    k, g = s.unit[ch], s.group[s.unit[ch]]
    dl, A = s.delta[:, k], s.A[k]  # (L, c), (c, N)
    h = torch.zeros(len(ch), A.shape[1], dtype=s.u.dtype)
    out = torch.empty(s.u.shape[0], len(ch), A.shape[1], dtype=s.u.dtype)
    for l in range(s.u.shape[0]):
        h = torch.exp(dl[l, :, None] * A) * h + (dl[l] * s.u[l, ch])[:, None] * s.B[l, g]
        out[l] = h
    return out


@contextlib.contextmanager
def _residual_hooks(model: nn.Module, layers: list[int] | None):
    """Within the block, forward passes record resid_pre and resid_post of the decoder ``layers`` (default
    all) into the yielded dict."""
    from ..nn.families import decoder_layers

    blocks = decoder_layers(model) if is_transformers_model(model) else list(model.backbone.layers)
    which = range(len(blocks)) if layers is None else layers
    bad = [k for k in which if not 0 <= k < len(blocks)]
    if bad:
        raise ValueError(f"layers {bad} out of range: the model has {len(blocks)} decoder layers (0..{len(blocks) - 1})")
    got: dict[str, dict[int, torch.Tensor]] = {"resid_pre": {}, "resid_post": {}}
    handles = []
    for k in which:
        def pre(_m, args, kwargs, k=k):
            h = args[0] if args else kwargs["hidden_states"]
            got["resid_pre"][k] = h[0].detach().float().cpu()

        def post(_m, _args, out, k=k):
            h = out[0] if isinstance(out, tuple) else out
            got["resid_post"][k] = h[0].detach().float().cpu()
        handles += [blocks[k].register_forward_pre_hook(pre, with_kwargs=True), blocks[k].register_forward_hook(post)]
    try:
        yield got
    finally:
        for h in handles:
            h.remove()


def capture(model: nn.Module, ids: torch.Tensor, names: list[str] | tuple[str, ...] = SSM_NAMES[:-1] + RESID_NAMES,
            layers: list[int] | None = None, channels: list[int] | None = None,
            dtype: torch.dtype = torch.float64) -> dict[str, dict[int, torch.Tensor]]:
    """name -> {layer: tensor} for the ``names`` asked (see the module docstring), on ids (L,), for ``layers``
    (default all) and, for ssm_state, ``channels`` (default all). The scan quantities in ``dtype``: float64 by
    default (what the equivalence tests hold to); float32 halves the memory and most of the extra time."""
    if dtype not in (torch.float32, torch.float64):
        raise ValueError(f"capture dtype must be torch.float32 or torch.float64, got {dtype}")
    unknown = [n for n in names if n not in NAMES]
    if unknown:
        raise ValueError(f"unknown capture names {unknown}; known: {', '.join(NAMES)}")
    ids = torch.as_tensor(ids, dtype=torch.int64).flatten()
    out: dict[str, dict[int, torch.Tensor]] = {}
    with contextlib.ExitStack() as stack:
        # one forward pass for everything asked: the residual hooks ride on the scan capture's pass
        res = stack.enter_context(_residual_hooks(model, layers)) if any(n in RESID_NAMES for n in names) else None
        if any(n in SSM_NAMES for n in names):
            inputs = (family_scan_inputs(model, ids, layers, dtype, skip_head=True)[0] if is_transformers_model(model)
                      else capture_scan_inputs(model, ids, layers, dtype, skip_head=True))
            for n in names:
                if n not in SSM_NAMES:
                    continue
                out[n] = {k: {"ssm_input": lambda s: s.u, "ssm_dt": lambda s: s.delta, "ssm_B": lambda s: s.B,
                              "ssm_C": lambda s: s.C, "ssm_output": ScanInputs.scan_output,
                              "ssm_state": lambda s: states(s, channels)}[n](s) for k, s in inputs.items()}
        else:  # residuals alone; the block hooks see module calls only (per_op_path)
            with torch.no_grad(), per_op_path(model), until_head(model):
                model(ids[None].to(next(model.parameters()).device))
    if res is not None:
        out.update({n: res[n] for n in names if n in RESID_NAMES})
    return out
