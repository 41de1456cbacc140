"""The paper's claims, each decided from committed experiment results: ``results/paper_claims.md``.

Every claim is a family of paired comparisons (seeds paired across arms), Holm-adjusted within the
family. The verdict rule, fixed before looking at which way the numbers fall:

- **reproduced**: every comparison of the family goes the claimed way with Holm-adjusted p < 0.05;
- **not reproduced**: some comparison goes *against* the claim with Holm-adjusted p < 0.05;
- **inconclusive**: anything else (some or no comparisons significant the claimed way, none against);
  the table then says which way the estimates lean and how large an effect the intervals still allow.

    mambadyn experiment claims --results results/paper_claims --out results/paper_claims.md
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ..outputs import write_file
from ..stats import holm, one_sample, paired

ALPHA = 0.05


@dataclass
class Comparison:
    claim: str
    experiment: str  # folder under the results directory
    label: str
    arm: str
    reference: str
    metric: str
    better: int  # +1: larger is better (accuracy), -1: smaller is better (loss)
    claimed: int  # +1: the claim says arm beats reference, -1: the claim says arm is worse
    values: tuple[dict, dict] | None = None  # ({seed: arm value}, {seed: reference value})
    one_sample: list[float] | None = None  # a one-sample test against 0 instead (claim (c)'s rho)


def _load(results: Path, name: str) -> dict | None:
    f = results / name / "results.json"
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{f} is not valid JSON ({e}): rerun that experiment or remove the folder") from None


def _arms(res: dict) -> dict:
    return res.get("modes") or res.get("variants")


def _first_eval(res: dict, arm: str) -> dict:
    return {s: c[0][1] for s, c in _arms(res)[arm]["curves"].items()}


def comparisons(results: Path) -> list[Comparison]:
    """The comparisons that decide claims (a)-(e), and (b-syn), this repository's extension of (b) to synthetic
    tasks, from whichever experiment folders exist ((e): the ``random`` variant of the reorder experiments)."""
    out: list[Comparison] = []
    lm = _load(results, "lm_wikitext")
    if lm:
        per = {m: v["test_loss_per_seed"] for m, v in lm["modes"].items()}
        for other in ("mixed", "negative", "free"):
            out.append(Comparison("a", "lm_wikitext", f"LM test loss: positive vs {other}", "positive", other,
                                  "test loss (nats/token)", -1, +1, (per["positive"], per[other])))
        for other in ("free", "positive", "mixed"):
            out.append(Comparison("b", "lm_wikitext", f"LM test loss: negative vs {other}", "negative", other,
                                  "test loss (nats/token)", -1, -1, (per["negative"], per[other])))
    for task in ("selective_copy", "mqar"):
        syn = _load(results, task)
        if syn:
            per = {m: v["test_acc_per_seed"] for m, v in syn["modes"].items()}
            for other in ("free", "positive"):
                out.append(Comparison("b-syn", task, f"{task} test accuracy: negative vs {other}", "negative", other,
                                      "test accuracy", +1, -1, (per["negative"], per[other])))
    shares = _load(results, "token_shares")
    if shares and "free" in shares["modes"]:
        r = shares["modes"]["free"]["per_seed"]
        between = ({s: v["gini_between_tokens"] for s, v in r["trained"].items()},
                   {s: v["gini_between_tokens"] for s, v in r["init"].items()})
        out.append(Comparison("c", "token_shares", "Gini of gradient shares between tokens at a position: trained "
                              "vs initialised", "trained", "init", "Gini", +1, +1, between))
        out.append(Comparison("c", "token_shares", "Spearman rho of a token's growth through depth with its "
                              "gradient share, two-sided against 0 (claim: linked; sign not claimed)", "rho", "0",
                              "rho", +1, 0,
                              one_sample=[v["rho_growth_share"] for v in r["trained"].values()]))
    # fmnist_patches196, fmnist_pixels784 and any other reorder run (say fmnist_patches196_random, run apart
    # with its own none arm, so that every comparison stays paired within one run)
    for name in sorted(p.name for p in results.glob("fmnist_*") if (p / "results.json").is_file()):
        ro = _load(results, name)
        if not ro:
            continue
        # the glob reaches any fmnist_* folder: one that is not a reorder run is named, not read past
        if not (isinstance(ro, dict) and isinstance(ro.get("variants"), dict) and "none" in ro["variants"]):
            raise ValueError(f"{results / name / 'results.json'} is not the output of `mambadyn experiment reorder` "
                             "(no variants with a none arm): rerun it or move that folder out of the results")
        for v, r in ro["variants"].items():
            if v == "none":
                continue
            claim = "e" if v == "random" else "d"
            out.append(Comparison(claim, name, f"{ro.get('seq_len')} tokens, test accuracy: {v} vs none", v, "none",
                                  "test accuracy", +1, +1, (r["per_seed"], ro["variants"]["none"]["per_seed"])))
            if claim == "e":  # the follow-up claims accuracy, not speed
                continue
            out.append(Comparison("d", name, f"{ro.get('seq_len')} tokens, accuracy at the first evaluation "
                                  f"(convergence speed): {v} vs none", v, "none", "validation accuracy", +1, +1,
                                  (_first_eval(ro, v), _first_eval(ro, "none"))))
    return out


def decide(comps: list[Comparison]) -> dict[str, dict]:
    """Paired tests, Holm within each claim, and the verdict per claim."""
    rows = []
    for c in comps:
        pr = one_sample(c.one_sample) if c.one_sample is not None else paired(*c.values)
        rows.append({"c": c, "n": pr.n, "diff": pr.mean_diff, "low": pr.ci95_low, "high": pr.ci95_high, "p": pr.p})
    claims: dict[str, dict] = {}
    for key in sorted({r["c"].claim for r in rows}):
        mine = [r for r in rows if r["c"].claim == key]
        for r, ph in zip(mine, holm([r["p"] for r in mine])):
            r["p_holm"] = ph
            # +1: the arm is better than the reference (for the claimed-direction test)
            r["way"] = 0 if not ph < ALPHA else (1 if r["diff"] * r["c"].better > 0 else -1)
        directed = [r for r in mine if r["c"].claimed != 0]
        undirected = [r for r in mine if r["c"].claimed == 0]
        against = [r for r in directed if r["way"] == -r["c"].claimed]
        for_ = [r for r in directed if r["way"] == r["c"].claimed]
        if against:
            verdict = "not reproduced"
        elif directed and len(for_) == len(directed) and all(r["p_holm"] < ALPHA for r in undirected):
            verdict = "reproduced"
        else:
            verdict = "inconclusive"
        claims[key] = {"rows": mine, "verdict": verdict}
    return claims


CLAIMS = {
    "a": "Excluding the convergent scenario (eigen mode positive) improves language modelling over mixed, "
         "negative and free.",
    "b": "The convergent scenario (eigen mode negative: every eigenvalue of S_C^T S_B negative, by tying S_B to "
         "S_C as S_B = diag(δ) S_C with δ < 0) hurts language modelling.",
    "b-syn": "Beyond the paper, which claims (b) for language modelling only: the convergent scenario hurts on "
             "synthetic recall tasks (selective copying, MQAR).",
    "c": "Tokens contribute unequally to the training updates: the gradient shares between tokens at a position "
         "grow more unequal with training, and a token's share is rank-correlated with its growth through the "
         "depth (an association, tested two-sided; not a cause).",
    "d": "Reordering tokens by importance improves classification accuracy and convergence speed.",
    "e": "The follow-up's (Token Dynamics on Spheres in Mamba Models): random token reordering during training "
         "improves accuracy.",
}


MARK = "<!-- verdicts: written by `mambadyn experiment claims` -->"


def _mark_reports(results: Path, decided: dict, out: Path) -> None:
    """Each experiment's report.md ends with the verdicts its comparisons feed (replaced on every run)."""
    by_experiment: dict[str, list] = {}
    for key, d in decided.items():
        for r in d["rows"]:
            by_experiment.setdefault(r["c"].experiment, []).append((key, d["verdict"], r))
    for name, rows in by_experiment.items():
        report = results / name / "report.md"
        if not report.is_file():
            continue
        text = report.read_text().split(MARK)[0].rstrip()
        link = os.path.relpath(out.resolve(), report.parent)
        lines = [text, "", MARK, "## Verdicts", "", f"From [{out.name}]({link}), where each claim's comparisons are "
                 "Holm-adjusted together:", ""]
        for key in dict.fromkeys(k for k, _, _ in rows):
            verdict = next(v for k, v, _ in rows if k == key)
            lines.append(f"- Claim ({key}): *{CLAIMS[key]}* Verdict: **{verdict}**.")
            for k, _, r in rows:
                if k == key:
                    lines.append(f"  - {r['c'].label}: {r['diff']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}], "
                                 f"Holm p {r['p_holm']:.3g}")
        report.write_text("\n".join(lines) + "\n")


def read_notes(path: Path) -> dict[str, str]:
    """``notes.md`` split at its ``## key`` headings: the prose that goes with each claim (and ``preamble``)."""
    notes: dict[str, str] = {}
    if not path.is_file():
        return notes
    key = None
    for line in path.read_text().splitlines():
        if line.startswith("## "):
            key = line[3:].strip()
            notes[key] = ""
        elif key is not None:
            notes[key] += line + "\n"
    return notes


def write_claims(results: str | Path, out: str | Path) -> dict:
    """Decide every claim from ``results`` (a folder of experiment folders, with an optional ``notes.md`` of
    prose per claim) and write the markdown ``out``."""
    results = Path(results).resolve()
    if not results.is_dir():
        raise FileNotFoundError(f"results folder {results} does not exist")
    notes = read_notes(results / "notes.md")
    preamble = notes.pop("preamble", "")
    try:
        comps = comparisons(results)
    except (KeyError, TypeError, IndexError, AttributeError) as e:
        raise ValueError(f"a results.json under {results} lacks what the claims read ({type(e).__name__}: {e}); is it "
                         "an experiment's own output?") from None
    if not comps:
        raise FileNotFoundError(f"{results} holds none of the experiments the claims need "
                                "(lm_wikitext, selective_copy, mqar, token_shares, fmnist_*)")
    decided = decide(comps)
    lines = ["# The paper's claims, decided", "", preamble.strip(), "",
             "| claim | verdict | comparisons (Holm within the claim) |", "|---|---|---|"]
    for key, d in decided.items():
        lines.append(f"| ({key}) {CLAIMS[key]} | **{d['verdict']}** | {len(d['rows'])} |")
    for key in CLAIMS:
        if key not in decided:  # no experiment folder holds its arms yet
            lines.append(f"| ({key}) {CLAIMS[key]} | **not run** | 0 |")
    for key, d in decided.items():
        lines += ["", f"## ({key}) {CLAIMS[key]}", "", f"Verdict: **{d['verdict']}**.", "",
                  "| comparison | experiment | n seeds | arm minus reference [95% CI] | p | p (Holm) | way |",
                  "|---|---|---|---|---|---|---|"]
        for r in d["rows"]:
            c = r["c"]
            if c.claimed:
                way = {0: "n.s.", c.claimed: "as claimed", -c.claimed: "against the claim"}[r["way"]]
            else:
                way = "significant" if r["p_holm"] < ALPHA else "n.s."
            link = os.path.relpath(results / c.experiment / "report.md", Path(out).resolve().parent)
            lines.append(f"| {c.label} | [{c.experiment}]({link}) | {r['n']} "
                         f"| {r['diff']:+.4f} [{r['low']:+.4f}, {r['high']:+.4f}] ({c.metric}) | {r['p']:.3g} "
                         f"| {r['p_holm']:.3g} | {way} |")
        if key in notes:
            lines += ["", notes[key].strip()]
    lines.append("")
    write_file(out, "\n".join(lines), "experiment claims")
    _mark_reports(results, decided, Path(out))
    return {k: {"verdict": d["verdict"], "comparisons": [
        {"experiment": r["c"].experiment, "label": r["c"].label, "n": r["n"], "diff": r["diff"],
         "ci95": [r["low"], r["high"]], "p": r["p"], "p_holm": r["p_holm"]} for r in d["rows"]]}
        for k, d in decided.items()}
