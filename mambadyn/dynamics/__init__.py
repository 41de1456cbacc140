"""Continuous-time token dynamics of deep S6 stacks: the system, its simulation, the scenarios, the rates."""

from .simulation import SimConfig, Trajectory, simulate
from .system import TokenSystem, token_rhs

__all__ = ["SimConfig", "TokenSystem", "Trajectory", "simulate", "token_rhs"]
from .classify import Classification, Scenario, classify, positive_eigenvalue_count  # noqa: E402

__all__ += ["Classification", "Scenario", "classify", "positive_eigenvalue_count"]
