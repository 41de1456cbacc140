"""Checkpoint I/O: config.json + model.safetensors (sharded too), as transformers' ``MambaForCausalLM``
writes them, and mamba-ssm's folders (config.json with d_model / n_layer / ssm_cfg + pytorch_model.bin).
A ``.bin`` is read with ``torch.load(weights_only=True)`` only, whose restricted unpickler builds
tensors and plain containers and nothing else; a file that needs full unpickling is refused."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.utils import parametrize

from ..errors import MambadynError
from ..refine.modes import EigenMode
from .config import MambaConfig


class CheckpointError(MambadynError, ValueError):
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


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def resolve_checkpoint(path: str | Path) -> Path:
    """A local checkpoint folder, or a Hugging Face hub id ("org/name") downloaded into the hub's cache.
    A path whose first component exists here is taken as local, so a typo never falls through to the hub."""
    p = Path(path)
    if p.exists():
        if not p.is_dir():
            raise CheckpointError(f"{p} is a file; expected a checkpoint folder with config.json and weights")
        return p
    text = str(path)
    if not isinstance(path, str) or not _HUB_ID.match(text) or Path(text.split("/")[0]).exists():
        raise CheckpointError(f"checkpoint folder {p} does not exist")
    try:
        from huggingface_hub import snapshot_download
    except ImportError as e:  # pragma: no cover
        raise CheckpointError(f"{text} is not a local folder, and huggingface_hub is not installed") from e
    try:
        return Path(snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.txt", "*.model"]))
    except Exception as e:  # noqa: BLE001 - offline, unknown repo, gated repo: one message
        raise CheckpointError(f"{text} is not a local folder and could not be fetched from the Hugging Face hub "
                              f"({type(e).__name__}); offline, download it elsewhere and pass the local folder") from e



def _load_safetensors(file: Path) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(file))
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type for torn files
        raise CheckpointError(f"{file} is not a readable safetensors file ({e}); is it truncated?") from e


def _load_bin(file: Path) -> dict[str, torch.Tensor]:
    try:
        sd = torch.load(str(file), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - UnpicklingError for anything beyond tensors, EOFError if torn
        raise CheckpointError(f"{file} cannot be read with torch.load(weights_only=True) ({type(e).__name__}); "
                              "mambadyn never fully unpickles a file. Convert it to safetensors with the tool "
                              "that wrote it") from e
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{file} does not hold a flat dict of tensors")
    return sd


def read_safetensors_folder(folder: Path) -> dict[str, torch.Tensor]:
    """All tensors of model.safetensors, of the shards an index names, or of mamba-ssm's
    pytorch_model.bin (weights only). Raises ``CheckpointError`` naming the file for anything else."""
    single = folder / "model.safetensors"
    index = folder / "model.safetensors.index.json"
    if single.exists():
        return _load_safetensors(single)
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a safetensors index (needs a weight_map)") from e
        sd: dict[str, torch.Tensor] = {}
        root = folder.resolve()
        for shard in sorted(set(weight_map.values())):
            file = (folder / shard).resolve()
            if root not in file.parents:
                raise CheckpointError(f"{index} names shard {shard!r} outside its folder; refused")
            if not file.exists():
                raise CheckpointError(f"{folder}: shard {shard} named in {index.name} is missing")
            sd.update(_load_safetensors(file))
        return sd
    if (folder / "pytorch_model.bin").exists():
        return _load_bin(folder / "pytorch_model.bin")
    raise CheckpointError(f"{folder} has no model.safetensors, model.safetensors.index.json or pytorch_model.bin")


def check_finite(sd: dict[str, torch.Tensor], source: str) -> None:
    bad = [k for k, v in sd.items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{source}: non-finite values (NaN or inf) in {bad[:8]}")


def build_then_constrain(cls, config, load_weights):
    """``cls(config)`` built free, ``load_weights(model)`` given the plain weights, then constrained to
    ``config.eigen_mode``: the constraint's right inverse projects the loaded weights onto the family
    (exact where they are in it already). The one load path of MambaLM and MambaClassifier."""
    model = cls(dataclasses.replace(config, eigen_mode=EigenMode.FREE.value))
    load_weights(model)
    if EigenMode.parse(config.eigen_mode).constrained:
        from ..refine import constrain_eigenvalues

        constrain_eigenvalues(model, config.eigen_mode, threshold=config.eigen_threshold)
    model.config = config
    return model


def _normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    # mamba_ssm checkpoints call the embedding 'embedding'; transformers calls it 'embeddings'
    return {k.replace("backbone.embedding.", "backbone.embeddings."): v for k, v in sd.items()}


def read_config_json(folder: Path) -> dict:
    """``folder/config.json`` as a dict; a CheckpointError if it is missing or not JSON."""
    cfg_file = folder / "config.json"
    if not cfg_file.is_file():
        raise CheckpointError(f"{folder} has no config.json")
    try:
        d = json.loads(cfg_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{cfg_file} is not valid JSON: {e}") from e
    if not isinstance(d, dict):
        raise CheckpointError(f"{cfg_file} must hold a JSON object, got a {type(d).__name__}")
    return d


def load_pretrained(cls, path: str | Path, **overrides):
    folder = resolve_checkpoint(path)
    try:
        config = MambaConfig.from_hf_dict(read_config_json(folder))
        unknown = sorted(set(overrides) - {f.name for f in dataclasses.fields(MambaConfig)})
        if unknown:
            raise ValueError(f"unknown MambaConfig overrides {unknown}")
        config = dataclasses.replace(config, **overrides)
    except (ValueError, TypeError, KeyError) as e:
        raise CheckpointError(f"{folder / 'config.json'}: {e}") from e
    sd = _normalise_keys(read_safetensors_folder(folder))
    check_finite(sd, str(folder))
    if config.tie_embeddings:
        sd.pop("lm_head.weight", None)
    return build_then_constrain(
        cls, config, lambda m: load_effective_state_dict(_TiedView(m, config.tie_embeddings), sd, source=str(folder)))


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
