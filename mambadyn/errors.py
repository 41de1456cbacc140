"""The project's own error types: what the command line reports in one line instead of a traceback.

``MambadynError`` is a user's problem the code recognised (a bad value, a file in the way); a bare
RuntimeError from torch or the code itself is a bug and keeps its traceback. ``Interrupted`` carries what
an interrupted command kept, so Ctrl-C says it and exits 130.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator


class MambadynError(Exception):
    """A problem with the user's input or environment, stated in one line."""


class OutputError(MambadynError):
    """An output path that a command must not or cannot write."""


class Interrupted(MambadynError):
    """The user interrupted a command (Ctrl-C or SIGINT); the message says what was kept."""


@contextlib.contextmanager
def on_interrupt(kept: str) -> Iterator[None]:
    """Turn a KeyboardInterrupt inside the block into ``Interrupted(kept)``; ``kept`` says what is on disk."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(kept) from None
