"""Run a grid of training runs (variants x seeds) as ``mambadyn train`` subprocesses, resumably, and
read their results back. A finished run is never run again; an interrupted one resumes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm


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

    def evals(self) -> list[dict]:
        return [m for m in self.metrics() if m.get("event") == "eval"]

    def train_log(self) -> list[dict]:
        return [m for m in self.metrics() if "loss" in m]


def run_grid(kind: str, variants: dict[str, list[str]], seeds: list[int], base: list[str], out: Path,
             jobs: int = 1, log_dir: Path | None = None) -> list[Run]:
    """Train every (variant, seed) under ``out/runs/{variant}-s{seed}``; ``jobs`` at a time."""
    runs = [Run(v, s, out / "runs" / f"{v}-s{s}") for v in variants for s in seeds]
    todo = [r for r in runs if not r.finished]
    log_dir = log_dir or out / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))

    def one(r: Run) -> None:
        sets = base + variants[r.variant] + [f"run.seed={r.seed}", "run.progress=false"]
        cmd = [sys.executable, "-m", "mambadyn.cli", "train", kind, "--out", str(r.folder), "--resume",
               *sum((["--set", s] for s in sets), [])]
        with open(log_dir / f"{r.folder.name}.log", "w") as log:
            proc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        if proc.returncode != 0:
            tail = (log_dir / f"{r.folder.name}.log").read_text()[-2000:]
            raise RuntimeError(f"run {r.folder.name} failed (exit {proc.returncode}):\n{tail}")

    with tqdm(total=len(runs), initial=len(runs) - len(todo), desc="runs") as bar, \
            ThreadPoolExecutor(max_workers=jobs) as pool:
        for _ in pool.map(one, todo):
            bar.update(1)
    return runs
