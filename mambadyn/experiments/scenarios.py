"""The scenario experiment: the same LM trained with eigen_mode free / positive / mixed / negative.

The paper's claim: negative-definite S_C^T S_B (the convergent scenario) trains worst, mixed in
between, positive best. Each run's evaluation with the best validation loss (LM) or accuracy (synthetic
tasks) is the one selected; where the task has a test split, its test numbers are the ones reported.
``paper-*`` presets follow the paper's WikiText-103 recipe (dropout 0.25, weight decay 0.25, eigen
threshold 0.7, 1% warmup then cosine to 0, clip 1.0, byte-level BPE) at a size one GPU trains in minutes.
Writes ``report.md``, ``results.json``, ``curves.png`` and ``spectrum.png``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..jsonio import write_json
from ..refine.modes import MODES
from ..stats import compare_to, fmt_summary, summarize
from ..typed import check_fields
from .grid import Run, check_grid, run_grid

PRESETS = {
    "smoke": ["model.d_model=16", "model.n_layer=2", "model.d_state=4", "data.seq_len=32", "optim.batch_size=4",
              "optim.steps=6", "optim.warmup_steps=2", "run.eval_every=3", "run.eval_batches=1",
              "run.ckpt_every=0", "run.log_every=1"],
    "small": ["model.d_model=64", "model.n_layer=2", "data.seq_len=64", "optim.batch_size=16", "optim.steps=150",
              "optim.warmup_steps=15", "optim.lr=3e-3", "run.eval_every=50", "run.eval_batches=5",
              "run.ckpt_every=50", "run.log_every=10"],
    "gpu": ["model.d_model=384", "model.n_layer=6", "data.seq_len=256", "optim.batch_size=32", "optim.steps=1000",
            "optim.warmup_steps=100", "optim.lr=2e-3", "run.eval_every=250", "run.eval_batches=20",
            "run.ckpt_every=500", "run.log_every=25"],
}
_PAPER_RECIPE = ["model.dropout=0.25", "model.eigen_threshold=0.7", "optim.weight_decay=0.25", "optim.grad_clip=1.0",
                 "optim.min_lr_ratio=0.0", "data.tokenizer=bpe"]
PRESETS["paper-smoke"] = _PAPER_RECIPE + ["model.d_model=16", "model.n_layer=2", "model.d_state=4", "data.bpe_vocab=300",
                                          "data.seq_len=32", "optim.batch_size=4", "optim.steps=6",
                                          "optim.warmup_steps=1", "run.eval_every=3", "run.eval_batches=1",
                                          "run.ckpt_every=0", "run.log_every=1"]
PRESETS["paper-gpu"] = _PAPER_RECIPE + ["model.d_model=256", "model.n_layer=6", "data.bpe_vocab=8192",
                                        "data.seq_len=256", "optim.batch_size=16", "optim.steps=1500",
                                        "optim.warmup_steps=15", "optim.lr=1.5e-3", "run.eval_every=150",
                                        "run.eval_batches=20", "run.ckpt_every=500", "run.log_every=25"]
# tasks that stress token dynamics (mambadyn.data.synthetic), with kind "synthetic"
SYNTHETIC_PRESETS = {
    "smoke": ["model.d_model=16", "model.n_layer=2", "model.d_state=4", "data.seq_len=24", "data.n_items=3",
              "data.vocab=4", "optim.batch_size=4", "optim.steps=6", "optim.warmup_steps=2", "run.eval_every=3",
              "run.eval_batches=1", "run.ckpt_every=0", "run.log_every=1"],
    "small": ["data.seq_len=64", "data.n_items=4", "data.vocab=8", "optim.batch_size=32", "optim.steps=400",
              "optim.warmup_steps=40", "run.eval_every=100", "run.eval_batches=10", "run.ckpt_every=100",
              "run.log_every=20"],
    "gpu": ["model.d_model=128", "model.n_layer=4", "data.seq_len=512", "data.n_items=16", "data.vocab=32",
            "optim.batch_size=64", "optim.steps=3000", "optim.warmup_steps=200", "optim.lr=2e-3",
            "run.eval_every=250", "run.eval_batches=20", "run.ckpt_every=500", "run.log_every=50"],
}
KINDS = ("lm", "synthetic")


@dataclass
class ScenarioExperimentConfig:
    out: str = "results/scenarios"
    preset: str = "small"
    kind: str = "lm"  # lm (a text corpus) | synthetic (selective copying or MQAR: set data.task)
    modes: list[str] = field(default_factory=lambda: list(MODES))
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    overrides: list[str] = field(default_factory=list)  # applied after the preset
    jobs: int = 1

    def __post_init__(self):
        check_fields(self)
        check_grid(self)
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        presets = PRESETS if self.kind == "lm" else SYNTHETIC_PRESETS
        if self.preset not in presets:
            raise ValueError(f"preset must be one of {sorted(presets)}, got {self.preset!r}")
        bad = [m for m in self.modes if m not in MODES]
        if bad:
            raise ValueError(f"unknown eigen modes {bad}; choose from {MODES}")


def _spectra(run: Run) -> list[list[float]]:
    from ..nn import MambaLM
    from ..refine import spectrum

    model = MambaLM.from_pretrained(run.folder / "model")
    return [ev.real.tolist() for ev in spectrum(model)]


def run_scenarios(cfg: ScenarioExperimentConfig) -> dict:
    out = Path(cfg.out)
    variants = {m: [f"model.eigen_mode={m}"] for m in cfg.modes}
    presets = PRESETS if cfg.kind == "lm" else SYNTHETIC_PRESETS
    runs = run_grid(cfg.kind, variants, cfg.seeds, presets[cfg.preset] + cfg.overrides, out, cfg.jobs)
    results = {"config": asdict(cfg), "modes": {}}
    for mode in cfg.modes:
        mine = [r for r in runs if r.variant == mode]
        results["modes"][mode] = _mode_results(mine, cfg.seeds)
    write_json(out / "results.json", results)
    write_outputs(results, out)
    return results


def _mode_results(mine: list[Run], seeds: list[int]) -> dict:
    """One mode's numbers: final and best validation loss, the training loss, and for tasks with accuracy
    or a test split the selected evaluation's (best validation accuracy, else loss) test numbers."""
    logs = [r.log() for r in mine]
    finals = [lg.evals[-1]["val_loss"] for lg in logs]
    bests = [min(e["val_loss"] for e in lg.evals) for lg in logs]
    train = [lg.final_train_loss() for lg in logs]
    res = {
        "val_loss": asdict(summarize(finals)), "val_ppl": asdict(summarize([math.exp(v) for v in finals])),
        "per_seed": dict(zip(seeds, finals)),
        "best_val_loss": asdict(summarize(bests)), "best_per_seed": dict(zip(seeds, bests)),
        "train_loss": asdict(summarize(train)), "train_loss_per_seed": dict(zip(seeds, train)),
        "curves": {r.seed: [(e["step"], e["val_loss"]) for e in lg.evals] for r, lg in zip(mine, logs)},
        "train_curves": {r.seed: [(m["step"], m["loss"]) for m in lg.train] for r, lg in zip(mine, logs)},
        "tokens_per_s": [sum(m["tok_per_s"] for m in lg.train) / max(1, len(lg.train)) for lg in logs],
        "spectrum_seed0": _spectra(mine[0]),
    }
    last = logs[0].evals[-1]
    accuracy = "val_acc" in last
    if accuracy:  # synthetic tasks: accuracy on the asked positions
        accs = [lg.evals[-1]["val_acc"] for lg in logs]
        best_accs = [max(e["val_acc"] for e in lg.evals) for lg in logs]
        res.update({"val_acc": asdict(summarize(accs)), "acc_per_seed": dict(zip(seeds, accs)),
                    "best_val_acc": asdict(summarize(best_accs)), "best_acc_per_seed": dict(zip(seeds, best_accs)),
                    "acc_curves": {r.seed: [(e["step"], e["val_acc"]) for e in lg.evals] for r, lg in zip(mine, logs)}})
    if "test_loss" in last:
        chosen = [lg.selected("val_acc", True) if accuracy else lg.selected("val_loss") for lg in logs]
        res["selected_step"] = [e["step"] for e in chosen]
        res["test_loss"] = asdict(summarize([e["test_loss"] for e in chosen]))
        res["test_loss_per_seed"] = dict(zip(seeds, [e["test_loss"] for e in chosen]))
        if accuracy:
            res["test_acc"] = asdict(summarize([e["test_acc"] for e in chosen]))
            res["test_acc_per_seed"] = dict(zip(seeds, [e["test_acc"] for e in chosen]))
    return res


def write_outputs(results: dict, out: Path) -> None:
    """curves.png, spectrum.png and report.md from a results dict (also from a saved results.json)."""
    from ..plots.experiments import scenario_curves, scenario_spectra

    scenario_curves(results, out / "curves.png")
    scenario_spectra(results, out / "spectrum.png")
    _report(results, ScenarioExperimentConfig(**results["config"]), out)


def _report(results: dict, cfg: ScenarioExperimentConfig, out: Path) -> None:
    modes = results["modes"]
    lines = ["# Scenario experiment: eigenvalue sign of S_C^T S_B", "",
             f"Preset `{cfg.preset}` with overrides {cfg.overrides or 'none'}; seeds {cfg.seeds}. "
             "Losses in nats per token. Test numbers come from each run's evaluation chosen on validation (the "
             "test split never chooses); 95% CIs from Student's t. Each mode is compared "
             "with positive seed by seed (paired t-test), and the p-values are Holm-adjusted over the comparisons "
             "of one table.", ""]
    tables = (("test_acc", "test_acc_per_seed", "test accuracy at the evaluation with the best validation accuracy", -1),
              ("test_loss", "test_loss_per_seed", "test loss at the selected evaluation (best validation "
               "accuracy, or loss where there is no accuracy)", 1),
              ("val_loss", "per_seed", "final validation loss", 1), ("best_val_loss", "best_per_seed",
              "best validation loss over evaluations", 1), ("train_loss", "train_loss_per_seed",
              "final training loss (mean of the last 5 logged steps, dropout on)", 1),
              ("val_acc", "acc_per_seed", "final accuracy on the asked positions", -1),
              ("best_val_acc", "best_acc_per_seed", "best accuracy over evaluations", -1))
    for key, per, title, sign in tables:
        if key not in next(iter(modes.values())):
            continue
        order = sorted(modes, key=lambda m: sign * modes[m][key]["mean"])
        cmp = compare_to({m: modes[m][per] for m in modes}, "positive") if "positive" in modes else {}
        lines += [f"## {title}", "", "| eigen_mode | n | mean ± std [95% CI] | perplexity | per seed | "
                  "minus positive, paired [95% CI] | p (paired t) | p (Holm) |", "|---|---|---|---|---|---|---|---|"]
        for mode in order:
            s = modes[mode][key]
            seeds = ", ".join(f"{v:.4f}" for v in modes[mode][per].values())
            c = cmp.get(mode)
            diff = (f"{c.mean_diff:+.4f} [{c.ci95_low:+.4f}, {c.ci95_high:+.4f}] | {c.p:.3g} | {c.p_holm:.3g}"
                    if c and c.n >= 2 else "| |")
            ppl = f"{math.exp(s['mean']):.3f}" if sign > 0 and s["mean"] < 50 else ""
            lines.append(f"| {mode} | {s['n']} | {fmt_summary(s, 4)} | {ppl} | {seeds} | {diff} |")
        if min(modes[m][key]["n"] for m in modes) >= 2:
            lines += ["", f"Order of the means (best first): {', '.join(order)}; the paired tests above say which "
                      "differences are significant. The paper predicts positive best, then mixed, then negative.", ""]
        else:
            lines += ["", "One seed per mode: no ranking is claimed (run two or more seeds for intervals and tests).", ""]
    lines += ["![curves](curves.png)", "", "![spectrum](spectrum.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
