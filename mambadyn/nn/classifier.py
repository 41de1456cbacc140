"""MambaClassifier: patch embedding -> Mamba blocks -> mean pooling -> linear head.

Image patches have no causal order, so blocks are bidirectional by default (as in Vision Mamba):
one mixer scans the patches forward, a second scans them backward, and the block adds the mean
of the two to the residual stream. The mean, not the sum, keeps the residual update on the same
scale as a unidirectional block, so ``bidirectional`` can be switched without retuning.
``bidirectional=False`` gives a plain causal stack whose last patch alone has seen the whole image;
mean pooling still lets every patch vote, ``pool="last"`` reads the last patch alone (sequential-MNIST
style, where the order of the patches matters most).

Token reordering (``reorder_layers``) attaches a ``TokenReorder`` to every mixer of those blocks;
it is what the paper's importance-based reordering does in the first block of each stage.
``random_order`` is the follow-up's random reordering (Token Dynamics on Spheres in Mamba Models): the
whole stack reads the tokens, position embeddings included, in a fresh random order for every training
batch and in their own order at evaluation. The follow-up's abstract says only "randomly reordering
tokens during training"; where the permutation sits and how often it is drawn are mambadyn's choices.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import nn

from ..refine.modes import EigenMode
from .block import RMSNorm
from .config import ClassifierConfig
from .mixer import MambaMixer

ARCHITECTURE = "MambaClassifier"


class BiMambaBlock(nn.Module):
    """Pre-norm residual block with a forward mixer and, if bidirectional, a backward one."""

    def __init__(self, config: ClassifierConfig, layer_idx: int):
        super().__init__()
        mc = config.mixer_config()
        self.norm = RMSNorm(config.d_model, eps=config.rms_eps)
        self.mixer = MambaMixer(mc, layer_idx)
        self.mixer_b = MambaMixer(mc, layer_idx) if config.bidirectional else None
        self.drop = nn.Dropout(config.dropout)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """h (batch, L, d_model) -> (batch, L, d_model)."""
        x = self.norm(h)
        out = self.mixer(x)
        if self.mixer_b is not None:
            out = 0.5 * (out + self.mixer_b(x.flip(1)).flip(1))
        return h + self.drop(out)


class MambaClassifier(nn.Module):
    """``forward(images (batch, C, H, W) float) -> logits (batch, num_classes)``."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        self.config = config
        c = config
        self.patch_embed = nn.Conv2d(c.in_channels, c.d_model, kernel_size=c.patch_size, stride=c.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, c.seq_len, c.d_model))
        self.layers = nn.ModuleList([BiMambaBlock(c, i) for i in range(c.n_layer)])
        self.norm_f = RMSNorm(c.d_model, eps=c.rms_eps)
        self.head = nn.Linear(c.d_model, c.num_classes)
        nn.init.normal_(self.pos_embed, std=0.02)
        if c.reorder_layers:
            from ..refine.reorder import TokenReorder

            for i in c.reorder_layers:
                for m in self.mixers_of(i):
                    m.reorder = TokenReorder(m.d_inner, tau=c.reorder_tau, hard=c.reorder_hard,
                                             restore=c.reorder_restore)
        if EigenMode.parse(c.eigen_mode).constrained:
            from ..refine import constrain_eigenvalues

            constrain_eigenvalues(self, c.eigen_mode, threshold=c.eigen_threshold, init="keep")

    def mixers_of(self, layer: int) -> list[MambaMixer]:
        block = self.layers[layer]
        return [m for m in (block.mixer, block.mixer_b) if m is not None]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (batch, in_channels, image_size, image_size) -> logits (batch, num_classes)."""
        c = self.config
        expected = (c.in_channels, c.image_size, c.image_size)
        if not isinstance(images, torch.Tensor) or images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must have shape (batch, {', '.join(map(str, expected))}), "
                             f"got {tuple(getattr(images, 'shape', ()))}")
        if not images.is_floating_point():
            raise TypeError(f"images must be a floating-point tensor, got {images.dtype}")
        h = self.patch_embed(images.to(self.patch_embed.weight.dtype)).flatten(2).transpose(1, 2) + self.pos_embed
        if c.random_order and self.training:
            # one permutation for the batch, drawn from torch's generator (saved and restored with a run)
            h = h[:, torch.randperm(h.shape[1], device=h.device)]
        for layer in self.layers:
            h = layer(h)
        h = self.norm_f(h)
        return self.head(h[:, -1] if c.pool == "last" else h.mean(1))

    # --- checkpoints ---------------------------------------------------------------------------
    def save_pretrained(self, path: str | Path) -> None:
        """Write config.json + model.safetensors (effective weights under plain names)."""
        from .hf_io import effective_state_dict

        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        sd = effective_state_dict(self)
        save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"),
                  metadata={"format": "pt"})
        cfg = {"architectures": [ARCHITECTURE], **self.config.to_dict()}
        (folder / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")

    @classmethod
    def from_pretrained(cls, path: str | Path, **overrides) -> "MambaClassifier":
        """Load a folder written by ``save_pretrained``; ``overrides`` replace config fields."""
        from .hf_io import (
            CheckpointError,
            build_then_constrain,
            check_finite,
            load_effective_state_dict,
            read_config_json,
            read_safetensors_folder,
        )

        folder = Path(path)
        if not folder.is_dir():
            raise CheckpointError(f"checkpoint folder {folder} does not exist")
        raw = read_config_json(folder)
        if raw.pop("architectures", [ARCHITECTURE]) != [ARCHITECTURE]:
            raise CheckpointError(f"{folder / 'config.json'} does not describe a {ARCHITECTURE}")
        try:
            config = ClassifierConfig.from_dict({**raw, **overrides})
        except (ValueError, TypeError) as e:
            raise CheckpointError(f"{folder / 'config.json'}: {e}") from e
        sd = read_safetensors_folder(folder)
        check_finite(sd, str(folder))
        return build_then_constrain(cls, config, lambda m: load_effective_state_dict(m, sd, source=str(folder)))

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())
