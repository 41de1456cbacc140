"""The continuous-time token system of a deep S6 stack with shared weights.

Stacking residual S6 layers x <- x + h S6(x) and letting h -> 0 (depth -> time t) gives, for tokens
x_1..x_L in R^D (paper.md A1-A2):

    dx_l^d/dt = Σ_{j<=l} Σ_n C_{l,n} B_{j,n} exp(A_{d,n} Σ_{k=j+1..l} Δ_k^d) Δ_j^d x_j^d
    B_j = S_B x_j,  C_l = S_C x_l  (in R^N),   Δ_j = softplus(S_Δ x_j + b)  (in R^D),  A_{d,n} < 0

i.e. dX/dt is exactly one S6 layer's output (no conv, gate, norm or D skip). The normalised variant
(``norm_weight`` set) keeps the block's RMSNorm in front of the update, as every Mamba block has it:

    dx_l/dt = S6(n(x_1), ..., n(x_L))_l,   n(x) = w * x / sqrt(|x|^2 / D + eps)

the continuous limit of x <- x + h S6(RMSNorm(x)). The tokens are not normalised; only what the
update reads is, so the update is bounded and no token blows up (``classify`` proves it). The paper has no bias
(b = 0); every real Mamba layer has one (dt_proj.bias, about -6.9 to -2.3 at initialisation), so the
system carries it, zero by default, and a probed layer's system is the layer's own. With A = -a (one decay
for all d, n) the kernel factors through the scalar x_l^T S_C^T S_B x_j; in 1-D (D = 1) it is

    dx_l/dt = mu x_l Σ_{j<=l} x_j^2 softplus(s x_j) exp(-a Σ_{k=j+1..l} softplus(s x_k)),  mu = S_C^T S_B.

Every tensor carries a leading batch dimension: one system per batch element.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


def _as_batch(v, dtype, device=None) -> torch.Tensor:
    t = torch.as_tensor(v, dtype=dtype, device=device)
    return t.reshape(-1) if t.dim() <= 1 else t


@dataclass
class TokenSystem:
    """A batch of token systems. Shapes: S_B, S_C (batch, N, D); S_delta (batch, D, D); A (batch, D, N) < 0;
    dt_bias (batch, D), Δ's bias b (None: zeros, the paper's model); norm_weight (batch, D), the RMSNorm
    weight w the update reads its tokens through (None: no norm, the paper's model), with ``norm_eps`` > 0
    (Mamba's 1e-5; it keeps n smooth at x = 0, so solutions are unique there)."""

    S_B: torch.Tensor
    S_C: torch.Tensor
    S_delta: torch.Tensor
    A: torch.Tensor
    dt_bias: torch.Tensor | None = None
    norm_weight: torch.Tensor | None = None
    norm_eps: float = 1e-5
    # S_Δ = U V with U (batch, D, r), V (batch, r, D), r << D, as every Mamba layer has it (dt_proj @ x_proj[:r]);
    # the right-hand side then costs L D r for Δ instead of L D^2 (None: use S_delta as it is)
    S_delta_factors: tuple[torch.Tensor, torch.Tensor] | None = None

    def __post_init__(self) -> None:
        if self.dt_bias is None:
            self.dt_bias = torch.zeros(self.S_B.shape[0], self.S_B.shape[-1], dtype=self.S_B.dtype,
                                       device=self.S_B.device)
        for name in ("S_B", "S_C", "S_delta", "A", "dt_bias"):
            self._check_tensor(name)
        b, N, D = self.S_B.shape
        for name, shape in {"S_C": (b, N, D), "S_delta": (b, D, D), "A": (b, D, N), "dt_bias": (b, D)}.items():
            self._check_shape(name, shape)
        if self.norm_weight is not None:
            self._check_norm()
        if (self.A >= 0).any():
            raise ValueError("TokenSystem.A must be negative everywhere (decay a > 0)")
        if self.S_delta_factors is not None:
            U, V = self.S_delta_factors
            if U.dim() != 3 or V.dim() != 3 or U.shape[:2] != (b, D) or V.shape != (b, U.shape[2], D):
                raise ValueError(f"TokenSystem.S_delta_factors must be (U (batch, D, r), V (batch, r, D)) with "
                                 f"batch {b}, D {D}, got {tuple(U.shape)} and {tuple(V.shape)}")
            err = (U @ V - self.S_delta).abs().max()
            if not err <= 1e-9 * self.S_delta.abs().max().clamp_min(1e-300):
                raise ValueError(f"TokenSystem.S_delta_factors: U V differs from S_delta by {float(err):.3g}")

    def _check_tensor(self, name: str) -> None:
        t = getattr(self, name)
        dims = 2 if name in ("dt_bias", "norm_weight") else 3
        if not isinstance(t, torch.Tensor) or t.dim() != dims:
            raise ValueError(f"TokenSystem.{name} must be a {dims}-D tensor (batch, {'., .' if dims == 3 else 'D'}), "
                             f"got {getattr(t, 'shape', t)}")
        if not t.is_floating_point():
            raise TypeError(f"TokenSystem.{name} must be floating point, got {t.dtype}")
        if not torch.isfinite(t).all():
            raise ValueError(f"TokenSystem.{name} has non-finite entries")

    def _check_shape(self, name: str, shape: tuple) -> None:
        if tuple(getattr(self, name).shape) != shape:
            raise ValueError(f"TokenSystem.{name} must have shape {shape} to match S_B {tuple(self.S_B.shape)}, "
                             f"got {tuple(getattr(self, name).shape)}")

    def _check_norm(self) -> None:
        self._check_tensor("norm_weight")
        self._check_shape("norm_weight", (self.batch, self.D))
        if not (isinstance(self.norm_eps, (int, float)) and self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise ValueError(f"TokenSystem.norm_eps must be a finite float > 0 (at 0, n(x) = x / |x| has no "
                             f"value at x = 0 and solutions through it are not unique), got {self.norm_eps!r}")

    # --- constructors ----------------------------------------------------------------------------
    @classmethod
    def one_dim(cls, mu, s, a=1.0, bias=0.0, dtype=torch.float64, device=None) -> "TokenSystem":
        """1-D systems: mu = S_C^T S_B, s = S_Δ, decay a > 0, Δ's bias; each a float or a (batch,) tensor."""
        mu, s, a, bias = (_as_batch(v, dtype, device) for v in (mu, s, a, bias))
        if (a <= 0).any():
            raise ValueError(f"decay a must be > 0, got min {a.min().item()}")
        b = max(len(mu), len(s), len(a), len(bias))
        mu, s, a, bias = (v.expand(b) if len(v) == 1 else v for v in (mu, s, a, bias))
        if not len(mu) == len(s) == len(a) == len(bias) == b:
            raise ValueError(f"mu, s, a, bias must have equal lengths (or length 1), got {len(mu)}, {len(s)}, "
                             f"{len(a)}, {len(bias)}")
        one = torch.ones(b, 1, 1, dtype=dtype, device=device)
        return cls(S_B=mu.view(b, 1, 1), S_C=one, S_delta=s.view(b, 1, 1), A=-a.view(b, 1, 1),
                   dt_bias=bias.reshape(b, 1).contiguous())

    @classmethod
    def from_matrices(cls, S_B, S_C, S_delta, a=1.0, dt_bias=None, dtype=torch.float64) -> "TokenSystem":
        """Build from (N, D)/(N, D)/(D, D) matrices (or batched versions) and a decay a > 0
        (float, (batch,)) or a full A (D, N) / (batch, D, N) of negative entries; ``dt_bias`` (D,) or
        (batch, D), default 0."""
        S_B, S_C, S_delta = (torch.as_tensor(m, dtype=dtype) for m in (S_B, S_C, S_delta))
        S_B, S_C, S_delta = (m[None] if m.dim() == 2 else m for m in (S_B, S_C, S_delta))
        b, N, D = S_B.shape
        a = torch.as_tensor(a, dtype=dtype)
        if a.dim() <= 1:
            if (a <= 0).any():
                raise ValueError(f"decay a must be > 0, got {a}")
            A = -a.reshape(-1, 1, 1).expand(b, D, N)
        else:
            A = a[None] if a.dim() == 2 else a
        if dt_bias is not None:
            dt_bias = torch.as_tensor(dt_bias, dtype=dtype)
            dt_bias = (dt_bias[None] if dt_bias.dim() == 1 else dt_bias).expand(b, D).contiguous()
        return cls(S_B, S_C, S_delta, A.expand(b, D, N).contiguous(), dt_bias)

    @classmethod
    def random(cls, batch: int, D: int, N: int | None = None, a: float = 1.0, scale: float = 1.0,
               generator: torch.Generator | None = None, dtype=torch.float64) -> "TokenSystem":
        """Gaussian S_B, S_C, S_Δ with entries N(0, scale^2 / D); decay a."""
        N = N or D
        g = lambda *s: torch.randn(*s, generator=generator, dtype=dtype) * scale / D**0.5  # noqa: E731
        return cls.from_matrices(g(batch, N, D), g(batch, N, D), g(batch, D, D), a=a, dtype=dtype)

    # --- views ------------------------------------------------------------------------------------
    @property
    def batch(self) -> int:
        return self.S_B.shape[0]

    @property
    def D(self) -> int:
        return self.S_B.shape[2]

    @property
    def N(self) -> int:
        return self.S_B.shape[1]

    def io_matrix(self) -> torch.Tensor:
        """S_C^T S_B (batch, D, D); in 1-D its single entry is mu."""
        return self.S_C.transpose(1, 2) @ self.S_B

    @property
    def normalised(self) -> bool:
        """Whether the update reads its tokens through an RMSNorm."""
        return self.norm_weight is not None

    def with_norm(self, weight=1.0, eps: float = 1e-5) -> "TokenSystem":
        """The same system with the update reading n(x) = w x / sqrt(|x|^2 / D + eps); ``weight`` a float,
        (D,) or (batch, D)."""
        w = torch.as_tensor(weight, dtype=self.S_B.dtype, device=self.S_B.device)
        w = w.expand(self.batch, self.D) if w.dim() <= 1 else w
        # a shallow copy checks only what changed: validating S_Δ (D x D) and its factors again cost as much
        # as the ODE itself at a 2.8B layer
        new = copy.copy(self)
        new.norm_weight, new.norm_eps = w.contiguous(), eps
        new._check_norm()
        return new

    def select(self, idx) -> "TokenSystem":
        """The sub-batch ``idx`` (an index tensor, slice or boolean mask)."""
        w = None if self.norm_weight is None else self.norm_weight[idx]
        f = None if self.S_delta_factors is None else tuple(t[idx] for t in self.S_delta_factors)
        return TokenSystem(self.S_B[idx], self.S_C[idx], self.S_delta[idx], self.A[idx], self.dt_bias[idx], w,
                           self.norm_eps, f)

    def check_state(self, X: torch.Tensor) -> torch.Tensor:
        """Validate tokens X (batch, L, D) against the system; returns X in the system's dtype."""
        if not isinstance(X, torch.Tensor):
            X = torch.as_tensor(X, dtype=self.S_B.dtype)
        if X.dim() == 2 and self.D == 1:
            X = X[..., None]
        if X.dim() != 3 or X.shape[0] != self.batch or X.shape[2] != self.D:
            raise ValueError(f"tokens must have shape (batch={self.batch}, L, D={self.D}), got {tuple(X.shape)}")
        if X.shape[1] == 0:
            raise ValueError("tokens: L is 0")
        if not torch.isfinite(X).all():
            hint = (f" ({X.dtype} overflows past {torch.finfo(X.dtype).max:.3g}: pass float64 tokens)"
                    if X.dtype != torch.float64 and torch.isinf(X).any() else "")
            raise ValueError(f"tokens x0 contain NaN or inf{hint}")
        return X.to(self.S_B.dtype)

    # --- dynamics ---------------------------------------------------------------------------------
    def rhs(self, X: torch.Tensor) -> torch.Tensor:
        """dX/dt for tokens X (batch, L, D) -> (batch, L, D)."""
        return token_rhs(*self.params, self.reads(X), self.S_delta_factors)

    def reads(self, X: torch.Tensor, idx=slice(None)) -> torch.Tensor:
        """What the update reads from tokens X (b, L, D) of the sub-batch ``idx``: X itself, or n(X)."""
        return X if self.norm_weight is None else rms_norm(X, self.norm_weight[idx], self.norm_eps)

    @property
    def params(self) -> tuple[torch.Tensor, ...]:
        """(S_B, S_C, S_delta, A, dt_bias): the arguments ``token_rhs`` takes before X."""
        return self.S_B, self.S_C, self.S_delta, self.A, self.dt_bias


def rms_norm(X: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """n(x) = w x / sqrt(|x|^2 / D + eps) per token: X (b, L, D), weight (b, D) -> (b, L, D)."""
    return X * torch.rsqrt(X.square().mean(-1, keepdim=True) + eps) * weight[:, None, :]


def token_rhs(S_B, S_C, S_delta, A, dt_bias, X, S_delta_factors=None) -> torch.Tensor:
    """The system's right-hand side on raw tensors (no validation; see ``TokenSystem``).

    Evaluated as the S6 recurrence h_l = exp(A Δ_l) h_{l-1} + Δ_l x_l B_l^T, dx_l = h_l C_l: O(L D N)
    per system instead of the O(L^2 D N) double sum, and every factor exp(A Δ_l) is <= 1, so nothing
    overflows however large the accumulated Δ gets. The loop runs over tokens, each step one fused
    op on the whole batch (b, D, N).
    """
    # token-major (L, b, ...) so each step reads and writes contiguous slices
    B = torch.einsum("bnd,bld->lbn", S_B, X)
    C = torch.einsum("bnd,bld->lbn", S_C, X)
    if S_delta_factors is None:
        pre = torch.einsum("bed,bld->lbe", S_delta, X)
    else:  # through the low rank: (X V^T) U^T
        U, V = S_delta_factors
        pre = torch.einsum("ber,blr->lbe", U, torch.einsum("brd,bld->blr", V, X))
    delta = F.softplus(pre + dt_bias)
    decay = torch.exp(A * delta[..., None])  # (L, b, D, N)
    inject = (delta * X.transpose(0, 1))[..., None] * B[:, :, None, :]
    H = [inject[0]]
    for l in range(1, X.shape[1]):
        H.append(torch.addcmul(inject[l], decay[l], H[-1]))
    return torch.einsum("lbdn,lbn->bld", torch.stack(H), C)
