"""report.md of a probe: the same numbers as probe.json, in sentences a reader can check."""

from __future__ import annotations

import statistics


def _header(src: dict, inp: dict, loss) -> str:
    what = (f"{src['kind']} ({src['format']}" + (f", family `{src['family']}`" if src.get("family") else "")
            + f"), {src['n_layer']} layers, d_model {src['d_model']}, d_inner {src['d_inner']}, d_state "
            f"{src['d_state']}" + ("" if src.get("family") else f", eigen_mode `{src['eigen_mode']}`") + ". ")
    return (what + f"Input: {inp['tokens']} tokens ({inp['from']})"
            + ("" if loss is None else f"; next-token loss {loss:.4f} nats/token") + ".")


def _family_intro(src: dict, inp: dict, layers: list[dict]) -> list[str]:
    kinds = src.get("layer_kinds") or []
    runs = ", ".join(f"{i}: {k}" for i, k in enumerate(kinds))
    notes = sorted({lp["matrix_note"] for lp in layers if lp.get("matrix_note")})
    return [f"Decoder layers ({len(kinds)}; the residual-stream measures below cover all of them, the spectra only "
            f"the SSM layers): {runs}.", "",
            f"Interaction matrix: **{src['matrix']}**, its nonzero eigenvalues in float64 (mambadyn.nn.families "
            "derives it per family). " + " ".join(n[0].upper() + n[1:] + "." for n in notes), "",
            "The scenario applies the paper's criterion, proved in 1-D only for the Mamba-1 form, to this matrix: a "
            "**conjecture** here, and for the Mamba-2 kinds an analogue. It reads the sign of Δ's data-dependent "
            "part as the layer computed it on every position (before its bias). Δ is the layer's own "
            "softplus(raw + dt_bias) on every position.", "",
            f"Layer ODE: {inp.get('ode', 'not run')}.", ""]


def _clustering_section(cl: list[dict]) -> list[str]:
    taus = list(cl[0]["clusters"])
    lines = ["## Do the tokens cluster? (mambadyn.probe.clusters)", "",
             "Directions of the residual stream at each layer boundary (0: the embedding): the mean pairwise cosine "
             "(1 = one direction), the mean cosine to the first token, and the number of clusters when tokens "
             "whose cosine reaches τ are joined (single linkage; the count depends on τ, so several are shown).", "",
             "| boundary | mean cosine | cosine to the first token | " + " | ".join(f"clusters (τ = {t})" for t in taus)
             + " |", "|---|---|---|" + "---|" * len(taus)]
    step = max(1, len(cl) // 12)  # about a dozen rows; the first and the last always
    for i in sorted(set(range(0, len(cl), step)) | {len(cl) - 1}):
        c = cl[i]
        lines.append(f"| {i} | {c['mean_cosine']:.3f} | {c['cosine_to_first']:.3f} | "
                     + " | ".join(str(c["clusters"][t]) for t in taus) + " |")
    return lines + ["", "All boundaries are in probe.json (tokens.clustering).", ""]


def _ci(s: dict | None, digits: int = 3, fraction: bool = False) -> str:
    """mean [interval]; a fraction's Student-t interval (few windows, a mean near 0 or 1) is clipped to [0, 1]."""
    if s is None:
        return "n/a"
    if s["n"] < 2:
        return f"{s['mean']:.{digits}g}"
    lo, hi = s["ci95_low"], s["ci95_high"]
    if fraction:
        lo, hi = max(0.0, lo), min(1.0, hi)
    return f"{s['mean']:.{digits}g} [{lo:.{digits}g}, {hi:.{digits}g}]"


def _windows_section(w: dict) -> list[str]:
    size = f"{w['len']} tokens"
    if w.get("lens"):  # the text ended inside the last window
        size += f" (the last {w['lens'][-1]}: the text ends there)"
    lines = ["## Over windows", "",
             f"{w['n']} disjoint windows of {size}, each with the numbers of its own probe (windows "
             "share forward and backward passes, which does not change them); mean [Student-t 95% interval over "
             f"windows; a fraction's clipped to [0, 1]]. The tables above show the first window. Next-token loss "
             f"{_ci(w['loss'])}; median "
             f"fitted growth per layer {_ci(w['growth_median'])}.", "",
             "| SSM layer | scenarios (windows) | share of S_Δu > 0 | Δ median |", "|---|---|---|---|"]
    for lp in w["layers"]:
        scen = ", ".join(f"{k} {v}" for k, v in sorted(lp["scenarios"].items()))
        lines.append(f"| {lp['name']} | {scen} | {_ci(lp['frac_sdx_positive'], fraction=True)} | "
                     f"{_ci(lp['delta_median'])} |")
    lines += ["", "| residual boundary | gradient-share Gini | top-10% share |", "|---|---|---|"]
    for i, (g, t) in enumerate(zip(w["grad_share_gini"], w["grad_share_top10pct"])):
        lines.append(f"| {i} | {_ci(g, fraction=True)} | {_ci(t, fraction=True)} |")
    if w.get("ode"):
        lines += ["", "Each continuous-time model's agreement with the real stack, per simulated layer: the direction of "
                  "each position's norm change and of its cosine to the first token (fractions of decided positions).",
                  "", "| layer | paper: norm | paper: cosine | normalised: norm | normalised: cosine |",
                  "|---|---|---|---|---|"]
        for k, v in w["ode"].items():
            agree = [_ci(v[m][q], fraction=True) for m in ("paper", "normalised")
                     for q in ("agreement", "cosine_agreement")]
            lines.append(f"| {k} | " + " | ".join(agree) + " |")
    elif w.get("ode_agreement"):
        lines += ["", "ODE agreement with the real stack, per simulated layer: "
                  + "; ".join(f"layer {k}: {_ci(v, fraction=True)}" for k, v in w["ode_agreement"].items()) + "."]
    return lines + [""]


def _attention_section(d: dict) -> list[str]:
    L = d["input"]["tokens"]
    lines = ["## Which earlier tokens each layer reads (hidden attention)", "",
             "Each SSM layer is a data-dependent linear map of its scan inputs, y_l = Σ_j M_lj u_j + D u_l "
             "(mambadyn.probe.attention; per channel or per head). Below, each row of |M| is normalised to a "
             "distribution over the positions it reads and averaged over channels or heads. The distance profile "
             "is the mean share at distance l - j over the rows that reach that far; half-mass distance: the "
             "smallest k at which the profile summed over distances 0..k reaches half its sum; first token: the "
             "mean share of a row spent on position 0 (uniform reading would give about ln(L)/L averaged over rows, "
             f"{statistics.mean(1 / (l + 1) for l in range(1, L)):.3g} here); the last two columns are Spearman "
             "rank correlations over positions between the mass a position receives and its gradient share at "
             "the layer's input, and its fitted growth across depth.", "",
             "| SSM layer | half-mass distance | mass on the first token | ρ(received, gradient share) | "
             "ρ(received, growth) |", "|---|---|---|---|---|"]
    for a in d["attention"]:
        prof = a["distance_profile"]
        half = half_mass(prof)

        def rho(v):
            return "n/a" if v is None else f"{v:+.2f}"
        lines.append(f"| {a['layer']} | {half} | {a['first_token_mass']:.3g} | {rho(a['spearman_grad'])} | "
                     f"{rho(a['spearman_growth'])} |")
    return lines + ["", "![hidden attention](attention.png)", "", "![distance profiles](attention_distance.png)", ""]


def half_mass(profile: list[float]) -> int:
    # the smallest distance k whose cumulative mean mass (over distances 0..k) reaches half of the total
    total = sum(profile)
    run = 0.0
    for k, v in enumerate(profile):
        run += v
        if run >= total / 2:
            return k
    return len(profile) - 1


def markdown(d: dict) -> str:
    src, inp = d["source"], d["input"]
    lines = [f"# Probe of {src.get('path') or 'a model'}", "", _header(src, inp, d["loss"]), "",
             "## Spectrum and scenario by layer", ""]
    if src.get("family"):
        lines += _family_intro(src, inp, d["layers"])
    else:
        lines += [
             "Eigenvalues are the N nonzero eigenvalues of S_C^T S_B (computed as S_B S_C^T, float64). The scenario "
             "applies the paper's criterion, proved in 1-D only, to "
             f"D = {src['d_inner']}: it is a **conjecture** here (mambadyn.dynamics.classify.conjecture), and it "
             "reads the asymptotic sign of S_Δ u, without Δ's bias. Δ is what the layer computes, "
             "softplus(S_Δ u + dt_bias), on every position's real scan input. The last two columns set the first "
             "blow-up of the layer's own ODE (its bias included, seeded with its real tokens; one layer = one unit "
             "of t) beside the layers that remain: a blow-up far beyond them is not something this model does.", ""]
    lines += ["| layer | + | - | complex pairs | conjecture | Δ median [5%, 95%] | S_Δu > 0 | S_Δu + b > 0 | "
              "first blow-up of its ODE (layer steps) | layers remaining |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for lp in d["layers"]:
        dl = lp.get("delta")
        dtxt = ("" if dl is None else f"{dl['quantiles']['q50']:.3g} [{dl['quantiles']['q05']:.3g}, "
                f"{dl['quantiles']['q95']:.3g}] | {dl['frac_sdx_positive']:.2f} | {dl['frac_active_positive']:.2f}")
        blow = ("" if lp.get("ode_horizon") is None else
                f"none by {lp['ode_horizon']:g}" if lp.get("first_blowup") is None else f"{lp['first_blowup']:.4g}")
        lines.append(f"| {lp['name']} | {lp['positive']} | {lp['negative']} | {lp['complex_pairs']} | "
                     f"{lp['scenario']} | {dtxt or ' | | '} | {blow} | {lp.get('layers_remaining') or ''} |")
    counts = {}
    for lp in d["layers"]:
        counts[lp["scenario"]] = counts.get(lp["scenario"], 0) + 1
    forced = [lp for lp in d["layers"] if lp["symmetric_forced"]]
    lines += ["", "Layers by conjectured scenario: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items())) + ".",
              "", "**The symmetric part.** sym(S_C^T S_B) = U^T K U with U = [S_B; S_C] and K = [[0, I/2], [I/2, 0]]. "
              "Where U has full row rank 2N (as in every unconstrained layer), Sylvester's law of inertia gives it "
              "exactly N positive and N negative eigenvalues for any weights: linear algebra, not a property of "
              f"training. Forced in {len(forced)} of {len(d['layers'])} layers here."]
    for lp in d["layers"]:
        if not lp["symmetric_forced"]:
            lines.append(f"- {lp['name']}: {lp['symmetric_note']}.")
    lines += ["", "![spectrum](spectrum.png)", ""]
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
    if t.get("clustering"):
        lines += _clustering_section(t["clustering"])
    if d.get("windows"):
        lines += _windows_section(d["windows"])
    if d.get("attention"):
        lines += _attention_section(d)
    if d["ode"]:
        lines += _ode_section(d["ode"])
    return "\n".join(lines)


def _fraction(v) -> str:
    return "n/a" if v is None else f"{v:.2f}"


def _ode_section(odes: list[dict]) -> list[str]:
    lines = ["## The continuous-time models seeded from each layer", "",
             "Two ODEs start from each layer's real scan inputs at the first positions and run to t = T (by default "
             "the layers that remain), with shared weights and the layer's dt bias, and without conv, gate or D skip: "
             "the paper's (the update reads x) and the normalised one (the update reads RMSNorm(x), at the scale of "
             "the real scan inputs; no blow-up is possible there). Each position's norm change by T is set beside the "
             "residual-stream norm ratio from that layer to the last, and for positions after the first the change "
             "of its cosine to the first token beside the stream's. Unfinished: the solver stopped before T, so no "
             "fate is reported. Agreement: the fraction of decided positions whose direction (up / down) matches; "
             "0.5 is what a coin gives when both directions are equally common.",
             "", "| layer | T | paper: blows_up / grows / shrinks / unfinished | paper: norm | paper: cosine | "
             "normalised: grows / shrinks / unfinished | normalised: norm | normalised: cosine |",
             "|---|---|---|---|---|---|---|---|"]
    for o in odes:
        p = o["predicted"]
        n = o.get("normalised") or {}
        q = n.get("predicted", [])
        lines.append(f"| {o['layer']} | {o['t_end']:g} | {p.count('blows_up')} / {p.count('grows')} / "
                     f"{p.count('shrinks')} / {p.count('unfinished')} | {_fraction(o['agreement'])} | "
                     f"{_fraction(o.get('cosine_agreement'))} | "
                     + (f"{q.count('grows')} / {q.count('shrinks')} / {q.count('unfinished')}" if q else "n/a")
                     + f" | {_fraction(n.get('agreement'))} | {_fraction(n.get('cosine_agreement'))} |")
    for label, get in (("paper", lambda o: o["agreement"]),
                       ("normalised", lambda o: (o.get("normalised") or {}).get("agreement"))):
        vals = [get(o) for o in odes if get(o) is not None]
        lines += ["", f"Mean norm-direction agreement of the {label} model over the {len(vals)} layers with decided "
                  f"positions: {statistics.mean(vals):.2f}." if vals else
                  f"No layer's {label} ODE decided any position: no agreement is reported."]
    return lines + [""]
