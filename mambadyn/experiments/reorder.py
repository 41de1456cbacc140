"""The reordering experiment: MambaClassifier on Fashion-MNIST without token reordering, with soft
SoftSort and with hard (straight-through) sorting in the first block, mapping the scan's output back to
the token order (ours, ``restore``) or not (``-paper``: the official code's mode).

The paper's claims: importance-based reordering improves accuracy and convergence speed. The paper
reorders in MambaVision's causal scan, so besides the bidirectional presets there are causal ones
(``causal-*``: a unidirectional stack read at its last token, where order matters), for 196 patches
(patch_size 2) or 784 pixels (``--set model.patch_size=1``). With ``data.val_size`` the reported test
accuracy is the one at the evaluation with the best validation accuracy. Writes ``report.md``,
``results.json`` and ``curves.png`` (validation or test accuracy and training loss against epoch)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from ..jsonio import write_json
from ..stats import compare_to, fmt_summary, summarize
from ..train.config import ImageTrainConfig, apply_overrides
from ..typed import check_fields
from .grid import check_grid, run_grid

_REORDER = ["model.reorder_layers=[0]"]
VARIANTS = {"none": [], "soft": _REORDER, "hard": _REORDER + ["model.reorder_hard=true"],
            "soft-paper": _REORDER + ["model.reorder_restore=false"],
            "hard-paper": _REORDER + ["model.reorder_hard=true", "model.reorder_restore=false"],
            "random": ["model.random_order=true"]}  # the follow-up's: a fresh random order per training batch
TRAIN_IMAGES = 60000
_CAUSAL = ["model.bidirectional=false", "model.pool=last"]

PRESETS = {  # (overrides, epochs)
    "smoke": (["model.d_model=16", "model.n_layer=1", "model.d_state=4", "model.patch_size=7",
               "optim.batch_size=8", "optim.warmup_steps=1", "data.test_limit=50", "run.ckpt_every=0",
               "run.log_every=1"], 0.001),
    "small": (["model.d_model=32", "model.n_layer=2", "model.patch_size=7", "optim.batch_size=64",
               "optim.warmup_steps=20", "data.test_limit=2000", "run.log_every=10"], 0.25),
    "gpu": (["model.d_model=128", "model.n_layer=4", "model.patch_size=4", "optim.batch_size=128",
             "optim.warmup_steps=200", "optim.lr=2e-3", "run.log_every=25"], 3),
    "causal-smoke": (_CAUSAL + ["model.d_model=16", "model.n_layer=1", "model.d_state=4", "model.patch_size=7",
                                "optim.batch_size=8", "optim.warmup_steps=1", "data.test_limit=50",
                                "data.val_size=50", "run.ckpt_every=0", "run.log_every=1"], 0.001),
    "causal-gpu": (_CAUSAL + ["model.d_model=64", "model.n_layer=4", "model.patch_size=2", "optim.batch_size=128",
                              "optim.warmup_steps=100", "optim.lr=2e-3", "data.val_size=5000",
                              "run.log_every=25"], 2),
}


@dataclass
class ReorderExperimentConfig:
    out: str = "results/reorder"
    preset: str = "small"
    variants: list[str] = field(default_factory=lambda: ["none", "soft", "hard"])
    seeds: list[int] = field(default_factory=lambda: [0, 1])
    epochs: float | None = None  # default: the preset's
    evals_per_epoch: int = 1
    overrides: list[str] = field(default_factory=list)
    jobs: int = 1

    def __post_init__(self):
        check_fields(self)
        check_grid(self)
        if self.preset not in PRESETS:
            raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        bad = [v for v in self.variants if v not in VARIANTS]
        if bad:
            raise ValueError(f"unknown variants {bad}; choose from {list(VARIANTS)}")


def run_reorder(cfg: ReorderExperimentConfig) -> dict:
    out = Path(cfg.out)
    base, epochs = PRESETS[cfg.preset]
    epochs = cfg.epochs or epochs
    train_cfg = apply_overrides(ImageTrainConfig(), base + cfg.overrides)
    batch = train_cfg.optim.batch_size
    steps_per_epoch = (TRAIN_IMAGES - train_cfg.data.val_size) // batch
    steps = max(2, round(epochs * steps_per_epoch))
    every = max(1, min(steps // 2, steps_per_epoch // cfg.evals_per_epoch))
    base = base + [f"optim.steps={steps}", f"run.eval_every={every}", f"run.ckpt_every={every}"] + cfg.overrides
    runs = run_grid("image", {v: VARIANTS[v] for v in cfg.variants}, cfg.seeds, base, out, cfg.jobs)
    has_val = train_cfg.data.val_size > 0
    results = {"config": asdict(cfg), "steps": steps, "steps_per_epoch": steps_per_epoch,
               "seq_len": train_cfg.model.seq_len, "causal": not train_cfg.model.bidirectional,
               "selection": "best validation accuracy" if has_val else "final evaluation (no validation split)",
               "variants": {}}
    for v in cfg.variants:
        mine = [r for r in runs if r.variant == v]
        logs = [r.log() for r in mine]
        chosen = [lg.selected("val_acc", larger_is_better=True) if has_val else lg.evals[-1] for lg in logs]
        accs = [e["test_acc"] for e in chosen]
        step_s = [statistics.median(batch / m["img_per_s"] for m in lg.train[1:] or lg.train) for lg in logs]
        watch = "val_acc" if has_val else "test_acc"
        results["variants"][v] = {
            "test_acc": asdict(summarize(accs)), "per_seed": dict(zip(cfg.seeds, accs)),
            "selected_epoch": [e["step"] / steps_per_epoch for e in chosen],
            "final_test_acc": asdict(summarize([lg.evals[-1]["test_acc"] for lg in logs])),
            "train_loss": asdict(summarize([lg.final_train_loss() for lg in logs])),
            "curves": {r.seed: [(e["step"] / steps_per_epoch, e[watch]) for e in lg.evals]
                       for r, lg in zip(mine, logs)},
            "train_curves": {r.seed: [(m["step"] / steps_per_epoch, m["loss"]) for m in lg.train]
                             for r, lg in zip(mine, logs)},
            "seconds_per_step": asdict(summarize(step_s)),
        }
        if has_val:
            results["variants"][v]["val_acc"] = asdict(summarize([e["val_acc"] for e in chosen]))
    base_t = results["variants"].get("none", {}).get("seconds_per_step", {}).get("mean")
    for r in results["variants"].values():
        r["step_time_vs_none"] = r["seconds_per_step"]["mean"] / base_t if base_t else None
    if "none" in results["variants"]:  # paired over seeds, Holm-adjusted over the variants
        for v, c in compare_to({v: r["per_seed"] for v, r in results["variants"].items()}, "none").items():
            results["variants"][v]["vs_none"] = asdict(c)
            results["variants"][v]["p_vs_none"] = c.p_holm
    write_json(out / "results.json", results)
    write_outputs(results, out)
    return results


def write_outputs(results: dict, out: Path) -> None:
    """curves.png and report.md from a results dict (also from a saved results.json)."""
    from ..plots.experiments import reorder_curves

    reorder_curves(results, out / "curves.png")
    _report(results, ReorderExperimentConfig(**results["config"]), out)


def _report(results: dict, cfg: ReorderExperimentConfig, out: Path) -> None:
    order = "causal (unidirectional, read at the last token)" if results.get("causal") else "bidirectional"
    lines = ["# Reordering experiment: MambaClassifier on Fashion-MNIST", "",
             f"Preset `{cfg.preset}` ({order}, {results.get('seq_len', '?')} tokens), {results['steps']} steps "
             f"({results['steps'] / results['steps_per_epoch']:.2f} epochs), overrides {cfg.overrides or 'none'}, "
             f"seeds {cfg.seeds}. Test accuracy reported at: {results.get('selection', 'the final evaluation')}.", "",
             "Each variant is compared with none seed by seed (paired t-test), Holm-adjusted over the variants. "
             "`-paper` variants do not map the scan's output back to the token order (the official code).", "",
             "| variant | n | test accuracy mean ± std [95% CI] | per seed | final train loss | s/step | vs none "
             "| minus none, paired [95% CI] | p (Holm) |", "|---|---|---|---|---|---|---|---|---|"]
    for v, r in results["variants"].items():
        s = r["test_acc"]
        seeds = ", ".join(f"{a:.4f}" for a in r["per_seed"].values())
        rel = f"{r['step_time_vs_none']:.2f}x" if r.get("step_time_vs_none") else ""
        c = r.get("vs_none")
        diff = (f"{c['mean_diff']:+.4f} [{c['ci95_low']:+.4f}, {c['ci95_high']:+.4f}] | {c['p_holm']:.3g}"
                if c and c["n"] >= 2 else " |")
        tl = f"{r['train_loss']['mean']:.4f}" if "train_loss" in r else ""
        lines.append(f"| {v} | {s['n']} | {fmt_summary(s, 4)} "
                     f"| {seeds} | {tl} | {r['seconds_per_step']['mean'] * 1e3:.1f} ms | {rel} | {diff} |")
    lines += ["", "![curves](curves.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
