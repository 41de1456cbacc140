"""Train small transformers models of three selective-SSM families on WikiText-2 and probe each: Mamba-2 LMs
with the eigen modes free / positive / negative (transformers' Mamba2ForCausalLM, constrained per group by
``mambadyn.constrain_eigenvalues``), a FalconMamba-shaped LM and a Zamba2-shaped hybrid (Mamba-2 layers and a
shared attention block), all with one recipe.

    python benchmarks/probe_families.py --shared ../shared/data --out OUT [--steps 300] [--d-model 128]
        [--layers 4] [--seq-len 256] [--batch 16] [--windows 4] [--window-len 512] [--only mamba2-free,...]
        [--untrained falcon_mamba] [--steps-for falcon_mamba=300] [--device cpu|cuda]

The data are the offline WikiText-2 files as the paper-claims runs use them (``paper_claims_gpu.prepare``):
validation text trains, the test text is split at an article boundary into validation and test; a byte-level
BPE of 4096 tokens is trained on the training text. Each model is trained with AdamW (lr 2e-3, 30 warm-up
steps, cosine to 10%), saved with ``save_pretrained`` under OUT/runs/NAME (a rerun skips a model already
saved) and probed on the test split over ``--windows`` disjoint windows, with the hidden attention of its
first and last SSM layers. Writes OUT/NAME/ (probe.json,
report.md, figures), OUT/summary.json and OUT/table.md (the table a results README shows, made from the probes
as written), and prints a line per model."""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import torch

FAMILIES = ("mamba2-free", "mamba2-positive", "mamba2-negative", "falcon_mamba", "zamba2")


def config(name: str, vocab: int, d: int, layers: int):
    """The transformers config of one model: every family at width d, state 16, ``layers`` SSM layers."""
    import transformers as T

    if name.startswith("mamba2"):
        return T.Mamba2Config(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, state_size=16,
                              num_heads=2 * d // 32, head_dim=32, n_groups=2, expand=2, chunk_size=64,
                              tie_word_embeddings=True)
    if name == "falcon_mamba":
        return T.FalconMambaConfig(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, state_size=16,
                                   tie_word_embeddings=True)
    if name == "zamba2":
        # a hybrid every third layer: the shared attention block before the Mamba-2 layer
        kinds = ["hybrid" if i % 3 == 1 else "mamba" for i in range(layers)]
        return T.Zamba2Config(vocab_size=vocab, hidden_size=d, num_hidden_layers=layers, mamba_d_state=16,
                              mamba_headdim=32, mamba_ngroups=1, n_mamba_heads=2 * d // 32, num_attention_heads=4,
                              num_key_value_heads=4, attention_head_dim=d // 2, intermediate_size=2 * d,
                              layers_block_type=kinds, use_mem_rope=False, chunk_size=64, tie_word_embeddings=True)
    raise KeyError(f"unknown model {name!r}; choose from {', '.join(FAMILIES)}")


def batches(ids: torch.Tensor, seq_len: int, batch: int, generator: torch.Generator):
    while True:
        start = torch.randint(0, len(ids) - seq_len - 1, (batch,), generator=generator)
        yield torch.stack([ids[s:s + seq_len] for s in start.tolist()])


def lr_at(step: int, steps: int, lr: float, warmup: int = 30) -> float:
    if step < warmup:
        return lr * (step + 1) / warmup
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, steps - warmup))))


@torch.no_grad()
def evaluate(model, ids: torch.Tensor, seq_len: int, device: str, max_batches: int = 20) -> float:
    model.eval()
    n = min(max_batches * 8, (len(ids) - 1) // seq_len)
    chunks = ids[:n * seq_len].view(n, seq_len)
    losses = [float(model(c.to(device), labels=c.to(device)).loss) for c in chunks.split(8)]
    model.train()
    return sum(losses) / len(losses)


def train_one(name: str, splits, args) -> tuple[object, dict]:
    import transformers

    from mambadyn.refine import bake, constrain_eigenvalues

    folder = args.out / "runs" / name
    if (folder / "train.json").is_file():  # written last: trained and saved in an earlier run, probe it again
        model = transformers.AutoModelForCausalLM.from_pretrained(folder).to(args.device)
        return model, json.loads((folder / "train.json").read_text())
    torch.manual_seed(args.seed)
    model = transformers.AutoModelForCausalLM.from_config(config(name, splits.vocab_size, args.d_model,
                                                                  args.layers)).to(args.device)
    if name.startswith("mamba2-") and name != "mamba2-free":
        constrain_eigenvalues(model, name.split("-")[1])
    steps = 0 if name in args.untrained.split(",") else args.steps_for.get(name, args.steps)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    data = batches(splits.train, args.seq_len, args.batch, torch.Generator().manual_seed(args.seed))
    t0, losses = time.perf_counter(), []
    for step in range(steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step, steps, args.lr)
        x = next(data).to(args.device)
        loss = model(x, labels=x).loss
        if not torch.isfinite(loss):
            raise FloatingPointError(f"{name}: loss {float(loss)} at step {step}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss))
        if step % 50 == 0 or step == steps - 1:
            print(f"{name:16s} step {step:4d} loss {loss.item():.3f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    rec = {"steps": steps, "train_s": time.perf_counter() - t0,
           "final_train_loss": sum(losses[-20:]) / len(losses[-20:]) if losses else None,
           "val_loss": evaluate(model, splits.val, args.seq_len, args.device),
           "parameters": sum(p.numel() for p in model.parameters())}
    bake(model).save_pretrained(folder)  # the constrained weights as plain tensors, which from_pretrained reads
    splits.tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "train.json").write_text(json.dumps(rec, indent=1))
    return model, rec


def table(out: Path, summary: dict) -> str:
    """One markdown row per model probed under ``out``, read back from its probe.json and training record."""
    from mambadyn.probe.report import half_mass

    def pair(xs, fmt):
        return f"{fmt.format(xs[0])} -> {fmt.format(xs[-1])}"

    rows = ["| model | steps | validation loss | + / - / complex pairs (first two SSM units) | symmetric part forced "
            "| median residual norm, embedding -> last | top-10% gradient share, first -> last | cosine to the first "
            "token, embedding -> last | half-mass distance (first, last SSM layer) | mass on the first token |",
            "|" + "---|" * 10]
    probes = {name: json.loads((out / name / "probe.json").read_text()) for name in summary}
    for name, rec in summary.items():
        d = probes[name]
        signs = ", ".join(f"+{lp['positive']}/-{lp['negative']}/{lp['complex_pairs']}" for lp in d["layers"][:2])
        forced = sum(bool(lp["symmetric_forced"]) for lp in d["layers"])
        tok = d["tokens"]
        norms = [statistics.median(n) for n in (tok["residual_norms"][0], tok["residual_norms"][-1])]
        cos = [c["cosine_to_first"] for c in tok["clustering"]]
        att = d["attention"]
        rows.append(f"| {name} | {rec['steps']} | {rec['val_loss']:.3f} | {signs} | {forced} of {len(d['layers'])} | "
                    f"{pair(norms, '{:.3g}')} | {pair(tok['grad_share_top10pct'], '{:.3f}')} | {pair(cos, '{:.3f}')} | "
                    + ", ".join(str(half_mass(a["distance_profile"])) for a in att) + " | "
                    + ", ".join(f"{a['first_token_mass']:.2g}" for a in att) + " |")
    odes = []
    for name, d in probes.items():
        w = d.get("windows") or {}
        for k, v in (w.get("ode") or {}).items():
            cells = [f"{m} {q}: " + ("n/a" if not (v.get(m) or {}).get(q) or v[m][q]["mean"] is None
                                     else f"{v[m][q]['mean']:.2f} (n={v[m][q]['n']})")
                     for m in ("paper", "normalised") for q in ("agreement", "spearman")]
            odes.append(f"- {name}, layer {k}: " + "; ".join(cells))
    if odes:
        rows += ["", "Layer ODE against the stack over windows (norm-direction agreement and Spearman of predicted "
                 "with observed growth; n = windows where the measure is defined):", ""] + odes
    return "\n".join(rows) + "\n"


def main() -> None:
    from mambadyn.probe import ProbeConfig, probe_windows, write_outputs

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shared", type=Path, required=True, help="the folder holding wikitext-2-tokenized-valid-test/")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", default=",".join(FAMILIES))
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--d-model", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--windows", type=int, default=4)
    ap.add_argument("--window-len", type=int, default=512)
    ap.add_argument("--untrained", default="", help="models probed at their initialisation (transformers' "
                    "FalconMamba runs a per-position Python scan without mamba-ssm: 39 s a step on 2 CPU cores)")
    ap.add_argument("--steps-for", default="", help="other step counts per model, e.g. falcon_mamba=300")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    try:
        args.steps_for = {k: int(v) for k, v in (kv.split("=") for kv in args.steps_for.split(",") if kv)}
    except ValueError:
        ap.error(f"--steps-for takes NAME=STEPS,..., got {args.steps_for!r}")
    from mambadyn.errors import OutputError
    from mambadyn.outputs import claim_folder

    # a new or empty folder, or one this script wrote before (it resumes there); anything else is refused
    try:
        claim_folder(args.out, "benchmarks/probe_families.py")
    except OutputError as e:
        ap.error(str(e))
    from paper_claims_gpu import prepare  # the same split the paper-claims runs used

    from mambadyn.data import load_text

    data = args.out / "data"
    if not (data / "wikitext-2" / "test.txt").is_file():
        prepare(args.shared, data, fashion=False)
    wt = data / "wikitext-2"
    splits = load_text(wt / "train.txt", tokenizer="bpe", vocab_size=4096, val_path=wt / "val.txt",
                       test_path=wt / "test.txt")
    summary_path = args.out / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    for name in args.only.split(","):
        model, rec = train_one(name, splits, args)
        t0 = time.perf_counter()
        # hidden attention of the first and last SSM layer: every family here has --layers SSM layers
        cfg = ProbeConfig(progress=False, ode_positions=16, attention_layers=[0, args.layers - 1])
        result = probe_windows(model, splits.test, cfg, windows=args.windows, window_len=args.window_len)
        rec = {**rec, "probe_s": time.perf_counter() - t0}
        write_outputs(result, args.out / name)
        layers = result.layers
        rec["family"] = result.source["family"]
        rec["layer_kinds"] = result.source["layer_kinds"]
        rec["signs"] = [[lp.positive, lp.negative, lp.complex_pairs] for lp in layers]
        rec["scenarios"] = {s: sum(lp.scenario == s for lp in layers) for s in sorted({lp.scenario for lp in layers})}
        norms = result.tokens.residual_norms
        rec["median_norm_first_last"] = [float(torch.tensor(norms[0]).median()), float(torch.tensor(norms[-1]).median())]
        summary[name] = rec
        summary_path.write_text(json.dumps(summary, indent=1))  # after each model: nothing lost
        (args.out / "table.md").write_text(table(args.out, summary))
        print(f"{name:16s} val {rec['val_loss']:.3f}  train {rec['train_s']:6.1f} s  probe {rec['probe_s']:6.1f} s  "
              f"signs {rec['signs'][:2]}...  scenarios {rec['scenarios']}", flush=True)


if __name__ == "__main__":
    main()
