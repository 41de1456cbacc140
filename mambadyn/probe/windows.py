"""The probe over many windows of a text, with every per-layer statistic given as a mean and a Student-t
95% interval over the windows (``mambadyn probe --windows N --window-len L``).

The windows are consecutive, disjoint stretches of L tokens from the start of the text. Where the text ends
inside the last window, that window is shorter (at least 2 tokens; a text too short for that is refused,
naming the numbers): it is padded on the right in its batch, and measured on its own positions only. The
models are causal, so no real position reads a pad, and the tests check that the shorter window's numbers
equal its probe alone. The summaries then mix one shorter window with the others: ``lens`` says so.
``batch`` windows at a time share one forward and one backward pass (``probe_batch``: the summed loss has
each window's own gradient at its positions, so every number equals the window's probe alone, as the tests
check); the spectra, which depend on the weights alone, are the same in all. The first window's probe is
the one the report and figures show in full (its hidden attention too), and ``windows`` in probe.json
summarises all of them: the loss, per residual-stream boundary the gradient share's Gini and top-10% share,
per SSM layer the share of Δ's data-dependent part that is positive and Δ's median, the scenario each
window gave, and per simulated layer the ODE's agreement with the real stack.
"""

from __future__ import annotations

from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch import nn
from tqdm.auto import tqdm

from ..nn.load import Loaded, load_checkpoint, token_ids
from ..stats import summarize
from .api import (
    ProbeConfig,
    ProbeResult,
    check_in_memory_inputs,
    check_window_count,
    probe_batch,
    sample_text,
)
from .hf_models import is_transformers_model
from .ode import MODELS


def _summary(values: list) -> dict | None:
    v = [x for x in values if x is not None]
    return asdict(summarize(v)) if v else None


def probe_windows(model_or_path: nn.Module | Loaded | str | Path, ids: torch.Tensor | None = None,
                  config: ProbeConfig | None = None, *, text: str | None = None, tokenizer: str | Path | None = None,
                  windows: int = 4, window_len: int = 512, batch: int = 8) -> ProbeResult:
    """Probe ``windows`` disjoint windows of ``window_len`` tokens (from ids (L,), or text encoded as
    ``probe`` does), ``batch`` windows per pass, and return the first window's result with ``windows`` set to
    the summaries over all."""
    config = config or ProbeConfig()
    if windows < 1 or window_len < 2 or batch < 1:
        raise ValueError(f"need windows >= 1, window_len >= 2 and batch >= 1, got {windows}, {window_len} and {batch}")
    target = model_or_path
    if not isinstance(target, (nn.Module, Loaded)):
        target = load_checkpoint(target)
    if isinstance(target, Loaded):
        ids, _ = token_ids(target, text, ids, tokenizer, default_text=sample_text())
    else:
        check_in_memory_inputs(target, text, tokenizer)
        if ids is None:
            raise ValueError("a model in memory brings no tokenizer: pass token ids")
    ids = torch.as_tensor(ids, dtype=torch.int64).flatten()
    check_window_count(ids.numel(), windows, window_len)  # before any work
    if not isinstance(target, Loaded) and not is_transformers_model(target) and not hasattr(target, "backbone"):
        raise ValueError("windows are for language models")
    cfg = replace(config, max_tokens=window_len, progress=False)
    results = []
    with tqdm(total=windows, desc="windows", disable=not config.progress) as bar:
        for w0 in range(0, windows, batch):
            n = min(batch, windows - w0)
            # the report shows the first window's hidden attention only: the later windows skip it
            c = cfg if w0 == 0 else replace(cfg, attention_layers=None)
            results += probe_batch(target, ids[w0 * window_len:(w0 + n) * window_len], c, windows=n)
            bar.update(n)
    first = results[0]
    first.windows = summarize_windows(results, window_len)
    first.input["windows"] = {"n": windows, "len": window_len}
    if first.windows["lens"]:
        first.input["windows"]["lens"] = first.windows["lens"]
    return first


def summarize_windows(results: list[ProbeResult], window_len: int) -> dict:
    """Mean and 95% interval over the windows' probes of every per-layer statistic that varies with the input."""
    dicts = [r.to_dict() for r in results]
    n_layers = len(dicts[0]["layers"])
    n_stream = len(dicts[0]["tokens"]["grad_share_gini"])
    lens = [d["input"]["tokens"] for d in dicts]
    out = {"n": len(results), "len": window_len,
           "lens": lens if any(n != window_len for n in lens) else None,  # each window's length where one is shorter
           "loss": _summary([d["loss"] for d in dicts]),
           "grad_share_gini": [_summary([d["tokens"]["grad_share_gini"][i] for d in dicts]) for i in range(n_stream)],
           "grad_share_top10pct": [_summary([d["tokens"]["grad_share_top10pct"][i] for d in dicts])
                                   for i in range(n_stream)],
           "growth_median": _summary([float(torch.tensor(d["tokens"]["growth_per_layer"]).median()) for d in dicts]),
           "layers": []}
    for i in range(n_layers):
        per = [d["layers"][i] for d in dicts]
        scen: dict[str, int] = {}
        for lp in per:
            scen[lp["scenario"]] = scen.get(lp["scenario"], 0) + 1
        out["layers"].append({
            "name": per[0]["name"], "scenarios": scen,
            "frac_sdx_positive": _summary([lp["delta"]["frac_sdx_positive"] if lp.get("delta") else None for lp in per]),
            "delta_median": _summary([lp["delta"]["quantiles"]["q50"] if lp.get("delta") else None for lp in per])})
    def ode_stat(layer, model, key):
        got = []
        for d in dicts:
            o = next((p for p in d["ode"] if p["layer"] == layer), None)
            fit = o if o is None or model == MODELS[0] else o.get(model)
            got.append(None if fit is None else fit.get(key))
        return _summary(got)

    keys = ("agreement", "spearman", "cosine_agreement", "cosine_spearman")
    out["ode_agreement"] = {str(o["layer"]): ode_stat(o["layer"], MODELS[0], "agreement") for o in dicts[0]["ode"]}
    out["ode"] = {str(o["layer"]): {m: {k: ode_stat(o["layer"], m, k) for k in keys} for m in MODELS}
                  for o in dicts[0]["ode"]}
    return out
