"""mambadyn: token dynamics of deep selective state-space models (Mamba / S6).

The doors: ``selective_scan`` (the scan), ``MambaLM`` / ``MambaClassifier`` (the models), ``simulate`` and
``classify`` (the continuous-time token dynamics), ``constrain_eigenvalues`` and ``EigenMode`` (the paper's
refinement), and the subpackage ``mambadyn.probe`` with its door ``mambadyn.probe.probe`` (what a trained
checkpoint's layers do; a top-level function of that name would hide the subpackage)."""

__version__ = "0.1.0"

from . import probe  # noqa: E402,F401  (the subpackage; its door is probe.probe)
from .dynamics import Outcome, TokenSystem, classify, simulate  # noqa: E402
from .nn import ClassifierConfig, MambaClassifier, MambaConfig, MambaLM  # noqa: E402
from .refine import constrain_eigenvalues  # noqa: E402
from .refine.modes import EigenMode  # noqa: E402
from .scan import available_backends, selective_scan  # noqa: E402

__all__ = ["ClassifierConfig", "EigenMode", "MambaClassifier", "MambaConfig", "MambaLM", "Outcome", "TokenSystem",
           "__version__", "available_backends", "classify", "constrain_eigenvalues", "probe", "selective_scan",
           "simulate"]
