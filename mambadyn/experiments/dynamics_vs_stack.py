"""Which continuous-time model describes what a trained layer does: the paper's (the update reads x) or the
normalised one (the update reads RMSNorm(x)), per model and layer, from probes over windows.

Input: probe.json files written by ``mambadyn probe --windows N`` (or ``benchmarks/probe_trained.py
--windows N``), whose ``windows.ode`` holds, per simulated layer and model, the agreement of the model's
predicted direction with the real stack's, for each position's norm and for its cosine to the first token,
as a mean and Student-t 95% interval over windows.

Verdict per (layer, model, quantity): **predicts** when the interval lies above 0.5 (the model gets the
direction right for more than half the positions, beyond the spread over windows), **contradicts** when it
lies below 0.5, **undecided** otherwise (or with one window, which has no interval). A layer is described by
a model when that model predicts both quantities. 0.5 is a reference, not a null of chance: when every
position's norm grows, a model that predicts growth everywhere gets 1.0 without knowing anything else.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..probe.ode import MODELS

QUANTITIES = (("agreement", "norm"), ("cosine_agreement", "cosine"))


def verdict(s: dict | None) -> str:
    """'predicts' | 'contradicts' | 'undecided' | 'n/a' for an agreement summary over windows."""
    if s is None:
        return "n/a"
    if s["n"] < 2 or s["ci95_low"] != s["ci95_low"]:  # one window: no interval
        return "undecided"
    if s["ci95_low"] > 0.5:
        return "predicts"
    if s["ci95_high"] < 0.5:
        return "contradicts"
    return "undecided"


def _cell(s: dict | None) -> str:
    if s is None:
        return "n/a"
    if s["n"] < 2:
        return f"{s['mean']:.2f}"
    lo, hi = max(0.0, s["ci95_low"]), min(1.0, s["ci95_high"])  # a fraction's interval, clipped to [0, 1]
    return f"{s['mean']:.2f} [{lo:.2f}, {hi:.2f}]"


def describes(layer: dict) -> str:
    """The model(s) that predict both the norm and the cosine direction of a layer's ``windows.ode`` entry."""
    good = [m for m in MODELS if all(verdict(layer[m][k]) == "predicts" for k, _ in QUANTITIES)]
    partial = [f"{m} ({q})" for m in MODELS if m not in good for k, q in QUANTITIES
               if verdict(layer[m][k]) == "predicts"]
    against = [f"{m} ({q})" for m in MODELS for k, q in QUANTITIES if verdict(layer[m][k]) == "contradicts"]
    head = "both" if len(good) == 2 else good[0] if good else "neither"
    return (head + (f"; predicts: {', '.join(partial)}" if partial else "")
            + (f"; contradicted: {', '.join(against)}" if against else ""))


def table(probes: dict[str, dict]) -> str:
    """The markdown table over ``probes`` (a name -> probe.json dict, each with ``windows.ode``)."""
    head = ("| model | layer | windows | paper: norm | normalised: norm | paper: cosine | normalised: cosine | "
            "described by |")
    lines = [head, "|---" * 8 + "|"]
    for name, d in probes.items():
        w = d.get("windows") or {}
        if not w.get("ode"):
            raise ValueError(f"{name}: its probe.json has no windows.ode (probe it with --windows N, mambadyn >= "
                             "the normalised model)")
        for layer, v in w["ode"].items():
            cells = [_cell(v[m][k]) for k, _ in QUANTITIES for m in MODELS]
            lines.append(f"| {name} | {layer} | {w['n']} x {w['len']} | " + " | ".join(cells) + f" | {describes(v)} |")
    return "\n".join(lines)


def load_probes(paths: list[Path]) -> dict[str, dict]:
    """name -> probe.json, for probe folders or probe.json files; the name is the probe folder's, with its
    parent's in front where two folders share a name."""
    files = []
    for p in paths:
        f = p / "probe.json" if p.is_dir() else p
        if not f.is_file():
            raise FileNotFoundError(f"{p}: no probe.json there")
        files.append(f)
    short = [f.parent.name for f in files]
    names = [f"{f.parent.parent.name}/{f.parent.name}" if short.count(n) > 1 else n for f, n in zip(files, short)]
    if len(set(names)) < len(names):
        raise ValueError(f"two probes would share a name in the table: {names}")
    out = {}
    for n, f in zip(names, files):
        try:
            out[n] = json.loads(f.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"{f} is not a probe.json (not valid JSON: {e})") from None
    return out


def write_report(paths: list[Path], out: str | Path, notes: str | Path | None = None) -> dict[str, dict[str, str]]:
    """Write the markdown table (with this module's method, and the text of ``notes`` after it: what the
    probes are, what the table says) for the probes at ``paths`` to ``out``; returns model -> layer -> the
    model(s) that describe it."""
    from ..outputs import write_file

    probes = load_probes([Path(p) for p in paths])
    doc = __doc__.split("\n\n", 1)[1].strip()
    extra = []
    if notes is not None:
        if not Path(notes).is_file():
            raise FileNotFoundError(f"--notes {notes}: not a file" if Path(notes).exists() else
                                    f"--notes {notes}: no such file")
        extra = [Path(notes).read_text().strip(), ""]
    text = "\n".join(["# Which continuous-time model describes each trained layer", "", doc, "", table(probes), ""]
                     + extra)
    write_file(out, text, "experiment dynamics-vs-stack")
    return {name: {k: describes(v) for k, v in d["windows"]["ode"].items()} for name, d in probes.items()}
