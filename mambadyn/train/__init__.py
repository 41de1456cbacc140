"""Training: typed configs, tasks (LM, image, synthetic), the loop with exact resume, checkpoints, and a
whole step captured in a CUDA graph."""

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from .config import (
                     ImageTrainConfig,
                     LMTrainConfig,
                     OptimConfig,
                     RunConfig,
                     SyntheticData,
                     SyntheticTrainConfig,
                     apply_overrides,
                     load_config,
)
from .graphed import GraphedTrainStep
from .loop import train
from .tasks import ImageTask, LMTask, SyntheticTask

__all__ = [
    "GraphedTrainStep",
    "ImageTask",
    "ImageTrainConfig",
    "LMTask",
    "LMTrainConfig",
    "OptimConfig",
    "RunConfig",
    "SyntheticData",
    "SyntheticTask",
    "SyntheticTrainConfig",
    "apply_overrides",
    "latest_checkpoint",
    "load_checkpoint",
    "load_config",
    "save_checkpoint",
    "train",
]
