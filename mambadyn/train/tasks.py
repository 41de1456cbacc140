"""What is trained: a task builds its model, draws batch k, computes the loss and evaluates."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from ..data import (
    EpochSampler,
    ImageSplit,
    WindowSampler,
    load_fashion_mnist,
    load_text,
    load_tiny_shakespeare,
    load_wikitext,
)
from ..data.synthetic import SyntheticSampler, vocab_size
from ..nn import MambaClassifier, MambaLM
from .config import ImageTrainConfig, LMTrainConfig, SyntheticTrainConfig


def _local(values: list[float]) -> list[float]:
    """``evaluate``'s reduce for one process: the sums are already the totals."""
    return values


class _TokenTask:
    """What the MambaLM tasks share: the model, batch k from ``self.train``, and a per-token loss in which
    targets of -100 (positions where nothing is asked) do not count."""

    unit = "tok"

    def build_model(self) -> MambaLM:
        return MambaLM(self.cfg.model)

    def batch(self, step: int):
        return self.train.batch(step)

    def items(self, x) -> int:
        return x.numel()

    @staticmethod
    def loss(model, x, y):
        logits = model(x)
        return F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), ignore_index=-100)


class LMTask(_TokenTask):
    """Next-token prediction on a text corpus; evaluation is the mean loss over fixed validation windows."""

    def __init__(self, cfg: LMTrainConfig, rank: int = 0, world: int = 1):
        d = cfg.data
        if d.path and not Path(d.path).is_dir():
            self.splits = load_text(d.path, d.tokenizer, d.bpe_vocab, val_path=d.val_path or None,
                                    test_path=d.test_path or None)
        elif d.dataset == "tiny-shakespeare":
            self.splits = load_tiny_shakespeare()
        else:
            self.splits = load_wikitext(d.dataset, d.bpe_vocab, folder=d.path or None)
        # the data decides the vocabulary; the user's config stays as given (a copy carries the derived size)
        self.cfg = replace(cfg, model=replace(cfg.model, vocab_size=self.splits.vocab_size))
        # each rank takes its slice of one global draw: the union is what one process of batch*world sees
        self.train = WindowSampler(self.splits.train, d.seq_len, cfg.optim.batch_size, cfg.run.seed, rank, world)
        # evaluation windows are the global batch's, each rank scoring its share (``evaluate``'s reduce)
        self.val = WindowSampler(self.splits.val, d.seq_len, cfg.optim.batch_size, cfg.run.seed, rank, world)
        self.test = (None if self.splits.test is None else
                     WindowSampler(self.splits.test, d.seq_len, cfg.optim.batch_size, cfg.run.seed, rank, world))

    def save_artifacts(self, folder) -> None:
        """tokenizer.json (``tokenizers`` format), so the folder decodes and encodes on its own."""
        self.splits.tokenizer.save(str(folder / "tokenizer.json"))

    @torch.no_grad()
    def evaluate(self, model, device, autocast, reduce=_local) -> dict:
        """val_loss (nats/token), val_ppl, val_bits_per_token; the same with test_ where there is a test split.
        Every rank scores its share of the same windows; ``reduce`` sums the totals over ranks."""
        out = {}
        for name, sampler in (("val", self.val), ("test", self.test)):
            if sampler is None:
                continue
            total, count = 0.0, 0
            for x, y in sampler.eval_batches(self.cfg.run.eval_batches):
                if not len(y):
                    continue
                with autocast():
                    loss = self.loss(model, x.to(device), y.to(device))
                total += loss.item() * y.numel()
                count += y.numel()
            total, count = reduce([total, count])
            mean = total / count
            out.update({f"{name}_loss": mean, f"{name}_ppl": math.exp(mean), f"{name}_bits_per_token": mean / math.log(2)})
        return out


class ImageTask:
    """Image classification (Fashion-MNIST). Evaluation: loss and accuracy on the test set and, with
    ``data.val_size``, on that many training images held out from training (the split that picks models)."""

    unit = "img"

    def __init__(self, cfg: ImageTrainConfig, rank: int = 0, world: int = 1):
        self.cfg, self.rank, self.world = cfg, rank, world
        self.train_set, self.test_set = load_fashion_mnist(cfg.data.path or None)
        self.val_set = None
        if cfg.data.val_size:
            n = len(self.train_set) - cfg.data.val_size
            if n < cfg.optim.batch_size * world:
                raise ValueError(f"data.val_size={cfg.data.val_size} leaves {n} training images, fewer than a batch")
            tr = self.train_set
            self.train_set = ImageSplit(tr.images[:n], tr.labels[:n])
            self.val_set = ImageSplit(tr.images[n:], tr.labels[n:])
        if cfg.data.test_limit:
            self.test_set = ImageSplit(self.test_set.images[: cfg.data.test_limit], self.test_set.labels[: cfg.data.test_limit])
        c = cfg.model
        if tuple(self.train_set.images.shape[1:]) != (c.in_channels, c.image_size, c.image_size):
            raise ValueError(f"images are {tuple(self.train_set.images.shape[1:])} but the model expects "
                             f"({c.in_channels}, {c.image_size}, {c.image_size})")
        # normalise with the training set's statistics
        self.mean, self.std = self.train_set.images.mean().item(), self.train_set.images.std().item()
        self.sampler = EpochSampler(len(self.train_set), cfg.optim.batch_size, cfg.run.seed, rank, world)
        self.steps_per_epoch = self.sampler.steps_per_epoch

    def build_model(self) -> MambaClassifier:
        return MambaClassifier(self.cfg.model)

    def save_artifacts(self, folder) -> None:
        """Nothing beyond the model: images need no tokenizer."""

    def batch(self, step: int):
        idx = self.sampler.indices(step)
        return (self.train_set.images[idx] - self.mean) / self.std, self.train_set.labels[idx]

    def items(self, x) -> int:
        return x.shape[0]

    @staticmethod
    def loss(model, x, y):
        return F.cross_entropy(model(x).float(), y)

    @torch.no_grad()
    def evaluate(self, model, device, autocast, reduce=_local) -> dict:
        """test_loss, test_acc and, with a validation split, val_loss, val_acc; each rank scores every
        world-th image and ``reduce`` sums over ranks."""
        out = {}
        for name, split in (("val", self.val_set), ("test", self.test_set)):
            if split is None:
                continue
            images, labels = split.images[self.rank :: self.world], split.labels[self.rank :: self.world]
            correct, total_loss, n = 0, 0.0, len(labels)
            bs = 1000
            for i in range(0, n, bs):
                x = ((images[i : i + bs] - self.mean) / self.std).to(device)
                y = labels[i : i + bs].to(device)
                with autocast():
                    logits = model(x).float()
                total_loss += F.cross_entropy(logits, y, reduction="sum").item()
                correct += (logits.argmax(-1) == y).sum().item()
            total_loss, correct, n = reduce([total_loss, correct, n])
            out.update({f"{name}_loss": total_loss / n, f"{name}_acc": correct / n})
        return out


class SyntheticTask(_TokenTask):
    """Selective copying or MQAR (``mambadyn.data.synthetic``): the loss and the accuracy count only the
    positions where an answer is asked; evaluation also reports whole-sequence exact match."""

    def __init__(self, cfg: SyntheticTrainConfig, rank: int = 0, world: int = 1):
        d = cfg.data
        # the task decides the vocabulary; the user's config stays as given (a copy carries the derived size)
        self.cfg = replace(cfg, model=replace(cfg.model, vocab_size=vocab_size(d.task, d.vocab)))
        self.train = SyntheticSampler(d.task, d.seq_len, d.n_items, d.vocab, cfg.optim.batch_size, cfg.run.seed,
                                      rank, world)

    def save_artifacts(self, folder) -> None:
        """Nothing to save: the task is regenerated from its config."""

    @torch.no_grad()
    def evaluate(self, model, device, autocast, reduce=_local) -> dict:
        """{val,test}_loss, _acc and _exact_match on two fixed held-out sets drawn from separate streams
        (each rank its share; ``reduce`` sums over ranks)."""
        out = {}
        for name in ("val", "test"):
            total, count, right, exact, seqs = 0.0, 0, 0, 0, 0
            for x, y in self.train.eval_batches(self.cfg.run.eval_batches, split=name):
                if not len(y):
                    continue
                x, y = x.to(device), y.to(device)
                with autocast():
                    logits = model(x).float()
                asked = y != -100
                total += F.cross_entropy(logits[asked], y[asked], reduction="sum").item()
                hit = (logits.argmax(-1) == y) | ~asked
                right += int((hit & asked).sum())
                count += int(asked.sum())
                exact += int(hit.all(dim=1).sum())
                seqs += len(y)
            total, count, right, exact, seqs = reduce([total, count, right, exact, seqs])
            out.update({f"{name}_loss": total / count, f"{name}_acc": right / count, f"{name}_exact_match": exact / seqs})
        return out
