"""Training checkpoints: safetensors for every tensor (model, optimizer moments, RNG states) and
JSON for the rest (step, scheduler, scaler, config). Nothing is pickled.

A checkpoint is a folder ``ckpt-{step}``; the file ``latest`` names the newest complete one and is
replaced atomically after the folder is fully written, so a run killed at any moment leaves either
the previous or the new checkpoint, never a torn one.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, load_model, save_file, save_model


def _plain(obj):
    # one-element tensors (a learning rate kept as a tensor for a CUDA graph) as numbers, for JSON
    if isinstance(obj, torch.Tensor) and obj.numel() == 1:
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _flatten_optimizer(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, state in sd["state"].items():
        for k, v in state.items():
            if isinstance(v, torch.Tensor):
                tensors[f"{idx}.{k}"] = v.detach().contiguous()
            else:
                scalars[f"{idx}.{k}"] = v
    return tensors, {"param_groups": _plain(sd["param_groups"]), "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state: dict[int, dict] = {}
    for key, v in list(tensors.items()) + list(meta["scalars"].items()):
        idx, k = key.split(".", 1)
        state.setdefault(int(idx), {})[k] = v
    return {"state": state, "param_groups": meta["param_groups"]}


def save_checkpoint(out_dir: str | Path, step: int, model, optimizer, scheduler, scaler, extra: dict,
                    keep: int = 1) -> Path:
    """Write ``out_dir/ckpt-{step}`` then point ``out_dir/latest`` at it; keep the newest ``keep``."""
    out = Path(out_dir)
    folder = out / f"ckpt-{step}"
    tmp = out / f".ckpt-{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizer(optimizer)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    rng = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            rng[f"cuda{i}"] = s
    save_file(rng, str(tmp / "rng.safetensors"))
    meta = {"step": step, "optimizer": opt_meta, "scheduler": _plain(scheduler.state_dict()),
            "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None, **extra}
    (tmp / "trainer.json").write_text(json.dumps(meta, indent=1, default=str))
    for f in tmp.iterdir():  # make the bytes durable before the rename publishes them
        with open(f, "rb") as fh:
            os.fsync(fh.fileno())
    shutil.rmtree(folder, ignore_errors=True)
    os.replace(tmp, folder)
    pointer = out / ".latest.tmp"
    pointer.write_text(folder.name)
    os.replace(pointer, out / "latest")
    # prune by step below this one: a folder named for a later step is never the newest of this run
    older = sorted((p for p in out.glob("ckpt-*") if p.name.split("-")[1].isdigit() and p != folder
                    and int(p.name.split("-")[1]) < step), key=lambda p: int(p.name.split("-")[1]))
    for old in older[: max(0, len(older) - (keep - 1))]:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def latest_checkpoint(out_dir: str | Path) -> Path | None:
    pointer = Path(out_dir) / "latest"
    if not pointer.is_file():
        return None
    folder = Path(out_dir) / pointer.read_text().strip()
    if not (folder / "trainer.json").is_file():
        raise FileNotFoundError(f"{pointer} names {folder}, which is missing or incomplete")
    return folder


def load_checkpoint(folder: str | Path, model, optimizer, scheduler, scaler) -> dict:
    """Restore everything ``save_checkpoint`` wrote; returns the trainer metadata (with ``step``)."""
    folder = Path(folder)
    try:
        meta = json.loads((folder / "trainer.json").read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{folder / 'trainer.json'} is not valid JSON ({e}); the checkpoint is damaged") from e
    device = next(model.parameters()).device
    try:
        load_model(model, str(folder / "model.safetensors"), strict=True)
        opt_tensors = load_file(str(folder / "optimizer.safetensors"), device=str(device))
        rng = load_file(str(folder / "rng.safetensors"))
    except Exception as e:  # noqa: BLE001 - safetensors' own error type for torn files, missing keys
        raise ValueError(f"checkpoint {folder} cannot be read ({e}); it is damaged or from another model") from e
    optimizer.load_state_dict(_unflatten_optimizer(opt_tensors, meta["optimizer"]))
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(rng["cpu"])
    if torch.cuda.is_available():
        states = [rng[k] for k in sorted(k for k in rng if k.startswith("cuda"))]
        if states:
            torch.cuda.set_rng_state_all(states[: torch.cuda.device_count()])
    return meta
