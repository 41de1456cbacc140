"""signature.json, report.md and the figure of held-out R^2 against truncation depth."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from ..jsonio import write_json  # noqa: E402
from ..outputs import atomic_folder  # noqa: E402
from .lens import SignatureResult  # noqa: E402


def figure(result: SignatureResult, path: Path) -> Path:
    """One line per subject: signature features (solid), shuffled-path signatures (dashed), random
    features of the same width (dotted)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    colors = plt.cm.tab10.colors
    for i, name in enumerate(result.subjects):
        depths = [r["depth"] for r in result.rows if r["subject"] == name]
        c = colors[i % len(colors)]
        ax.plot(depths, result.r2(name), "o-", color=c, label=name)
        ax.plot(depths, result.r2(name, "r2_shuffled"), "s--", color=c, alpha=0.6, ms=4)
        ax.plot(depths, result.r2(name, "r2_random_features"), "^:", color=c, alpha=0.6, ms=4)
    ax.plot([], [], "k--", label="control: signature of the shuffled path")
    ax.plot([], [], "k:", label="control: random features, same width")
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
    return path


def markdown(result: SignatureResult) -> str:
    cfg = result.config
    lines = [f"# Signature lens: {result.source}", "",
             f"Held-out R^2 of a ridge regression of each subject's states on the truncated signature of its path "
             f"w = (t, u), with a zero basepoint. There are {cfg.length} samples per path and u has {cfg.channels} "
             f"channels. The rows are split 60/20/20 into train / validation (which picks the ridge alpha) / test "
             f"(the number reported). The controls have the same width: the signature of each path with its "
             f"increments shuffled, and random tanh features of the whole path.", "",
             "| subject | depth | width | R^2 | shuffled | random features |", "|---|---|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| {r['subject']} | {r['depth']} | {r['width']} | {r['r2']:.4f} | {r['r2_shuffled']:.4f} | "
                     f"{r['r2_random_features']:.4f} |")
    lines += ["", "At the deepest truncation:", ""]
    for name in result.subjects:
        last = [r for r in result.rows if r["subject"] == name][-1]
        verdict = ("the signature explains the states" if last["r2"] >= 0.99 else
                   "the signature explains most of the states" if last["r2"] >= 0.9 else
                   "far from the linear-signature case")
        lines.append(f"- {name}: R^2 {last['r2']:.4f} (shuffled {last['r2_shuffled']:.4f}, random features "
                     f"{last['r2_random_features']:.4f}): {verdict} at depth {last['depth']}.")
    return "\n".join(lines) + "\n"


def write_outputs(result: SignatureResult, out: str | Path) -> Path:
    """Write signature.json, report.md and signature.png into ``out`` all at once (``atomic_folder``)."""
    with atomic_folder(out, "signature") as tmp:
        write_json(tmp / "signature.json", result.to_dict())
        (tmp / "report.md").write_text(markdown(result))
        figure(result, tmp / "signature.png")
    return Path(out)
