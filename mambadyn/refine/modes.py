"""The eigen modes: the one vocabulary of the sign constraint on the eigenvalues of S_C^T S_B, for the
model configs (``nn``), the parametrization (``refine.eigen``) and the experiments. Configs keep what the
user gave (a string or an ``EigenMode``); code compares ``EigenMode.parse(value)`` with the members."""

from __future__ import annotations

import enum


class EigenMode(str, enum.Enum):
    FREE = "free"  # plain Mamba: no constraint
    POSITIVE = "positive"  # every eigenvalue > 0: never the convergent scenario
    NEGATIVE = "negative"  # every eigenvalue < 0: the convergent scenario (S_B tied to S_C)
    MIXED = "mixed"  # the first ceil(N/2) positive, the rest negative

    @classmethod
    def parse(cls, value: str | EigenMode) -> EigenMode:
        """The mode named by ``value``; a ValueError that lists the modes for anything else."""
        try:
            return cls(value)
        except ValueError:
            raise ValueError(f"eigen mode must be one of {MODES}, got {value!r}") from None

    @property
    def constrained(self) -> bool:
        return self is not EigenMode.FREE


MODES = tuple(m.value for m in EigenMode)
CONSTRAINED = tuple(m.value for m in EigenMode if m.constrained)
