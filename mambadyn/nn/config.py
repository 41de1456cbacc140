"""Typed configuration of mambadyn's models, and its mapping to Hugging Face's ``MambaConfig``."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from ..refine.modes import MODES, EigenMode
from ..typed import check_fields, positive


def _check_eigen(cfg) -> None:
    try:
        EigenMode.parse(cfg.eigen_mode)
    except ValueError:
        raise ValueError(f"{type(cfg).__name__}.eigen_mode must be one of {MODES}, got {cfg.eigen_mode!r}") from None


@dataclass
class MambaConfig:
    """A Mamba language model (and the mixer settings shared by every mambadyn model).

    ``eigen_mode`` constrains the sign of the eigenvalues of S_C^T S_B in every mixer
    (see ``mambadyn.refine``); ``"free"`` is plain Mamba.
    """

    vocab_size: int = 50280
    d_model: int = 768
    n_layer: int = 24
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | str = "auto"
    conv_bias: bool = True
    bias: bool = False
    rms_eps: float = 1e-5
    residual_in_fp32: bool = True
    tie_embeddings: bool = True
    dt_min: float = 0.001
    dt_max: float = 0.1
    dt_init_floor: float = 1e-4
    dt_scale: float = 1.0
    initializer_range: float = 0.1
    rescale_prenorm_residual: bool = False
    pad_token_id: int = 0
    bos_token_id: int = 0
    eos_token_id: int = 0
    eigen_mode: str = "free"
    eigen_threshold: float = 0.7
    scan_backend: str = "auto"
    dropout: float = 0.0
    # where mambadyn.fused can run (CUDA with Triton): the mixer after in_proj and each add + RMSNorm as fused
    # Triton kernels, with their own scan (same arithmetic); False keeps the per-op path, whose scan
    # scan_backend picks
    fused: bool = True

    def __post_init__(self) -> None:
        _check_eigen(self)
        check_fields(self)
        if isinstance(self.dt_rank, str) and self.dt_rank != "auto":
            raise ValueError(f"MambaConfig.dt_rank must be a positive integer or 'auto', got {self.dt_rank!r}")
        positive(self, "vocab_size", "d_model", "n_layer", "d_state", "expand", "d_conv", "time_step_rank",
                 "rms_eps", "dt_min", "dt_max", "dt_scale")
        positive(self, "dt_init_floor", "initializer_range", "eigen_threshold", allow_zero=True)
        if self.dt_min > self.dt_max:
            raise ValueError(f"MambaConfig.dt_min {self.dt_min} exceeds dt_max {self.dt_max}")
        if EigenMode.parse(self.eigen_mode).constrained and self.d_state > self.d_inner:
            raise ValueError(f"eigen_mode {self.eigen_mode!r} needs d_state <= d_inner ({self.d_state} > {self.d_inner})")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"MambaConfig.dropout must be in [0, 1), got {self.dropout}")

    @property
    def d_inner(self) -> int:
        return self.expand * self.d_model

    @property
    def time_step_rank(self) -> int:
        """dt_rank as a number: ceil(d_model / 16) where it is "auto"."""
        return math.ceil(self.d_model / 16) if self.dt_rank == "auto" else self.dt_rank

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "MambaConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown MambaConfig fields: {unknown}")
        return cls(**d)

    # --- Hugging Face transformers' MambaConfig -------------------------------------------------
    def to_hf_dict(self) -> dict[str, Any]:
        """config.json as transformers' ``MambaForCausalLM.save_pretrained`` writes it (plus our extras)."""
        return {
            "architectures": ["MambaForCausalLM"],
            "model_type": "mamba",
            "vocab_size": self.vocab_size,
            "hidden_size": self.d_model,
            "state_size": self.d_state,
            "num_hidden_layers": self.n_layer,
            "layer_norm_epsilon": self.rms_eps,
            "pad_token_id": self.pad_token_id,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_id,
            "expand": self.expand,
            "conv_kernel": self.d_conv,
            "use_bias": self.bias,
            "use_conv_bias": self.conv_bias,
            "hidden_act": "silu",
            "initializer_range": self.initializer_range,
            "residual_in_fp32": self.residual_in_fp32,
            "time_step_rank": self.time_step_rank,
            "time_step_scale": self.dt_scale,
            "time_step_min": self.dt_min,
            "time_step_max": self.dt_max,
            "time_step_init_scheme": "random",
            "time_step_floor": self.dt_init_floor,
            "rescale_prenorm_residual": self.rescale_prenorm_residual,
            "use_cache": True,
            "tie_word_embeddings": self.tie_embeddings,
            "intermediate_size": self.d_inner,
            "mambadyn": {"eigen_mode": self.eigen_mode, "eigen_threshold": self.eigen_threshold,
                         "dropout": self.dropout},
        }

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> "MambaConfig":
        """Read transformers' config.json, or mamba_ssm's (d_model / n_layer / ssm_cfg) format."""
        if "d_model" in d and "hidden_size" not in d:  # mamba_ssm's MambaConfig
            ssm = d.get("ssm_cfg") or {}
            layer = ssm.get("layer", "Mamba1")
            if layer != "Mamba1":
                raise ValueError(f"only Mamba-1 checkpoints are supported, this one is {layer!r}")
            vocab = d["vocab_size"]
            mult = d.get("pad_vocab_size_multiple", 1)
            vocab += (-vocab) % mult
            return cls(vocab_size=vocab, d_model=d["d_model"], n_layer=d["n_layer"],
                       d_state=ssm.get("d_state", 16), expand=ssm.get("expand", 2), d_conv=ssm.get("d_conv", 4),
                       dt_rank=ssm.get("dt_rank", "auto"), conv_bias=ssm.get("conv_bias", True),
                       bias=ssm.get("bias", False), rms_eps=d.get("norm_epsilon", 1e-5),
                       residual_in_fp32=d.get("residual_in_fp32", True),
                       tie_embeddings=d.get("tie_embeddings", True))
        model_type = d.get("model_type", "mamba")
        if model_type != "mamba":
            raise ValueError(f"config.json describes model_type {model_type!r}; mambadyn reads Mamba-1 ('mamba') only")
        act = d.get("hidden_act", "silu")
        if act != "silu":
            raise ValueError(f"hidden_act {act!r} is not supported (only 'silu')")
        required = ("vocab_size", "hidden_size", "num_hidden_layers")
        missing = [k for k in required if k not in d]
        if missing:
            raise ValueError(f"config.json lacks required fields {missing}")
        extra = d.get("mambadyn", {})
        eos = d.get("eos_token_id", 0)
        return cls(
            vocab_size=d["vocab_size"], d_model=d["hidden_size"], n_layer=d["num_hidden_layers"],
            d_state=d.get("state_size", 16), expand=d.get("expand", 2), d_conv=d.get("conv_kernel", 4),
            dt_rank=d.get("time_step_rank", "auto"), conv_bias=d.get("use_conv_bias", True),
            bias=d.get("use_bias", False), rms_eps=d.get("layer_norm_epsilon", 1e-5),
            residual_in_fp32=d.get("residual_in_fp32", True), tie_embeddings=d.get("tie_word_embeddings", True),
            dt_min=d.get("time_step_min", 0.001), dt_max=d.get("time_step_max", 0.1),
            dt_init_floor=d.get("time_step_floor", 1e-4), dt_scale=d.get("time_step_scale", 1.0),
            initializer_range=d.get("initializer_range", 0.1),
            rescale_prenorm_residual=d.get("rescale_prenorm_residual", False),
            pad_token_id=d.get("pad_token_id") or 0, bos_token_id=d.get("bos_token_id") or 0,
            eos_token_id=(eos[0] if isinstance(eos, list) else eos) or 0,
            eigen_mode=extra.get("eigen_mode", "free"), eigen_threshold=extra.get("eigen_threshold", 0.7),
            dropout=extra.get("dropout", 0.0),
        )


@dataclass
class ClassifierConfig:
    """A Mamba image classifier: patch embedding -> Mamba blocks -> mean pooling -> linear head."""

    image_size: int = 28
    in_channels: int = 1
    patch_size: int = 4
    num_classes: int = 10
    d_model: int = 64
    n_layer: int = 4
    d_state: int = 16
    expand: int = 2
    d_conv: int = 4
    dt_rank: int | str = "auto"
    bidirectional: bool = True
    pool: str = "mean"  # mean over tokens | last: the last token's state (a causal stack's whole-sequence summary)
    reorder_layers: list[int] = field(default_factory=list)
    reorder_tau: float = 1.0
    reorder_hard: bool = False
    reorder_restore: bool = True
    # the follow-up's random reordering: in training, the tokens (after the position embedding) in a fresh
    # random order for every batch; at evaluation, in their own order
    random_order: bool = False
    eigen_mode: str = "free"
    eigen_threshold: float = 0.7
    scan_backend: str = "auto"
    fused: bool = True  # the mixers' fused CUDA path where it can run (see MambaConfig.fused)
    dropout: float = 0.0
    rms_eps: float = 1e-5

    def __post_init__(self) -> None:
        _check_eigen(self)
        check_fields(self)
        positive(self, "image_size", "in_channels", "patch_size", "num_classes", "d_model", "n_layer", "d_state",
                 "expand", "d_conv", "rms_eps")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ClassifierConfig.dropout must be in [0, 1), got {self.dropout}")
        bad = [i for i in self.reorder_layers if not 0 <= i < self.n_layer]
        if bad:
            raise ValueError(f"reorder_layers {bad} out of range for n_layer={self.n_layer}")
        if self.reorder_tau <= 0:
            raise ValueError(f"reorder_tau must be > 0, got {self.reorder_tau}")
        if self.pool not in ("mean", "last"):
            raise ValueError(f"ClassifierConfig.pool must be 'mean' or 'last', got {self.pool!r}")

    @property
    def seq_len(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    def mixer_config(self) -> MambaConfig:
        """The MambaConfig its blocks are built from (vocab unused)."""
        return MambaConfig(vocab_size=1, d_model=self.d_model, n_layer=self.n_layer, d_state=self.d_state,
                           expand=self.expand, d_conv=self.d_conv, dt_rank=self.dt_rank,
                           eigen_mode=self.eigen_mode, eigen_threshold=self.eigen_threshold,
                           scan_backend=self.scan_backend, fused=self.fused, dropout=self.dropout,
                           rms_eps=self.rms_eps)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ClassifierConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ClassifierConfig fields: {unknown}")
        return cls(**d)
