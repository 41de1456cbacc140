"""``mambadyn dynamics``: simulate the paper's scenarios, 2-D phase portraits, the phase diagram."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch
import typer

from ..errors import on_interrupt
from ..jsonio import write_json
from ..outputs import atomic_folder, check_output

KEPT = "nothing was written: --out is replaced only when the command finishes"

app = typer.Typer(help="Simulate and picture the continuous-time token dynamics.", no_args_is_help=True)


def _out(default: str, what: str):
    return typer.Option(Path(default), "--out", help=f"folder for the {what} (new, empty, or an earlier output of "
                        "the same command)")


MAX_HORIZON = 1e12  # where a portrait's run-until-decided loop stops growing its horizon


@app.command()
def scenarios(out: Path = _out("out/dynamics", "PNG, CSV and JSON outputs"), tokens: int = typer.Option(8, "--tokens", "-L", min=2),
              t_end: float = typer.Option(1e4, help="final time (continuous depth)"),
              seed: int = 0,
              norm: bool = typer.Option(False, "--norm", help="the normalised system: the update reads RMSNorm(x) "
                                        "(weight 1, eps 1e-5), as in a Mamba block")) -> None:
    """The 1-D scenarios: token norms against t, per-token fates (predicted and observed), blow-up times,
    the asymptotic constants."""
    from mambadyn.dynamics.scenarios import run_scenarios
    from mambadyn.plots.dynamics import trajectories

    if not math.isfinite(t_end) or t_end <= 0:
        raise typer.BadParameter(f"--t-end must be a finite time > 0, got {t_end}")
    check_output(out, "dynamics scenarios")
    runs = run_scenarios(tokens, t_end, seed, progress=True, norm=norm)
    summary = [r.row for r in runs.values()]
    with on_interrupt(KEPT), atomic_folder(out, "dynamics scenarios") as tmp:
        for name, r in runs.items():
            with open(tmp / f"trajectory_{name}.csv", "w", newline="") as f:
                csv.writer(f).writerows(r.table)
        trajectories({r.title: r.trajectory for r in runs.values()}, tmp / "scenarios.png")
        write_json(tmp / "scenarios.json", summary)
    for s in summary:
        typer.echo(f"{s['case']:22s} predicted {s['predicted']:16s} observed {s['observed']}")
    typer.echo(f"wrote {out / 'scenarios.png'}, {out / 'scenarios.json'} and trajectory_*.csv")


@app.command()
def portrait(out: Path = _out("out/portrait", "PNG and JSON outputs"), tokens: int = typer.Option(6, "--tokens", "-L", min=1),
             t_end: float = typer.Option(50.0, help="first horizon; runs 10x longer until every token's fate "
                                         "is decided"),
             horizon: float = typer.Option(1e5, help="the longest run"), seed: int = 0,
             norm: bool = typer.Option(False, "--norm", help="the normalised system: the update reads RMSNorm(x) "
                                       "(weight 1, eps 1e-5)")) -> None:
    """2-D phase portraits for S_C^T S_B with two positive, one positive and two negative eigenvalues.
    Each runs until every token has blown up, converges or stays (or the horizon)."""
    from mambadyn.dynamics import TokenSystem, classify
    from mambadyn.dynamics.outcome import describe_tokens
    from mambadyn.dynamics.simulation import simulate_until_decided
    from mambadyn.plots.dynamics import portraits

    if not 0 < t_end <= horizon:
        raise typer.BadParameter(f"need 0 < --t-end <= --horizon, got {t_end} and {horizon}")
    if not horizon <= MAX_HORIZON:
        raise typer.BadParameter(f"--horizon must be at most {MAX_HORIZON:g} (each 10x costs a longer run; "
                                 f"tokens still undecided there are reported as such), got {horizon}")
    check_output(out, "dynamics portrait")
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(2, 2, generator=g, dtype=torch.float64))
    S_delta = -torch.eye(2, dtype=torch.float64)  # S_Δ x < 0 where tokens start: the slow branch
    x0 = (0.3 + torch.rand(1, tokens, 2, generator=g, dtype=torch.float64)) * torch.tensor([1.0, 1.0])
    trajs, summary = {}, []
    for name, ev in (("two positive eigenvalues", (1.0, 0.5)), ("one positive eigenvalue", (1.0, -0.5)),
                     ("two negative eigenvalues", (-1.0, -0.5))):
        M = Q @ torch.diag(torch.tensor(ev, dtype=torch.float64)) @ Q.T  # S_C^T S_B with S_C = I
        system = TokenSystem.from_matrices(M, torch.eye(2), S_delta, a=1.0)
        if norm:
            system = system.with_norm(1.0, 1e-5)
        tr = simulate_until_decided(system, x0, t_end, horizon, n_points=300)
        c = classify(system, x0)[0]
        observed = tr.token_outcomes()[0]
        words = describe_tokens(observed, tr.blowup_time[0].tolist())
        trajs[f"{'normalised, ' if norm else ''}{name} {ev}, to t = {float(tr.t[-1]):g}\nobserved: {words}"] = tr
        summary.append({"case": name, "normalised": norm, "eigenvalues": ev, "t_end": float(tr.t[-1]),
                        "predicted": c.scenario.value, "prediction": c.reason,
                        "paper_conjecture": c.conjecture.value if c.conjecture else None,
                        "tokens_predicted": [f.outcome.value for f in c.tokens],
                        "tokens_observed": [o.value for o in observed], "observed": words,
                        "end_times": tr.blowup_time[0].tolist(), "final_norms": tr.norms()[-1, 0].tolist()})
    with on_interrupt(KEPT), atomic_folder(out, "dynamics portrait") as tmp:
        portraits(trajs, tmp / "portraits.png")
        write_json(tmp / "portraits.json", summary)
    for s in summary:
        typer.echo(f"{s['case']:26s} to t = {s['t_end']:<8g} observed: {s['observed']}")
    typer.echo(f"wrote {out / 'portraits.png'} and {out / 'portraits.json'}")


def _parse_dims(text: str) -> tuple[int, ...]:
    """"2-8" (a range) or "2,4,8" (a list) -> dimensions, each >= 1."""
    try:
        lo, sep, hi = text.partition("-")
        ds = tuple(range(int(lo), int(hi) + 1)) if sep else tuple(int(d) for d in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"--dims takes a range like 2-8 or a list like 2,4,8, got {text!r}") from None
    if not ds:
        raise typer.BadParameter(f"--dims {text!r} is an empty range (write the smaller dimension first)")
    if min(ds) < 1:
        raise typer.BadParameter(f"dimensions must be >= 1, got {text!r}")
    return ds


@app.command("phase-diagram")
def phase_diagram_cmd(out: Path = _out("out/phase-diagram", "PNG and JSON outputs"), systems: int = typer.Option(100, min=1, help="random systems per cell (D, k)"),
                      dims: str = typer.Option("2-6", help="dimensions, e.g. 2-6 or 2,4,8"),
                      tokens: int = typer.Option(4, "--tokens", "-L", min=1), t_end: float = 1000.0,
                      max_steps: int = typer.Option(4000, min=1, help="explicit steps per system before LSODA takes over"),
                      stiff_max_steps: int = typer.Option(5000, min=1, help="LSODA steps per system, then it is "
                                                          "left out as unfinished (fewer: faster)"),
                      seed: int = 0) -> None:
    """Fraction of random D-dim systems that converge, against the number of positive eigenvalues of
    S_C^T S_B and of its symmetric part (a test of the paper's D-dim conjecture)."""
    from mambadyn.dynamics.phase import PhaseConfig, phase_diagram
    from mambadyn.plots.dynamics import phase_diagram as plot

    ds = _parse_dims(dims)
    cfg = PhaseConfig(dims=ds, systems=systems, L=tokens, t_end=t_end, seed=seed, max_steps=max_steps,
                      stiff_max_steps=stiff_max_steps)
    check_output(out, "dynamics phase-diagram")
    with on_interrupt(KEPT):
        rows = phase_diagram(cfg)
        with atomic_folder(out, "dynamics phase-diagram") as tmp:
            write_json(tmp / "phase_diagram.json", rows)
            plot(rows, tmp / "phase_diagram.png")
    png = out / "phase_diagram.png"
    for r in rows:
        typer.echo(f"D={r['D']} {r['criterion']:9s} positive={r['positive']}: {r['converged']}/{r['systems']} converge, "
                   f"{r['blew_up']} blow up, {r['grew']} grow, {r['bounded']} stay bounded ({r['unfinished']} unfinished, "
                   "not counted)")
    typer.echo(f"L = {tokens} tokens, horizon t = {t_end:g}; wrote {png} and {out / 'phase_diagram.json'}")
