"""Train the scenario experiment's four LMs (eigen modes free / positive / mixed / negative, its `gpu`
preset) and one 130M-shaped LM (d_model 768, 24 layers), then probe each; on the GPU machine.

    MAMBADYN_DATA=.devdata MAMBADYN_OFFLINE=1 python benchmarks/probe_trained.py --out OUT [--big-steps N]
        [--windows 6 --window-len 1024] [--jobs 5]

With ``--windows`` each probe runs both continuous-time models on every window, on the CPU: about 4 minutes
for a `gpu`-preset model on the GPU machine's CPU. ``--jobs`` trains and probes that many models at once,
each in its own process (a rerun resumes interrupted trainings and redoes only their probes).

Writes OUT/<model>/ (the probe's probe.json, report.md, figures), OUT/summary.json (per model: layers by
scenario, sign counts, train time, probe time) and prints a table. The training runs stay in OUT/runs."""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import time
from pathlib import Path

import torch

from mambadyn.experiments.scenarios import PRESETS
from mambadyn.probe import ProbeConfig, probe, write_outputs
from mambadyn.probe.windows import probe_windows
from mambadyn.train import LMTask, LMTrainConfig, apply_overrides, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--modes", default="free,positive,mixed,negative")
    ap.add_argument("--preset", default="gpu", choices=sorted(PRESETS), help="the scenario experiment's preset "
                    "for the four eigen-mode models (small: minutes on a CPU)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="a training override for the four "
                    "eigen-mode models (section.key=value), after the preset's")
    ap.add_argument("--big-steps", type=int, default=1500, help="steps of the 130M-shaped model (0: skip it)")
    ap.add_argument("--tokens", type=int, default=2048, help="tokens the probe runs on")
    ap.add_argument("--big-ode-layers", default="", help="layers whose ODE the 130M-shaped probe runs (default all)")
    ap.add_argument("--windows", type=int, default=0, help="probe this many disjoint windows of --window-len tokens "
                    "too, for intervals over windows (0: one window of --tokens)")
    ap.add_argument("--window-len", type=int, default=1024)
    ap.add_argument("--big-windows", type=int, default=0, help="--windows for the 130M-shaped model")
    ap.add_argument("--jobs", type=int, default=1, help="models trained and probed at a time, each in its own "
                    "process (the probes' ODEs run on the CPU, one core each)")
    args = ap.parse_args()
    from mambadyn.errors import OutputError
    from mambadyn.outputs import claim_folder

    # a new or empty folder, or one this script wrote before (it resumes there); anything else is refused
    try:
        claim_folder(args.out, "benchmarks/probe_trained.py")
    except OutputError as e:
        ap.error(str(e))
    jobs = {f"scenario-{m}": PRESETS[args.preset] + args.sets + [f"model.eigen_mode={m}"] for m in args.modes.split(",") if m}
    if args.big_steps:
        jobs["mamba-130m-shape"] = ["model.d_model=768", "model.n_layer=24", "data.seq_len=512", "optim.batch_size=16",
                                    f"optim.steps={args.big_steps}", "optim.warmup_steps=100", "optim.lr=1e-3",
                                    "run.eval_every=500", "run.eval_batches=10", "run.ckpt_every=500", "run.log_every=50"]
    text = Path(os.environ.get("MAMBADYN_DATA", ".")) / "tiny-shakespeare" / "input.txt"
    # the probe reads held-out text: the last 10% of the corpus, which no run trained on
    held_out = text.read_text()[-30_000:]
    summary = {}
    if args.jobs > 1:
        # each model in its own process: training shares the GPU, the probes' ODEs (single-threaded Python
        # loops) run side by side on the machine's cores
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        ctx = multiprocessing.get_context("spawn")
        with ctx.Pool(args.jobs, initializer=_threads, initargs=(threads,)) as pool:
            for name, row in pool.imap_unordered(_one, [(name, sets, args, held_out) for name, sets in jobs.items()]):
                summary[name] = row
                (args.out / "summary.json").write_text(json.dumps(summary, indent=1))  # after each model
        return
    for name, sets in jobs.items():
        summary[name] = _one((name, sets, args, held_out))[1]
        (args.out / "summary.json").write_text(json.dumps(summary, indent=1))  # after each model: nothing lost


def _threads(n: int) -> None:
    """Each pool process's share of the cores, for torch and numba alike: left at the core count, numba's
    threads in 4 processes put the load of a 16-core machine at 44 and no probe finished in 470 s."""
    torch.set_num_threads(n)
    try:
        import numba
    except ImportError:
        return
    numba.set_num_threads(min(n, numba.config.NUMBA_NUM_THREADS))


def _one(job) -> tuple[str, dict]:
    """Train one model (resuming an interrupted run), probe it, write its outputs; its summary row."""
    name, sets, args, held_out = job
    cfg = apply_overrides(LMTrainConfig(), sets + [f"run.out_dir={args.out / 'runs' / name}", "run.progress=false"])
    t0 = time.perf_counter()
    final = train(LMTask, cfg, resume=(args.out / "runs" / name / "latest").exists())
    t_train = time.perf_counter() - t0
    t0 = time.perf_counter()
    ode_layers = [int(x) for x in args.big_ode_layers.split(",") if x] if name.startswith("mamba-130m") else []
    pc = ProbeConfig(max_tokens=args.tokens, ode_layers=ode_layers or None, progress=False)
    n_windows = args.big_windows if name.startswith("mamba-130m") else args.windows
    if n_windows:
        result = probe_windows(args.out / "runs" / name, text=held_out, config=pc, windows=n_windows,
                               window_len=args.window_len)
    else:
        result = probe(args.out / "runs" / name, text=held_out, config=pc)
    t_probe = time.perf_counter() - t0
    write_outputs(result, args.out / name)
    counts = {}
    for lp in result.layers:
        counts[lp.scenario] = counts.get(lp.scenario, 0) + 1
    row = {"final": final, "train_s": t_train, "probe_s": t_probe, "scenarios": counts,
           "positive": [lp.positive for lp in result.layers], "negative": [lp.negative for lp in result.layers],
           "complex_pairs": [lp.complex_pairs for lp in result.layers],
           "ode_agreement": [o.agreement for o in result.ode],
           "normalised_ode_agreement": [o.normalised.agreement if o.normalised else None for o in result.ode],
           "grad_top10": result.to_dict()["tokens"]["grad_share_top10pct"]}
    print(f"{name:20s} val {final.get('val_loss', float('nan')):.4f}  train {t_train:6.1f}s  probe {t_probe:6.1f}s  "
          f"scenarios {counts}", flush=True)
    return name, row


if __name__ == "__main__":
    main()
