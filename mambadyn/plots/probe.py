"""Figures of ``mambadyn probe``: the spectrum by layer, token norms across depth, gradient shares.
Each takes the probe.json dict (so a saved probe redraws without the model)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import LogNorm  # noqa: E402
from matplotlib.ticker import FixedLocator, MaxNLocator  # noqa: E402


def _symlog_ticks(ax, lin: float, vmax: float) -> None:
    """0 and the decades beyond the linear band, on both signs: symlog's own ticks put +-lin beside 0,
    where their labels collide."""
    lo, hi = int(np.floor(np.log10(lin))) + 1, int(np.ceil(np.log10(max(vmax, lin * 10))))
    decades = [10.0**k for k in range(lo, hi + 1)]
    if len(decades) > 5:  # keep about five a side
        decades = decades[:: -(-len(decades) // 5)]
    ax.yaxis.set_major_locator(FixedLocator(sorted([-v for v in decades] + [0.0] + decades)))
    ax.yaxis.set_minor_locator(FixedLocator([]))


def spectrum(d: dict, path: str | Path) -> Path:
    """Real parts of the nonzero eigenvalues of S_C^T S_B per layer (symlog), coloured by sign, with its
    symmetric part's beside them."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2), sharex=True)
    src = d["source"]
    matrix = "$S_C^T S_B$" if not src.get("family") else "the interaction matrix"
    for ax, key, title in ((axes[0], "eigenvalues", f"eigenvalues of {matrix} (real part)"),
                           (axes[1], "symmetric_eigenvalues", "eigenvalues of its symmetric part")):
        for i, layer in enumerate(d["layers"]):
            ev = np.array([v[0] if isinstance(v, list) else v for v in layer[key]])
            imag = np.array([abs(v[1]) if isinstance(v, list) else 0.0 for v in layer[key]])
            colour = np.where(imag > 1e-9 * max(1.0, np.abs(ev).max(initial=0)), "tab:purple",
                              np.where(ev > 0, "tab:blue", "tab:red"))
            ax.scatter(np.full(len(ev), i), ev, s=10, c=colour, alpha=0.8)
        values = np.abs(np.concatenate([np.array([v[0] if isinstance(v, list) else v for v in l[key]])
                                        for l in d["layers"]]))
        lin = max(1e-6, np.percentile(values, 10))
        ax.set_yscale("symlog", linthresh=lin)
        _symlog_ticks(ax, lin, float(values.max(initial=lin)))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.axhline(0, color="k", lw=0.6)
        ax.set(title=title, xlabel="entry (SSM layers in order, each group its own)" if src.get("family") else "layer",
               ylabel="eigenvalue (symlog)")
        ax.grid(alpha=0.3)
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=t) for c, t in
               (("tab:blue", "positive"), ("tab:red", "negative"), ("tab:purple", "complex pair (real part)"))]
    axes[0].legend(handles=handles, loc="best", fontsize=8)  # complex pairs occur in S_C^T S_B, not in sym
    what = (f"family {src['family']}: {src['matrix']}" if src.get("family") else f"eigen_mode {src['eigen_mode']}")
    fig.suptitle(f"spectrum by layer: {src.get('path') or 'model'} ({len(d['layers'])} SSM entries, {what})",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def token_norms(d: dict, path: str | Path, highlight: int = 5) -> Path:
    """Residual-stream norm over position x layer (log colour), and the norm against depth for the
    positions that grow fastest and slowest (by the fitted growth)."""
    t = d["tokens"]
    norms = np.array(t["residual_norms"])  # (layers + 1, L)
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.4, 1]})
    im = axes[0].imshow(norms, aspect="auto", origin="lower", cmap="magma",
                        norm=LogNorm(vmin=max(norms.min(), 1e-12), vmax=norms.max()), interpolation="nearest")
    fig.colorbar(im, ax=axes[0], label="||h_l[p]||")
    axes[0].set(title="residual-stream norm (layer 0 = embedding)", xlabel="position p", ylabel="layer l")
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    growth = np.array(t["growth_per_layer"])
    order = np.argsort(-growth)
    picks = list(order[:highlight]) + list(order[-highlight:][::-1])
    depth = np.arange(norms.shape[0])
    for k, p in enumerate(picks):
        fast = k < highlight
        axes[1].plot(depth, norms[:, p], color=plt.cm.autumn(k / highlight) if fast else plt.cm.winter(
            (k - highlight) / highlight), lw=1.3, label=f"p={p} ({'fast' if fast else 'slow'}, {growth[p]:+.3f}/layer)")
    axes[1].plot(depth, np.median(norms, axis=1), color="k", lw=2, ls="--", label="median over positions")
    axes[1].set_yscale("log")
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].set(title="fastest / slowest positions (fitted growth)", xlabel="layer",
                ylabel="||h_l[p]||")
    axes[1].legend(fontsize=6.5, ncol=2)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def grad_shares(d: dict, path: str | Path) -> Path:
    """Share of the loss gradient each position carries, per layer (heat map), and the top-10% share
    and Gini coefficient by layer against the uniform value."""
    t = d["tokens"]
    shares = np.array(t["grad_shares"])
    L = shares.shape[1]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5), gridspec_kw={"width_ratios": [1.4, 1]})
    rel = shares * L
    live = rel[rel > 0]
    # the scale spans the 1st-99th percentile of the nonzero shares, centred on uniform (1): a position no
    # loss term reaches (the last, in a causal LM) carries 0 and would otherwise set the bottom of the scale
    span = max(np.percentile(live, 99), 1 / np.percentile(live, 1), 1.05) if live.size else 10.0
    cmap = plt.get_cmap("coolwarm").with_extremes(bad="0.75")
    im = axes[0].imshow(np.ma.masked_where(rel <= 0, rel), aspect="auto", origin="lower", cmap=cmap,
                        norm=LogNorm(vmin=1 / span, vmax=span), interpolation="nearest")
    fig.colorbar(im, ax=axes[0], label="share x L (1 = uniform; grey: 0)", extend="both")
    axes[0].set(title="||d loss / d h_l[p]||, as a share of the layer's total", xlabel="position p", ylabel="layer l")
    axes[0].yaxis.set_major_locator(MaxNLocator(integer=True))
    axes[1].xaxis.set_major_locator(MaxNLocator(integer=True))
    layers = np.arange(shares.shape[0])
    axes[1].plot(layers, t["grad_share_top10pct"], "o-", label="share of the top 10% of positions")
    axes[1].plot(layers, t["grad_share_gini"], "s-", label="Gini coefficient")
    axes[1].axhline(max(1, round(0.1 * L)) / L, color="tab:blue", ls=":", label="top 10% if uniform")
    axes[1].set(ylim=(0, 1), xlabel="layer", title="how unequal the gradient is, by layer")
    axes[1].legend(fontsize=8)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)


def attention_maps(d: dict, maps: dict, path: str | Path) -> Path:
    """One heatmap per layer of its row-normalised hidden attention (``maps``: "layer<k>" -> a block-averaged
    (m, m) view), log colour scale: row = the reading position, column = the position read."""
    atts = d["attention"]
    fig, axes = plt.subplots(1, len(atts), figsize=(4.2 * len(atts), 4), squeeze=False)
    L = d["input"]["tokens"]
    for ax, a in zip(axes[0], atts):
        v = np.asarray(maps[f"layer{a['layer']}"], dtype=float)
        pos = v[v > 0]
        lo = max(pos.min(initial=1e-12), pos.max(initial=1.0) * 1e-6)
        im = ax.imshow(np.where(v > 0, v, np.nan), norm=LogNorm(vmin=lo, vmax=pos.max(initial=1.0)),
                       cmap="viridis", extent=(0, L, L, 0), interpolation="nearest")
        ax.set(title=f"SSM layer {a['layer']} (mean over {a['unit']}s)", xlabel="position read (j)",
               ylabel="reading position (l)")
        labels = d["input"].get("token_text")
        if labels and v.shape[0] == len(labels):  # a short text: its tokens on both axes
            ticks = np.arange(len(labels)) + 0.5
            shown = [repr(t)[1:-1] for t in labels]
            ax.set_xticks(ticks, shown, rotation=90, fontsize=5)
            ax.set_yticks(ticks, shown, fontsize=5)
        fig.colorbar(im, ax=ax, fraction=0.046, label="share of the row's |M|")
    fig.suptitle("hidden attention, row-normalised" + (" (block-averaged)" if atts and atts[0]["map_size"] < L
                                                       else ""), fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)


def distance_profiles(d: dict, path: str | Path) -> Path:
    """How far back each layer reads: the mean row-normalised mass at distance l - j, one line per layer
    (log-log; distance 0 is the token itself, drawn at 0.5)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    cmap = plt.get_cmap("viridis")
    atts = d["attention"]
    for i, a in enumerate(atts):
        prof = np.asarray(a["distance_profile"], dtype=float)
        k = np.arange(len(prof), dtype=float)
        k[0] = 0.5
        ax.plot(k, np.where(prof > 0, prof, np.nan), color=cmap(i / max(1, len(atts) - 1)), lw=1.2,
                label=f"layer {a['layer']}")
    ax.set(xscale="log", yscale="log", xlabel="distance l - j (0 drawn at 0.5)", ylabel="mean share of the row",
           title="how far back each layer reads")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return Path(path)
