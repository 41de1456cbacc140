"""``mambadyn dynamics``: simulate the paper's scenarios, 2-D phase portraits, the phase diagram."""

from __future__ import annotations

import csv
from pathlib import Path

import torch
import typer

from ..jsonio import write_json

app = typer.Typer(help="Simulate and picture the continuous-time token dynamics.", no_args_is_help=True)

OUT = typer.Option(Path("out/dynamics"), "--out", help="folder for PNG, CSV and JSON outputs")


def _one_dim_cases(L: int, seed: int):
    from mambadyn.dynamics import TokenSystem

    g = torch.Generator().manual_seed(seed)
    mag = 0.5 + torch.rand(1, L, generator=g, dtype=torch.float64)
    return {  # (system, x0): the three 1-D scenarios of the paper
        "convergent (mu=-1, s=1)": (TokenSystem.one_dim(-1.0, 1.0, 1.0), mag.clone()),
        "slow divergence (mu=1, s=-1, x>0)": (TokenSystem.one_dim(1.0, -1.0, 1.0), mag.clone()),
        "fast divergence (mu=1, s=1, x>0)": (TokenSystem.one_dim(1.0, 1.0, 1.0), mag * 0.5),
    }


@app.command()
def scenarios(out: Path = OUT, tokens: int = typer.Option(8, "--tokens", "-L", min=1),
              t_end: float = typer.Option(1e4, help="final time (continuous depth)"),
              seed: int = 0) -> None:
    """The three 1-D scenarios: token norms against t, blow-up times, fitted rates."""
    from mambadyn.dynamics import classify, simulate
    from mambadyn.dynamics.rates import convergence_exponent, log_growth_exponent
    from mambadyn.plots.dynamics import trajectories

    out.mkdir(parents=True, exist_ok=True)
    trajs, summary = {}, []
    for name, (system, x0) in _one_dim_cases(tokens, seed).items():
        tr = simulate(system, x0, t_end, n_points=300, progress=True)
        trajs[name] = tr
        c = classify(system, x0)[0]
        summary.append({
            "case": name, "classified": c.scenario.value, "reason": c.reason, "observed": tr.outcome()[0],
            "x0": x0[0].tolist(), "blowup_time": [float(v) for v in tr.blowup_time[0]],
            "blew_up_itself": tr.primary[0].tolist(),
            "convergence_exponent": [float(v) for v in convergence_exponent(tr)[0]],
            "log_growth_exponent": [float(v) for v in log_growth_exponent(tr)[0]],
        })
        with open(out / f"trajectory_{summary[-1]['classified']}.csv", "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t"] + [f"x{l + 1}" for l in range(tokens)])
            for t, row, ok in zip(tr.t.tolist(), tr.x[:, 0, :, 0].tolist(), tr.valid[:, 0].tolist()):
                w.writerow([t] + [v if o else "" for v, o in zip(row, ok)])
    png = trajectories(trajs, out / "scenarios.png")
    write_json(out / "scenarios.json", summary)
    for s in summary:
        typer.echo(f"{s['case']:36s} classified {s['classified']:15s} observed {s['observed']}")
    typer.echo(f"wrote {png}, {out / 'scenarios.json'} and trajectory_*.csv")


@app.command()
def portrait(out: Path = OUT, tokens: int = typer.Option(6, "--tokens", "-L", min=1),
             t_end: float = 50.0, seed: int = 0) -> None:
    """2-D phase portraits for S_C^T S_B with two positive, one positive and two negative eigenvalues."""
    from mambadyn.dynamics import TokenSystem, classify, simulate
    from mambadyn.plots.dynamics import portraits

    out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(2, 2, generator=g, dtype=torch.float64))
    S_delta = -torch.eye(2, dtype=torch.float64)  # S_Δ x < 0 where tokens start: the slow branch
    x0 = (0.3 + torch.rand(1, tokens, 2, generator=g, dtype=torch.float64)) * torch.tensor([1.0, 1.0])
    trajs, summary = {}, []
    for name, ev in (("two positive eigenvalues", (1.0, 0.5)), ("one positive eigenvalue", (1.0, -0.5)),
                     ("two negative eigenvalues", (-1.0, -0.5))):
        M = Q @ torch.diag(torch.tensor(ev, dtype=torch.float64)) @ Q.T  # S_C^T S_B with S_C = I
        system = TokenSystem.from_matrices(M, torch.eye(2), S_delta, a=1.0)
        tr = simulate(system, x0, t_end, n_points=200)
        c = classify(system, x0)[0]
        trajs[f"{name} {ev}\nobserved: {tr.outcome()[0]}"] = tr
        summary.append({"case": name, "eigenvalues": ev, "classified": c.scenario.value, "conjectural": True,
                        "observed": tr.outcome()[0], "final_norms": tr.norms()[-1, 0].tolist()})
    png = portraits(trajs, out / "portraits.png")
    write_json(out / "portraits.json", summary)
    for s in summary:
        typer.echo(f"{s['case']:26s} observed {s['observed']}")
    typer.echo(f"wrote {png} and {out / 'portraits.json'}")


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
def phase_diagram_cmd(out: Path = OUT, systems: int = typer.Option(200, min=1, help="random systems per D"),
                      dims: str = typer.Option("2-8", help="dimensions, e.g. 2-8 or 2,4,8"),
                      tokens: int = typer.Option(4, "--tokens", "-L", min=1), t_end: float = 200.0,
                      max_steps: int = typer.Option(2000, min=1, help="explicit steps per system before LSODA takes over"),
                      stiff_max_steps: int = typer.Option(5000, min=1, help="LSODA steps per system, then it is "
                                                          "left out as unfinished (fewer: faster)"),
                      seed: int = 0) -> None:
    """Fraction of random D-dim systems that converge, against the number of positive eigenvalues."""
    from mambadyn.dynamics.phase import PhaseConfig, phase_diagram
    from mambadyn.plots.dynamics import phase_diagram as plot

    ds = _parse_dims(dims)
    out.mkdir(parents=True, exist_ok=True)
    rows = phase_diagram(PhaseConfig(dims=ds, systems=systems, L=tokens, t_end=t_end, seed=seed, max_steps=max_steps,
                                      stiff_max_steps=stiff_max_steps))
    write_json(out / "phase_diagram.json", rows)
    png = plot(rows, out / "phase_diagram.png")
    for r in rows:
        if r["criterion"] == "matrix":
            typer.echo(f"D={r['D']} positive={r['positive']}: {r['converged']}/{r['systems']} converge"
                       f" ({r['unfinished']} unfinished, not counted)")
    typer.echo(f"wrote {png} and {out / 'phase_diagram.json'}")
