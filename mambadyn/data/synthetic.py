"""Tasks that stress token dynamics, generated on the fly: selective copying and multi-query associative
recall (MQAR). Batch k depends only on (seed, k), as with the other samplers, and under DDP each rank
takes its slice of one global draw.

Targets are -100 (ignored by the loss) except where the model must answer:
* **selective copying**: ``n_items`` data tokens sit at random places among noise (token 0) in the
  first ``seq_len - n_items`` positions. Then come ``n_items`` copy markers (token 1), and at the j-th
  marker the target is the j-th data token. Data tokens are 2 .. 2 + vocab - 1.
* **MQAR**: ``n_items`` key-value pairs (keys 2 .. 2 + vocab - 1, values after them; distinct keys) open
  the sequence. The rest is filler (token 0) with each key asked once again at a random place; the
  target there is its value.
"""

from __future__ import annotations

import numpy as np
import torch

TASKS = ("selective_copy", "mqar")


def vocab_size(task: str, vocab: int) -> int:
    """Tokens the model needs: noise and marker (or filler), plus the data (or keys and values)."""
    return 2 + vocab if task == "selective_copy" else 2 + 2 * vocab


def check(task: str, seq_len: int, n_items: int, vocab: int) -> None:
    if task not in TASKS:
        raise ValueError(f"synthetic task must be one of {TASKS}, got {task!r}")
    if n_items < 1 or vocab < 1:
        raise ValueError(f"n_items and vocab must be >= 1, got {n_items} and {vocab}")
    if task == "mqar" and n_items > vocab:
        raise ValueError(f"MQAR needs distinct keys: n_items {n_items} > vocab {vocab}")
    need = 2 * n_items if task == "selective_copy" else 3 * n_items
    if seq_len < need:
        raise ValueError(f"seq_len {seq_len} is too short for {n_items} items of {task} (needs >= {need})")


def generate(task: str, n: int, seq_len: int, n_items: int, vocab: int, generator: torch.Generator
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """n sequences: inputs (n, seq_len) int64 and targets (n, seq_len) int64 (-100 where nothing is asked)."""
    check(task, seq_len, n_items, vocab)
    x = torch.zeros(n, seq_len, dtype=torch.long)
    y = torch.full((n, seq_len), -100, dtype=torch.long)
    rows = torch.arange(n)[:, None]
    if task == "selective_copy":
        ctx = seq_len - n_items
        data = 2 + torch.randint(0, vocab, (n, n_items), generator=generator)
        # n_items distinct places in the context, kept in order
        places = torch.rand(n, ctx, generator=generator).argsort(dim=1)[:, :n_items].sort(dim=1).values
        x[rows, places] = data
        x[:, ctx:] = 1
        y[:, ctx:] = data
        return x, y
    keys = 2 + torch.rand(n, vocab, generator=generator).argsort(dim=1)[:, :n_items]
    values = 2 + vocab + torch.randint(0, vocab, (n, n_items), generator=generator)
    x[:, 0:2 * n_items:2], x[:, 1:2 * n_items:2] = keys, values
    rest = seq_len - 2 * n_items
    places = 2 * n_items + torch.rand(n, rest, generator=generator).argsort(dim=1)[:, :n_items]
    order = torch.rand(n, n_items, generator=generator).argsort(dim=1)  # which key is asked where
    x[rows, places] = keys.gather(1, order)
    y[rows, places] = values.gather(1, order)
    return x, y


class SyntheticSampler:
    """Batch k of a synthetic task, as (inputs, targets) (batch_size, seq_len) int64; ranks slice one global draw."""

    def __init__(self, task: str, seq_len: int, n_items: int, vocab: int, batch_size: int, seed: int = 0,
                 rank: int = 0, world: int = 1):
        check(task, seq_len, n_items, vocab)
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world}")
        self.task, self.seq_len, self.n_items, self.vocab = task, seq_len, n_items, vocab
        self.batch_size, self.seed, self.rank, self.world = batch_size, seed, rank, world

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 1_000_003 * 1_000_033 + step)
        x, y = generate(self.task, self.batch_size * self.world, self.seq_len, self.n_items, self.vocab, g)
        s = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        return x[s], y[s]

    def eval_batches(self, n_batches: int, split: str = "val"):
        """A fixed held-out set: the same sequences at every evaluation, drawn from a stream of its own
        (``split`` "val" or "test": two disjoint streams, neither the training one)."""
        if split not in ("val", "test"):
            raise ValueError(f"split must be 'val' or 'test', got {split!r}")
        # torch's CPU generator keeps only the low 32 bits of a seed, so an offset like 2**62 + seed would
        # replay training batch ``seed``; a hashed 32-bit seed lands in the training range by chance only
        # (about steps / 2**32)
        state = np.random.SeedSequence([0x5EED, 1 if split == "val" else 2, self.seed]).generate_state(1)[0]
        g = torch.Generator().manual_seed(int(state))
        for _ in range(n_batches):  # the global batch, each rank its strided share: the set is the world's
            x, y = generate(self.task, self.batch_size * self.world, self.seq_len, self.n_items, self.vocab, g)
            yield x[self.rank :: self.world], y[self.rank :: self.world]
