"""The GPU runs behind results/paper_claims.md, each sized to its share of a time budget.

    MAMBADYN_OFFLINE=1 python benchmarks/paper_claims_gpu.py --part lm-synthetic --budget 480 --out OUT --data .devdata

Each experiment of a part runs on a GPU of its own (CUDA_VISIBLE_DEVICES; experiments share a GPU when
there are more of them than GPUs) as the product's command, ``python -m mambadyn experiment ...``, with
``jobs`` runs at a time. Before it, a calibration grid (``jobs`` runs at once, as the real one will run)
measures seconds per step and start-up under that load; the experiment then gets the most steps that fit
its budget, the same for every arm and seed so that the comparisons stay paired. Per experiment the
folder OUT/NAME.tar.gz holds results.json, report.md, the figures, and each run's config and metrics (not
the weights); OUT/paper_claims_gpu.json records the calibration, the steps chosen, the wall time and the
GPU-seconds spent. ``--data`` is a folder holding fashion-mnist/ and wikitext-2/{train,val,test}.txt; make it
once, on the machine that has the datasets, with

    python benchmarks/paper_claims_gpu.py --prepare ../shared/data --data .devdata

(the WikiText-2 validation file trains, and its test file, cut at the article nearest its middle, gives
a validation and a test half: the train split is not available offline).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import statistics
import subprocess
import sys
import tarfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}
FMNIST_TRAIN = 55000  # 60k minus the 5000 held out for validation by the causal-* presets


@dataclass
class Experiment:
    name: str
    command: str  # scenarios | reorder
    args: list[str]  # preset, kinds, variants/modes, --set ...
    arms: list[str]  # modes or variants
    seeds: list[int]
    jobs: int
    min_steps: int
    max_steps: int
    per_epoch: int = 0  # reorder: steps per epoch (steps are given as --epochs)
    gpu: int = 0  # which GPU (modulo the number there is)
    evals: int = 10  # evaluations per run
    fixed_steps: int = 0  # 0: as many as fit the budget
    after: list[list[str]] = field(default_factory=list)  # commands run on its GPU once it is done

    def steps_args(self, steps: int, evals: int = 10) -> list[str]:
        """Arguments for ``steps`` optimizer steps with about ``evals`` evaluations."""
        if self.command == "reorder":
            return ["--epochs", f"{steps / self.per_epoch:.6f}", "--evals-per-epoch",
                    str(max(1, math.ceil(evals * self.per_epoch / steps)))]
        every = max(1, steps // evals)
        return ["--set", f"optim.steps={steps}", "--set", f"optim.warmup_steps={max(1, steps // 100)}",
                "--set", f"run.eval_every={every}", "--set", f"run.ckpt_every={steps // 2}"]

    def cli(self, out: Path, seeds: list[int], arms: list[str], steps: int, evals: int = 10) -> list[str]:
        pick = "--modes" if self.command == "scenarios" else "--variants"
        return ([sys.executable, "-m", "mambadyn", "experiment", self.command, "--out", str(out), *self.args,
                 pick, ",".join(arms), "--seeds", ",".join(map(str, seeds)), "--jobs", str(self.jobs)]
                + self.steps_args(steps, evals))


def experiments(part: str, data: Path) -> list[Experiment]:
    wt = data / "wikitext-2"
    lm_sets = ["--set", f"data.path={wt / 'train.txt'}", "--set", f"data.val_path={wt / 'val.txt'}",
               "--set", f"data.test_path={wt / 'test.txt'}"]
    modes = ["free", "positive", "mixed", "negative"]
    seeds = [0, 1, 2, 3, 4]
    if part == "lm-synthetic":
        syn = ["--kind", "synthetic", "--preset", "gpu", "--set", "data.n_items=4", "--set", "data.vocab=8"]
        return [
            Experiment("lm_wikitext", "scenarios", ["--preset", "paper-gpu", *lm_sets], modes, seeds, jobs=5,
                       min_steps=300, max_steps=4000,
                       after=[["token-shares", "--modes", "free,positive", "--windows", "32"]]),
            Experiment("selective_copy", "scenarios", [*syn, "--set", "data.task=selective_copy",
                                                       "--set", "data.seq_len=512"], modes, seeds, jobs=5,
                       min_steps=300, max_steps=4000, gpu=1),
            Experiment("mqar", "scenarios", [*syn, "--set", "data.task=mqar", "--set", "data.seq_len=256"],
                       modes, seeds, jobs=5, min_steps=300, max_steps=4000, gpu=1),
        ]
    if part == "reorder":
        variants = ["none", "soft", "hard", "soft-paper", "hard-paper"]
        fm = ["--preset", "causal-gpu", "--set", f"data.path={data / 'fashion-mnist'}"]
        per_epoch = FMNIST_TRAIN // 128
        return [
            Experiment("fmnist_patches196", "reorder", fm, variants, seeds, jobs=5, min_steps=200,
                       max_steps=20 * per_epoch, per_epoch=per_epoch),
            Experiment("fmnist_pixels784", "reorder", [*fm, "--set", "model.patch_size=1"], variants, seeds, jobs=5,
                       min_steps=200, max_steps=20 * per_epoch, per_epoch=per_epoch, gpu=1),
        ]
    if part == "final":  # what the first two parts left: the LM again (for its weights), longer synthetic
        # runs beside it, and the 784-pixel classifier with fewer evaluations
        lm, copy, mqar = experiments("lm-synthetic", data)
        lm.fixed_steps = 765  # as in the first run, which the token shares then replicate
        copy.gpu = mqar.gpu = 0
        pixels = experiments("reorder", data)[1]
        pixels.evals = 4
        return [lm, copy, mqar, pixels]
    if part == "synthetic":  # the two synthetic tasks alone, a GPU each
        _, copy, mqar = experiments("lm-synthetic", data)
        copy.gpu, mqar.gpu = 0, 1
        return [copy, mqar]
    raise SystemExit(f"unknown part {part!r}: lm-synthetic | reorder | final | synthetic")


def _env(gpu: int | None) -> dict:
    env = {**os.environ, **SAFE_ENV, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    return env


def _run(cmd: list[str], log: Path, env: dict, deadline: float) -> tuple[int, float]:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        try:
            code = proc.wait(timeout=max(1.0, deadline - time.time()))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
            code = -9
    return code, time.perf_counter() - t0


def _timings(out: Path) -> tuple[list[float], list[float]]:
    """Per calibration run: seconds per step (items per step over the logged rate, after the first log) and
    seconds per evaluation."""
    per_step, per_eval = [], []
    for metrics in out.glob("runs/*/metrics.jsonl"):
        rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
        cfg = json.loads((metrics.parent / "config.json").read_text())
        rates = [r.get("tok_per_s") or r.get("img_per_s") for r in rows if "loss" in r][1:]
        items = cfg["optim"]["batch_size"] * cfg["data"].get("seq_len", 1)
        if rates:
            per_step.append(items / statistics.median(rates))
        per_eval += [r["eval_s"] for r in rows if r.get("event") == "eval" and "eval_s" in r]
    return per_step, per_eval


def run_experiment(exp: Experiment, gpu: int | None, out: Path, budget: float, record: dict) -> None:
    env, log = _env(gpu), out / f"{exp.name}.log"
    t_start = time.time()
    deadline = t_start + budget
    # calibration: jobs runs at once, 60 steps, one arm, seeds outside the experiment's
    cal_steps, evals = 60, exp.evals
    cal = out / "work" / f"{exp.name}-calibration"
    code, wall = _run(exp.cli(cal, [1000 + i for i in range(exp.jobs)], exp.arms[-1:], cal_steps, evals=2)
                      + ["--set", "run.log_every=10"], log, env, deadline)
    per_step, per_eval = _timings(cal)
    rec = record.setdefault(exp.name, {"gpu": gpu, "budget_s": budget})
    rec.update({"calibration_exit": code, "calibration_wall_s": wall, "seconds_per_step": per_step,
                "seconds_per_eval": per_eval})
    if code != 0 or not per_step:
        rec["error"] = "calibration failed; see the log"
        return
    # the slowest run sets a wave's length; 5% more, since some calibration steps ran while other runs
    # were still starting up
    t_step, t_eval = 1.05 * max(per_step), statistics.median(per_eval) if per_eval else 0.0
    startup = max(5.0, wall - cal_steps * t_step - 2 * t_eval)
    waves = math.ceil(len(exp.arms) * len(exp.seeds) / exp.jobs)
    after_s = 60.0 * len(exp.after)
    left = deadline - time.time() - after_s
    steps = int((0.9 * left / waves - startup - (evals + 1) * t_eval) / t_step)  # 10% spare
    steps = exp.fixed_steps or min(exp.max_steps, steps)
    rec.update({"startup_s": startup, "waves": waves, "steps": steps})
    if steps < exp.min_steps:
        rec["error"] = f"only {steps} steps fit (< {exp.min_steps}); not run"
        return
    target = out / "work" / exp.name
    code, wall = _run(exp.cli(target, exp.seeds, exp.arms, steps, evals), log, env, deadline)
    rec.update({"exit": code, "wall_s": wall})
    for extra in exp.after:
        cmd = [sys.executable, "-m", "mambadyn", "experiment", *extra, "--runs", str(target / "runs"),
               "--out", str(target / extra[0])]
        c, w = _run(cmd, log, env, deadline + after_s)
        rec.setdefault("after", []).append({"command": extra[0], "exit": c, "wall_s": w})
    rec["total_s"] = time.time() - t_start


def pack(exp: Experiment, out: Path) -> None:
    """Everything but weights and checkpoints, in one archive (the device returns few files)."""
    target = out / "work" / exp.name

    def keep(info: tarfile.TarInfo):
        skip = ("/ckpt-", "/latest", ".safetensors")
        return None if any(s in info.name for s in skip) else info

    with tarfile.open(out / f"{exp.name}.tar.gz", "w:gz") as tar:
        if target.exists():
            tar.add(target, arcname=exp.name, filter=keep)
        log = out / f"{exp.name}.log"
        if log.exists():
            tar.add(log, arcname=f"{exp.name}/driver.log")


def prepare(shared: Path, data: Path, fashion: bool = True) -> None:
    """Copy Fashion-MNIST (unless ``fashion`` is False) and split the offline WikiText-2 files into
    train / val / test texts."""
    if fashion:
        shutil.copytree(shared / "fashion-mnist", data / "fashion-mnist", dirs_exist_ok=True)
    src = shared / "wikitext-2-tokenized-valid-test"
    test = (src / "test.txt").read_text(encoding="utf-8")
    # articles begin with a top-level heading line " = Title = "
    starts = [m.start() for m in re.finditer(r"^ = [^=].* = $", test, flags=re.M)]
    if not starts:
        raise SystemExit(f"{src / 'test.txt'} has no article headings; is it WikiText?")
    mid = min(starts, key=lambda i: abs(i - len(test) / 2))
    out = data / "wikitext-2"
    out.mkdir(parents=True, exist_ok=True)
    (out / "train.txt").write_text((src / "valid.txt").read_text(encoding="utf-8"), encoding="utf-8")
    (out / "val.txt").write_text(test[:mid], encoding="utf-8")
    (out / "test.txt").write_text(test[mid:], encoding="utf-8")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", default="")
    ap.add_argument("--prepare", default="", help="a folder of the shared datasets: write --data from it, then stop")
    ap.add_argument("--budget", type=float, default=480, help="seconds for the whole part")
    ap.add_argument("--out", default="", help="where the archives and the record go (with --part)")
    ap.add_argument("--data", default=".devdata")
    ap.add_argument("--gpus", type=int, default=None, help="default: every visible GPU")
    ap.add_argument("--only", default="", help="comma-separated experiment names (default: all of the part)")
    ap.add_argument("--set", action="append", default=[], help="an override for every experiment (a CPU dry run)")
    ap.add_argument("--seeds", default="", help="comma-separated seeds instead of 0..4 (a dry run)")
    args = ap.parse_args(argv)
    if args.prepare:
        prepare(Path(args.prepare), Path(args.data))
        return 0
    if not args.part or not args.out:
        ap.error("give --part (lm-synthetic | reorder | final | synthetic) and --out, or --prepare")
    import torch

    out = Path(args.out)
    (out / "work").mkdir(parents=True, exist_ok=True)
    exps = experiments(args.part, Path(args.data))
    if args.only:
        exps = [e for e in exps if e.name in args.only.split(",")]
    for e in exps:
        e.args += [x for item in args.set for x in ("--set", item)]
        if args.seeds:
            e.seeds = [int(x) for x in args.seeds.split(",")]
    n_gpu = args.gpus if args.gpus is not None else torch.cuda.device_count()
    record = {"part": args.part, "budget_s": args.budget, "gpus": n_gpu,
              "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "experiments": {}}
    threads = []
    for exp in exps:
        gpu = exp.gpu % n_gpu if n_gpu else None
        t = threading.Thread(target=run_experiment, args=(exp, gpu, out, args.budget, record["experiments"]))
        t.start()
        threads.append(t)
    for t in threads:
        t.join()
    for exp in exps:
        pack(exp, out)
    # GPU time: each experiment's wall time on its GPU, shared with the others placed on the same GPU
    sharing = {e.name: sum(o.gpu % max(1, n_gpu) == e.gpu % max(1, n_gpu) for o in exps) for e in exps}
    record["gpu_share"] = sharing
    (out / "paper_claims_gpu.json").write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))
    return 0 if all("error" not in r and r.get("exit") == 0 for r in record["experiments"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
