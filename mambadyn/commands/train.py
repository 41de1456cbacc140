"""``mambadyn train lm|image``: flags and a JSON config map onto LMTrainConfig / ImageTrainConfig."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional

import typer

from ..jsonio import dumps

app = typer.Typer(help="Train a Mamba language model or image classifier (resumable, DDP under torchrun).",
                  no_args_is_help=True)

CONFIG = typer.Option(None, "--config", "-c", help="JSON file with sections model / data / optim / run.")
SET = typer.Option([], "--set", "-s", help="Override a field: section.key=value (repeatable), e.g. model.d_model=256.")
OUT = typer.Option(None, "--out", "-o", help="Run folder (run.out_dir).")
STEPS = typer.Option(None, "--steps", help="Optimizer steps (optim.steps).")
DATA = typer.Option(None, "--data", help="Data path (data.path).")
RESUME = typer.Option(False, "--resume", help="Continue from the latest checkpoint in the run folder.")
PRINT = typer.Option(False, "--print-config", help="Print the resolved config and exit.")


def _run(kind: str, config, sets, out, steps, data, resume, print_config) -> None:
    from ..train import load_config, train
    from ..train.worker import KINDS

    cls, task_cls = KINDS[kind]
    sets = list(sets)
    for key, value in (("run.out_dir", out), ("optim.steps", steps), ("data.path", data)):
        if value is not None:
            sets.append(f"{key}={value}")
    try:
        cfg = load_config(cls, config, sets)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e)) from e
    if print_config:
        from dataclasses import asdict

        typer.echo(json.dumps(asdict(cfg), indent=2))
        return
    final = train(task_cls, cfg, resume=resume)
    if os.environ.get("RANK", "0") != "0":  # under torchrun only rank 0 reports
        return
    typer.echo(dumps(final, indent=None))
    typer.echo(f"run folder: {Path(cfg.run.out_dir).resolve()} (metrics.jsonl, model/, checkpoints)")


@app.command()
def lm(config: Optional[Path] = CONFIG, sets: list[str] = SET, out: Optional[str] = OUT,
       steps: Optional[int] = STEPS, data: Optional[str] = DATA, resume: bool = RESUME,
       print_config: bool = PRINT) -> None:
    """Train a MambaLM (default: character-level Tiny Shakespeare)."""
    _run("lm", config, sets, out, steps, data, resume, print_config)


@app.command()
def image(config: Optional[Path] = CONFIG, sets: list[str] = SET, out: Optional[str] = OUT,
          steps: Optional[int] = STEPS, data: Optional[str] = DATA, resume: bool = RESUME,
          print_config: bool = PRINT) -> None:
    """Train a MambaClassifier (default: Fashion-MNIST)."""
    _run("image", config, sets, out, steps, data, resume, print_config)


@app.command()
def synthetic(config: Optional[Path] = CONFIG, sets: list[str] = SET, out: Optional[str] = OUT,
              steps: Optional[int] = STEPS, resume: bool = RESUME, print_config: bool = PRINT) -> None:
    """Train a MambaLM on selective copying or MQAR (data.task), generated on the fly; reports answer accuracy."""
    _run("synthetic", config, sets, out, steps, None, resume, print_config)
