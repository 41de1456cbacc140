"""Check a config dataclass's values against its type annotations, so a JSON file or ``--set`` that gives
``"steps": "ten"``, ``10.7`` for an int, ``"no"`` for a bool or ``nan`` for a float fails at once with
the field's name, instead of deep inside training."""

from __future__ import annotations

import enum
import math
import types
import typing
from dataclasses import fields, is_dataclass


def _fits(v, t) -> bool:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if t is typing.Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_fits(v, a) for a in args)
    if origin is typing.Literal:
        return v in args
    if t is type(None):
        return v is None
    if t is bool:
        return isinstance(v, bool)
    if t is int:
        return isinstance(v, int) and not isinstance(v, bool)
    if t is float:  # configs never want a non-finite number: inf and nan are typos or overflow
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
    if t is str:
        return isinstance(v, str)
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return isinstance(v, t) or v in {m.value for m in t}
    if origin in (tuple, list):
        if not isinstance(v, (tuple, list)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(v) == len(args) and all(_fits(x, a) for x, a in zip(v, args))
        return all(_fits(x, args[0]) for x in v) if args else True
    if origin is dict:
        return isinstance(v, dict)
    if isinstance(t, type):
        return isinstance(v, t)
    return True


def _describe(t) -> str:
    origin, args = typing.get_origin(t), typing.get_args(t)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (tuple, list):
        inner = ", ".join(_describe(a) for a in args if a is not Ellipsis)
        return f"a list of {len(args)} ({inner})" if origin is tuple and Ellipsis not in args else f"a list of {inner}"
    if t is float:
        return "a finite number"
    if t is int:
        return "an integer"
    if t is bool:
        return "true or false"
    if t is str:
        return "a string"
    if isinstance(t, type) and issubclass(t, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in t)
    return getattr(t, "__name__", str(t))


def check_fields(obj) -> None:
    """Raise ``ValueError`` naming the first field of dataclass ``obj`` whose value does not fit its
    annotation (ints are not accepted for bools, 10.7 is not an int, nan/inf are not floats)."""
    if not is_dataclass(obj):
        raise TypeError(f"check_fields takes a dataclass instance, got {type(obj).__name__}")
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        v = getattr(obj, f.name)
        if not _fits(v, hints[f.name]):
            raise ValueError(f"{type(obj).__name__}.{f.name} must be {_describe(hints[f.name])}, got {v!r}")


def positive(obj, *names: str, allow_zero: bool = False) -> None:
    """Raise ``ValueError`` unless each named field is > 0 (>= 0 with ``allow_zero``)."""
    for name in names:
        v = getattr(obj, name)
        if v < 0 or (v == 0 and not allow_zero):
            raise ValueError(f"{type(obj).__name__}.{name} must be {'>= 0' if allow_zero else '> 0'}, got {v!r}")
