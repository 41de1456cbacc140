"""The signature lens's figure: held-out R^2 against truncation depth, with its controls and baseline."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def lens_figure(result, path: str | Path) -> Path:
    """One line per subject: signature features (solid), shuffled-path signatures (dashed), random
    features of the same width (dotted); a linear ridge on the raw path (dash-dot, flat)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.cm.tab10.colors
    for i, name in enumerate(result.subjects):
        depths = [r["depth"] for r in result.rows if r["subject"] == name]
        c = colors[i % len(colors)]
        ax.plot(depths, result.r2(name), "o-", color=c, label=name)
        ax.plot(depths, result.r2(name, "r2_shuffled"), "s--", color=c, alpha=0.6, ms=4)
        ax.plot(depths, result.r2(name, "r2_random_features"), "^:", color=c, alpha=0.6, ms=4)
        ax.axhline(result.r2(name, "r2_linear_path")[0], color=c, lw=0.8, ls="-.", alpha=0.5)
    ax.plot([], [], "k--", label="control: signature of the shuffled path")
    ax.plot([], [], "k:", label="control: random features, same width")
    ax.plot([], [], "k-.", label="baseline: linear ridge on the raw path")
    ax.set_xlabel("signature truncation depth")
    ax.set_xticks(sorted({r["depth"] for r in result.rows}))
    ax.set_ylabel("held-out R^2 of a ridge fit of the states")
    ax.set_ylim(min(-0.05, min(r["r2"] for r in result.rows)), 1.02)
    ax.axhline(1.0, color="0.8", lw=0.6)
    ax.set_title(f"signature lens: {result.source}", fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return Path(path)
