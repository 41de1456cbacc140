"""Hugging Face checkpoint I/O: config.json + model.safetensors (sharded too), as transformers'
``MambaForCausalLM`` writes them. Weights are read with safetensors only: pickled ``.bin`` files
are refused, never unpickled."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from .config import MambaConfig


class CheckpointError(ValueError):
    """A checkpoint folder that is missing files, or whose weights do not match its config."""


def effective_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """State dict with every parametrized weight replaced by the weight the model computes with,
    under its plain name (``x_proj.weight``), so other tools read it as an ordinary Mamba."""
    sd: dict[str, torch.Tensor] = {}
    for name, module in model.named_modules():
        if isinstance(module, parametrize.ParametrizationList) or ".parametrizations" in name:
            continue
        prefix = f"{name}." if name else ""
        if parametrize.is_parametrized(module):
            for pname in module.parametrizations:
                sd[prefix + pname] = getattr(module, pname).detach()
        for pname, p in module.named_parameters(recurse=False):
            sd[prefix + pname] = p.detach()
        for bname, b in module.named_buffers(recurse=False):
            sd[prefix + bname] = b.detach()
    return sd


def load_effective_state_dict(model: nn.Module, sd: dict[str, torch.Tensor], source: str = "checkpoint") -> None:
    """Copy ``sd`` (plain names, as ``effective_state_dict`` makes) into ``model``; parametrized weights
    go through their parametrization's right inverse. Raises ``CheckpointError`` listing every
    missing, unexpected or wrongly-shaped tensor."""
    expected = effective_state_dict(model)
    missing = sorted(set(expected) - set(sd))
    unexpected = sorted(set(sd) - set(expected))
    shapes = [f"{k}: checkpoint {tuple(sd[k].shape)} vs config {tuple(expected[k].shape)}"
              for k in sorted(set(sd) & set(expected)) if sd[k].shape != expected[k].shape]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing tensors {missing[:8]}{' ...' if len(missing) > 8 else ''}")
        if unexpected:
            parts.append(f"unexpected tensors {unexpected[:8]}{' ...' if len(unexpected) > 8 else ''}")
        if shapes:
            parts.append("shape mismatches (config does not match weights): " + "; ".join(shapes[:8]))
        raise CheckpointError(f"{source}: " + "; ".join(parts))
    with torch.no_grad():
        for name, module in model.named_modules():
            if isinstance(module, parametrize.ParametrizationList) or ".parametrizations" in name:
                continue
            prefix = f"{name}." if name else ""
            if parametrize.is_parametrized(module):
                for pname in list(module.parametrizations):
                    setattr(module, pname, sd[prefix + pname].to(getattr(module, pname).dtype))
            for pname, p in module.named_parameters(recurse=False):
                p.copy_(sd[prefix + pname])
            for bname, b in module.named_buffers(recurse=False):
                b.copy_(sd[prefix + bname])


def _resolve(path: str | Path) -> Path:
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"{p} is a file; expected a checkpoint folder with config.json and *.safetensors")
        return p
    if isinstance(path, str) and path.count("/") == 1 and not path.startswith((".", "/")):
        try:
            from huggingface_hub import snapshot_download
        except ImportError as e:  # pragma: no cover
            raise CheckpointError(f"{path} is not a folder, and huggingface_hub is not installed") from e
        return Path(snapshot_download(path, allow_patterns=["*.json", "*.safetensors"]))
    raise CheckpointError(f"checkpoint folder {path} does not exist")


def read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, or of the shards an index names. Refuses pickle files."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.exists():
        return load_file(str(single))
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        sd: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (folder / shard).exists():
                raise CheckpointError(f"{folder}: shard {shard} named in {index.name} is missing")
            sd.update(load_file(str(folder / shard)))
        return sd
    pickles = [f.name for f in folder.glob("*.bin")] + [f.name for f in folder.glob("*.pt")]
    if pickles:
        raise CheckpointError(
            f"{folder} holds only pickled weights {pickles}; mambadyn never unpickles untrusted files. "
            "Convert them to safetensors first (e.g. transformers' save_pretrained(safe_serialization=True))."
        )
    raise CheckpointError(f"{folder} has no model.safetensors (nor a sharded model.safetensors.index.json)")


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # mamba_ssm checkpoints call the embedding 'embedding'; transformers calls it 'embeddings'
    return {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}


def read_config_json(folder: Path) -> dict:
    """``folder/config.json`` as a dict; a CheckpointError if it is missing or not JSON."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{folder} has no config.json")
    try:
        return json.loads(cfg_file.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e


def load_pretrained(cls, path: str | Path, **overrides):
    folder = _resolve(path)
    raw = read_config_json(folder)
    config = MambaConfig.from_hf_dict(raw)
    for k, v in overrides.items():
        if not hasattr(config, k):
            raise ValueError(f"unknown MambaConfig override {k!r}")
        setattr(config, k, v)
    config.__post_init__()
    sd = _normalise_keys(read_safetensors_folder(folder))
    if config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    # Build free, load the checkpoint's weights as they are, then constrain: the constraint's right
    # inverse projects the loaded weights onto the constrained family (exact if they already are in it).
    eigen_mode, config.eigen_mode = config.eigen_mode, "free"
    model = cls(config)
    load_effective_state_dict(_TiedView(model, config.tie_embeddings), sd, source=str(folder))
    if eigen_mode != "free":
        from ..refine import constrain_eigenvalues

        constrain_eigenvalues(model, eigen_mode, threshold=config.eigen_threshold)
        config.eigen_mode = eigen_mode
    return model


class _TiedView(nn.Module):
    """The model seen without lm_head when it is tied to the embedding (one tensor, stored once)."""

    def __init__(self, model: nn.Module, tied: bool):
        super().__init__()
        self.backbone = model.backbone
        if not tied:
            self.lm_head = model.lm_head


def save_pretrained(model, path: str | Path) -> None:
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    sd = effective_state_dict(_TiedView(model, model.config.tie_embeddings))
    save_file({k: v.contiguous() for k, v in sd.items()}, str(folder / "model.safetensors"),
              metadata={"format": "pt"})
    (folder / "config.json").write_text(json.dumps(model.config.to_hf_dict(), indent=2) + "\n")
