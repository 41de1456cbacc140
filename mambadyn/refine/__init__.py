"""The paper's refinements: eigenvalue-sign parametrizations of S_C^T S_B, its spectrum, and
importance-based token reordering (SoftSort)."""

from .eigen import EigenSign, bake, constrain_eigenvalues, eigen_mode_of, find_mixers
from .modes import MODES, EigenMode
from .spectrum import layer_spectrum, mixer_matrices, spectrum

__all__ = [
    "MODES",
    "EigenMode",
    "EigenSign",
    "bake",
    "constrain_eigenvalues",
    "eigen_mode_of",
    "find_mixers",
    "layer_spectrum",
    "mixer_matrices",
    "spectrum",
]
from .reorder import TokenReorder, add_token_reorder, soft_sort  # noqa: E402

__all__ += ["TokenReorder", "add_token_reorder", "soft_sort"]
