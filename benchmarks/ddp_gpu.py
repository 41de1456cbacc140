"""Two GPUs against one: the 130M-shaped LM (d_model 768, 24 layers) trained with the product's own
command under torchrun, at N = 1 and N = 2 with the same global batch; then a two-GPU run killed
mid-way (SIGKILL to the torchrun group) and resumed, compared with the uninterrupted two-GPU run.

    MAMBADYN_DATA=.devdata MAMBADYN_OFFLINE=1 python benchmarks/ddp_gpu.py --out OUT [--steps 200]

Each run is ``torchrun --standalone --nproc_per_node N -m mambadyn.cli train lm ...`` on the Triton scan
backend with bf16 autocast. The LM sampler slices one global draw of windows across ranks, so N = 1
and N = 2 see the same windows at every step; the curves then differ only by the order of floating
point reductions. Writes OUT/NAME.json and OUT/NAME.md (default ddp_gpu) and prints the table. Throughput is
the median of the logged tokens/s after the first ``--skip`` logged intervals (Triton compiles there).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

from mambadyn.train.loop import run_lock

# NVLink multicast stays off on shared hosts (a program using it can take the GPUs out of service)
SAFE_ENV = {"NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


def command(n: int, out: Path, args, per_rank_batch: int, resume: bool = False) -> list[str]:
    sets = {"model.d_model": args.d_model, "model.n_layer": args.n_layer, "model.scan_backend": args.backend,
            "model.fused": str(args.backend in ("auto", "triton")).lower(),
            "data.seq_len": args.seq_len,
            "optim.batch_size": per_rank_batch, "optim.warmup_steps": 20, "optim.lr": 1e-3, "run.amp": "bf16",
            "run.eval_every": 0, "run.eval_batches": 4, "run.ckpt_every": args.ckpt_every,
            "run.log_every": args.log_every, "run.progress": "false", "run.seed": 0}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(n),
           "-m", "mambadyn.cli", "train", "lm", "--out", str(out), "--steps", str(args.steps)]
    if args.data:
        cmd += ["--data", args.data]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    return cmd + (["--resume"] if resume else [])


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def launch(cmd: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, **SAFE_ENV, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(cmd, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env, start_new_session=True)


def finish(proc: subprocess.Popen, log: Path) -> float:
    t0 = time.perf_counter()
    rc = proc.wait()
    if rc != 0:
        sys.exit(f"run failed (exit {rc}); log {log}:\n" + log.read_text()[-4000:])
    return time.perf_counter() - t0


def summarise(run: Path, skip: int) -> dict:
    steps = [m for m in metrics(run) if "loss" in m]
    rates = [m["tok_per_s"] for m in steps[skip:]]
    return {"tokens_per_s": statistics.median(rates), "tokens_per_s_min": min(rates), "tokens_per_s_max": max(rates),
            "peak_mem_gib": max(m.get("peak_mem_gib", 0.0) for m in steps),
            "loss": [[m["step"], m["loss"]] for m in steps]}


def weight_diff(a: Path, b: Path) -> dict:
    wa, wb = load_file(str(a / "model" / "model.safetensors")), load_file(str(b / "model" / "model.safetensors"))
    diffs = {k: (wa[k].float() - wb[k].float()).abs().max().item() for k in wa}
    scale = max(wa[k].float().abs().max().item() for k in wa)
    worst = max(diffs, key=diffs.get)
    return {"bitwise_equal": all(torch.equal(wa[k], wb[k]) for k in wa), "max_abs_diff": diffs[worst],
            "worst_tensor": worst, "largest_weight": scale}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="where the JSON, the table and the logs go")
    ap.add_argument("--runs", type=Path, default=None, help="run folders (checkpoints are GBs; default OUT/runs)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--global-batch", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=1024)
    ap.add_argument("--log-every", type=int, default=10)
    ap.add_argument("--ckpt-every", type=int, default=50)
    ap.add_argument("--kill-after", type=int, default=100, help="SIGKILL the resumed run once this checkpoint exists")
    ap.add_argument("--kill-delay", type=float, default=3.0, help="seconds after that checkpoint")
    ap.add_argument("--skip", type=int, default=2, help="logged intervals left out of the throughput (compilation)")
    ap.add_argument("--data", default="", help="text file (default: the data cache's Tiny Shakespeare)")
    ap.add_argument("--d-model", type=int, default=768)
    ap.add_argument("--n-layer", type=int, default=24)
    ap.add_argument("--backend", default="triton", help="scan backend (chunked has no atomics: bitwise repeatable)")
    ap.add_argument("--resume-only", action="store_true", help="skip the N=1 run and the throughput table")
    ap.add_argument("--name", default="ddp_gpu", help="OUT/NAME.json and OUT/NAME.md")
    args = ap.parse_args()
    if torch.cuda.device_count() < 2:
        sys.exit(f"needs 2 GPUs, found {torch.cuda.device_count()}")
    args.out.mkdir(parents=True, exist_ok=True)
    runs = args.runs or args.out / "runs"
    result = {"shape": {"d_model": args.d_model, "n_layer": args.n_layer, "seq_len": args.seq_len,
                        "global_batch": args.global_batch, "steps": args.steps,
                        "vocab": "characters of Tiny Shakespeare (65)", "amp": "bf16", "scan_backend": args.backend},
              "gpu": torch.cuda.get_device_name(0), "torch": torch.__version__, "env": SAFE_ENV, "runs": {}}

    def save():
        (args.out / f"{args.name}.json").write_text(json.dumps(result, indent=1))

    def train_run(n: int, name: str, resume: bool = False) -> dict:
        log = args.out / f"{name}{'-resumed' if resume else ''}.log"
        wall = finish(launch(command(n, runs / name, args, args.global_batch // n, resume), log), log)
        return {"gpus": n, "per_rank_batch": args.global_batch // n, "wall_s": wall, **summarise(runs / name, args.skip)}

    lines = []
    for n in ((2,) if args.resume_only else (1, 2)):
        r = result["runs"][f"n{n}"] = train_run(n, f"n{n}")
        print(f"N={n}: {r['tokens_per_s']:,.0f} tokens/s, peak {r['peak_mem_gib']:.2f} GiB/GPU, wall {r['wall_s']:.0f} s",
              flush=True)
        save()
    two = result["runs"]["n2"]
    if not args.resume_only:
        one = result["runs"]["n1"]
        result["speedup"] = two["tokens_per_s"] / one["tokens_per_s"]
        result["efficiency"] = result["speedup"] / 2
        gaps = [abs(a[1] - b[1]) for a, b in zip(one["loss"], two["loss"])]
        result["loss_gap"] = {"max_abs": max(gaps), "final_n1": one["loss"][-1][1], "final_n2": two["loss"][-1][1]}
        result["n1_vs_n2_weights"] = weight_diff(runs / "n1", runs / "n2")
        lines += ["| GPUs | per-GPU batch | tokens/s (median, min-max) | peak memory per GPU | final loss |",
                  "|---|---|---|---|---|",
                  *(f"| {r['gpus']} | {r['per_rank_batch']} x {args.seq_len} | {r['tokens_per_s']:,.0f} "
                    f"({r['tokens_per_s_min']:,.0f}-{r['tokens_per_s_max']:,.0f}) | {r['peak_mem_gib']:.2f} GiB | "
                    f"{r['loss'][-1][1]:.4f} |" for r in (one, two)),
                  "",
                  f"speed-up {result['speedup']:.3f}x, scaling efficiency {result['efficiency']:.3f}; largest loss "
                  f"gap between N=1 and N=2 over {len(gaps)} logged steps: {result['loss_gap']['max_abs']:.2e}"]
        save()

    # the noise floor: the same two-GPU run again, uninterrupted
    result["runs"]["n2-repeat"] = train_run(2, "n2-repeat")
    result["repeat_vs_uninterrupted"] = weight_diff(runs / "n2-repeat", runs / "n2")
    save()

    # kill a two-GPU run once its checkpoint at --kill-after is complete, then resume it on two GPUs
    run, log = runs / "n2-killed", args.out / "n2-killed.log"
    proc = launch(command(2, run, args, args.global_batch // 2), log)
    while proc.poll() is None and not (run / f"ckpt-{args.kill_after}").is_dir():
        time.sleep(0.2)
    time.sleep(args.kill_delay)  # some steps past the checkpoint, so the kill loses work the resume must redo
    if proc.poll() is not None:
        sys.exit(f"the run ended before it could be killed; log {log}")
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    for _ in range(300):  # the workers die with their launcher (PR_SET_PDEATHSIG); the folder's lock frees
        try:
            with run_lock(run):
                break
        except RuntimeError:
            time.sleep(0.1)
    else:
        sys.exit("a worker outlived the killed launcher and still holds the run folder")
    killed_at = max((m["step"] for m in metrics(run) if "loss" in m), default=0)
    resumed = train_run(2, "n2-killed", resume=True)
    result["resume"] = {"killed_after_logged_step": killed_at, "resumed_from": args.kill_after,
                        "vs_uninterrupted": weight_diff(run, runs / "n2"),
                        "loss_curve_equal": resumed["loss"] == two["loss"]}
    save()
    res, rep = result["resume"]["vs_uninterrupted"], result["repeat_vs_uninterrupted"]
    lines += [f"{args.backend} scan, d_model {args.d_model}, {args.n_layer} layers, {args.steps} steps: killed after "
              f"logged step {killed_at}, resumed from ckpt-{args.kill_after}. Final weights vs the uninterrupted "
              f"two-GPU run: bitwise equal {res['bitwise_equal']}, max abs diff {res['max_abs_diff']:.3e}; loss curve "
              f"equal {result['resume']['loss_curve_equal']}. The same uninterrupted run repeated: bitwise equal "
              f"{rep['bitwise_equal']}, max abs diff {rep['max_abs_diff']:.3e}."]
    (args.out / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
