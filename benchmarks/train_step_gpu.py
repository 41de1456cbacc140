"""Training-step time on GPU with each scan backend (Triton kernel vs chunked PyTorch), side by side.

    python benchmarks/train_step_gpu.py [--json results/train_step_gpu.json]

Models: the scenario experiment's GPU LM (d_model 384, 6 layers, batch 32 x 256) and the reorder
experiment's classifier (d_model 128, 4 bidirectional layers, batch 128 of 49 patches). bf16 autocast,
AdamW step included. Median of timed steps after warm-up.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time

import torch

from mambadyn import ClassifierConfig, MambaClassifier, MambaConfig, MambaLM


def step_time(model, batch, loss_fn, steps=20, warmup=5):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = []
    for i in range(warmup + steps):
        x, y = batch()
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = loss_fn(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", default="results/train_step_gpu.json")
    args = ap.parse_args()
    if not torch.cuda.is_available():
        sys.exit("train_step_gpu.py needs CUDA")
    dev = "cuda"
    ce = torch.nn.functional.cross_entropy
    rows = []
    for backend in ("triton", "chunked"):
        torch.manual_seed(0)
        fused = backend == "triton"  # the chunked scan runs on the per-op path
        lm = MambaLM(MambaConfig(vocab_size=65, d_model=384, n_layer=6, scan_backend=backend, fused=fused)).to(dev)

        def lm_batch():
            ids = torch.randint(0, 65, (32, 257), device=dev)
            return ids[:, :-1], ids[:, 1:]

        t = step_time(lm, lm_batch, lambda logits, y: ce(logits.float().flatten(0, 1), y.flatten()))
        rows.append({"model": "MambaLM d384 x6, 32x256 tokens", "backend": backend, "seconds": t})
        clf = MambaClassifier(ClassifierConfig(d_model=128, n_layer=4, patch_size=4, scan_backend=backend,
                                               fused=fused)).to(dev)

        def img_batch():
            return torch.randn(128, 1, 28, 28, device=dev), torch.randint(0, 10, (128,), device=dev)

        t = step_time(clf, img_batch, lambda logits, y: ce(logits.float(), y))
        rows.append({"model": "MambaClassifier d128 x4, 128 images", "backend": backend, "seconds": t})
    for name, kw in (("soft", {}), ("hard", {"reorder_hard": True})):  # reordering overhead, kernel on
        torch.manual_seed(0)
        clf = MambaClassifier(ClassifierConfig(d_model=128, n_layer=4, patch_size=4, reorder_layers=[0],
                                               **kw)).to(dev)
        t = step_time(clf, img_batch, lambda logits, y: ce(logits.float(), y))
        rows.append({"model": f"MambaClassifier d128 x4, 128 images, reorder {name}", "backend": "triton",
                     "seconds": t})
    for r in rows:
        plain = r["model"].split(", reorder")[0]
        base = next(x["seconds"] for x in rows if x["model"] == plain and x["backend"] == "triton")
        r["vs_triton"] = r["seconds"] / base
        print(f"{r['model']:<55} {r['backend']:<8} {r['seconds'] * 1e3:8.2f} ms  {r['vs_triton']:.2f}x")
    with open(args.json, "w") as f:
        json.dump({"device": torch.cuda.get_device_name(), "command": "python benchmarks/train_step_gpu.py",
                   "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
