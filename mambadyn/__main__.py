"""``python -m mambadyn`` is the ``mambadyn`` command."""

from .cli import entry

entry()
