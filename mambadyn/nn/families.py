"""The selective-SSM families transformers ships, one adapter each, and what the probe reads from their
layers while transformers' own classes run.

Capture. Every family's mixer hands its scan's inputs to one module-level function of its modeling file
(``mamba_scan_forward`` for the Mamba-1 kinds, ``mamba2_scan_forward`` for the Mamba-2 kinds), the seam
transformers keeps so that kernels can replace the scan. ``capture`` wraps that function for the length of
a forward pass and records, per mixer, exactly what the family computed: the scan input u, Δ before its
bias and softplus, B and C (after any norm the family puts on them), and the mixer's own input. Nothing is
re-implemented; a family joins by one entry in ``FAMILIES``.

The interaction matrix, per kind (tokens x in the space the matrix acts on, Δ's positive factors aside):

* Mamba-1 (Mamba): B_t = S_B u_t, C_t = S_C u_t, so C_s^T B_t = u_s^T S_C^T S_B u_t and the paper's
  matrix is S_C^T S_B on the scan input u (d_inner).
* FalconMamba: B_t = S_B u_t / rms(S_B u_t) and C likewise (a weightless RMSNorm, ``b_layernorm`` and
  ``c_layernorm``), so C_s^T B_t = u_s^T S_C^T S_B u_t / (rms(S_C u_s) rms(S_B u_t)): the same matrix and the
  same signs of every quadratic form, magnitudes divided by two positive per-token norms (the dynamics'
  polynomial growth in |x| is gone: the norms make B and C scale-free). Δ's low-rank part passes a
  weightless RMSNorm too (``dt_layernorm``), so Δ is not softplus(S_Δ u + b) with a fixed S_Δ.
* Jamba: the same norms with learnable weights g_B, g_C (``JambaRMSNorm``: weight * x / rms(x)), so
  C_s^T B_t = u_s^T S_C^T diag(g_C g_B) S_B u_t / (rms rms): the matrix is S_C^T diag(g_C * g_B) S_B.
* Mamba-2 kinds (Mamba2, Zamba2, Bamba, NemotronH, GraniteMoeHybrid, FalconH1): x, B and C are separate
  slices of in_proj, each through the causal conv and SiLU, shared by the heads of a group; per group g,
  B_t = silu(conv(W_B^(g) h))_t with h the mixer's input (d_model). Without the conv and SiLU,
  C_s^T B_t = h_s^T W_C^(g)T W_B^(g) h_t: the probe reports the spectrum of W_C^(g)T W_B^(g) on h, with the
  per-head scalar A = -exp(A_log) and dt bias beside it. The paper's 1-D / D-dim criteria are stated for
  the Mamba-1 form; for this kind they apply only as a labelled analogue (the conv, the SiLU and the split
  of x from B and C all stand between). FalconH1 scales h by ``ssm_in_multiplier`` and in_proj's rows by
  ``mup_vector`` first: W_B and W_C are those of the scaled product.
"""

from __future__ import annotations

import contextlib
import importlib
from dataclasses import dataclass, fields

import torch
from torch import nn

from .recompute import recomputing

MAMBA1, MAMBA2 = "mamba1", "mamba2"


@dataclass(frozen=True)
class Family:
    model_type: str  # transformers' config.model_type
    module: str  # transformers.models.<module>.modeling_<module>
    mixer_class: str  # the class whose instances are the SSM layers
    kind: str  # MAMBA1 | MAMBA2
    bc_norm: str = "none"  # Mamba-1 kinds: "none" | "weightless" | "learned" (RMSNorm on B, C and Δ's low rank)

    @property
    def scan_function(self) -> str:
        return "mamba_scan_forward" if self.kind == MAMBA1 else "mamba2_scan_forward"

    @property
    def matrix(self) -> str:
        if self.kind == MAMBA2:
            return "W_C^T W_B (per group, on the mixer's input; an analogue)"
        return "S_C^T diag(g_C g_B) S_B" if self.bc_norm == "learned" else "S_C^T S_B"

    def modeling(self):
        try:
            mod = importlib.import_module(f"transformers.models.{self.module}.modeling_{self.module}")
        except ImportError as e:
            raise RuntimeError(f"the {self.model_type} family needs transformers (pip install 'mambadyn[hf]'): {e}") from e
        if not hasattr(mod, self.scan_function):
            import transformers

            raise RuntimeError(f"transformers {transformers.__version__} has no {self.scan_function} in its "
                               f"{self.model_type} model, the seam mambadyn captures at: install transformers>=5.25,<6")
        return mod


FAMILIES = {f.model_type: f for f in (
    Family("mamba", "mamba", "MambaMixer", MAMBA1),
    Family("falcon_mamba", "falcon_mamba", "FalconMambaMixer", MAMBA1, "weightless"),
    Family("jamba", "jamba", "JambaMambaMixer", MAMBA1, "learned"),
    Family("mamba2", "mamba2", "Mamba2Mixer", MAMBA2),
    Family("zamba2", "zamba2", "Zamba2MambaMixer", MAMBA2),
    Family("bamba", "bamba", "BambaMixer", MAMBA2),
    Family("nemotron_h", "nemotron_h", "NemotronHMamba2Mixer", MAMBA2),
    Family("granitemoehybrid", "granitemoehybrid", "GraniteMoeHybridMambaLayer", MAMBA2),
    Family("falcon_h1", "falcon_h1", "FalconH1Mixer", MAMBA2),
)}


def supported() -> str:
    return ", ".join(sorted(FAMILIES))


def _looks_like_ssm(model: nn.Module) -> list[str]:
    # modules that carry a selective SSM's telltale parameters
    return [name for name, m in model.named_modules() if hasattr(m, "A_log") and hasattr(m, "in_proj")]


def family_of(model: nn.Module) -> Family:
    """The family of a transformers model, from its config's model_type; a clear error otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type in FAMILIES:
        return FAMILIES[model_type]
    ssm = _looks_like_ssm(model)
    if ssm:
        raise ValueError(f"model_type {model_type!r} has SSM-looking modules ({', '.join(ssm[:3])}) but is not a "
                         f"family mambadyn knows how to read; supported: {supported()}")
    raise ValueError(not_a_family(model_type))


def not_a_family(model_type) -> str:
    return f"model_type {model_type!r} has no selective-SSM layers; mambadyn probes these families: {supported()}"


def decoder_layers(model: nn.Module) -> list[nn.Module]:
    """The residual stream's blocks, SSM or not, in order."""
    base = getattr(model, "base_model", model)
    for attr in ("layers", "blocks"):
        layers = getattr(base, attr, None)
        if isinstance(layers, nn.ModuleList):
            return list(layers)
    raise ValueError(f"cannot find the decoder layers of {type(model).__name__} (no base_model.layers)")


def ssm_mixers(model: nn.Module, family: Family) -> list[tuple[str, nn.Module]]:
    """(name, mixer) of every SSM layer, in module order."""
    found = [(n, m) for n, m in model.named_modules() if type(m).__name__ == family.mixer_class]
    if not found:
        raise ValueError(f"the {family.model_type} model has no {family.mixer_class} modules: the checkpoint does not "
                         f"match what mambadyn expects of this family (transformers changed its layout?)")
    return found


def layer_kinds(model: nn.Module, family: Family) -> list[str]:
    """Per decoder layer, what it holds: "ssm", "attention", "moe", "mlp", joined by "+" where a layer holds
    several (Zamba2's hybrid layers, Falcon-H1's parallel attention and SSM)."""
    ids = {id(m) for _, m in ssm_mixers(model, family)}
    out = []
    for layer in decoder_layers(model):
        # by class name (a module's attribute name says little: "post_attention_layernorm", NemotronH's "mixer")
        classes = [type(m).__name__.lower() for m in layer.modules() if "norm" not in type(m).__name__.lower()]
        parts = ["ssm"] if any(id(m) in ids for m in layer.modules()) else []
        if any("attention" in c for c in classes):
            parts.append("attention")
        if any("moe" in c or "experts" in c for c in classes):
            parts.append("moe")
        elif any("mlp" in c or "feedforward" in c for c in classes):
            parts.append("mlp")
        out.append("+".join(parts) or type(layer).__name__)
    return out


@dataclass
class Captured:
    """One SSM layer's scan inputs and output on batch 0, as its family computed them (on the CPU, in
    float64 where the model ran in it, else float32).

    Mamba-1 kinds: u (L, d_inner), dt_raw (L, d_inner) = W_dt (dt part) before bias and softplus, B, C
    (L, N), z (L, d_inner) the gate, y (L, d_inner) the scan's output (D skip and gate applied). Mamba-2
    kinds: u = x (L, d_inner) after conv and SiLU, dt_raw (L, heads), B, C (L, groups N), z None, y (L,
    d_inner) the scan's output with the D skip, before the gated norm. ``h``: the mixer's input (L, d_model)."""

    h: torch.Tensor
    u: torch.Tensor
    dt_raw: torch.Tensor
    B: torch.Tensor
    C: torch.Tensor
    y: torch.Tensor
    z: torch.Tensor | None = None

    def head(self, n: int | None) -> Captured:
        """The first n positions (None: all)."""
        # fields(), not astuple(), which deep-copies every tensor
        return Captured(*(None if (t := getattr(self, f.name)) is None else t[:n] for f in fields(self)))


@contextlib.contextmanager
def capture(model: nn.Module, family: Family, rows: bool = False):
    """Within the block, every forward pass records each SSM mixer's ``Captured`` of batch row 0 into the
    yielded dict (mixer name -> Captured; a later pass overwrites). ``rows``: yield instead a list with one
    such dict per batch row, filled by the pass."""
    names = {id(m): n for n, m in ssm_mixers(model, family)}
    mod = family.modeling()
    original = getattr(mod, family.scan_function)
    per_row: list[dict[str, Captured]] = [{}]
    inputs: dict[int, torch.Tensor] = {}

    def keep(t, b):  # batch row b on the CPU, float32 or float64 as the model ran
        t = t[b].detach().cpu()
        return t if t.dtype in (torch.float32, torch.float64) else t.float()

    def record(module, make):
        if id(module) not in names or recomputing():  # a recomputation repeats what the first pass recorded
            return
        h = inputs[id(module)]  # the pre-hook ran just before
        n = h.shape[0] if rows else 1
        while len(per_row) < n:
            per_row.append({})
        for b in range(n):
            per_row[b][names[id(module)]] = make(lambda t: keep(t, b), keep(h, b))

    if family.kind == MAMBA1:
        def wrapped(module, hidden_states, time_step, B, C, gate, cache, **kw):
            out = original(module, hidden_states, time_step, B, C, gate, cache, **kw)
            record(module, lambda k, h: Captured(h, k(hidden_states).T, k(time_step).T, k(B), k(C), k(out).T,
                                                 k(gate).T))
            return out
    else:
        def wrapped(module, hidden_states, B, C, dt, cache, **kw):
            out = original(module, hidden_states, B, C, dt, cache, **kw)
            record(module, lambda k, h: Captured(h, k(hidden_states), k(dt), k(B), k(C), k(out)))
            return out

    def pre(module, args, kwargs):
        if recomputing():
            return
        inputs[id(module)] = (args[0] if args else kwargs["hidden_states"]).detach()

    handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for _, m in ssm_mixers(model, family)]
    setattr(mod, family.scan_function, wrapped)
    try:
        yield per_row if rows else per_row[0]
    finally:
        setattr(mod, family.scan_function, original)
        for h in handles:
            h.remove()


@dataclass
class Interaction:
    """One interaction matrix K = S_C^T S_B of an SSM layer (per group for Mamba-2 kinds), given by its
    factors: S_B, S_C (N, D) acting on tokens in a D-dim space, and the note on what it stands for."""

    S_B: torch.Tensor
    S_C: torch.Tensor
    S_delta: torch.Tensor  # (channels or heads, D): Δ's linear part on the same tokens (before bias)
    dt_bias: torch.Tensor
    A: torch.Tensor  # (d_inner, N) for Mamba-1 kinds, (heads,) for Mamba-2 kinds
    group: int | None
    note: str


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to("cpu", torch.float64)


def interactions(mixer: nn.Module, family: Family) -> list[Interaction]:
    """The layer's interaction matrices in float64 on the CPU, wherever the model lives (the spectra and ODEs
    that read them run there): one for a Mamba-1 kind, one per group for Mamba-2."""
    A = -torch.exp(_f64(mixer.A_log))
    if family.kind == MAMBA1:
        w = _f64(mixer.x_proj.weight)
        r, n = mixer.time_step_rank, mixer.ssm_state_size
        SB, SC = w[r:r + n], w[r + n:r + 2 * n]
        S_delta = _f64(mixer.dt_proj.weight) @ w[:r]
        note = "B_t = S_B u_t, C_t = S_C u_t (exact)"
        if family.bc_norm == "weightless":
            note = ("B and C pass a weightless RMSNorm: quadratic forms keep their signs, magnitudes are divided by "
                    "rms(S_C u_s) rms(S_B u_t); Δ's low rank passes one too, so S_Δ is its linear part before the norm")
        elif family.bc_norm == "learned":
            g = (_f64(mixer.b_layernorm.weight) * _f64(mixer.c_layernorm.weight))
            SB = g[:, None] * SB
            note = ("B and C pass RMSNorms with weights g_B, g_C: K = S_C^T diag(g_C g_B) S_B, magnitudes divided by "
                    "the two per-token norms; Δ's low rank passes an RMSNorm too, so S_Δ is its linear part before "
                    "the norm")
        return [Interaction(SB, SC, S_delta, _f64(mixer.dt_proj.bias), A, None, note)]
    d, G, n, H = mixer.intermediate_size, mixer.n_groups, mixer.ssm_state_size, mixer.num_heads
    # in_proj's rows are [z (d), x (d), B (G n), C (G n), dt (H)]: only B, C and dt go to float64 (z and x are
    # most of a large layer's in_proj)
    rows = slice(2 * d, 2 * d + 2 * G * n + H)
    w = _f64(mixer.in_proj.weight[rows])
    if hasattr(mixer, "mup_vector"):  # FalconH1: in_proj's rows scaled by mup_vector, its input by a scalar
        w = (_f64(mixer.mup_vector).flatten()[rows] * float(mixer.ssm_in_multiplier))[:, None] * w
    WB = w[:G * n].reshape(G, n, -1)
    WC = w[G * n:2 * G * n].reshape(G, n, -1)
    Wdt = w[2 * G * n:2 * G * n + H]
    per = H // G
    note = ("analogue: B_t = silu(conv(W_B h))_t, C likewise; K = W_C^T W_B on the mixer's input h ignores the conv "
            "and the SiLU")
    return [Interaction(WB[g], WC[g], Wdt[g * per:(g + 1) * per], _f64(mixer.dt_bias)[g * per:(g + 1) * per],
                        A[g * per:(g + 1) * per], g, note) for g in range(G)]
