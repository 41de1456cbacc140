"""The ``mambadyn`` command. Thin: every subcommand maps its flags onto a dataclass and calls the library.

A user's mistake (a bad value, a missing file, a folder in use) prints one line, ``error: ...``, and
exits with status 2; ``--debug`` shows the traceback instead. Ctrl-C exits 130 with a line saying what was
kept. Any other exception is a bug in mambadyn or below it, and keeps its traceback."""

from __future__ import annotations

import platform
import sys

import typer

try:  # typer >= 0.20 vendors click; its exceptions are not click's
    from typer._click import exceptions as click_exc
except ImportError:  # pragma: no cover - older typer with click installed
    from click import exceptions as click_exc

from .commands import dynamics, experiment, probe, signature, train
from .errors import Interrupted, MambadynError

app = typer.Typer(help="mambadyn: token dynamics of deep selective state-space models (Mamba / S6).",
                  no_args_is_help=True, add_completion=False)

# the exceptions that report a user's input, not a bug in mambadyn (torch's RuntimeErrors are not among
# them: they keep their tracebacks)
USER_ERRORS = (MambadynError, ValueError, FileNotFoundError, NotADirectoryError, IsADirectoryError,
               PermissionError, FloatingPointError, UnicodeDecodeError)


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
    debug = argv[:1] == ["--debug"]  # a global option: before the subcommand, as click parses it
    try:
        code = app(args=argv, prog_name="mambadyn", standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except click_exc.NoArgsIsHelpError as e:
        e.show()
        return 2
    except (typer.Abort, KeyboardInterrupt):
        code = 130
    except Interrupted as e:
        print(f"interrupted: {e}", file=sys.stderr)
        return 130
    except (click_exc.ClickException, *USER_ERRORS) as e:
        if debug:
            raise
        msg = e.format_message() if isinstance(e, click_exc.ClickException) else str(e).strip()
        if isinstance(e, click_exc.NoSuchOption) and e.option_name == "--debug":
            msg += " (--debug goes before the subcommand: mambadyn --debug COMMAND ...)"
        print(f"error: {msg or type(e).__name__}", file=sys.stderr)
        return 2
    if code == 130:  # typer turns a KeyboardInterrupt outside an on_interrupt block into exit code 130
        print("interrupted: outputs land only when a command finishes, so --out holds its earlier result or "
              "nothing", file=sys.stderr)
        return 130
    return code if isinstance(code, int) else 0


def entry() -> None:
    sys.exit(run())


if __name__ == "__main__":
    entry()
