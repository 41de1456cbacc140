"""``mambadyn experiment scenarios|reorder``: the paper's two comparisons, with seeds and statistics."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ..errors import on_interrupt
from ..outputs import check_output, claim_folder

app = typer.Typer(help="Reproduce the paper's comparisons (resumable: finished runs are reused).",
                  no_args_is_help=True)


def _kept(out: str) -> str:
    return (f"finished runs, and each unfinished run's last checkpoint, are kept under {out}/runs: rerun the same "
            "command to continue")


def _seeds(text: str) -> list[int]:
    try:
        return [int(s) for s in text.split(",") if s.strip()]
    except ValueError as e:
        raise typer.BadParameter(f"--seeds takes comma-separated integers, got {text!r}") from e


@app.command()
def scenarios(out: str = typer.Option("results/scenarios", "--out", "-o"),
              preset: str = typer.Option("small", help="smoke | small (CPU, minutes) | gpu | paper-smoke | paper-gpu (the paper's recipe, --set data.path=...)"),
              kind: str = typer.Option("lm", help="lm (text) | synthetic (selective copying or MQAR: "
                                       "--set data.task=mqar)"),
              modes: str = typer.Option("free,positive,mixed,negative", help="eigen modes to compare"),
              seeds: str = typer.Option("0,1", help="comma-separated seeds"),
              sets: list[str] = typer.Option([], "--set", "-s", help="training override section.key=value"),
              jobs: int = typer.Option(1, help="runs at a time")) -> None:
    """Train the same LM with each eigen mode; table with CIs, curves, spectra, markdown report."""
    from ..experiments import ScenarioExperimentConfig, run_scenarios

    try:
        cfg = ScenarioExperimentConfig(out=out, preset=preset, kind=kind, modes=modes.split(","), seeds=_seeds(seeds),
                                       overrides=list(sets), jobs=jobs)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    claim_folder(out, "experiment scenarios")
    with on_interrupt(_kept(out)):
        run_scenarios(cfg)
    typer.echo((Path(out) / "report.md").read_text())
    typer.echo(f"outputs in {out}: report.md, results.json, curves.png, spectrum.png, runs/")


@app.command()
def reorder(out: str = typer.Option("results/reorder", "--out", "-o"),
            preset: str = typer.Option("small", help="smoke | small (CPU, minutes) | gpu | causal-smoke | causal-gpu"),
            variants: str = typer.Option("none,soft,hard", help="none, soft, hard, soft-paper, hard-paper, "
                                         "random (the follow-up's)"),
            seeds: str = typer.Option("0,1"),
            epochs: Optional[float] = typer.Option(None, help="default: the preset's"),
            evals_per_epoch: int = typer.Option(1),
            sets: list[str] = typer.Option([], "--set", "-s", help="training override section.key=value"),
            jobs: int = typer.Option(1, help="runs at a time")) -> None:
    """MambaClassifier on Fashion-MNIST with and without token reordering; accuracy table and curves."""
    from ..experiments import ReorderExperimentConfig, run_reorder

    try:
        cfg = ReorderExperimentConfig(out=out, preset=preset, variants=variants.split(","), seeds=_seeds(seeds),
                                      epochs=epochs, evals_per_epoch=evals_per_epoch, overrides=list(sets), jobs=jobs)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from e
    claim_folder(out, "experiment reorder")
    with on_interrupt(_kept(out)):
        run_reorder(cfg)
    typer.echo((Path(out) / "report.md").read_text())
    typer.echo(f"outputs in {out}: report.md, results.json, curves.png, runs/")


@app.command("token-shares")
def token_shares(runs: str = typer.Option(..., help="a scenario experiment's runs folder (out/runs)"),
                 modes: str = typer.Option("free", help="eigen modes whose runs to measure"),
                 windows: int = typer.Option(32, help="test windows per model"),
                 out: str = typer.Option("results/token_shares", "--out", "-o")) -> None:
    """Claim (c): gradient shares of the tokens in trained LMs against their initialisation, and their link
    to each token's growth through the depth; tests over seeds."""
    from ..experiments.token_shares import TokenShareConfig, run_token_shares

    try:
        cfg = TokenShareConfig(runs=runs, modes=modes.split(","), windows=windows, out=out)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e)) from e
    check_output(out, "experiment token-shares")
    run_token_shares(cfg)
    typer.echo((Path(out) / "report.md").read_text())


@app.command("dynamics-vs-stack")
def dynamics_vs_stack(probes: list[Path] = typer.Argument(..., help="probe folders (or probe.json files) made "
                                                         "with --windows N"),
                      out: str = typer.Option("results/dynamics_vs_stack.md", "--out", "-o"),
                      notes: Optional[Path] = typer.Option(None, help="markdown to put after the table (what the "
                                                           "probes are, what the table says)")) -> None:
    """Per model and layer, which continuous-time model (the paper's, the normalised one) predicts the direction
    of the real stack's norm and cosine changes, with intervals over windows."""
    from ..experiments.dynamics_vs_stack import write_report

    try:
        described = write_report(probes, out, notes)
    except (FileNotFoundError, ValueError) as e:
        raise typer.BadParameter(str(e)) from e
    for name, layers in described.items():
        typer.echo(f"{name}: " + "; ".join(f"layer {k}: {v}" for k, v in layers.items()))
    typer.echo(f"written: {out}")


@app.command()
def claims(results: str = typer.Option("results/paper_claims", help="folder of the claims' experiment folders"),
           out: str = typer.Option("results/paper_claims.md", "--out", "-o")) -> None:
    """Decide the paper's claims (a)-(d) from committed results: paired tests, Holm per claim, verdicts."""
    from ..experiments.claims import write_claims

    try:
        decided = write_claims(results, out)
    except FileNotFoundError as e:
        raise typer.BadParameter(str(e)) from e
    for key, d in decided.items():
        typer.echo(f"({key}) {d['verdict']}")
    typer.echo(f"written: {out}")
