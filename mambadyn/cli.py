"""The ``mambadyn`` command. Thin: every subcommand maps its flags onto a dataclass and calls the library.

A user's mistake (a bad value, a missing file, a folder in use) prints one line, ``error: ...``, and
exits with status 2; ``--debug`` shows the traceback instead."""

from __future__ import annotations

import platform
import sys

import typer

try:  # typer >= 0.20 vendors click; its exceptions are not click's
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer with click installed
    from click import exceptions as click_exc

from .commands import dynamics, experiment, probe, signature, train

app = typer.Typer(help="mambadyn: token dynamics of deep selective state-space models (Mamba / S6).",
                  no_args_is_help=True, add_completion=False)

# the exceptions that report a user's input, not a bug in mambadyn
USER_ERRORS = (ValueError, FileNotFoundError, NotADirectoryError, PermissionError, FloatingPointError,
               RuntimeError)


@app.callback()
def main(debug: bool = typer.Option(False, "--debug", help="show tracebacks instead of one-line errors"),
         ) -> None:
    """mambadyn: simulate, refine, train and probe Mamba token dynamics."""


@app.command()
def info() -> None:
    """Version, scan backends available here, and the compute device."""
    import torch

    import mambadyn
    from mambadyn.scan import available_backends

    device = "cuda" if torch.cuda.is_available() else "cpu"
    probe_t = torch.zeros(1, 1, 1, device=device)
    typer.echo(f"mambadyn {mambadyn.__version__}  (torch {torch.__version__}, python {platform.python_version()})")
    typer.echo(f"device: {torch.cuda.get_device_name(0) if device == 'cuda' else 'cpu'}"
               f"  threads: {torch.get_num_threads()}")
    typer.echo(f"scan backends registered: {', '.join(available_backends())}")
    typer.echo(f"scan backends usable on {device}: {', '.join(available_backends(probe_t))}"
               f"  (auto -> {available_backends(probe_t)[0]})")


app.add_typer(dynamics.app, name="dynamics")
app.add_typer(train.app, name="train")
app.add_typer(experiment.app, name="experiment")
app.command("probe")(probe.probe_cmd)
app.command("signature")(signature.signature_cmd)


def run(argv: list[str] | None = None) -> int:
    """Run the command line on ``argv``; returns the exit status (the ``mambadyn`` script's entry)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        app(args=argv, prog_name="mambadyn", standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except click_exc.NoArgsIsHelpError as e:
        e.show()
        return 2
    except typer.Abort:
        print("aborted", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (click_exc.ClickException, *USER_ERRORS) as e:
        if debug:
            raise
        msg = e.format_message() if isinstance(e, click_exc.ClickException) else str(e).strip()
        print(f"error: {msg or type(e).__name__}", file=sys.stderr)
        return 2
    return 0


def entry() -> None:
    sys.exit(run())


if __name__ == "__main__":
    entry()
