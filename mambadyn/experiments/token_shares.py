"""Claim (c): tokens contribute unequally to the training updates, and a token's contribution is linked to
its growth through the depth (the paper's "because" is not testable here: an association is).

For each trained LM of a scenario experiment (one per seed) and the same architecture at its
initialisation (same seed: the control), on ``windows`` fixed test windows:

- the gradient share of each position at the stream entering the stack (layer 0, what each token's
  embedding receives), ``||dL/dh_0[p]|| / sum_p ||dL/dh_0[p]||``, from ``mambadyn.probe.trace_tokens``;
- its Gini coefficient per window (0: equal shares), averaged over windows;
- how much of that inequality is position alone: shares are divided by the mean share of their position
  over the windows, and the Gini of these relative shares is the inequality *between tokens* at a position;
- rho: the Spearman correlation, per window, between a token's growth through the depth (slope of
  log ||h_l[p]|| against l, relative to its position's mean) and its relative share, averaged over windows.

Tests over seeds (the trained models are the units): trained minus initial Gini between tokens (paired,
two-sided), and rho against 0 (one-sample, two-sided: the paper gives no sign, and the measured rho of the
committed runs is negative), Holm-adjusted as one family. Writes ``results.json``, ``report.md`` and
``shares.png``."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from scipy import stats
from tqdm.auto import tqdm

from ..jsonio import write_json
from ..outputs import atomic_folder
from ..plots.experiments import token_share_curves
from ..probe.shares import gini
from ..stats import holm, one_sample, paired, summarize
from ..typed import check_fields, positive


@dataclass
class TokenShareConfig:
    runs: str = "results/scenarios/runs"  # a scenario experiment's runs folder ({mode}-s{seed}/)
    modes: list[str] = field(default_factory=lambda: ["free"])
    windows: int = 32  # test windows (evenly spaced; the experiment's seq_len each)
    out: str = "results/token_shares"
    device: str = "auto"

    def __post_init__(self):
        check_fields(self)
        positive(self, "windows")
        if not Path(self.runs).is_dir():
            raise FileNotFoundError(f"runs folder {self.runs} does not exist (a scenario experiment's out/runs)")


def share_statistics(shares: torch.Tensor, growth: torch.Tensor) -> dict:
    """shares, growth (windows, L) -> Gini of the raw shares, Gini between tokens at a position (shares
    over their position's mean), and the Spearman rho of relative growth with relative share (means over
    windows)."""
    if shares.shape != growth.shape or shares.dim() != 2:
        raise ValueError(f"shares and growth must both be (windows, L), got {tuple(shares.shape)}, {tuple(growth.shape)}")
    shares, growth = shares.double(), growth.double()
    # a position no loss term reaches (the last: its prediction has no target) carries no share at all
    live = shares.mean(0) > 0
    rel = shares[:, live] / shares.mean(0, keepdim=True)[:, live]
    g = (growth - growth.mean(0, keepdim=True))[:, live]
    # a window whose shares (or growths) are all equal has no rank correlation; it is left out
    rhos = [stats.spearmanr(g[w].numpy(), rel[w].numpy()).statistic for w in range(len(shares))
            if rel[w].std() > 0 and g[w].std() > 0]
    return {"gini": gini(shares).mean().item(), "gini_between_tokens": gini(rel).mean().item(),
            "rho_growth_share": sum(rhos) / len(rhos) if rhos else float("nan"),
            "mean_share_by_position": shares.mean(0).tolist()}


def _measure(model, windows: torch.Tensor, device) -> dict:
    from ..probe.tokens import trace_tokens

    model = model.to(device).eval()
    shares, growth = [], []
    for ids in windows:
        t = trace_tokens(model, ids.to(device))
        shares.append(torch.tensor(t.grad_shares[0]))
        growth.append(torch.tensor(t.growth_per_layer))
    return share_statistics(torch.stack(shares), torch.stack(growth))


def _runs(cfg: TokenShareConfig) -> dict[str, list[tuple[int, Path, dict]]]:
    """Per mode, its finished runs as (seed, folder, stored config), the seed read from the run's own
    config.json (never from the folder's name); two runs with one seed and the same settings are refused."""
    found = {}
    for mode in cfg.modes:
        runs, seen = [], {}
        for f in sorted(Path(cfg.runs).glob(f"{mode}-s*")):
            if not (f / "model" / "config.json").is_file():
                continue
            stored_file = f / "config.json"
            try:
                stored = json.loads(stored_file.read_text())
                seed = int(stored["run"]["seed"])
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise ValueError(f"{stored_file} does not say the run's seed ({e}); is {f} a mambadyn run?") from None
            if seed in seen:
                raise ValueError(f"{f} and {seen[seed]} are both seed {seed} of mode {mode}: the same run twice would "
                                 "count as two seeds; remove one")
            seen[seed] = f
            runs.append((seed, f, stored))
        if not runs:
            raise FileNotFoundError(f"no finished {mode}-s* run under {cfg.runs}")
        found[mode] = sorted(runs, key=lambda r: r[0])
    return found


def run_token_shares(cfg: TokenShareConfig) -> dict:
    from ..nn import MambaLM
    from ..train.config import LMTrainConfig, from_dict
    from ..train.tasks import LMTask

    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if cfg.device == "auto" else cfg.device))
    results = {"config": asdict(cfg), "modes": {}}
    task_cache: dict[str, torch.Tensor] = {}
    for mode, runs in _runs(cfg).items():
        per = {"trained": {}, "init": {}}
        for seed, f, stored in tqdm(runs, desc=f"token shares ({mode})"):
            train_cfg = from_dict(LMTrainConfig, stored)
            key = json.dumps(asdict(train_cfg.data), sort_keys=True)
            if key not in task_cache:  # the same data (and tokenizer) for every run of the experiment
                task = LMTask(train_cfg)
                split = task.test or task.val
                x = torch.cat([xb for xb, _ in split.eval_batches(-(-cfg.windows // train_cfg.optim.batch_size))])
                task_cache[key] = x[: cfg.windows]
            windows = task_cache[key]
            trained = MambaLM.from_pretrained(f / "model")
            torch.manual_seed(seed)
            init = MambaLM(trained.config)
            per["trained"][seed] = _measure(trained, windows, device)
            per["init"][seed] = _measure(init, windows, device)
        results["modes"][mode] = _verdict(per)
    with atomic_folder(cfg.out, "experiment token-shares") as tmp:
        write_json(tmp / "results.json", results)
        token_share_curves(results, tmp / "shares.png")
        _report(results, tmp)
    return results


def _verdict(per: dict) -> dict:
    """The two tests of claim (c) over seeds, Holm-adjusted together."""
    seeds = list(per["trained"])
    between = {s: per["trained"][s]["gini_between_tokens"] for s in seeds}
    between0 = {s: per["init"][s]["gini_between_tokens"] for s in seeds}
    rho = [per["trained"][s]["rho_growth_share"] for s in seeds]
    vs_init, rho_test = paired(between, between0), one_sample(rho)
    vs_init.p_holm, rho_holm = holm([vs_init.p, rho_test.p])
    return {"seeds": seeds, "per_seed": per,
            "gini": asdict(summarize([per["trained"][s]["gini"] for s in seeds])),
            "gini_init": asdict(summarize([per["init"][s]["gini"] for s in seeds])),
            "gini_between_tokens": asdict(summarize(list(between.values()))),
            "gini_between_tokens_init": asdict(summarize(list(between0.values()))),
            "between_tokens_trained_minus_init": asdict(vs_init),
            "rho_growth_share": {**asdict(summarize(rho)), "p": rho_test.p, "p_holm": rho_holm}}


def _report(results: dict, out: Path) -> None:
    cfg = results["config"]
    lines = ["# Claim (c): do tokens contribute unequally to the updates?", "",
             f"Runs under `{cfg['runs']}`, {cfg['windows']} test windows per model; layer 0 gradient shares. "
             "Controls: the same architecture at initialisation, same seed. Tests over seeds, Holm over the two.", "",
             "| mode | n | Gini (trained) | Gini (init) | Gini between tokens (trained) | (init) | trained minus init "
             "[95% CI], p Holm | rho(growth, share) [95% CI], p Holm |", "|---|---|---|---|---|---|---|---|"]
    for mode, r in results["modes"].items():
        d, rho = r["between_tokens_trained_minus_init"], r["rho_growth_share"]

        def f(s):
            return f"{s['mean']:.3f} ± {s['std']:.3f}"
        lines.append(f"| {mode} | {len(r['seeds'])} | {f(r['gini'])} | {f(r['gini_init'])} | "
                     f"{f(r['gini_between_tokens'])} | {f(r['gini_between_tokens_init'])} | "
                     f"{d['mean_diff']:+.3f} [{d['ci95_low']:+.3f}, {d['ci95_high']:+.3f}], {d['p_holm']:.3g} | "
                     f"{rho['mean']:+.3f} [{rho['ci95_low']:+.3f}, {rho['ci95_high']:+.3f}], {rho['p_holm']:.3g} |")
    lines += ["", "![shares](shares.png)", ""]
    (out / "report.md").write_text("\n".join(lines))
