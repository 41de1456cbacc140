"""Mamba modules and models: the S6 mixer, residual block, MambaLM, MambaClassifier, configs, checkpoint I/O."""

from .block import MambaBlock, RMSNorm
from .classifier import MambaClassifier
from .config import ClassifierConfig, MambaConfig
from .hf_io import CheckpointError, effective_state_dict
from .lm import MambaLM
from .mixer import MambaMixer

__all__ = [
    "CheckpointError",
    "ClassifierConfig",
    "MambaBlock",
    "MambaClassifier",
    "MambaConfig",
    "MambaLM",
    "MambaMixer",
    "RMSNorm",
    "effective_state_dict",
]
