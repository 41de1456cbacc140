"""Backend registry for the selective scan.

Every backend implements the full ``selective_scan`` contract (see ``api.py``) on inputs that
``api.selective_scan`` has already validated. A backend may declare that it is only usable on
some devices; ``"auto"`` picks the first usable backend in preference order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..errors import MambadynError

ScanFn = Callable[..., object]


@dataclass(frozen=True)
class Backend:
    name: str
    fn: ScanFn
    # Returns None when usable for these inputs, otherwise the reason it is not.
    unusable_reason: Callable[[torch.Tensor], str | None]
    # Lower is preferred by "auto".
    priority: int


_BACKENDS: dict[str, Backend] = {}


def register_backend(
    name: str,
    fn: ScanFn,
    *,
    priority: int = 100,
    unusable_reason: Callable[[torch.Tensor], str | None] = lambda u: None,
) -> None:
    """Register ``fn`` as scan backend ``name`` (replacing any backend of that name)."""
    _BACKENDS[name] = Backend(name, fn, unusable_reason, priority)


def available_backends(u: torch.Tensor | None = None) -> list[str]:
    """Names of the registered backends usable for ``u`` (all registered ones if ``u`` is None)."""
    return [b.name for b in _by_priority() if u is None or b.unusable_reason(u) is None]


def _by_priority() -> list[Backend]:
    return sorted(_BACKENDS.values(), key=lambda b: b.priority)


def get_backend(name: str, u: torch.Tensor) -> Backend:
    """Resolve ``name`` (or ``"auto"``) to a backend usable for ``u``; raise a clear error otherwise."""
    if name == "auto":  # the first usable in preference order, without asking the rest
        for backend in _by_priority():
            if backend.unusable_reason(u) is None:
                return backend
        raise MambadynError(f"no selective-scan backend is usable on device {u.device}")
    if name not in _BACKENDS:
        raise ValueError(f"unknown scan backend {name!r}; registered: {sorted(_BACKENDS)} (or 'auto')")
    backend = _BACKENDS[name]
    reason = backend.unusable_reason(u)
    if reason is not None:
        raise MambadynError(f"scan backend {name!r} cannot run here: {reason}")
    return backend
