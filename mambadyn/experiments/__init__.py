"""The paper's comparisons as reproducible experiments: eigenvalue-sign scenarios and token reordering."""

from .reorder import ReorderExperimentConfig, run_reorder
from .scenarios import ScenarioExperimentConfig, run_scenarios, write_outputs
from .stats import Summary, summarize, welch_p

__all__ = ["ReorderExperimentConfig", "ScenarioExperimentConfig", "Summary", "run_reorder", "run_scenarios",
           "summarize", "welch_p", "write_outputs"]
