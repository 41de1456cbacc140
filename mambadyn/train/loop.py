"""The training loop: AdamW, warmup + cosine, clipping, autocast on GPU, periodic evaluation, JSONL
metrics, atomic checkpoints, exact resume, and DDP under torchrun (the same code on CPU, one GPU or
several)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
from tqdm.auto import tqdm

from ..errors import Interrupted, MambadynError
from ..jsonio import dumps
from .checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint

NO_DECAY = ("bias", "norm", "A_log", "D", "pos_embed", "embeddings")


def _die_with_launcher() -> None:
    """torchrun starts each worker in a session of its own, so a SIGKILL to the launcher's process group
    never reaches the workers: they would train on without it, writing into the run folder. Ask the
    kernel (Linux PR_SET_PDEATHSIG) to kill this worker when its parent, the torchrun agent, dies."""
    if not sys.platform.startswith("linux"):
        return
    parent = os.getppid()
    ctypes.CDLL(None).prctl(1, int(signal.SIGKILL))
    if parent == 1 or os.getppid() != parent:  # the agent died before the request took effect
        os._exit(1)


def _dist_setup(device_pref: str):
    if "TORCHELASTIC_RUN_ID" in os.environ:
        _die_with_launcher()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if device_pref == "auto":
        device_pref = "cuda" if torch.cuda.is_available() else "cpu"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device_pref.startswith("cuda") else "gloo")
    if device_pref.startswith("cuda"):
        if not torch.cuda.is_available():
            raise MambadynError("run.device is cuda but CUDA is not available")
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
    """Drop log lines a killed run wrote after its last checkpoint (the resumed run writes them again),
    and a torn last line (the kill came mid-write; the checkpoint is intact)."""
    if not path.exists():
        return
    keep = []
    for ln in path.read_text().splitlines():
        try:
            record = json.loads(ln) if ln else None
        except json.JSONDecodeError:
            continue
        if record is not None and record.get("step", 0) <= step:
            keep.append(ln)
    path.write_text("".join(ln + "\n" for ln in keep))


def _differences(a: dict, b: dict, prefix: str = "") -> list[str]:
    """Dotted keys where two nested config dicts differ."""
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += _differences(va, vb, f"{prefix}{k}.")
        elif (list(va) if isinstance(va, tuple) else va) != (list(vb) if isinstance(vb, tuple) else vb):
            out.append(f"{prefix}{k}: {va!r} -> {vb!r}")
    return out


# settings that may change between a run and its resumption: they do not change what is computed
RESUMABLE_CHANGES = ("run.progress", "run.device", "run.out_dir", "run.eval_every", "run.eval_batches", "run.log_every",
                     "run.ckpt_every", "run.cuda_graph", "model.fused")


def config_differences(stored: dict, requested: dict) -> list[str]:
    """What a resumption would change in a run's stored config.json, ignoring ``RESUMABLE_CHANGES``
    (and the vocabulary, which the data sets)."""
    diffs = _differences(stored, requested)
    return [d for d in diffs if not d.startswith(RESUMABLE_CHANGES + ("model.vocab_size",))]


@contextlib.contextmanager
def run_lock(out: Path):
    """Hold ``out/.lock`` for the whole run, so a second trainer on the same folder fails at once
    (the kernel drops the lock when the process dies, so a killed run never leaves it stale)."""
    out.mkdir(parents=True, exist_ok=True)
    fh = open(out / ".lock", "a+")
    try:
        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fh.seek(0)
        owner = fh.read().strip() or "another process"
        fh.close()
        raise MambadynError(f"run folder {out} is in use by a trainer ({owner}); wait for it or stop it") from None
    fh.truncate(0)
    fh.write(f"pid {os.getpid()}")
    fh.flush()
    try:
        yield
    finally:
        fh.close()


def check_out_dir(out: Path) -> None:
    """Fail before any work when the run folder cannot be created or written."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        # a probe of this process's own: under torchrun every rank checks the same folder at once, and a
        # shared name let one rank's unlink fail the other's check
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink(missing_ok=True)
    except OSError as e:
        raise ValueError(f"run folder {out} is not writable ({e.strerror or e})") from e


def _prepare_folder(out: Path, cfg_dict: dict, resume: bool) -> None:
    """Refuse what would mix two runs in one folder: a fresh run over another's checkpoints, or a
    resumption under different settings."""
    stored_file = out / "config.json"
    has_run = (out / "latest").exists() or any(out.glob("ckpt-*"))
    if not resume and has_run:
        raise ValueError(f"run folder {out} already holds a run; pass --resume to continue it, or choose "
                         "another --out")
    if resume and stored_file.exists():
        try:
            stored = json.loads(stored_file.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{stored_file} is not valid JSON ({e}); cannot check the resumed settings") from e
        diffs = config_differences(stored, cfg_dict)
        if diffs:
            raise ValueError(f"--resume with settings that differ from the run in {out}: {'; '.join(diffs[:6])}. "
                             "Resume with the same settings, or start a new run in another folder")


def train(make_task: Callable, cfg, resume: bool = False, on_eval=None) -> dict:
    """Train the task ``make_task(cfg, rank=..., world=...)`` builds (``LMTask``, ``ImageTask``; see
    tasks.py) under ``cfg`` (LMTrainConfig / ImageTrainConfig). The task is built after the process
    group exists, so under torchrun every rank draws its own share of the data.

    Writes ``run.out_dir``: config.json, metrics.jsonl (one JSON object per logged step or
    evaluation), checkpoints (``ckpt-*`` + ``latest``), the final model under ``model/`` and the
    task's artifacts (an LM's tokenizer.json). ``resume`` continues from the latest checkpoint there;
    the result equals an uninterrupted run. The folder is locked while a trainer owns it. Returns the
    final evaluation metrics.
    """
    out = Path(cfg.run.out_dir)
    check_out_dir(out)
    rank = int(os.environ.get("RANK", "0"))
    lock = run_lock(out) if rank == 0 else contextlib.nullcontext()
    with lock:
        try:
            return _train(make_task, cfg, out, resume, on_eval)
        except KeyboardInterrupt:
            raise Interrupted(_kept_after_interrupt(out)) from None


def _kept_after_interrupt(out: Path) -> str:
    """What an interrupted run leaves in ``out``, in the words the user needs to continue it."""
    try:
        ckpt = latest_checkpoint(out)
        step = json.loads((ckpt / "trainer.json").read_text())["step"] if ckpt else None
    except (OSError, ValueError, KeyError):
        ckpt = step = None
    if ckpt is None:
        return (f"training stopped before its first checkpoint (run.ckpt_every); {out} holds no checkpoint, so "
                "a rerun starts from step 0")
    return (f"training stopped; the last checkpoint, {ckpt} (step {step}), is kept: rerun the same command with "
            "--resume to continue from it")


RUN_FILE = "run.json"  # what a resumption must find unchanged beyond config.json: process count, data files


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _run_identity(cfg, world: int) -> dict:
    """The process count (the global batch is batch_size x world) and the checksum of every data file the
    config names, recorded so that a resumption under other conditions is refused, not silently run."""
    files = {}
    for key in ("path", "val_path", "test_path", "tokenizer"):
        value = getattr(cfg.data, key, None)
        if value and Path(value).is_file():
            files[f"data.{key}"] = {"file": str(value), "sha256": _sha256(Path(value))}
    return {"world_size": world, "global_batch": cfg.optim.batch_size * world, "data_files": files}


def _check_identity(out: Path, now: dict) -> None:
    stored_file = out / RUN_FILE
    if not stored_file.is_file():  # runs from before run.json: nothing recorded to compare
        return
    try:
        stored = json.loads(stored_file.read_text())
    except json.JSONDecodeError as e:
        raise MambadynError(f"{stored_file} is not valid JSON ({e}); cannot check the resumed conditions") from e
    if stored.get("world_size") != now["world_size"]:
        raise MambadynError(
            f"{out} was trained with {stored.get('world_size')} process(es) (global batch {stored.get('global_batch')}); "
            f"resuming with {now['world_size']} would change the global batch to {now['global_batch']}: resume with "
            f"the same process count (torchrun --nproc_per_node {stored.get('world_size')})")
    for key, rec in stored.get("data_files", {}).items():
        cur = now["data_files"].get(key)
        if cur is None or cur["sha256"] != rec["sha256"]:
            raise MambadynError(f"{key} ({rec['file']}) has changed since the run started (sha256 {rec['sha256'][:12]}... "
                                f"then, {'missing' if cur is None else cur['sha256'][:12] + '...'} now): a resumed run "
                                "must read the same data; restore it or start a new run")


def _last_eval(log_path: Path) -> dict | None:
    """The last evaluation's metrics logged in metrics.jsonl (None if there is none)."""
    if not log_path.is_file():
        return None
    last = None
    for line in log_path.read_text().splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if rec.get("event") == "eval":
            last = {k: v for k, v in rec.items() if k not in ("step", "event")}
    return last


def _check_finite(loss: torch.Tensor, step: int) -> None:
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss is {loss.item()} at step {step}; lower optim.lr or check the data")


def _capture(model, optimizer, task, x, y, amp_dtype, grad_clip: float):
    from .graphed import GraphedTrainStep

    try:
        return GraphedTrainStep(model, optimizer, task.loss, x, y, amp_dtype=amp_dtype, grad_clip=grad_clip)
    except RuntimeError as e:
        raise MambadynError(f"this task's training step cannot be captured in a CUDA graph ({e}); "
                           "train without run.cuda_graph") from e


def _train(make_task, cfg, out: Path, resume: bool, on_eval) -> dict:
    run, opt_cfg = cfg.run, cfg.optim
    rank, world, device = _dist_setup(run.device)
    is_main = rank == 0
    task = make_task(cfg, rank=rank, world=world)
    if is_main:
        _prepare_folder(out, asdict(cfg), resume)
    amp = run.amp if run.amp != "auto" else ("bf16" if device.type == "cuda" else "none")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device.type, dtype=amp_dtype)

    if run.cuda_graph and (device.type != "cuda" or world > 1):
        raise ValueError(f"run.cuda_graph runs on one CUDA device, not {device} with {world} process(es)")
    torch.manual_seed(run.seed)
    model = task.build_model().to(device)
    optimizer = torch.optim.AdamW(param_groups(model, opt_cfg.weight_decay), lr=opt_cfg.lr, betas=opt_cfg.betas,
                                  foreach=True, capturable=run.cuda_graph)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_lambda(opt_cfg.warmup_steps, opt_cfg.steps, opt_cfg.min_lr_ratio))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == "fp16")
    start = 0
    log_path = out / "metrics.jsonl"
    ckpt = latest_checkpoint(out) if resume else None
    if resume and ckpt is None and is_main:
        print(f"--resume: no checkpoint in {out}; starting from step 0")
    identity = _run_identity(cfg, world)
    if ckpt is not None:
        _check_identity(out, identity)
        start = load_checkpoint(ckpt, model, optimizer, scheduler, scaler)["step"]
        bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
        if bad:
            raise MambadynError(f"checkpoint {ckpt} holds non-finite weights (NaN or inf) in {bad[:3]}: it is damaged "
                                "or the run diverged before it was saved; it cannot be resumed (start a new run)")
        if start >= opt_cfg.steps and (out / "model").is_dir():
            last = _last_eval(log_path)
            if last is not None:  # finished: nothing to train, and evaluating again would log the end twice
                if is_main:
                    print(f"--resume: {out} already finished at step {start}; nothing to do")
                return last
        if is_main:
            _truncate_log(log_path, start)
    elif is_main:
        log_path.unlink(missing_ok=True)
    if is_main:
        (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2) + "\n")
        (out / RUN_FILE).write_text(json.dumps(identity, indent=1) + "\n")
        task.save_artifacts(out)
    net = torch.nn.parallel.DistributedDataParallel(model) if world > 1 else model

    def log(record):
        if is_main:
            with open(log_path, "a") as f:
                f.write(dumps(record, indent=None) + "\n")

    def reduce(values: list[float]) -> list[float]:  # sums over ranks, so every world size scores one set
        if world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def evaluate(step):
        model.eval()
        t0 = time.perf_counter()
        metrics = task.evaluate(model, device, autocast, reduce)
        metrics["eval_s"] = time.perf_counter() - t0
        model.train()
        if is_main:
            log({"step": step, "event": "eval", **metrics})
            if on_eval:
                on_eval(step, metrics)
        return metrics

    bar = tqdm(total=opt_cfg.steps, initial=start, disable=not (run.progress and is_main), dynamic_ncols=True,
               desc=out.name)
    model.train()
    t_last, items = time.perf_counter(), 0
    graphed = None
    for step in range(start, opt_cfg.steps):
        x, y = task.batch(step)
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if run.cuda_graph:
            if graphed is None:  # captured at the first step, after any resume has loaded the state
                graphed = _capture(model, optimizer, task, x, y, amp_dtype, opt_cfg.grad_clip or math.inf)
            loss = graphed(x, y)
            grad_norm = graphed.grad_norm
            # the graph has already stepped: a non-finite loss stops the run before its weights are saved
            _check_finite(loss, step)
            scheduler.step()
            graphed.keep_lr_tensors()
        else:
            with autocast():
                loss = task.loss(net, x, y)
            _check_finite(loss, step)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), opt_cfg.grad_clip or math.inf)
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
            logged = loss.detach().float()
            if world > 1:  # the global batch's loss, so curves of different world sizes compare
                dist.all_reduce(logged)
                logged /= world
            record = {"step": done, "loss": logged.item(), "lr": scheduler.get_last_lr()[0],
                      "grad_norm": grad_norm.item(), f"{task.unit}_per_s": rate}
            if device.type == "cuda":
                record["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
            log(record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", **{f"{task.unit}/s": f"{rate:,.0f}"})
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
        task.save_artifacts(out / "model")
    if world > 1:
        dist.barrier()
    return final
