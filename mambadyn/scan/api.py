"""The public door to the selective scan: validates inputs, then dispatches to a backend."""

from __future__ import annotations

import torch

from .registry import get_backend

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check(name: str, t: torch.Tensor | None, shape: tuple[int, ...], what: str) -> None:
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"selective_scan: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"selective_scan: {name} has dtype {t.dtype}; expected one of float16, bfloat16, float32, float64"
        )
    if t.shape != shape:  # torch.Size compares with a tuple
        raise ValueError(f"selective_scan: {name} must have shape {what} = {shape}, got {tuple(t.shape)}")


def validate_scan_inputs(u, delta, A, B, C, D=None, z=None, delta_bias=None, initial_state=None) -> None:
    """Raise a clear error for wrong ranks, mismatched shapes, non-float dtypes or mixed devices."""
    if not isinstance(u, torch.Tensor) or u.dim() != 3:
        got = tuple(u.shape) if isinstance(u, torch.Tensor) else type(u).__name__
        raise ValueError(f"selective_scan: u must have shape (batch, d, L), got {got}")
    batch, d, L = u.shape
    if L == 0:
        raise ValueError("selective_scan: sequence length L is 0")
    if not isinstance(A, torch.Tensor) or A.dim() != 2:
        raise ValueError(f"selective_scan: A must have shape (d, n), got {getattr(A, 'shape', A)}")
    n = A.shape[1]
    _check("u", u, (batch, d, L), "(batch, d, L)")
    _check("delta", delta, (batch, d, L), "(batch, d, L)")
    _check("A", A, (d, n), "(d, n)")
    _check("B", B, (batch, n, L), "(batch, n, L)")
    _check("C", C, (batch, n, L), "(batch, n, L)")
    _check("D", D, (d,), "(d,)")
    _check("z", z, (batch, d, L), "(batch, d, L)")
    _check("delta_bias", delta_bias, (d,), "(d,)")
    _check("initial_state", initial_state, (batch, d, n), "(batch, d, n)")
    device = u.device
    for name, t in (("delta", delta), ("A", A), ("B", B), ("C", C), ("D", D), ("z", z), ("delta_bias", delta_bias),
                    ("initial_state", initial_state)):
        if t is not None and t.device != device:
            raise ValueError(f"selective_scan: {name} is on {t.device} but u is on {device}")


def selective_scan(
    u: torch.Tensor,
    delta: torch.Tensor,
    A: torch.Tensor,
    B: torch.Tensor,
    C: torch.Tensor,
    D: torch.Tensor | None = None,
    z: torch.Tensor | None = None,
    delta_bias: torch.Tensor | None = None,
    delta_softplus: bool = False,
    return_last_state: bool = False,
    initial_state: torch.Tensor | None = None,
    backend: str = "auto",
    **backend_options,
):
    """Selective scan with mamba-ssm's ``selective_scan_fn`` semantics.

    Shapes: u, delta, z: (batch, d, L); A: (d, n); B, C: (batch, n, L); D, delta_bias: (d,).
    Computes, per channel d and state n (Δ = softplus(delta + delta_bias) if ``delta_softplus``)::

        h_t = exp(Δ_t A) h_{t-1} + Δ_t B_t u_t,   y_t = C_t · h_t + D u_t,   out = y · silu(z)

    ``initial_state`` (batch, d, n) is h_0 (zeros if None): a sequence continued from an earlier call.
    Returns ``out`` (batch, d, L) in u's dtype, and the last state (batch, d, n) if
    ``return_last_state``. The state is kept in float32 (float64 for float64 inputs).
    ``backend`` is a registered name (see ``available_backends()``) or ``"auto"``; ``backend_options``
    go to that backend (its tuning knobs).
    """
    validate_scan_inputs(u, delta, A, B, C, D, z, delta_bias, initial_state)
    fn = get_backend(backend, u).fn
    return fn(
        u, delta, A, B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus,
        return_last_state=return_last_state, initial_state=initial_state, **backend_options,
    )
