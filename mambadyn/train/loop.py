"""The training loop: AdamW, warmup + cosine, clipping, autocast on GPU, periodic evaluation, JSONL
metrics, atomic checkpoints, exact resume, and DDP under torchrun (the same code on CPU, one GPU or
several)."""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import asdict
from pathlib import Path

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

NO_DECAY = ("bias", "norm", "A_log", "D", "pos_embed", "embeddings")


def _dist_setup(device_pref: str):
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_pref.startswith("cuda") else "gloo")
    if device_pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise RuntimeError("run.device is cuda but CUDA is not available")
        local = int(os.environ.get("LOCAL_RANK", "0"))
        device = torch.device(device_pref if ":" in device_pref else f"cuda:{local}")
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    return rank, world, device


def param_groups(model, weight_decay: float):
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.dim() < 2 or any(k in name for k in NO_DECAY) else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def lr_lambda(warmup: int, total: int, min_ratio: float):
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    return f


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines a killed run wrote after its last checkpoint: the resumed run writes them again."""
    if not path.exists():
        return
    keep = [ln for ln in path.read_text().splitlines() if ln and json.loads(ln).get("step", 0) <= step]
    path.write_text("".join(ln + "\n" for ln in keep))


def train(task, cfg, resume: bool = False, on_eval=None) -> dict:
    """Train ``task`` (see tasks.py) under ``cfg`` (LMTrainConfig / ImageTrainConfig).

    Writes ``run.out_dir``: config.json, metrics.jsonl (one JSON object per logged step or
    evaluation), checkpoints (``ckpt-*`` + ``latest``) and the final model under ``model/``.
    ``resume`` continues from the latest checkpoint there; the result equals an uninterrupted run.
    Returns the final evaluation metrics.
    """
    run, opt_cfg = cfg.run, cfg.optim
    rank, world, device = _dist_setup(run.device)
    out = Path(run.out_dir)
    is_main = rank == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    amp = run.amp if run.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    torch.manual_seed(run.seed)
    model = task.build_model().to(device)
    optimizer = torch.optim.AdamW(param_groups(model, opt_cfg.weight_decay), lr=opt_cfg.lr, betas=opt_cfg.betas,
                                  foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(opt_cfg.warmup_steps, opt_cfg.steps, opt_cfg.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    start = 0
    log_path = out / "metrics.jsonl"
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None and is_main:
        print(f"--resume: no checkpoint in {out}; starting from step 0")
    if ckpt is not None:
        start = load_checkpoint(ckpt, model, optimizer, scheduler, scaler)["step"]
        if is_main:
            _truncate_log(log_path, start)
    elif is_main:
        log_path.unlink(missing_ok=True)
    if is_main:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    def log(record):
        if is_main:
            with open(log_path, "a") as f:
                f.write(json.dumps(record) + "\n")

    def evaluate(step):
        model.eval()
        metrics = task.evaluate(model, device, autocast) if is_main else {}
        model.train()
        if world > 1:
            dist.barrier()
        if is_main:
            log({"step": step, "event": "eval", **metrics})
            if on_eval:
                on_eval(step, metrics)
        return metrics

    bar = tqdm(total=opt_cfg.steps, initial=start, disable=not (run.progress and is_main), dynamic_ncols=True,
               desc=out.name)
    model.train()
    t_last, items = time.perf_counter(), 0
    for step in range(start, opt_cfg.steps):
        x, y = task.batch(step)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with autocast():
            loss = task.loss(net, x, y)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower optim.lr or check the data")
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opt_cfg.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        items += task.items(x) * world
        done = step + 1
        if done % run.log_every == 0 or done == opt_cfg.steps:
            if device.type == "cuda":
                torch.cuda.synchronize()
            now = time.perf_counter()
            rate = items / (now - t_last)
            t_last, items = now, 0
            log({"step": done, "loss": loss.item(), "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm.item(),
                 f"{task.unit}_per_s": rate})
            bar.set_postfix(loss=f"{loss.item():.3f}", **{f"{task.unit}/s": f"{rate:,.0f}"})
        bar.update(1)
        t_pause = time.perf_counter()
        if run.eval_every and done % run.eval_every == 0 and done != opt_cfg.steps:
            evaluate(done)
        if run.ckpt_every and done % run.ckpt_every == 0 and done != opt_cfg.steps and is_main:
            save_checkpoint(out, done, model, optimizer, scheduler, scaler, {"config": asdict(cfg)})
        t_last += time.perf_counter() - t_pause  # throughput counts training steps only
    bar.close()
    final = evaluate(opt_cfg.steps)
    if is_main:
        save_checkpoint(out, opt_cfg.steps, model, optimizer, scheduler, scaler, {"config": asdict(cfg)})
        model.save_pretrained(out / "model")
    if world > 1:
        dist.barrier()
    return final
