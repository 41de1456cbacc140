"""The paper's comparisons as reproducible experiments: eigenvalue-sign scenarios and token reordering."""

from ..stats import Paired, Summary, compare_to, holm, one_sample, paired, summarize
from .reorder import ReorderExperimentConfig, run_reorder
from .scenarios import ScenarioExperimentConfig, run_scenarios, write_outputs

__all__ = ["Paired", "ReorderExperimentConfig", "ScenarioExperimentConfig", "Summary", "compare_to", "holm", "one_sample",
           "paired", "run_reorder", "run_scenarios", "summarize", "write_outputs"]
