"""``probe(model_or_path, ids) -> ProbeResult`` and the files ``mambadyn probe`` writes.

probe.json (strict JSON; a value that could not be measured is null; ``version`` 2):
    {"version": 2, "source": {"path", "kind": "lm"|"classifier", "format": "hf"|"mamba_ssm"|
     "mambadyn_run"|"classifier"|"module", "n_layer", "d_model", "d_inner", "d_state", "eigen_mode"},
     "input": {"tokens": L, "from": "text"|"ids"|"embedded sample"|"parameters only"}, "loss": float|null,
     "layers": [{"name", "eigenvalues": [[re, im], ...] (N nonzero eigenvalues of S_C^T S_B),
                 "symmetric_eigenvalues": [...] (nonzero eigenvalues of its symmetric part), "positive",
                 "negative", "complex_pairs", "sym_positive", "sym_negative",
                 "symmetric_forced": true where [S_B; S_C] has full row rank 2N, so the symmetric part has N
                     positive and N negative eigenvalues by Sylvester's law for ANY weights (a structural fact,
                     not a finding; false for the constrained eigen modes, whose signs are the layer's own),
                 "symmetric_note", "scenario": an Outcome value ("converges" | "blows_up" | "diverges_slowly" |
                     "undetermined"), the paper's D-dim criterion applied to this layer, "conjectural": true,
                 "reason", "delta": null | {"entries", "quantiles": {"q01", "q05", "q50", "q95", "q99"}, "max",
                     "frac_sdx_positive", "frac_active_positive", "dt_bias": {"min", "median", "max"}}
                     (Δ = softplus(S_Δ u + dt_bias) on every position's real scan input),
                 "first_blowup": layer steps to the first blow-up of the layer's own ODE (null: none seen),
                 "ode_horizon", "layers_remaining", "depth_note"}, ...],
     "tokens": null | {"residual_norms": [[L floats] x (n_layer + 1)], "mixer_input_norms": [[L] x n_layer],
                "grad_shares": [[L] x (n_layer + 1)], "growth_per_layer": [L] (fitted), "fastest_positions",
                "grad_share_top10pct": [per layer: share carried by the top 10% of positions],
                "grad_share_gini": [per layer]},
     "ode": [{"layer", "positions", "t_end", "horizon", "predicted" (Outcome values by t_end),
              "predicted_ratio", "blowup_times", "first_blowup", "blowup_order", "observed", "observed_ratio",
              "decided", "agreement", "spearman", "solver"}, ...]}   (probe.ode)
report.md says the same in words; spectrum.png, token_norms.png, grad_share.png draw it.
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..jsonio import write_json
from ..nn.families import MAMBA1, family_of, ssm_mixers
from ..nn.load import Loaded, check_ids, decode_tokens, load_checkpoint, token_ids
from ..outputs import atomic_folder
from ..refine.eigen import eigen_mode_of, find_mixers
from ..typed import check_fields, positive
from .attention import (
    AttentionSummary,
    block_average,
    captured_scan_inputs,
    check_view_size,
    layer_attention,
    summarize,
)
from .hf_models import (
    NO_ODE_MAMBA2,
    ODE_NOTES,
    hf_layers,
    hf_ode_checks,
    hf_source,
    is_transformers_model,
    trace_hf_windows,
)
from .layer import LayerParams, layer_params, note_ode
from .ode import OdeCheck, ode_check
from .shares import gini, top_share
from .tokens import TokenTrace, trace_tokens, trace_windows

DEFAULT_ODE_LAYERS = 8  # each layer's ODE costs up to seconds on a real model; eight show the trend over depth


def spread(n: int, k: int) -> list[int]:
    """Up to k of the indices 0..n-1, evenly spaced, the first and the last included."""
    if n <= k:
        return list(range(n))
    return sorted({round(i * (n - 1) / (k - 1)) for i in range(k)})


def sample_text() -> str:
    """The short text shipped with mambadyn (written for it; public domain), probed by default."""
    return resources.files("mambadyn.probe").joinpath("sample.txt").read_text(encoding="utf-8")


@dataclass
class ProbeConfig:
    max_tokens: int = 2048  # longer inputs are cut to their first max_tokens
    ode_positions: int = 16  # leading positions whose scan inputs seed each layer's ODE (0: no ODE)
    ode_t_end: float | None = None  # the ODE's comparison horizon in layer steps; None: the layers that remain
    ode_layers: list[int] | None = None  # None: up to DEFAULT_ODE_LAYERS evenly spaced, first and last included
    all_ode_layers: bool = False  # every layer's ODE (ignores ode_layers)
    attention_layers: list[int] | None = None  # SSM layers whose hidden attention the report shows (None: none)
    # keep what the backward pass needs in CPU memory instead of the GPU's (torch's save_on_cpu): a large model
    # on a long input whose saved activations do not fit (a 2.7B Mamba-2 at L = 2048 in transformers' reference
    # scan needs more than an H100's 80 GB), at the cost of copies (there recompute_layers was 5.4x faster)
    offload_activations: bool = False
    # each layer keeps only its input for the backward pass and runs again there (torch.utils.checkpoint):
    # one more forward pass instead of a model's worth of saved activations; the numbers are unchanged
    recompute_layers: bool = False
    progress: bool = True

    def __post_init__(self):
        check_fields(self)
        positive(self, "max_tokens")
        if self.ode_t_end is not None:
            positive(self, "ode_t_end")
        positive(self, "ode_positions", allow_zero=True)


@dataclass
class ProbeResult:
    source: dict
    input: dict
    layers: list[LayerParams]
    tokens: TokenTrace | None
    ode: list[OdeCheck]
    attention: list[AttentionSummary] = field(default_factory=list)
    attention_maps: dict[int, torch.Tensor] = field(default_factory=dict, repr=False)  # block-averaged views
    windows: dict | None = None  # summaries over many windows (probe.windows), None for one window

    def to_dict(self) -> dict:
        d = {"version": 2, "source": self.source, "input": self.input,
             "loss": None if self.tokens is None else self.tokens.loss,
             "layers": [{**asdict(lp), "eigenvalues": [[z.real, z.imag] for z in lp.eigenvalues]}
                        for lp in self.layers],
             "tokens": None, "ode": [asdict(o) for o in self.ode],
             "attention": [asdict(a) for a in self.attention], "windows": self.windows}
        if self.tokens is not None:
            t = self.tokens
            shares = torch.tensor(t.grad_shares)
            d["tokens"] = {k: getattr(t, k) for k in ("residual_norms", "mixer_input_norms", "grad_shares",
                                                     "growth_per_layer", "fastest_positions")}
            d["tokens"]["grad_share_top10pct"] = top_share(shares, 0.1).tolist()
            d["tokens"]["grad_share_gini"] = gini(shares).tolist()
            d["tokens"]["clustering"] = [asdict(c) for c in t.clustering]
        return d


def probe(model_or_path: nn.Module | Loaded | str | Path, ids: torch.Tensor | None = None,
          config: ProbeConfig | None = None, *, labels: torch.Tensor | None = None, text: str | None = None,
          tokenizer: str | Path | None = None) -> ProbeResult:
    """Probe a Mamba model layer by layer.

    model_or_path: a MambaLM / MambaClassifier, a ``Loaded`` checkpoint, or anything ``load_checkpoint``
    opens. ids: (L,) token ids for an LM (or (1, C, H, W) images with ``labels`` (1,) for a classifier); or
    ``text``, encoded with ``tokenizer`` or the checkpoint's tokenizer.json (``nn.load.token_ids``); with
    neither, an LM is probed on ``sample_text()``, a classifier on its parameters only. A model in memory
    brings no tokenizer: it takes ids, and text is refused rather than ignored."""
    return probe_batch(model_or_path, ids, config, labels=labels, text=text, tokenizer=tokenizer)[0]


def probe_batch(model_or_path: nn.Module | Loaded | str | Path, ids: torch.Tensor | None = None,
                config: ProbeConfig | None = None, *, labels: torch.Tensor | None = None, text: str | None = None,
                tokenizer: str | Path | None = None, windows: int = 1) -> list[ProbeResult]:
    """``probe`` of an LM on ``windows`` disjoint windows of ``config.max_tokens`` tokens cut from the start of
    its input, all in one forward and one backward pass: one result per window (each as ``probe`` of that
    window alone would give it; the hidden attention is computed for the first window only)."""
    # the probe's own tensors live on the CPU: a caller's default device (``with torch.device("cuda")``, common
    # when building a large model) would otherwise move them, and mix devices. Only then: the device context is a
    # torch function mode that every op passes through: a small probe with every layer's ODE ran 1.8x slower
    # under it (median of 7 paired runs, 2 CPU cores)
    cpu = torch.get_default_device().type == "cpu"
    with contextlib.nullcontext() if cpu else torch.device("cpu"):
        return _probe_batch(model_or_path, ids, config, labels, text, tokenizer, windows)


def _probe_batch(model_or_path, ids, config, labels, text, tokenizer, windows: int) -> list[ProbeResult]:
    config = config or ProbeConfig()
    if windows < 1:
        raise ValueError(f"need windows >= 1, got {windows}")
    if isinstance(model_or_path, nn.Module):
        check_in_memory_inputs(model_or_path, text, tokenizer)
    if isinstance(model_or_path, nn.Module) and is_transformers_model(model_or_path):
        return _probe_transformers(model_or_path, None, ids, text, tokenizer, config, windows)
    if not isinstance(model_or_path, (nn.Module, Loaded)):
        model_or_path = load_checkpoint(model_or_path)
    if isinstance(model_or_path, Loaded) and model_or_path.source == "transformers":
        return _probe_transformers(model_or_path.model, model_or_path, ids, text, tokenizer, config, windows)
    loaded = None
    if isinstance(model_or_path, nn.Module):
        model, kind = model_or_path.eval(), ("lm" if hasattr(model_or_path, "backbone") else "classifier")
        fmt, path = "module", None
    else:
        loaded = model_or_path
        model, kind, fmt, path = loaded.model, loaded.kind, loaded.source, loaded.folder
    if kind != "lm" and windows != 1:
        raise ValueError("windows are for language models")
    _check_finite_weights(model)
    cfg = model.config
    source = {"path": None if path is None else str(path), "kind": kind, "format": fmt, "n_layer": cfg.n_layer,
              "d_model": cfg.d_model, "d_inner": cfg.expand * cfg.d_model, "d_state": cfg.d_state,
              "eigen_mode": eigen_mode_of(model)}
    origin = "ids"
    if kind == "lm" and loaded is not None:
        ids, origin = token_ids(loaded, text, ids, tokenizer, default_text=sample_text())
    elif kind == "lm" and ids is None:
        raise ValueError("a model in memory brings no tokenizer: pass token ids")
    elif kind != "lm" and text is not None:
        raise ValueError("a MambaClassifier reads images: pass them as ids with labels, not text")
    lengths = None
    if kind == "lm":
        ids, lengths = _cut(ids, config.max_tokens, windows)
        check_ids(ids, cfg.vocab_size)
    mixers = find_mixers(model)
    fwd = [m for name, m in mixers if not name.endswith("mixer_b")]
    fwd_index = {id(m): k for k, m in enumerate(fwd)}  # scan inputs are recorded for forward mixers only
    which = _ode_layers(config, len(fwd), "layers")  # before any work: a probe of a large model takes a while
    _check_attention_layers(config, len(fwd))
    if config.attention_layers and ids is not None:
        check_view_size(ids.shape[-1])  # before the trace: the views are made in float32
    if ids is None:
        traces = [None]
    elif kind == "lm":
        traces = trace_windows(model, ids, config.ode_positions, config.attention_layers, config.offload_activations,
                               config.recompute_layers, lengths=lengths)
    else:
        traces = [trace_tokens(model, ids, labels, config.ode_positions, offload=config.offload_activations,
                               recompute=config.recompute_layers)]
    results = []
    for w, tokens in enumerate(traces):
        layers = []
        for name, m in tqdm(mixers, desc="spectra", disable=not config.progress or w > 0, leave=False):
            k = fwd_index.get(id(m))
            u = tokens.scan_inputs[k] if tokens is not None and k is not None and k < len(tokens.scan_inputs) else None
            delta = tokens.delta[k] if tokens is not None and k is not None and k < len(tokens.delta) else None
            layers.append(layer_params(name, m, u, delta))
        ode = []
        if tokens is not None and config.ode_positions:
            by_mixer = {id(m): lp for (_, m), lp in zip(mixers, layers)}
            for k in tqdm(which, desc="layer ODEs", disable=not config.progress, leave=False):
                o = ode_check(k, fwd[k], tokens.scan_inputs[k], tokens.residual_norms, config.ode_t_end,
                              tokens.first_cosines)
                ode.append(o)
                note_ode(by_mixer[id(fwd[k])], o, len(tokens.residual_norms) - 1 - k)
        n = 0 if ids is None else (lengths[w] if kind == "lm" else int(ids.shape[0]))
        inp = {"tokens": n, "from": "parameters only" if ids is None else origin}
        results.append(ProbeResult(source, inp, layers, tokens, ode))
    first = results[0]
    if config.attention_layers and kind == "lm":
        _label_tokens(first.input, loaded, tokenizer, ids[0], origin)
    if config.attention_layers:
        if kind != "lm" or first.tokens is None:
            raise ValueError("hidden attention reads an LM's tokens: a classifier or a parameters-only probe has none")
        # the trace kept these layers' scan inputs: no second pass
        _attend(first, first.tokens.attention_inputs, list(range(len(fwd))), config, next(model.parameters()).device)
    return results


def _ode_layers(config: ProbeConfig, n: int, unit: str) -> list[int]:
    """The layers (of ``n``) whose ODE runs; ode_layers out of range are refused."""
    bad = [k for k in config.ode_layers or [] if not 0 <= k < n]
    if bad:
        raise ValueError(f"ode_layers {bad} out of range for {n} {unit} (0..{n - 1})")
    if config.all_ode_layers:
        return list(range(n))
    return config.ode_layers if config.ode_layers is not None else spread(n, DEFAULT_ODE_LAYERS)


def _check_attention_layers(config: ProbeConfig, n: int) -> None:
    bad = [k for k in config.attention_layers or [] if not 0 <= k < n]
    if bad:
        raise ValueError(f"attention layers {bad} out of range: the model has {n} SSM layers (0..{n - 1})")


MIN_WINDOW = 2  # tokens: a next-token loss needs two


def check_window_count(tokens: int, windows: int, window_len: int) -> None:
    """Refuse an input of ``tokens`` too short for ``windows`` windows of ``window_len`` (the last may be as
    short as MIN_WINDOW), naming the numbers."""
    need = (windows - 1) * window_len + MIN_WINDOW
    if tokens < need:
        raise ValueError(f"the input has {tokens} tokens; {windows} windows of {window_len} need "
                         f"{windows * window_len} (the last may be as short as {MIN_WINDOW}: at least {need}): "
                         "ask for fewer or shorter windows, or give a longer text")


def _cut(ids, max_tokens: int, windows: int) -> tuple[torch.Tensor, list[int]]:
    """Token ids (L,) -> (windows, max_tokens) disjoint windows from the start (one window: the first
    max_tokens, or all of a shorter input), and each window's length. Where the input ends inside the last
    window, that window is shorter: its tail is padded (with id 0) on the right. The models are causal, so no
    real position reads a pad; the probe measures each window on its own positions only (``lengths``)."""
    ids = torch.as_tensor(ids, dtype=torch.int64).flatten()
    if windows == 1:
        ids = ids[:max_tokens]
        return ids[None], [ids.numel()]
    check_window_count(ids.numel(), windows, max_tokens)
    ids = ids[:windows * max_tokens]
    lengths = [max_tokens] * (windows - 1) + [ids.numel() - (windows - 1) * max_tokens]
    return F.pad(ids, (0, windows * max_tokens - ids.numel())).view(windows, max_tokens), lengths


LABELLED = 64  # inputs up to this long get their tokens as the heatmaps' tick labels


def _label_tokens(inp: dict, loaded: Loaded | None, tokenizer, ids: torch.Tensor, origin: str) -> None:
    # the tokens of a short text input, as the heatmaps' labels (ids given directly have no text to show)
    tok = tokenizer or (loaded.tokenizer_file if loaded is not None else None)
    if origin != "ids" and tok is not None and ids.numel() <= LABELLED:
        inp["token_text"] = decode_tokens(tok, ids)


def _attend(result: ProbeResult, inputs: dict, stream_index: list[int], config: ProbeConfig, device) -> None:
    """The hidden attention of the asked SSM layers (their scan inputs ``inputs``, by SSM layer index), set
    beside the gradient share at the layer's input (``stream_index``: SSM layer -> residual-stream index)."""
    t = result.tokens
    for k in tqdm(sorted(inputs), desc="hidden attention", disable=not config.progress, leave=False):
        # the views in float32 (1.7x faster at L = 4096 on a CPU; results/attention_speed_cpu.json), on the
        # model's device
        s = inputs[k].to(torch.float32, device)
        att = layer_attention(s, k, unit="head" if s.units != s.u.shape[1] else "channel")
        result.attention.append(summarize(att, t.grad_shares[stream_index[k]], t.growth_per_layer))
        result.attention_maps[k] = block_average(att.mean_rownorm.cpu()).float()


def check_in_memory_inputs(model: nn.Module, text, tokenizer) -> None:
    """A model in memory has no tokenizer.json beside it: refuse text (or a tokenizer) rather than probe the ids
    and silently drop them. A classifier's text is refused where its images are checked."""
    if hasattr(model, "backbone") or is_transformers_model(model):
        if text is not None or tokenizer is not None:
            raise ValueError("a model in memory takes token ids, not text or a tokenizer: encode the text first, "
                             "or pass the checkpoint's folder, whose tokenizer.json encodes it")


def _probe_transformers(model: nn.Module, loaded: Loaded | None, ids, text, tokenizer, config: ProbeConfig,
                        windows: int = 1) -> list[ProbeResult]:
    """The probe of a transformers model of any family in ``nn.families`` (``probe.hf_models``), one result
    per window (``probe_batch``)."""
    family = family_of(model)  # before any work: a model without SSM layers is refused here
    model.eval()
    _check_finite_weights(model)
    source = hf_source(model, family, None if loaded is None else loaded.folder)
    if loaded is not None:
        ids, origin = token_ids(loaded, text, ids, tokenizer, default_text=sample_text())
    elif ids is None:
        raise ValueError("a model in memory brings no tokenizer: pass token ids")
    else:
        origin = "ids"
    ids, lengths = _cut(ids, config.max_tokens, windows)
    check_ids(ids, model.config.vocab_size)
    n_ssm = len(ssm_mixers(model, family))
    _check_attention_layers(config, n_ssm)
    if config.attention_layers:
        check_view_size(ids.shape[-1])
    ode_kind = family.kind == MAMBA1 and config.ode_positions > 0
    which = _ode_layers(config, n_ssm, "SSM layers") if ode_kind else []
    traces, gots = trace_hf_windows(model, family, ids, config.offload_activations,
                                   config.recompute_layers, lengths=lengths)
    stream = [i for i, kind in enumerate(source["layer_kinds"]) if "ssm" in kind.split("+")]
    results = []
    for tokens, got, layers, n in zip(traces, gots, hf_layers(model, family, gots), lengths):
        inp = {"tokens": n, "from": origin}
        ode = []
        if family.kind != MAMBA1:
            inp["ode"] = NO_ODE_MAMBA2
        elif ode_kind:
            ode = hf_ode_checks(model, family, got, tokens, which, stream, config.ode_positions, config.ode_t_end,
                                layers, config.progress)
            inp["ode"] = ODE_NOTES[family.bc_norm] or "the paper's system with each layer's own matrices and dt bias"
        results.append(ProbeResult(source, inp, layers, tokens, ode))
    first = results[0]
    if config.attention_layers:
        _label_tokens(first.input, loaded, tokenizer, ids[0], origin)
        # from the trace's own capture: no second forward pass
        mixers = ssm_mixers(model, family)
        inputs = {k: captured_scan_inputs(gots[0][mixers[k][0]], mixers[k][1], family)
                  for k in config.attention_layers}
        _attend(first, inputs, stream, config, model.device)
    return results


def _check_finite_weights(model: nn.Module) -> None:
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ValueError(f"the model has non-finite weights (NaN or inf) in {bad[:5]}")


def write_outputs(result: ProbeResult, out: str | Path) -> Path:
    """probe.json, report.md and the figures into ``out``; written in a temporary folder beside it and
    moved into place, so an interrupted probe leaves no half-written folder."""
    from safetensors.torch import save_file

    from ..plots.probe import attention_maps, distance_profiles, grad_shares, spectrum, token_norms
    from .report import markdown

    with atomic_folder(out, "probe") as tmp:
        d = result.to_dict()
        write_json(tmp / "probe.json", d)
        spectrum(d, tmp / "spectrum.png")
        if d["tokens"] is not None:
            token_norms(d, tmp / "token_norms.png")
            grad_shares(d, tmp / "grad_share.png")
        if result.attention:
            maps = {f"layer{k}": v.contiguous() for k, v in result.attention_maps.items()}
            save_file(maps, tmp / "attention.safetensors")  # the heatmaps' data: they redraw from it
            attention_maps(d, maps, tmp / "attention.png")
            distance_profiles(d, tmp / "attention_distance.png")
        (tmp / "report.md").write_text(markdown(d))
    return Path(out)
