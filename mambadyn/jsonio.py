"""JSON that strict parsers accept: every output file of mambadyn goes through ``dumps``.

Python's json writes ``Infinity`` and ``NaN``, which are not JSON. Here a non-finite float becomes
``null`` (a blow-up time of "never", a fit that could not be made); readers treat null as "no value".
Files are written to a temporary name and renamed, so an interrupted write never leaves half a file."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (dicts, lists, tuples, numpy/torch scalars)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    if hasattr(obj, "item") and getattr(obj, "ndim", 1) == 0:  # numpy / torch scalar
        return finite(obj.item())
    if hasattr(obj, "tolist"):
        return finite(obj.tolist())
    return obj


def dumps(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(finite(obj), indent=indent, allow_nan=False)


def write_json(path: str | Path, obj: Any, indent: int | None = 1) -> Path:
    """Write ``obj`` as strict JSON to ``path`` atomically; returns the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dumps(obj, indent) + "\n")
    os.replace(tmp, path)
    return path
