"""Time the whole probe (spectra, token norms, gradients, Δ statistics; the ODE of up to 8 layers where the
family has one) on large random-weight models on one GPU: a 2.8B-shaped Mamba-1 (mambadyn's MambaLM,
d_model 2560, 64 layers) and a 2.7B-shaped Mamba-2 (transformers' Mamba2ForCausalLM, d_model 2560, 64
layers, 80 heads of 64, state 128), on 2048 tokens.

    python benchmarks/probe_large_gpu.py [--tokens 2048] [--only mamba1,mamba2] [--out results/probe_large_gpu.json]
        [--layers 64] [--d-model 2560] [--activations auto|keep|offload|recompute] [--profile 25]
        (smaller values: a smoke run on a CPU)

Prints one line per model (probe seconds, first run, after a warm-up probe of a 2-layer model of the same
family) and writes JSON: a rerun replaces the lines of the models it runs and keeps the others; a file that is
not such a JSON is refused. ``--activations``: where the backward pass's activations wait: on the GPU
(keep), in CPU memory (offload, ``ProbeConfig.offload_activations``), or nowhere, each layer rerun in the
backward pass (recompute, ``ProbeConfig.recompute_layers``); auto recomputes the Mamba-2 layers only (their
reference scan's activations exceed an H100 at L = 2048) and keeps Mamba-1's. ``--profile N`` also prints the N functions with the most cumulative time
(cProfile; the probe synchronises where it copies to the CPU, so the GPU's time lands on those copies) and
keeps them in the JSON, to show where the time goes."""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time
from pathlib import Path

import torch


def mamba1(n_layer: int, d_model: int):
    from mambadyn.nn import MambaConfig, MambaLM

    return MambaLM(MambaConfig(vocab_size=50280, d_model=d_model, n_layer=n_layer))


def mamba2(n_layer: int, d_model: int):
    import transformers

    cfg = transformers.Mamba2Config(vocab_size=50280, hidden_size=d_model, num_hidden_layers=n_layer, state_size=128,
                                    num_heads=2 * d_model // 64, head_dim=64, n_groups=1, expand=2, chunk_size=256)
    return transformers.Mamba2ForCausalLM(cfg)


def main() -> None:
    from mambadyn.jsonio import write_json
    from mambadyn.probe import ProbeConfig, probe

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokens", type=int, default=2048)
    ap.add_argument("--only", default="mamba1,mamba2")
    ap.add_argument("--out", default="results/probe_large_gpu.json")
    ap.add_argument("--layers", type=int, default=64)
    ap.add_argument("--d-model", type=int, default=2560)
    ap.add_argument("--activations", choices=("auto", "keep", "offload", "recompute"), default="auto")
    ap.add_argument("--profile", type=int, default=0, metavar="N")
    args = ap.parse_args()
    builders = {"mamba1": mamba1, "mamba2": mamba2}
    names = args.only.split(",")
    if unknown := [n for n in names if n not in builders]:
        ap.error(f"--only: unknown model(s) {unknown}; choose from {', '.join(builders)}")
    if min(args.tokens, args.layers, args.d_model) < 1 or args.profile < 0:
        ap.error("--tokens, --layers and --d-model must be >= 1 and --profile >= 0")
    out = Path(args.out)
    try:  # before any work: a run takes minutes, and --out may hold someone's file
        rows = _earlier_rows(out)
    except ValueError as e:
        ap.error(str(e))
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    ids = torch.randint(0, 50280, (args.tokens,), generator=torch.Generator().manual_seed(0))
    for name in names:
        build = builders[name]
        torch.manual_seed(0)
        with torch.device(dev):  # initialised where it runs: 2.7B parameters take minutes to initialise on a CPU
            small = build(2, args.d_model)
        probe(small, ids[:64], ProbeConfig(progress=False))  # warm-up: kernels compile, caches fill
        del small
        t0 = time.perf_counter()
        with torch.device(dev):
            model = build(args.layers, args.d_model)
        build_s = time.perf_counter() - t0
        if dev == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        # the Mamba-2 reference scan's saved activations exceed an H100's memory at L = 2048 (out of memory in
        # session 17)
        where = args.activations if args.activations != "auto" else "recompute" if name == "mamba2" else "keep"
        cfg = ProbeConfig(progress=False, offload_activations=where == "offload",
                          recompute_layers=where == "recompute")
        profiler = cProfile.Profile() if args.profile else None
        if profiler:
            profiler.enable()
        result = probe(model, ids, cfg)
        if dev == "cuda":
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        top = _top(profiler, args.profile) if profiler else None
        peak = torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else None
        rows = [r for r in rows if r["model"] != name]  # a rerun replaces the model's line, keeps the others
        rows.append({"model": name, "device": torch.cuda.get_device_name() if dev == "cuda" else "cpu",
                     "tokens": args.tokens, "d_model": args.d_model, "activations": where, "probe_s": dt, "build_s": build_s, "peak_gib": peak, "layers": len(result.layers),
                     "ode_layers": len(result.ode), "torch": torch.__version__,
                     "transformers": _version("transformers"),
                     # without them transformers' Mamba-2 runs its PyTorch reference scan, and says so
                     "mamba_ssm": _version("mamba_ssm"), "causal_conv1d": _version("causal_conv1d"),
                     **({"profile_top": top} if top else {})})
        print(f"{name:8s} {rows[-1]['device']}: probe {dt:6.1f} s on {args.tokens} tokens, peak {peak or float('nan'):.1f} GiB, "
              f"{len(result.layers)} spectra, {len(result.ode)} layer ODEs", flush=True)
        for row in top or []:
            print(f"    {row['cumulative_s']:8.2f} s  {row['calls']:7d} calls  {row['function']}")
        write_json(out, rows)  # after each model: a run stopped at a limit keeps what it measured
        del model, result
        if dev == "cuda":
            torch.cuda.empty_cache()


def _earlier_rows(out: Path) -> list[dict]:
    """The rows an earlier run wrote to ``out`` (none if it does not exist); anything else there is refused."""
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder: give a .json file path")
    if not out.parent.is_dir():
        raise ValueError(f"--out {out}: its folder {out.parent} does not exist")
    if not out.exists():
        return []
    try:
        rows = json.loads(out.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError):
        rows = None
    if not (isinstance(rows, list) and all(isinstance(r, dict) and "model" in r for r in rows)):
        raise ValueError(f"--out {out} exists and is not this benchmark's JSON (a list of rows with a 'model'): "
                         "give another path (nothing was changed)")
    return rows


def _top(profiler: cProfile.Profile, n: int) -> list[dict]:
    """The n functions with the most cumulative time, as JSON rows."""
    profiler.disable()
    stats = pstats.Stats(profiler)
    rows = sorted(stats.stats.items(), key=lambda kv: kv[1][3], reverse=True)[:n]  # (cc, nc, tt, ct, callers)
    return [{"function": f"{Path(file).name}:{line}({func})", "calls": nc, "own_s": round(tt, 3),
             "cumulative_s": round(ct, 3)} for (file, line, func), (cc, nc, tt, ct, _) in rows]


def _version(package: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(package)
    except PackageNotFoundError:
        return None


if __name__ == "__main__":
    main()
