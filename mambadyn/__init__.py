"""mambadyn: token dynamics of deep selective state-space models (Mamba / S6)."""

__version__ = "0.1.0"

from .nn import ClassifierConfig, MambaClassifier, MambaConfig, MambaLM  # noqa: E402
from .scan import available_backends, selective_scan  # noqa: E402

__all__ = ["ClassifierConfig", "MambaClassifier", "MambaConfig", "MambaLM", "__version__", "available_backends", "selective_scan"]
