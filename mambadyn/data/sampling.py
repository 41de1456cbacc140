"""Batch samplers whose batch k depends only on (seed, k): a run resumed at step k draws exactly the
batches an uninterrupted run would have, so the data position is just the step count."""

from __future__ import annotations

import torch


class WindowSampler:
    """Random windows of ``seq_len + 1`` tokens from a 1-D token tensor, for next-token prediction.

    Under DDP each of ``world`` ranks takes its own slice of one global draw of ``batch_size * world``
    windows, so N ranks of batch b see exactly the windows one process of batch N*b sees."""

    def __init__(self, tokens: torch.Tensor, seq_len: int, batch_size: int, seed: int = 0, rank: int = 0,
                 world: int = 1):
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        if tokens.numel() <= seq_len + 1:
            raise ValueError(f"{tokens.numel()} tokens are too few for windows of {seq_len + 1}")
        if not 0 <= rank < world:
            raise ValueError(f"rank {rank} is outside a world of {world}")
        self.tokens, self.seq_len, self.batch_size, self.seed = tokens, seq_len, batch_size, seed
        self.rank, self.world = rank, world

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets), each (batch_size, seq_len) int64."""
        g = torch.Generator().manual_seed(self.seed * 1_000_003 * 1_000_033 + step)
        everyone = torch.randint(0, self.tokens.numel() - self.seq_len - 1, (self.batch_size * self.world,), generator=g)
        starts = everyone[self.rank * self.batch_size : (self.rank + 1) * self.batch_size]
        idx = starts[:, None] + torch.arange(self.seq_len + 1)
        w = self.tokens[idx]
        return w[:, :-1], w[:, 1:]

    def eval_batches(self, n_batches: int):
        """A fixed set of evenly spaced windows (the same for every evaluation), n_batches of the global batch
        (batch_size * world); each rank gets its strided share, so the set does not depend on the world."""
        size = self.batch_size * self.world
        starts = torch.linspace(0, self.tokens.numel() - self.seq_len - 2, n_batches * size).long()
        for i in range(n_batches):
            idx = starts[i * size : (i + 1) * size][self.rank :: self.world, None] + torch.arange(self.seq_len + 1)
            w = self.tokens[idx]
            yield w[:, :-1], w[:, 1:]


class EpochSampler:
    """Shuffled passes over N examples: step k is batch k mod (N // batch) of epoch k // (N // batch),
    each epoch a permutation seeded by (seed, epoch). Ranks take disjoint strided shares."""

    def __init__(self, n: int, batch_size: int, seed: int = 0, rank: int = 0, world: int = 1):
        if n < batch_size * world:
            raise ValueError(f"{n} examples are fewer than one batch of {batch_size} x {world} ranks")
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.steps_per_epoch = n // (batch_size * world)

    def indices(self, step: int) -> torch.Tensor:
        epoch, k = divmod(step, self.steps_per_epoch)
        perm = torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        start = (k * self.world + self.rank) * self.batch_size
        return perm[start : start + self.batch_size]
