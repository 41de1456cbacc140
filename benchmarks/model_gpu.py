"""The whole model on one GPU, side by side in one run: training tokens/s and peak memory, and greedy decoding
tokens/s at batch 1 and 64, for mambadyn (fused kernels and CUDA-graph decoding; and its per-op path),
mamba-ssm's MambaLMHeadModel on its fastest path (mamba_inner_fn with causal-conv1d, fused add+norm,
generate(cg=True)) and transformers' MambaForCausalLM.

    python benchmarks/model_gpu.py [--sdists .whl] [--build-dir /tmp/mamba_ssm_build]
                                   [--json results/model_gpu.json] [--md results/model_gpu.md]

With ``--sdists``, mamba-ssm and causal-conv1d are built first (build_mamba_ssm.py; extensions already in
the build folder are reused). Shape: the 130M model (d_model 768, 24 layers, vocab 50280), training batch
8 x 1024 tokens, bf16 autocast over float32 weights, fused AdamW, the same float32 cross-entropy for all;
decoding in bf16 weights, a 16-token prompt and 256 new tokens. Each training measurement is the median of
timed steps after warm-up, taken in rounds that alternate the implementations; memory is the peak
allocated over a step, from a fresh allocator state (for a graphed step, over its capture and its steps).
"""

from __future__ import annotations

import argparse
import gc
import json
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.build_mamba_ssm import build, built, use_build
from mambadyn import MambaConfig, MambaLM
from mambadyn.train import GraphedTrainStep

D_MODEL, N_LAYER, VOCAB = 768, 24, 50280


def mambadyn_model(fused: bool = True):
    return MambaLM(MambaConfig(vocab_size=VOCAB, d_model=D_MODEL, n_layer=N_LAYER, fused=fused))


def mamba_ssm_model():
    from mamba_ssm.models.config_mamba import MambaConfig as MSConfig
    from mamba_ssm.models.mixer_seq_simple import MambaLMHeadModel

    cfg = MSConfig(d_model=D_MODEL, n_layer=N_LAYER, vocab_size=VOCAB, ssm_cfg={"layer": "Mamba1"},
                   rms_norm=True, residual_in_fp32=True, fused_add_norm=True)
    return MambaLMHeadModel(cfg)


def transformers_model():
    import transformers

    cfg = transformers.MambaConfig(vocab_size=VOCAB, hidden_size=D_MODEL, num_hidden_layers=N_LAYER,
                                   residual_in_fp32=True)
    return transformers.MambaForCausalLM(cfg)


def _logits(out):
    return out if isinstance(out, torch.Tensor) else out.logits


def _loss(model, x, y):
    return F.cross_entropy(_logits(model(x)).float().flatten(0, 1), y.flatten())


class Trainer:
    """One model, its optimizer and a fixed batch; ``step()`` runs one timed training step, eager or (with
    ``graphed``) replayed from a CUDA graph of the whole step (mambadyn.train.GraphedTrainStep)."""

    def __init__(self, make, batch: int, seq: int, graphed: bool = False):
        torch.manual_seed(0)
        self.model = make().cuda().train()
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, fused=True, capturable=graphed)
        ids = torch.randint(0, VOCAB, (batch, seq + 1), device="cuda")
        self.x, self.y = ids[:, :-1].contiguous(), ids[:, 1:].contiguous()
        self.graphed = GraphedTrainStep(self.model, self.opt, _loss, self.x, self.y) if graphed else None

    def step(self) -> float:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        if self.graphed is not None:
            self.graphed(self.x, self.y)
        else:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = _loss(self.model, self.x, self.y)
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            self.opt.step()
        torch.cuda.synchronize()
        return time.perf_counter() - t0


def train_rows(makers: dict, batch: int, seq: int, steps: int, rounds: int, warmup: int = 3) -> list[dict]:
    times = {name: [] for name in makers}
    memory, errors = {}, {}
    for r in range(rounds):
        for name, make in makers.items():
            if name in errors:
                continue
            gc.collect()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            try:
                make, graphed = make if isinstance(make, tuple) else (make, False)
                tr = Trainer(make, batch, seq, graphed)
                for _ in range(warmup if r == 0 else 1):
                    tr.step()
                if not graphed:  # a graph's memory is taken at capture: its peak counts from before it
                    torch.cuda.reset_peak_memory_stats()
                times[name] += [tr.step() for _ in range(steps)]
                memory[name] = max(memory.get(name, 0), torch.cuda.max_memory_allocated() - base)
            except torch.OutOfMemoryError as e:
                errors[name] = f"out of memory: {str(e).splitlines()[0]}"
            except Exception as e:  # noqa: BLE001 - a failing implementation is a reported row
                errors[name] = f"{type(e).__name__}: {e}"
            tr = None
    rows = []
    for name in makers:
        if name in errors:
            rows.append({"impl": name, "error": errors[name]})
            continue
        t = statistics.median(times[name])
        rows.append({"impl": name, "step_s": t, "tokens_per_s": batch * seq / t,
                     "peak_memory_gb": memory[name] / 1e9, "steps_timed": len(times[name])})
    return rows


def _mambadyn_decode(model, prompt, new, cuda_graph):
    return model.generate(prompt, max_new_tokens=new, temperature=0, cuda_graph=cuda_graph)


def _mamba_ssm_decode(model, prompt, new, cuda_graph):
    return model.generate(prompt, max_length=prompt.shape[1] + new, top_k=1, cg=cuda_graph)


def decode_rows(makers: dict, batches: list[int], prompt_len: int, new: int, reps: int) -> list[dict]:
    rows = []
    for name, (make, run, cuda_graph) in makers.items():
        gc.collect()
        torch.cuda.empty_cache()
        try:
            torch.manual_seed(0)
            model = make().cuda().to(torch.bfloat16).eval()
        except Exception as e:  # noqa: BLE001
            rows.append({"impl": name, "error": f"{type(e).__name__}: {e}"})
            continue
        for b in batches:
            prompt = torch.randint(0, VOCAB, (b, prompt_len), device="cuda")
            try:
                out = run(model, prompt, new, cuda_graph)  # warm-up: compiles, captures the graph
                assert out.shape == (b, prompt_len + new), out.shape
                ts = []
                for _ in range(reps):
                    torch.cuda.synchronize()
                    t0 = time.perf_counter()
                    run(model, prompt, new, cuda_graph)
                    torch.cuda.synchronize()
                    ts.append(time.perf_counter() - t0)
                t = statistics.median(ts)
                rows.append({"impl": name, "batch": b, "seconds": t, "tokens_per_s": b * new / t, "reps": reps})
            except Exception as e:  # noqa: BLE001
                rows.append({"impl": name, "batch": b, "error": f"{type(e).__name__}: {e}"})
        model = None
    return rows


def profile_step(make, batch: int, seq: int, top: int = 15) -> list[dict]:
    """The CUDA-time table of one training step: where the time goes."""
    from torch.profiler import ProfilerActivity, profile

    tr = Trainer(make, batch, seq)
    for _ in range(3):
        tr.step()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        tr.step()
    events = sorted(prof.key_averages(), key=lambda e: e.device_time_total, reverse=True)
    total = sum(e.self_device_time_total for e in events)
    return [{"name": e.key[:90], "calls": e.count, "self_ms": e.self_device_time_total / 1e3,
             "share": e.self_device_time_total / total} for e in sorted(
                 events, key=lambda e: e.self_device_time_total, reverse=True)[:top]]


def markdown(result: dict) -> str:
    lines = [f"# The whole model on {result['device']}", "",
             f"Command: `{result['command']}`. {result['shape']}", ""]
    train = result["train"]
    refs = {name: next((r for r in train if r["impl"] == name and "error" not in r), None)
            for name in ("mamba_ssm", "mamba_ssm graphed")}
    lines += ["## Training", "", ("Eager steps, then whole steps replayed from a CUDA graph (`GraphedTrainStep`); "
                                  "each is compared with mamba-ssm run the same way."), "",
              "| impl | step (ms) | tokens/s | vs mamba-ssm | peak memory (GB) |", "|---|---|---|---|---|"]
    for r in train:
        if "error" in r:
            lines.append(f"| {r['impl']} | — | — | — | {r['error'][:80]} |")
            continue
        ref = refs["mamba_ssm graphed" if r["impl"].endswith("graphed") else "mamba_ssm"]
        vs = f"{r['tokens_per_s'] / ref['tokens_per_s']:.2f}x" if ref else "—"
        lines.append(f"| {r['impl']} | {r['step_s'] * 1e3:.1f} | {r['tokens_per_s']:,.0f} | {vs} | "
                     f"{r['peak_memory_gb']:.2f} |")
    lines += ["", "## Greedy decoding (16-token prompt, 256 new tokens, bf16)", "",
              "| impl | batch | tokens/s | vs mamba-ssm cg |", "|---|---|---|---|"]
    for r in result["decode"]:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r.get('batch', '—')} | {r['error'][:80]} | — |")
            continue
        ms = next((x for x in result["decode"] if x["impl"] == "mamba_ssm cg" and x.get("batch") == r["batch"]
                   and "error" not in x), None)
        vs = f"{r['tokens_per_s'] / ms['tokens_per_s']:.2f}x" if ms else "—"
        lines.append(f"| {r['impl']} | {r['batch']} | {r['tokens_per_s']:,.0f} | {vs} |")
    if result.get("profile"):
        lines += ["", "## Where mambadyn's training step spends GPU time", "", "| kernel | calls | ms | share |",
                  "|---|---|---|---|"]
        lines += [f"| `{p['name']}` | {p['calls']} | {p['self_ms']:.2f} | {p['share']:.1%} |" for p in result["profile"]]
    if result.get("build"):
        lines += ["", "Build times (s): " + ", ".join(f"{k} {v:.0f}" for k, v in result["build"].items())]
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sdists", help="folder with the mamba_ssm and causal_conv1d sdists (build them first)")
    ap.add_argument("--build-dir", default="/tmp/mamba_ssm_build")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--seq", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5, help="timed training steps per implementation per round")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--decode-batches", default="1,64")
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--only", default="", help="comma-separated implementations to run (default: all)")
    ap.add_argument("--profile", action="store_true", help="also profile one mambadyn training step")
    ap.add_argument("--compiled", action="store_true",
                    help="also time mambadyn under torch.compile (its fused kernels as custom ops)")
    ap.add_argument("--json", default="results/model_gpu.json")
    ap.add_argument("--md", default="results/model_gpu.md")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("model_gpu.py needs CUDA")
    result = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "command": "python benchmarks/model_gpu.py " + " ".join(sys.argv[1:]),
              "shape": f"d_model {D_MODEL}, {N_LAYER} layers, vocab {VOCAB}; training batch {args.batch} x "
                       f"{args.seq}, bf16 autocast, fused AdamW; decoding bf16 weights."}
    if args.sdists:
        result["build"] = build(args.sdists, args.build_dir)
    have_ms = built(args.build_dir, "selective_scan_cuda") is not None
    if have_ms:
        use_build(args.build_dir)
    only = set(filter(None, args.only.split(",")))
    pick = (lambda d: {k: v for k, v in d.items() if not only or k.split(" ")[0] in only})

    def save():  # after each phase, so a run cut short keeps what it measured
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result, indent=2))
        Path(args.md).write_text(markdown(result))

    # eager steps (the comparison), then whole steps replayed from a CUDA graph. Last, on their own:
    # capturing mamba-ssm's step (a failed capture can leave the CUDA context unusable) and transformers'
    # step, the slowest
    train = {"mambadyn": mambadyn_model, "mambadyn per-op": lambda: mambadyn_model(fused=False)}
    if have_ms:
        train["mamba_ssm"] = mamba_ssm_model
    train["mambadyn graphed"] = (mambadyn_model, True)
    if args.compiled:
        train["mambadyn compiled"] = lambda: torch.compile(mambadyn_model())
    result["train"] = train_rows(pick(train), args.batch, args.seq, args.steps, args.rounds)
    result["decode"] = []
    save()
    decode = {"mambadyn": (mambadyn_model, _mambadyn_decode, True)}
    if have_ms:
        decode["mamba_ssm cg"] = (mamba_ssm_model, _mamba_ssm_decode, True)
    result["decode"] = decode_rows(pick(decode), [int(b) for b in args.decode_batches.split(",")], 16,
                                   args.new_tokens, args.reps)
    save()
    if args.profile:
        result["profile"] = profile_step(mambadyn_model, args.batch, args.seq)
        save()
    last = {"mamba_ssm graphed": (mamba_ssm_model, True)} if have_ms else {}
    last["transformers"] = transformers_model
    for name, make in pick(last).items():
        result["train"] += train_rows({name: make}, args.batch, args.seq, args.steps, 1)
        save()
    print(markdown(result))

if __name__ == "__main__":
    main()
