"""Continuous-time token dynamics of deep S6 stacks: the system, its simulation, the predicted and
observed outcomes, the rates."""

from .classify import Classification, TokenFate, classify, positive_eigenvalue_count
from .outcome import Outcome, system_outcome
from .simulation import SimConfig, Trajectory, simulate
from .system import TokenSystem, token_rhs

__all__ = ["Classification", "Outcome", "SimConfig", "TokenFate", "TokenSystem", "Trajectory", "classify",
           "positive_eigenvalue_count", "simulate", "system_outcome", "token_rhs"]
