"""signature.json, report.md and the figure of held-out R^2 against truncation depth."""

from __future__ import annotations

from pathlib import Path

from ..jsonio import write_json
from ..outputs import atomic_folder
from ..plots.signature import lens_figure
from .lens import SignatureResult


def markdown(result: SignatureResult) -> str:
    cfg = result.config
    lines = [f"# Signature lens: {result.source}", "",
             f"Held-out R^2 of a ridge regression of each subject's states on the truncated signature of its path "
             f"w = (t, u), with a zero basepoint. There are {cfg.length} samples per path and u has {cfg.channels} "
             f"channels. The rows are split 60/20/20 into train / validation (which picks the ridge alpha) / test "
             f"(the number reported); for a checkpoint the three splits come from disjoint stretches of the text. "
             f"Two controls have the same width: the signature of each path with its increments shuffled (equal to "
             f"the signature at depth 1 by construction: level 1 is the total increment, which shuffling keeps), "
             f"and random tanh features of the whole path. The third is a plain linear ridge on the raw path, the "
             f"same at every depth: a signature that does not beat it shows nothing beyond a linear map.", "",
             "| subject | depth | width | R^2 | shuffled | random features | linear on the raw path |",
             "|---|---|---|---|---|---|---|"]
    for r in result.rows:
        lines.append(f"| {r['subject']} | {r['depth']} | {r['width']} | {r['r2']:.4f} | {r['r2_shuffled']:.4f} | "
                     f"{r['r2_random_features']:.4f} | {r['r2_linear_path']:.4f} |")
    if result.skipped:
        lines += ["", "Not fitted (more signature terms than rows):", ""] + [f"- {s}." for s in result.skipped]
    lines += ["", "At the deepest truncation:", ""]
    for name in result.subjects:
        last = [r for r in result.rows if r["subject"] == name][-1]
        verdict = ("the signature explains the states" if last["r2"] >= 0.99 else
                   "the signature explains most of the states" if last["r2"] >= 0.9 else
                   "far from the linear-signature case")
        gain = last["r2"] - last["r2_linear_path"]
        lines.append(f"- {name}: R^2 {last['r2']:.4f} (shuffled {last['r2_shuffled']:.4f}, random features "
                     f"{last['r2_random_features']:.4f}, linear on the raw path {last['r2_linear_path']:.4f}, so "
                     f"{gain:+.4f} over linear): {verdict} at depth {last['depth']}, the deepest fitted.")
    return "\n".join(lines) + "\n"


def write_outputs(result: SignatureResult, out: str | Path) -> Path:
    """Write signature.json, report.md and signature.png into ``out`` all at once (``atomic_folder``)."""
    with atomic_folder(out, "signature") as tmp:
        write_json(tmp / "signature.json", result.to_dict())
        (tmp / "report.md").write_text(markdown(result))
        lens_figure(result, tmp / "signature.png")
    return Path(out)
