"""GPU selective-scan timings, side by side in one run, against the memory/exp floor.

    python benchmarks/scan_gpu.py [--batch 8,1] [--L 512,2048,8192] [--dtypes bfloat16,float32] [--overhead]
                                  [--mamba-ssm-build /tmp/mamba_ssm_build] [--json ...] [--md ...]
    python benchmarks/scan_gpu.py --sweep --grid '{"bwd_block_d": [2, 4], "bwd_chunk": [64, 128]}'
                                  --sweep-L 512,2048 --sweep-dtypes bfloat16,float32 --impls triton

Implementations: mambadyn's Triton kernel, mambadyn's chunked PyTorch scan, mambapy's pscan
(if importable: carry its wheel) and mamba-ssm's CUDA kernel (if built by build_mamba_ssm.py).
Shapes: batch 8 and 1, d 1536, n 16, z gate, D, delta_bias and softplus on, as in a Mamba-130m layer.
Batch 1 is where a per-channel kernel has the least parallelism to spread over the GPU.

The floor: the forward must read u, Δ, z (b·d·L each), B and C (b·n·L each) and write y (b·d·L),
and must evaluate b·d·L·n exponentials for exp(ΔA) plus four special functions per (b, d, t)
(softplus's exp and log, the gate's exp and reciprocal). Its time is max(bytes / measured copy
bandwidth, special functions / measured ex2 throughput). The fwd+bwd floor adds the backward's
reads (the forward's inputs and dy) and writes (du, dΔ, dz, dB, dC) and one more exp(ΔA) pass.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

from mambadyn.scan import selective_scan


def inputs(b, d, L, n, dtype, requires_grad):
    g = torch.Generator(device="cuda").manual_seed(0)
    kw = dict(device="cuda", generator=g)
    u = torch.randn(b, d, L, **kw).to(dtype)
    delta = (torch.randn(b, d, L, **kw) * 0.5 - 1.0).to(dtype)
    A = -torch.exp(torch.randn(d, n, **kw) * 0.5)
    B = torch.randn(b, n, L, **kw).to(dtype)
    C = torch.randn(b, n, L, **kw).to(dtype)
    D = torch.randn(d, **kw)
    z = torch.randn(b, d, L, **kw).to(dtype)
    bias = torch.randn(d, **kw) * 0.1
    xs = [u, delta, A, B, C, D, z, bias]
    return [x.requires_grad_(requires_grad) for x in xs]


def ours(backend, **opts):
    def run(u, delta, A, B, C, D, z, bias):
        return selective_scan(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True,
                              backend=backend, **opts)

    return run


def mambapy_scan():
    try:
        from mambapy.pscan import pscan
    except ImportError:
        return None

    def run(u, delta, A, B, C, D, z, bias):  # mambapy's MambaBlock.selective_scan, in our layout
        dl = torch.nn.functional.softplus(delta.float() + bias[:, None]).transpose(1, 2)  # (b, L, d)
        x = u.float().transpose(1, 2)
        dA = torch.exp(dl[..., None] * A)  # (b, L, d, n)
        BX = dl[..., None] * B.float().transpose(1, 2)[:, :, None, :] * x[..., None]
        hs = pscan(dA, BX)
        y = (hs @ C.float().transpose(1, 2)[..., None])[..., 0] + D * x
        return (y.transpose(1, 2) * torch.nn.functional.silu(z.float())).to(u.dtype)

    return run


def mamba_ssm_scan(build_dir):
    from benchmarks.build_mamba_ssm import built, use_build

    if not built(build_dir, "selective_scan_cuda"):
        return None, f"not built (no selective_scan_cuda*.so under {build_dir}: run build_mamba_ssm.py)"
    use_build(build_dir)
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception as e:  # noqa: BLE001 - report whatever stopped it
        return None, f"import failed: {type(e).__name__}: {e}"

    def run(u, delta, A, B, C, D, z, bias):
        return selective_scan_fn(u, delta, A, B, C, D=D, z=z, delta_bias=bias, delta_softplus=True)

    return run, None


def bench(fn, xs, backward):
    if backward:
        dy = torch.randn_like(xs[0])

        def step():
            for x in xs:
                x.grad = None
            fn(*xs).backward(dy)
    else:
        def step():
            with torch.no_grad():
                fn(*xs)
    step()
    torch.cuda.synchronize()
    return do_bench(step, warmup=5, rep=200, return_mode="median")  # ms


def call_overhead_us(fn, n, backward, calls=300):
    """Wall time per forward (or forward and backward) call on tiny inputs (batch 1, d 64, L 64),
    synchronizing only at the end: what one call costs the CPU, which bounds short sequences and small
    batches."""
    xs = inputs(1, 64, 64, n, torch.bfloat16, backward)
    dy = torch.randn_like(xs[0])

    def call():
        if backward:
            fn(*xs).backward(dy)
        else:
            with torch.no_grad():
                fn(*xs)

    for _ in range(20):
        call()
    return per_call_us(call, calls)


def per_call_us(fn, calls: int) -> float:
    """Wall time per call of ``fn`` over ``calls`` calls, synchronizing the GPU only before and after."""
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - t) / calls * 1e6


@triton.jit
def _ex2_kernel(x_ptr, ITERS: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(x_ptr + offs)
    for _ in range(ITERS):
        x = tl.exp2(x * -0.5)  # stays in (0, 1]: no overflow, no constant folding
    tl.store(x_ptr + offs, x)


def machine_limits():
    """Measured copy bandwidth (bytes read + written per second) and ex2 throughput (per second)."""
    src = torch.empty(1 << 30, device="cuda", dtype=torch.uint8)
    dst = torch.empty_like(src)
    ms = do_bench(lambda: dst.copy_(src), warmup=5, rep=200, return_mode="median")
    bandwidth = 2 * src.numel() / (ms * 1e-3)
    x = torch.rand(132 * 64 * 1024, device="cuda")
    iters = 256
    ms = do_bench(lambda: _ex2_kernel[(x.numel() // 1024,)](x, ITERS=iters, BLOCK=1024), warmup=5, rep=200,
                  return_mode="median")
    return bandwidth, x.numel() * iters / (ms * 1e-3)


def floor_ms(b, d, L, n, es, bandwidth, ex2_rate, backward):
    big, small = b * d * L, b * n * L
    bytes_ = (4 * big + 2 * small) * es
    special = big * (n + 4)
    if backward:
        bytes_ += (4 * big + 2 * small) * es + (3 * big + 2 * small) * es  # re-read inputs + dy; write grads
        special += big * (n + 4)
    return 1e3 * max(bytes_ / bandwidth, special / ex2_rate), bytes_, special


def markdown(out: dict) -> str:
    """The table of a run's JSON (``out``) as Markdown."""
    rows = out["rows"]
    shape = f"d {rows[0]['d']}, n {rows[0]['n']}; z, D, bias, softplus on"
    lines = [f"# Selective scan on {out['device']} ({shape})", "",
             f"Command: `{out['command']}`. Copy bandwidth {out['copy_bandwidth_Bps'] / 1e12:.2f} TB/s, ex2 "
             f"{out['ex2_per_s'] / 1e12:.2f} T/s (both measured in the same run). Times are medians (ms).", "",
             "| impl | batch | dtype | L | fwd | fwd / floor | fwd+bwd | fwd+bwd / floor | fwd+bwd vs Triton |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['impl']} | {r['batch']} | {r['dtype']} | {r['L']} | {r['error']} | | | | |")
            continue
        lines.append(f"| {r['impl']} | {r['batch']} | {r['dtype']} | {r['L']} | {r['fwd_ms']:.3f} "
                     f"| {r['fwd_ms'] / r['floor_fwd_ms']:.2f} | {r['fwd_bwd_ms']:.3f} "
                     f"| {r['fwd_bwd_ms'] / r['floor_fwd_bwd_ms']:.2f} "
                     f"| {r.get('fwd_bwd_vs_triton', float('nan')):.2f}x |")
    for name, us in out.get("call_overhead_us", {}).items():
        lines.append(f"\n{name}: one call on tiny inputs (batch 1, d 64, L 64, bf16) takes {us['fwd']:.1f} "
                     f"us (forward) and {us['fwd_bwd']:.1f} us (forward and backward) of wall time")
    for k, v in out["notes"].items():
        lines.append(f"\n{k}: {v}")
    return "\n".join(lines) + "\n"


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", default="8,1", help="batch sizes of the table (the sweep takes the first)")
    ap.add_argument("--d", type=int, default=1536)
    ap.add_argument("--n", type=int, default=16)
    ap.add_argument("--L", default="512,2048,8192")
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--impls", default="triton,chunked,mambapy,mamba_ssm")
    ap.add_argument("--mamba-ssm-build", default="/tmp/mamba_ssm_build")
    ap.add_argument("--sweep", action="store_true", help="time the kernel's options grid first")
    ap.add_argument("--grid", default='{"block_d": [2, 4, 8], "chunk": [64, 128, 256], "num_warps": [1, 2, 4]}',
                    help="the sweep's grid: JSON of option name -> values")
    ap.add_argument("--sweep-L", default="2048", help="sequence lengths of the sweep")
    ap.add_argument("--sweep-dtypes", default="bfloat16", help="input dtypes of the sweep")
    ap.add_argument("--opts", default="{}", help="kernel options (JSON) for the Triton rows of the table")
    ap.add_argument("--overhead", action="store_true", help="also time one call's CPU cost on tiny inputs")
    ap.add_argument("--json", default="results/scan_gpu.json")
    ap.add_argument("--md", default="results/scan_gpu.md")
    ap.add_argument("--render", metavar="JSON", help="only write --md from a run's JSON (no GPU needed)")
    args = ap.parse_args()
    if args.render:
        Path(args.md).write_text(markdown(json.loads(Path(args.render).read_text())))
        return
    if not torch.cuda.is_available():
        sys.exit("scan_gpu.py needs a CUDA device")
    bandwidth, ex2_rate = machine_limits()
    print(f"{torch.cuda.get_device_name()}: copy {bandwidth / 1e12:.2f} TB/s, ex2 {ex2_rate / 1e12:.2f} T/s")
    batches = [int(x) for x in args.batch.split(",")]
    b, d, n = batches[0], args.d, args.n
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "command": "python " + " ".join(sys.argv), "copy_bandwidth_Bps": bandwidth, "ex2_per_s": ex2_rate,
           "rows": [], "sweep": [], "notes": {}}

    if args.sweep:
        grid = json.loads(args.grid)
        for dtype, L in itertools.product(args.sweep_dtypes.split(","), map(int, args.sweep_L.split(","))):
            print(f"sweep ({dtype}, L={L}): {' '.join(grid)} fwd_ms fwdbwd_ms")
            xs = inputs(b, d, L, n, getattr(torch, dtype), True)
            for values in itertools.product(*grid.values()):
                opts = dict(zip(grid, values))
                label = " ".join(f"{v!s:>5}" for v in values)
                try:
                    f = bench(ours("triton", **opts), xs, False)
                    fb = bench(ours("triton", **opts), xs, True)
                except Exception as e:  # noqa: BLE001 - e.g. out of registers / shared memory
                    print(f"  {label} failed: {type(e).__name__}: {str(e)[:120]}")
                    continue
                out["sweep"].append({**opts, "dtype": dtype, "L": L, "fwd_ms": f, "fwd_bwd_ms": fb})
                print(f"  {label} {f:8.3f} {fb:8.3f}")
            del xs

    impls = {"triton": ours("triton", **json.loads(args.opts)), "chunked": ours("chunked")}
    mp = mambapy_scan()
    if mp is not None:
        impls["mambapy"] = mp
    else:
        out["notes"]["mambapy"] = "not importable (carry its wheel)"
    ms_fn, why = mamba_ssm_scan(args.mamba_ssm_build)
    if ms_fn is not None:
        impls["mamba_ssm"] = ms_fn
    else:
        out["notes"]["mamba_ssm"] = why
    impls = {k: v for k, v in impls.items() if k in args.impls.split(",")}
    if args.overhead:
        out["call_overhead_us"] = {
            name: {"fwd": call_overhead_us(fn, n, False), "fwd_bwd": call_overhead_us(fn, n, True)}
            for name, fn in impls.items()}
        for name, us in out["call_overhead_us"].items():
            print(f"{name:<10} one call on tiny inputs: fwd {us['fwd']:7.1f} us, "
                  f"fwd+bwd {us['fwd_bwd']:7.1f} us")

    for b, dtype_name in itertools.product(batches, args.dtypes.split(",")):
        dtype = getattr(torch, dtype_name)
        for L in map(int, args.L.split(",")):
            xs = inputs(b, d, L, n, dtype, True)
            fl_f, bytes_f, sp_f = floor_ms(b, d, L, n, xs[0].element_size(), bandwidth, ex2_rate, False)
            fl_b, _, _ = floor_ms(b, d, L, n, xs[0].element_size(), bandwidth, ex2_rate, True)
            for name, fn in impls.items():
                row = {"impl": name, "dtype": dtype_name, "batch": b, "d": d, "L": L, "n": n,
                       "floor_fwd_ms": fl_f, "floor_fwd_bwd_ms": fl_b, "fwd_bytes": bytes_f, "fwd_special": sp_f}
                try:
                    row["fwd_ms"] = bench(fn, xs, False)
                    row["fwd_bwd_ms"] = bench(fn, xs, True)
                except torch.OutOfMemoryError:
                    row["error"] = "out of memory"
                torch.cuda.empty_cache()
                out["rows"].append(row)
                print(f"{name:<10} b={b:<2} {dtype_name:<9} L={L:<5} " + (
                    f"fwd {row['fwd_ms']:9.3f} ms ({row['fwd_ms'] / fl_f:5.2f}x floor)  "
                    f"fwd+bwd {row['fwd_bwd_ms']:9.3f} ms ({row['fwd_bwd_ms'] / fl_b:5.2f}x floor)"
                    if "error" not in row else row["error"]))
            for key in ("fwd_ms", "fwd_bwd_ms"):  # ratios to the kernel, side by side
                same = [r for r in out["rows"] if (r["batch"], r["dtype"], r["L"]) == (b, dtype_name, L) and key in r]
                tri = next((r for r in same if r["impl"] == "triton"), None)
                for r in same:
                    if tri:
                        r[key.replace("_ms", "_vs_triton")] = r[key] / tri[key]
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    Path(args.md).write_text(markdown(out))
    print(f"wrote {args.json} and {args.md}")


if __name__ == "__main__":
    main()
