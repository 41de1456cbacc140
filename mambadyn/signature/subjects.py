"""What the lens looks at: each subject is a batch of paths w = (t, u) and the states they drive.

* ``random_cde`` and ``random_diagonal``: the theory's exact cases. A linear CDE
  dh = Σ_i (A_i h + b_i) dw^i, with dense or diagonal A_i, is solved exactly on each linear piece of w
  (matrix exponential of the affine segment map). Its final state is a linear map of the signature
  of w, so the fit's error is only the truncation's. The diagonal case is a selective recurrence with
  an input term, like Mamba's with Δ linear in the input.
* ``diagonal_stack``: two diagonal CDEs, the second driven by a bounded readout (tanh of a linear map)
  of the first: no longer an exact case.
* ``checkpoint_subjects``: one trained S6 layer, first as the bare recurrence (the selective scan on
  in_proj's x branch, with no conv, gate, D or norm) and then as the full mixer; and the residual
  stream after several layers. Inputs are real token windows, and the path is a PCA of the layer's (or
  the embedding's) input.
"""

from __future__ import annotations

import torch

from ..scan import selective_scan
from .features import pca, time_path


def linear_cde(path: torch.Tensor, A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Exact solution, from h = 0 at the first point, of dh = Σ_i (A_i h + b_i) dw^i along piecewise
    linear paths (batch, P, c). A (c, m, m), b (c, m). Returns the states at every point (batch, P, m)."""
    B, P, c = path.shape
    m = A.shape[-1]
    if A.shape != (c, m, m) or b.shape != (c, m):
        raise ValueError(f"A must be (channels, m, m) and b (channels, m) for {c} channels, got "
                         f"{tuple(A.shape)} and {tuple(b.shape)}")
    inc = path.diff(dim=1).double()  # (B, P-1, c)
    aug = torch.zeros(B, P - 1, m + 1, m + 1, dtype=torch.float64)
    aug[..., :m, :m] = torch.einsum("bpc,cij->bpij", inc, A.double())
    aug[..., :m, m] = inc @ b.double()
    E = torch.linalg.matrix_exp(aug)  # the segment's affine map, exactly
    h = torch.zeros(B, m, dtype=torch.float64)
    out = [h]
    for k in range(P - 1):
        h = (E[:, k, :m, :m] @ h[..., None])[..., 0] + E[:, k, :m, m]
        out.append(h)
    return torch.stack(out, dim=1)


def random_paths(n: int, L: int, channels: int, generator: torch.Generator) -> torch.Tensor:
    """n random-walk inputs (n, L, channels) with total variance about 1 per channel."""
    return torch.randn(n, L, channels, generator=generator, dtype=torch.float64).cumsum(1) / L**0.5


def random_cde(path: torch.Tensor, m: int, generator: torch.Generator, diagonal: bool = False,
               scale: float = 0.5) -> torch.Tensor:
    """Final states (n, m) of a random linear CDE (dense or diagonal A_i) driven by ``path``."""
    c = path.shape[-1]
    if diagonal:  # decay along time (A < 0, as in Mamba); input-controlled gates of either sign
        A = torch.randn(c, m, generator=generator, dtype=torch.float64) * scale
        A[0] = -A[0].abs() * 4
        A = torch.diag_embed(A)
    else:
        A = torch.randn(c, m, m, generator=generator, dtype=torch.float64) * scale / m**0.5
    b = torch.randn(c, m, generator=generator, dtype=torch.float64)
    return linear_cde(path, A, b)[:, -1]


def diagonal_stack(path: torch.Tensor, m: int, generator: torch.Generator, readout: int = 2,
                   scale: float = 0.5) -> torch.Tensor:
    """Final states (n, m) of a diagonal CDE driven by (t, tanh(R h)), where h are the states of a first
    diagonal CDE on ``path`` and R a random readout to ``readout`` channels (standardized)."""
    c = path.shape[-1]
    A1 = torch.randn(c, m, generator=generator, dtype=torch.float64) * scale
    A1[0] = -A1[0].abs() * 4
    h = linear_cde(path, torch.diag_embed(A1), torch.randn(c, m, generator=generator, dtype=torch.float64))
    r = h @ torch.randn(m, readout, generator=generator, dtype=torch.float64)
    # a bounded readout, as between real layers (norm, gate); a linear one lets heavy tails explode
    r = torch.tanh(r / r.flatten(0, 1).std(0).clamp_min(1e-12))
    inner = torch.cat([path[..., :1], r], dim=-1)  # time, then the first layer's readout
    return random_cde(inner, m, generator, diagonal=True, scale=scale)


@torch.no_grad()
def checkpoint_subjects(model, windows: torch.Tensor, layer: int, channels: int,
                        stack_depths: tuple[int, ...] = (2,)) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Subjects from a MambaLM on token windows (n, L): name -> (path (n, L + 1, 1 + channels), targets (n, k)).
    The bare recurrence and the full mixer of ``layer`` take the PCA of that layer's normed input as
    their path; the residual stream after d layers (``stack_depths``) takes the PCA of the embeddings."""
    backbone = model.backbone
    n_layer = len(backbone.layers)
    if not 0 <= layer < n_layer:
        raise ValueError(f"layer must be in 0..{n_layer - 1}, got {layer}")
    _, streams = backbone(windows, output_hidden_states=True)
    block = backbone.layers[layer]
    hidden = block.norm(streams[layer].to(block.norm.weight.dtype)).float()
    m = block.mixer
    path = time_path(pca(hidden, channels))
    x, _ = m.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)
    dt, B, C = m.ssm_params(x)
    bare = selective_scan(x, dt, m.A, B, C, None, z=None, delta_bias=m.dt_proj.bias.float(), delta_softplus=True)
    out = {f"layer {layer}: bare recurrence": (path, bare[..., -1].double()),
           f"layer {layer}: full mixer": (path, m(hidden)[:, -1].double())}
    emb_path = time_path(pca(streams[0].float(), channels))
    for d in stack_depths:
        if 1 <= d <= n_layer:
            out[f"residual stream after {d} layers"] = (emb_path, streams[d][:, -1].double())
    return out
