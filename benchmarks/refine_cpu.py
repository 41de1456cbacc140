"""CPU cost of the refinements: forward+backward time of each eigen mode and of token reordering
against the plain model, measured side by side in one run.

    python benchmarks/refine_cpu.py [--repeats 7] [--json results/refine_cpu.json]

Eigen modes are timed on a MambaLM (d_model 256, 4 layers, batch 4 x 256 tokens); reordering on a
MambaClassifier (Fashion-MNIST size, 49 patches, batch 32) with soft and hard SoftSort in layer 0.
Prints a table of median times and overhead ratios, and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import torch

from mambadyn import ClassifierConfig, MambaClassifier, MambaConfig, MambaLM


def time_round_robin(models, make_batch, loss_fn, repeats):
    """Median fwd+bwd seconds per model; the models take turns so drifts in machine load hit all alike."""
    times = {name: [] for name in models}
    for i in range(repeats + 1):  # round 0 is warm-up
        x, y = make_batch()
        for name, model in models.items():
            t0 = time.perf_counter()
            loss_fn(model(x), y).backward()
            if i:
                times[name].append(time.perf_counter() - t0)
            model.zero_grad(set_to_none=True)
    return {name: statistics.median(t) for name, t in times.items()}


def lm_rows(repeats):
    g = torch.Generator().manual_seed(0)

    def batch():
        ids = torch.randint(0, 256, (4, 257), generator=g)
        return ids[:, :-1], ids[:, 1:]

    def loss(logits, y):
        return torch.nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten())

    models = {}
    for mode in ("free", "positive", "negative", "mixed"):
        torch.manual_seed(0)
        models[f"eigen_mode={mode}"] = MambaLM(MambaConfig(vocab_size=256, d_model=256, n_layer=4, eigen_mode=mode))
    return [{"model": "MambaLM", "variant": k, "seconds": v}
            for k, v in time_round_robin(models, batch, loss, repeats).items()]


def classifier_rows(repeats):
    g = torch.Generator().manual_seed(0)

    def batch():
        return torch.randn(32, 1, 28, 28, generator=g), torch.randint(0, 10, (32,), generator=g)

    variants = {"plain": {}, "reorder soft (layer 0)": dict(reorder_layers=[0]),
                "reorder hard (layer 0)": dict(reorder_layers=[0], reorder_hard=True),
                "eigen_mode=positive": dict(eigen_mode="positive")}
    models = {}
    for name, kw in variants.items():
        torch.manual_seed(0)
        models[name] = MambaClassifier(ClassifierConfig(d_model=128, n_layer=4, patch_size=4, **kw))
    return [{"model": "MambaClassifier", "variant": k, "seconds": v}
            for k, v in time_round_robin(models, batch, torch.nn.functional.cross_entropy, repeats).items()]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json", default="results/refine_cpu.json")
    args = ap.parse_args()
    rows = lm_rows(args.repeats) + classifier_rows(args.repeats)
    base = {r["model"]: r["seconds"] for r in rows if r["variant"] in ("eigen_mode=free", "plain")}
    print(f"{'model':<16} {'variant':<24} {'fwd+bwd (s)':>11} {'vs plain':>9}")
    for r in rows:
        r["ratio_vs_plain"] = r["seconds"] / base[r["model"]]
        print(f"{r['model']:<16} {r['variant']:<24} {r['seconds']:>11.4f} {r['ratio_vs_plain']:>8.3f}x")
    out = {"command": "python benchmarks/refine_cpu.py --repeats %d" % args.repeats, "torch": torch.__version__,
           "threads": torch.get_num_threads(), "machine": platform.processor() or platform.machine(), "rows": rows}
    with open(args.json, "w") as f:
        json.dump(out, f, indent=2)
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
