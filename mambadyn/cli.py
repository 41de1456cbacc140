"""The ``mambadyn`` command. Thin: every subcommand maps its flags onto a dataclass and calls the library."""

from __future__ import annotations

import platform

import typer

app = typer.Typer(help="mambadyn: token dynamics of deep selective state-space models (Mamba / S6).",
                  no_args_is_help=True, add_completion=False)


@app.callback()
def main() -> None:
    """mambadyn: simulate, refine, train and probe Mamba token dynamics."""


@app.command()
def info() -> None:
    """Version, scan backends available here, and the compute device."""
    import torch

    import mambadyn
    from mambadyn.scan import available_backends

    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe = torch.zeros(1, 1, 1, device=device)
    typer.echo(f"mambadyn {mambadyn.__version__}  (torch {torch.__version__}, python {platform.python_version()})")
    typer.echo(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}"
               f"  threads: {torch.get_num_threads()}")
    typer.echo(f"scan backends registered: {', '.join(available_backends())}")
    typer.echo(f"scan backends usable on {device}: {', '.join(available_backends(probe))}"
               f"  (auto -> {available_backends(probe)[0]})")


def _register_subcommands() -> None:
    from importlib import import_module

    for mod in ("dynamics", "refine", "train", "experiment", "probe"):
        try:
            m = import_module(f"mambadyn.commands.{mod}")
        except ModuleNotFoundError as e:
            if e.name != f"mambadyn.commands.{mod}":
                raise
            continue
        app.add_typer(m.app, name=mod.replace("_", "-"))


_register_subcommands()

if __name__ == "__main__":
    app()
