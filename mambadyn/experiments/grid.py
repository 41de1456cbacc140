"""Run a grid of training runs (variants x seeds), resumably, and read their results back.

Each run is a ``mambadyn.train.worker`` process given its resolved config (the library's entry point,
not the CLI's flags). A finished run is reused only when its stored config equals the requested one;
an interrupted one resumes under the same rule; anything else is refused with the differences named.
Children die with the experiment (``worker_command``), and each run folder is locked by its trainer.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..errors import MambadynError
from ..train.config import apply_overrides
from ..train.loop import config_differences
from ..train.worker import KINDS

# The child asks the kernel for SIGKILL when its parent dies (Linux PR_SET_PDEATHSIG) before it imports
# anything heavy (torch takes seconds), then checks that the parent did not die in the meantime.
_BOOT = ("import ctypes, os, signal, sys\n"
         "if sys.platform.startswith('linux'):\n"
         "    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))\n"
         "    if os.getppid() != int(sys.argv[1]):\n"
         "        sys.exit(1)\n"
         "from mambadyn.train.worker import main\n"
         "sys.exit(main(sys.argv[2:]))\n")


def worker_command(kind: str, config: dict, resume: bool = True) -> list[str]:
    """The command that trains ``config`` (a resolved config dict) in a child tied to this process."""
    cmd = [sys.executable, "-c", _BOOT, str(os.getpid()), kind, json.dumps(config)]
    return cmd + ["--resume"] if resume else cmd


@dataclass
class Run:
    variant: str
    seed: int
    folder: Path

    @property
    def finished(self) -> bool:
        return (self.folder / "model" / "config.json").is_file()

    def metrics(self) -> list[dict]:
        f = self.folder / "metrics.jsonl"
        return [json.loads(x) for x in f.read_text().splitlines() if x] if f.exists() else []

    def log(self) -> "RunLog":
        """metrics.jsonl read once: what a report takes many numbers from."""
        m = self.metrics()
        return RunLog(self.folder, [x for x in m if x.get("event") == "eval"], [x for x in m if "loss" in x])

    def evals(self) -> list[dict]:
        return self.log().evals

    def train_log(self) -> list[dict]:
        return self.log().train

    def selected(self, metric: str, larger_is_better: bool = False) -> dict:
        return self.log().selected(metric, larger_is_better)

    def final_train_loss(self, last: int = 5) -> float:
        return self.log().final_train_loss(last)


@dataclass
class RunLog:
    """One run's evaluations and logged training steps."""

    folder: Path
    evals: list[dict]
    train: list[dict]

    def selected(self, metric: str, larger_is_better: bool = False) -> dict:
        """The evaluation that ``metric`` (a validation metric) picks: model selection on validation, so its
        test_* entries are the numbers to report. The earliest wins a tie."""
        evals = [e for e in self.evals if metric in e]
        if not evals:
            raise ValueError(f"{self.folder}: no evaluation recorded {metric!r}")
        sign = -1 if larger_is_better else 1
        return min(evals, key=lambda e: (sign * e[metric], e["step"]))

    def final_train_loss(self, last: int = 5) -> float:
        """Mean of the last ``last`` logged training losses (each one step's batch, dropout on)."""
        if not self.train:
            raise ValueError(f"{self.folder}: no training loss logged")
        tail = self.train[-last:]
        return sum(m["loss"] for m in tail) / len(tail)


def check_grid(cfg) -> None:
    """The checks every experiment config shares: seeds given, and (where present) a positive
    number of evaluations per epoch and of epochs."""
    if not cfg.seeds:
        raise ValueError("give at least one seed (--seeds 0,1,2)")
    if len(set(cfg.seeds)) != len(cfg.seeds):
        raise ValueError(f"seeds repeat: {cfg.seeds}")
    if cfg.jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {cfg.jobs}")
    if getattr(cfg, "evals_per_epoch", 1) < 1:
        raise ValueError(f"--evals-per-epoch must be >= 1, got {cfg.evals_per_epoch}")
    if getattr(cfg, "epochs", None) is not None and cfg.epochs <= 0:
        raise ValueError(f"--epochs must be > 0, got {cfg.epochs}")


def _stored_mismatch(run: Run, requested: dict) -> list[str]:
    stored = run.folder / "config.json"
    if not stored.is_file():
        return []
    return config_differences(json.loads(stored.read_text()), requested)


def run_grid(kind: str, variants: dict[str, list[str]], seeds: list[int], base: list[str], out: Path,
             jobs: int = 1, log_dir: Path | None = None) -> list[Run]:
    """Train every (variant, seed) under ``out/runs/{variant}-s{seed}``; ``jobs`` at a time. ``base`` and
    each variant's list are ``section.key=value`` overrides of the ``kind`` ("lm" | "image" | "synthetic") config."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    runs = [Run(v, s, out / "runs" / f"{v}-s{s}") for v in variants for s in seeds]
    configs = {}
    for r in runs:
        cfg = apply_overrides(KINDS[kind][0](), base + variants[r.variant] + [
            f"run.seed={r.seed}", "run.progress=false", f"run.out_dir={r.folder}"])
        configs[r.folder] = asdict(cfg)
        diffs = _stored_mismatch(r, configs[r.folder])
        if diffs:
            raise ValueError(f"{r.folder} holds a run with other settings ({'; '.join(diffs[:4])}); "
                             "use another --out for a different experiment, or delete the folder to rerun it")
    todo = [r for r in runs if not r.finished]
    log_dir = log_dir or out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    def one(r: Run) -> None:
        cmd = worker_command(kind, configs[r.folder])
        with open(log_dir / f"{r.folder.name}.log", "w") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
            try:
                code = proc.wait()
            except BaseException:  # KeyboardInterrupt in the parent: take the child down with us
                proc.kill()
                proc.wait()
                raise
        if code != 0:
            log_file = log_dir / f"{r.folder.name}.log"
            lines = [x for x in log_file.read_text(errors="replace").splitlines() if x.strip()]
            last = lines[-1].strip() if lines else "(the log is empty)"
            raise MambadynError(f"run {r.folder.name} failed (exit {code}): {last}; the whole log is {log_file}")

    with tqdm(total=len(runs), initial=len(runs) - len(todo), desc="runs") as bar, \
            ThreadPoolExecutor(max_workers=jobs) as pool:
        for _ in pool.map(one, todo):
            bar.update(1)
    return runs
