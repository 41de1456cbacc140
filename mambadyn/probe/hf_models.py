"""The probe on a transformers model of any family in ``nn.families``: transformers' own classes run, the
scan inputs are captured at each family's scan seam, and the residual stream is read at every decoder
layer (SSM, attention, MLP or MoE alike).

Per SSM layer: the spectrum of the family's interaction matrix (per group for the Mamba-2 kinds), the
paper's scenario as a conjecture (an analogue for the Mamba-2 kinds), and the statistics of the Δ the
layer computed on every position. Per decoder layer: residual norms, the loss gradient's share per
position, fitted growth. The layer ODE (``probe.ode``) runs for the Mamba-1 kinds, seeded from the
captured scan inputs: exact in form for Mamba (B, C and Δ are linear in u, as in the paper), with the
RMSNorms on B, C and Δ left out for FalconMamba and Jamba (each report says so). For the Mamba-2 kinds it
is not run: x, B and C are separate projections there, and the output returns through out_proj, so the
paper's one-space token system has no counterpart.
"""

from __future__ import annotations

import torch
from torch import nn
from tqdm.auto import tqdm

from ..nn.families import (
    MAMBA1,
    Captured,
    Family,
    capture,
    decoder_layers,
    family_of,
    interactions,
    layer_kinds,
    ssm_mixers,
)
from ..nn.recompute import recompute_layers
from ..refine.spectrum import layer_spectrum, rank_rtol
from .layer import LayerParams, delta_stats, matrix_params, note_ode
from .ode import OdeCheck, interaction_system, ode_check
from .tokens import (
    TokenTrace,
    backward_finite,
    saved_on_cpu,
    stream_gradients_only,
    stream_measures,
    window_losses,
)


def is_transformers_model(model: nn.Module) -> bool:
    """A transformers PreTrainedModel (mambadyn's own models are plain nn.Modules with their own config)."""
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(model, PreTrainedModel)


def trace_hf(model: nn.Module, family: Family, ids: torch.Tensor) -> tuple[TokenTrace, dict[str, Captured]]:
    """Run ``model`` on ids (L,), with the loss gradient at every decoder layer's output; returns the token
    trace (residual norms per layer boundary, mixer-input norms per SSM layer, gradient shares, growth, Δ
    statistics per SSM layer) and every SSM layer's captured scan inputs."""
    traces, got = trace_hf_windows(model, family, ids[None])
    return traces[0], got[0]


def trace_hf_windows(model: nn.Module, family: Family, ids: torch.Tensor, offload: bool = False,
                     recompute: bool = False, *, lengths: list[int] | None = None
                     ) -> tuple[list[TokenTrace], list[dict[str, Captured]]]:
    """``trace_hf`` on W windows at once, ids (W, L): one forward and one backward pass, a trace and a capture
    per window (the summed loss has each window's own gradient at its positions). ``offload``: what the
    backward pass needs waits in CPU memory (``tokens.saved_on_cpu``); ``recompute``: each decoder layer keeps
    its input only and runs again in the backward pass (``nn.recompute.recompute_layers``); ``lengths``: each
    window's real length, shorter ones padded on the right (as ``tokens.trace_windows``)."""
    layers = decoder_layers(model)
    streams: list[torch.Tensor] = []

    def first(_mod, args, kwargs):
        if not streams:
            h = args[0] if args else kwargs["hidden_states"]
            h.retain_grad()
            streams.append(h)

    def leaf(_mod, _args, out):
        # with the parameters frozen, the graph starts at the embedding's output (a hybrid may also carry a copy
        # of it past the first layer, as Zamba2 does, so the first layer's input is not made the leaf)
        return out.detach().requires_grad_(True)

    def after(_mod, _args, out):
        h = out[0] if isinstance(out, tuple) else out
        h.retain_grad()
        streams.append(h)

    handles = [layers[0].register_forward_pre_hook(first, with_kwargs=True),
               model.get_input_embeddings().register_forward_hook(leaf)]
    handles += [layer.register_forward_hook(after) for layer in layers]
    W = ids.shape[0]
    n = lengths or [None] * W  # each window's real positions: [:n[w]]
    try:
        with (capture(model, family, rows=True) as got, torch.enable_grad(), stream_gradients_only(model),
              saved_on_cpu(offload), recompute_layers(layers, recompute)):
            ids = ids.to(model.device)
            # no cache: nothing to decode after, and a recomputed layer would find its own state in it
            logits = model(ids, use_cache=False).logits
            losses = window_losses(logits, ids, n)
            backward_finite(torch.stack(losses).sum())
    finally:
        for h in handles:
            h.remove()
    mixers = ssm_mixers(model, family)
    missing = [name for name, _ in mixers if name not in got[0]]
    if missing:
        raise RuntimeError(f"the scan of {missing[:3]} was not captured: transformers' {family.model_type} no longer "
                           f"calls {family.scan_function} (mambadyn supports the layout of transformers 5)")
    got = [{name: c.head(n[w]) for name, c in g.items()} for w, g in enumerate(got)]
    traces = []
    for w in range(W):
        norms, shares, slope, order, clusters, first = stream_measures(streams, w, n[w], float32=True)
        deltas = [delta_stats(got[w][name].dt_raw, _dt_bias(m, family)) for name, m in mixers]
        traces.append(TokenTrace(norms, [got[w][name].h.norm(dim=-1).tolist() for name, _ in mixers],
                                 shares, slope, order[:10], [], losses[w].item(), deltas, clusters, first))
    return traces, got


def _dt_bias(mixer: nn.Module, family: Family) -> torch.Tensor:
    return (mixer.dt_proj.bias if family.kind == MAMBA1 else mixer.dt_bias).detach().float().cpu()


def hf_layers(model: nn.Module, family: Family, gots: list[dict[str, Captured]] | None
              ) -> list[list[LayerParams]]:
    """Per window, the spectrum and conjectured scenario of every SSM layer (one entry per group for Mamba-2
    kinds); ``gots``: each window's captured scan inputs (None: one list, from the parameters only). The
    interaction matrices and their spectra, which depend on the weights alone, are computed once."""
    windows = [None] if gots is None else gots
    out: list[list[LayerParams]] = [[] for _ in windows]
    for name, mixer in ssm_mixers(model, family):
        rtol = rank_rtol(mixer.x_proj.weight if family.kind == MAMBA1 else mixer.in_proj.weight)
        mats = interactions(mixer, family)
        for it in mats:
            spectrum = layer_spectrum(it.S_B, it.S_C, rtol)
            label = name if it.group is None or len(mats) == 1 else f"{name}[group {it.group}]"
            for got, layers in zip(windows, out):
                sdx = None
                if got is not None:
                    raw = got[name].dt_raw
                    if it.group is not None:
                        per = raw.shape[1] // len(mats)
                        raw = raw[:, it.group * per:(it.group + 1) * per]
                    sdx = bool((raw > 0).any())
                lp = matrix_params(label, it.S_B, it.S_C, rtol, sdx, family.matrix, it.note, it.group,
                                   spectrum=spectrum)
                if got is not None:
                    lp.reason += " (Δ's data-dependent part on every position, as the layer computed it)"
                    lp.delta = delta_stats(raw, it.dt_bias.float())
                layers.append(lp)
    return out


ODE_NOTES = {
    "none": None,
    "weightless": "the ODE leaves out the weightless RMSNorms this family puts on B, C and Δ's low rank: it is the "
                  "paper's system with this layer's matrices, not the layer's exact continuous-time limit",
    "learned": "the ODE leaves out the RMSNorms this family puts on B, C and Δ's low rank (their weights g_B g_C "
               "are kept in S_B): it is the paper's system with this layer's matrices, not the layer's exact "
               "continuous-time limit",
}
NO_ODE_MAMBA2 = ("not run: in the Mamba-2 kinds x, B and C are separate projections of the mixer's input and the "
                 "output returns through out_proj, so the paper's token system (one space, x read by B, C and Δ) "
                 "has no counterpart here")


def hf_ode_checks(model: nn.Module, family: Family, got: dict[str, Captured], trace: TokenTrace, which: list[int],
                  stream: list[int], positions: int, t_end: float | None, layers: list[LayerParams],
                  progress: bool = False) -> list[OdeCheck]:
    """The layer ODE (``probe.ode``) of the SSM layers ``which`` of a Mamba-1-kind family, seeded from the first
    ``positions`` captured scan inputs; ``stream``: SSM layer -> residual-stream boundary at its input. Sets each
    layer's blow-up time and depth note in ``layers`` (one LayerParams per mixer for these kinds)."""
    mixers = ssm_mixers(model, family)
    out = []
    for k in tqdm(which, desc="layer ODEs", disable=not progress, leave=False):
        name, mixer = mixers[k]
        (it,) = interactions(mixer, family)
        r = mixer.time_step_rank
        system = interaction_system(it, mixer.dt_proj.weight.detach(), mixer.x_proj.weight.detach()[:r])
        o = ode_check(k, system, got[name].u[:positions].double(), trace.residual_norms, t_end,
                      trace.first_cosines, stream=stream[k], note=ODE_NOTES[family.bc_norm])
        out.append(o)
        note_ode(layers[k], o, len(trace.residual_norms) - 1 - stream[k])
    return out


def hf_source(model: nn.Module, family: Family, path) -> dict:
    mixer = ssm_mixers(model, family)[0][1]
    cfg = model.config
    return {"path": None if path is None else str(path), "kind": "lm", "format": "transformers",
            "family": family.model_type, "matrix": family.matrix, "n_layer": len(decoder_layers(model)),
            "layer_kinds": layer_kinds(model, family), "d_model": cfg.hidden_size,
            "d_inner": int(mixer.intermediate_size), "d_state": int(mixer.ssm_state_size), "eigen_mode": None}


__all__ = ["family_of", "hf_layers", "hf_source", "is_transformers_model", "trace_hf"]
