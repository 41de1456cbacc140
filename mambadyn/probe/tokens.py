"""What the tokens do in a real stack, measured on real input, per layer l = 0..n_layer (0: the embedding):

    ||h_l[p]||: the residual stream's norm at position p; ||norm(h_l)[p]|| the mixer's input;
    growth: the slope of log ||h_l[p]|| against l (a least-squares fit per position, labelled a fit);
    gradient share: ||d loss / d h_l[p]|| / sum_p ||d loss / d h_l[p]|| (next-token loss of the text);
    Δ: the layer's effective softplus(S_Δ u + b) on every position (``layer.delta_statistics``).
"""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..nn.mixer import per_op_path
from ..nn.recompute import recompute_layers, recomputing
from .attention import ScanInputs
from .clusters import Clustering, stream_directions
from .layer import DeltaStats, delta_statistics


@dataclass
class TokenTrace:
    """Per layer l = 0..n_layer: residual norms (L,), mixer-input norms (L,) for l < n_layer,
    gradient shares (L,); per position: fitted growth across depth."""

    residual_norms: list[list[float]]
    mixer_input_norms: list[list[float]]
    grad_shares: list[list[float]]
    growth_per_layer: list[float]  # fitted slope of log ||h_l[p]|| against l, per position
    fastest_positions: list[int]
    scan_inputs: list[torch.Tensor] = field(repr=False, default_factory=list)  # per layer (P, d_inner)
    loss: float = math.nan
    delta: list[DeltaStats] = field(default_factory=list)  # per layer, Δ on every position (delta_statistics)
    clustering: list[Clustering] = field(default_factory=list)  # per layer boundary, the tokens' directions
    # per layer boundary, each position's cosine to position 0 in the residual stream (L,)
    first_cosines: list[list[float]] = field(default_factory=list)
    # per SSM layer asked for hidden attention: its scan inputs on every position (float64), from the same pass
    attention_inputs: dict = field(default_factory=dict, repr=False)


def backward_finite(loss: torch.Tensor) -> None:
    """loss.backward(), refusing a non-finite loss with a clear error (its gradients would be NaN)."""
    if not torch.isfinite(loss):
        raise FloatingPointError(f"the model's loss on this input is {loss.item()}: non-finite activations")
    loss.backward()


@contextlib.contextmanager
def stream_gradients_only(model: nn.Module):
    """Within the block the model's parameters do not require grad (restored after): the probe needs the loss
    gradient at the residual stream only, and the parameters' gradients would cost a model's worth of memory
    and a third of the backward pass. The first stream tensor must then be made a leaf (``leaf_input``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


@contextlib.contextmanager
def saved_on_cpu(enabled: bool):
    """torch's save_on_cpu where ``enabled`` (what autograd saves for the backward pass waits in CPU memory);
    an out-of-memory error inside says what to do either way."""
    with torch.autograd.graph.save_on_cpu(pin_memory=False) if enabled else contextlib.nullcontext():
        try:
            yield
        except torch.OutOfMemoryError as e:
            raise torch.OutOfMemoryError(f"{e}\nmambadyn: the probe's backward pass keeps every layer's activations; "
                                         "ProbeConfig(recompute_layers=True) (mambadyn probe --recompute-layers) "
                                         "keeps only each layer's input and runs the layer again in the backward "
                                         "pass; ProbeConfig(offload_activations=True) (--offload-activations) "
                                         "keeps them in CPU memory instead; or probe fewer tokens") from None


def leaf_input(args: tuple, kwargs: dict) -> tuple[torch.Tensor, tuple, dict]:
    """For a forward pre-hook: the block's first input (positional, or ``hidden_states``) detached as a leaf
    that requires grad, and the (args, kwargs) that carry it in its place."""
    if args:
        h = args[0].detach().requires_grad_(True)
        return h, (h, *args[1:]), kwargs
    h = kwargs["hidden_states"].detach().requires_grad_(True)
    return h, args, {**kwargs, "hidden_states": h}


def growth_fit(norms: list[torch.Tensor]) -> tuple[list[float], list[int]]:
    """Per position, the least-squares slope of log ||h_l[p]|| against l over the layer boundaries ``norms``
    (each (L,)); and the positions ordered fastest first."""
    logn = torch.stack(norms).double().clamp_min(1e-300).log()  # (layers + 1, L)
    depth = torch.arange(logn.shape[0], dtype=torch.float64)[:, None]
    dc = depth - depth.mean()
    slope = ((dc * (logn - logn.mean(0))).sum(0) / (dc**2).sum()).tolist()
    return slope, sorted(range(len(slope)), key=lambda p: -slope[p])


def window_losses(logits: torch.Tensor, ids: torch.Tensor, n: list[int | None]) -> list[torch.Tensor]:
    """Each window's next-token loss on its own positions: logits (W, L, vocab), ids (W, L), n[w] the window's
    real length (None: all L; shorter windows are padded on the right)."""
    return [F.cross_entropy(logits[w, :n[w]][:-1].float(), ids[w, 1:n[w]]) for w in range(len(n))]


def stream_measures(streams: list[torch.Tensor], w: int, n: int | None, float32: bool = False,
                    cluster: bool = True) -> tuple:
    """Window w's residual-stream measures on its real positions [:n], from the streams (each (W, L, D), with
    the loss gradient where one reached it): per layer boundary the norms (L,) and each position's share of the
    gradient norm, the fitted growth per position and the positions fastest first, and the directions
    (``stream_directions``). ``float32``: norms taken in float32 (a transformers model may run in bfloat16)."""
    def cast(t):
        return t.float() if float32 else t

    norms = [cast(s.detach()[w, :n]).norm(dim=-1).cpu() for s in streams]  # (L,) each
    grads = [cast(s.grad[w, :n]).norm(dim=-1).cpu() if s.grad is not None else torch.zeros(len(norms[0]))
             for s in streams]
    shares = [(g / g.sum().clamp_min(1e-300)).tolist() for g in grads]
    slope, order = growth_fit(norms)
    clusters, first = stream_directions([s[w:w + 1, :n] for s in streams], cluster=cluster)
    return [x.tolist() for x in norms], shares, slope, order, clusters, first


def _lm_blocks(model) -> list[nn.Module]:
    if hasattr(model, "backbone"):
        return list(model.backbone.layers)
    return list(model.layers)


def trace_tokens(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor | None = None,
                 keep_scan_inputs: int = 0, attention_layers: list[int] | None = None, *, offload: bool = False,
                 recompute: bool = False) -> TokenTrace:
    """Run ``model`` on ``ids`` (L,) token ids (an LM) or (1, C, H, W) images (a classifier with
    ``labels`` (1,)), record the residual stream, mixer inputs and scan inputs of each layer, the
    statistics of each layer's effective Δ over every position, and the loss gradient at every position.
    ``keep_scan_inputs``: how many leading positions' scan inputs to keep for the ODE;
    ``attention_layers``: the layers whose whole scan inputs (``attention.ScanInputs``) to keep for the
    hidden attention, so that it needs no second pass. ``offload``, ``recompute``: as ``trace_windows``."""
    if labels is None:
        return trace_windows(model, ids[None], keep_scan_inputs, attention_layers, offload, recompute)[0]
    return _trace(model, ids, labels, keep_scan_inputs, attention_layers, offload, recompute)[0]


def trace_windows(model: nn.Module, ids: torch.Tensor, keep_scan_inputs: int = 0,
                  attention_layers: list[int] | None = None, offload: bool = False, recompute: bool = False, *,
                  lengths: list[int] | None = None) -> list[TokenTrace]:
    """``trace_tokens`` of an LM on W windows at once: ids (W, L), one forward and one backward pass, one
    ``TokenTrace`` per window. The loss summed over the windows has, at each window's positions, the gradient
    of that window's own loss (the windows meet nowhere in the model). The hidden attention's inputs are kept
    for window 0 only. ``offload``, ``recompute``: where the backward pass's activations wait
    (``saved_on_cpu``, ``nn.recompute.recompute_layers``). ``lengths``: each window's real length, where
    shorter windows are padded on the right (the model is causal: their real positions never read a pad, and
    every measure, the loss included, is taken on the real positions only)."""
    return _trace(model, ids, None, keep_scan_inputs, attention_layers, offload, recompute, lengths)


def _trace(model: nn.Module, ids: torch.Tensor, labels: torch.Tensor | None, keep_scan_inputs: int,
           attention_layers: list[int] | None, offload: bool = False, recompute: bool = False,
           lengths: list[int] | None = None) -> list[TokenTrace]:
    blocks = _lm_blocks(model)
    W = ids.shape[0]
    n = lengths or [None] * W  # each window's real positions: [:n[w]]
    streams: list[torch.Tensor] = []
    mixer_in: list[torch.Tensor] = []
    scan_in: list[list[torch.Tensor]] = [[] for _ in range(W)]
    deltas: list[list[DeltaStats]] = [[] for _ in range(W)]

    def first_hook(_mod, args, kwargs):
        h, args, kwargs = leaf_input(args, kwargs)
        streams.append(h)
        return args, kwargs

    def block_hook(_mod, args, out):
        out.retain_grad()
        streams.append(out)

    def norm_hook(_mod, _args, out):
        if recomputing():  # the backward pass's rerun of the block: recorded on the first run
            return
        mixer_in.append(out.detach())

    attend = set(attention_layers or [])
    attention_inputs: dict[int, ScanInputs] = {}

    def conv_hook(k, mixer):
        def hook(_mod, args, out):  # the mixer's u = silu(conv(x)) over the first L steps
            if recomputing():
                return
            us = F.silu(out[..., : args[0].shape[-1]].detach())  # no graph: nothing saved for a backward pass
            for w in range(W):
                u = us[w].T[:n[w]]  # (L, d_inner)
                deltas[w].append(delta_statistics(mixer, u))
                if keep_scan_inputs:
                    scan_in[w].append(u[:keep_scan_inputs].double().cpu())
            if k in attend:
                attention_inputs[k] = ScanInputs.of_mixer(mixer, us[0].T[:n[0]].double())
        return hook

    handles = [blocks[0].register_forward_pre_hook(first_hook, with_kwargs=True)]
    for k, b in enumerate(blocks):
        handles.append(b.register_forward_hook(block_hook))
        handles.append(b.norm.register_forward_hook(norm_hook))
        handles.append(b.mixer.conv1d.register_forward_hook(conv_hook(k, b.mixer)))
    try:
        dev = next(model.parameters()).device  # the model may sit on a GPU; the ids come from the CPU
        ids = ids.to(dev)
        # the hooks above see module calls: on a GPU the fused path would run past all of them
        with (torch.enable_grad(), per_op_path(model), stream_gradients_only(model), saved_on_cpu(offload),
              recompute_layers(blocks, recompute)):
            logits = model(ids)
            if labels is None:
                losses = window_losses(logits, ids, n)
            else:
                losses = [F.cross_entropy(logits.float(), labels.to(dev))]
            backward_finite(torch.stack(losses).sum())
    finally:
        for h in handles:
            h.remove()
    out = []
    for w in range(W):
        # the measurements are small: they are gathered on the CPU whatever device the model runs on
        norms, shares, slope, order, clusters, first = stream_measures(streams, w, n[w], cluster=labels is None)
        out.append(TokenTrace(norms, [m[w, :n[w]].norm(dim=-1).tolist() for m in mixer_in], shares,
                              slope, order[:10], scan_in[w], losses[w].item(), deltas[w], clusters, first,
                              attention_inputs if w == 0 else {}))
    return out
