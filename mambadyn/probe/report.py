"""report.md of a probe: the same numbers as probe.json, in sentences a reader can check."""

from __future__ import annotations

import statistics


def markdown(d: dict) -> str:
    src, inp = d["source"], d["input"]
    lines = [f"# Probe of {src.get('path') or 'a model'}", "",
             f"{src['kind']} ({src['format']}), {src['n_layer']} layers, d_model {src['d_model']}, "
             f"d_inner {src['d_inner']}, d_state {src['d_state']}, eigen_mode `{src['eigen_mode']}`. "
             f"Input: {inp['tokens']} tokens ({inp['from']})"
             + ("" if d["loss"] is None else f"; next-token loss {d['loss']:.4f} nats/token") + ".", "",
             "## Spectrum and scenario by layer", "",
             "Eigenvalues are the N nonzero eigenvalues of S_C^T S_B (computed as S_B S_C^T, float64) and the 2N "
             "of its symmetric part. The scenario applies the paper's criterion, proved in 1-D only, to "
             f"D = {src['d_inner']}: it is a **conjecture** here (see mambadyn.dynamics.classify).", "",
             "| layer | + | - | complex pairs | sym + | sym - | scenario (S_C^T S_B) | scenario (symmetric part) |",
             "|---|---|---|---|---|---|---|---|"]
    for lp in d["layers"]:
        lines.append(f"| {lp['name']} | {lp['positive']} | {lp['negative']} | {lp['complex_pairs']} | "
                     f"{lp['sym_positive']} | {lp['sym_negative']} | {lp['scenario']} | {lp['scenario_symmetric']} |")
    counts = {}
    for lp in d["layers"]:
        counts[lp["scenario"]] = counts.get(lp["scenario"], 0) + 1
    lines += ["", "Layers by scenario (conjectural): " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".",
              "", "![spectrum](spectrum.png)", ""]
    t = d["tokens"]
    if t is None:
        lines += ["No token measurements: the probe ran on the parameters only.", ""]
        return "\n".join(lines)
    first, last = t["residual_norms"][0], t["residual_norms"][-1]
    ratio = [b / a for a, b in zip(first, last) if a > 0]
    grows = sum(r > 1 for r in ratio)
    g = t["growth_per_layer"]
    lines += ["## What the tokens do", "",
              f"Residual-stream norm, median over positions: {statistics.median(first):.3g} after the embedding, "
              f"{statistics.median(last):.3g} after the last layer; {grows} of {len(ratio)} positions end larger than "
              "they start.",
              f"Fitted growth of log-norm per layer (least squares over depth, a fit, not a law): median {statistics.median(g):+.4f}, "
              f"range {min(g):+.4f} .. {max(g):+.4f}; fastest positions {t['fastest_positions'][:5]}.", "",
              "![token norms](token_norms.png)", "",
              "## Who carries the gradient", "",
              f"Share of ||d loss / d h_l[p]|| carried by the top 10% of positions: "
              f"{min(t['grad_share_top10pct']):.3f} .. {max(t['grad_share_top10pct']):.3f} over layers "
              f"(uniform: {max(1, round(0.1 * len(first))) / len(first):.3f}); Gini coefficient "
              f"{min(t['grad_share_gini']):.3f} .. {max(t['grad_share_gini']):.3f} (0 = equal shares). "
              "(In a causal LM a position feeds every later loss term, which by itself tilts shares toward early positions.)", "",
              "![gradient shares](grad_share.png)", ""]
    if d["ode"]:
        lines += ["## The continuous-time model seeded from each layer", "",
                  "Each layer's ODE (shared weights, no bias, conv, gate or norm) starts from that layer's real scan "
                  "inputs at the first positions and runs to t = T; its per-token fate is set beside the "
                  "residual-stream norm ratio from that layer to the last. Agreement: the fraction of positions "
                  "whose direction (grow / shrink) matches; Spearman: rank correlation of predicted and observed growth.",
                  "", "| layer | T | blow-ups | grows | shrinks | agreement | Spearman |", "|---|---|---|---|---|---|---|"]
        for o in d["ode"]:
            p = o["predicted"]
            rho = "n/a" if o["spearman"] is None else f"{o['spearman']:+.2f}"
            lines.append(f"| {o['layer']} | {o['t_end']:g} | {p.count('blow-up')} | {p.count('grows')} | "
                         f"{p.count('shrinks')} | {o['agreement']:.2f} | {rho} |")
        mean_agree = statistics.mean(o["agreement"] for o in d["ode"])
        lines += ["", f"Mean agreement over layers: {mean_agree:.2f} (0.5 is what a coin would give when both "
                      "directions are equally common).", ""]
    return "\n".join(lines)
