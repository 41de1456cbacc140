"""Run the lens: for each subject and truncation depth, the held-out R^2 of a ridge regression of its
states on signature features, beside three controls: signatures of shuffled paths and random features of
the whole path (both of the same width), and a plain linear ridge on the raw path (every sample of w = (t, u)
as a feature), which a deep signature must beat to say anything beyond linear.

The shuffled control equals the signature at depth 1 by construction: level 1 is the path's total
increment, which reordering the increments does not change. It can only fall behind from depth 2 on.

A depth whose signature has more terms than the rows a fit sees (train + validation) is under-determined:
it is not fitted, and the result says so. For a checkpoint, the windows of the train, validation and test
splits come from disjoint stretches of the text, so no test window shares a token with a training one.
The memory the features take is estimated before anything is allocated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..typed import check_fields, positive
from .features import level_prefix, random_features, shuffled, signature, signature_width, time_path
from .ridge import SPLIT, ridge_r2
from .subjects import checkpoint_subjects, diagonal_stack, random_cde, random_paths


@dataclass
class SignatureConfig:
    depth: int = 5  # deepest truncation; every depth 1..depth is fitted
    paths: int = 3000  # paths per subject (60% train, 20% validation, 20% test)
    length: int = 24  # samples per path (tokens per window for a checkpoint)
    channels: int = 2  # input channels of the random paths, or PCA channels of a checkpoint's inputs
    state: int = 8  # state size of the random CDEs
    layer: int = 0  # the checkpoint's layer to look at
    stack_depths: tuple[int, ...] = (2,)  # residual streams after these many layers (checkpoint)
    seed: int = 0
    progress: bool = True
    max_memory_gb: float = 4.0  # refuse a run whose feature matrices would take more than this

    def __post_init__(self):
        check_fields(self)
        positive(self, "depth", "paths", "length", "channels", "state")
        if not 1 <= self.depth <= 6:
            raise ValueError(f"SignatureConfig.depth must be in 1..6 (the width grows like channels^depth), "
                             f"got {self.depth}")
        if self.paths < 50:
            raise ValueError(f"SignatureConfig.paths must be >= 50 for a train / validation / test split, "
                             f"got {self.paths}")
        if self.length < 2:
            raise ValueError(f"SignatureConfig.length must be >= 2, got {self.length}")


@dataclass
class SignatureResult:
    config: SignatureConfig
    rows: list[dict] = field(default_factory=list)  # subject, depth, width, r2, r2_shuffled, r2_random_features,
    # r2_linear_path (the same at every depth)
    skipped: list[str] = field(default_factory=list)  # depths left out as under-determined, with the numbers
    source: str = "random exact cases"

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "source": self.source, "rows": self.rows, "skipped": self.skipped}

    def r2(self, subject: str, control: str = "r2") -> list[float]:
        return [r[control] for r in self.rows if r["subject"] == subject]

    @property
    def subjects(self) -> list[str]:
        return list(dict.fromkeys(r["subject"] for r in self.rows))


def _default_subjects(cfg: SignatureConfig, g: torch.Generator) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    path = time_path(random_paths(cfg.paths, cfg.length, cfg.channels, g))
    return {"dense linear CDE (exact case)": (path, random_cde(path, cfg.state, g)),
            "diagonal selective recurrence (exact case)": (path, random_cde(path, cfg.state, g, diagonal=True)),
            "stack of two diagonal recurrences": (path, diagonal_stack(path, cfg.state, g))}


def windows(ids: torch.Tensor, n: int, length: int) -> torch.Tensor:
    """Up to n windows of ``length`` tokens, evenly spaced over ids (T,): (n', length) int64."""
    if ids.numel() < length + 1:
        raise ValueError(f"{ids.numel()} tokens are too few for windows of {length}")
    starts = torch.linspace(0, ids.numel() - length, min(n, ids.numel() - length + 1)).long().unique()
    return ids[starts[:, None] + torch.arange(length)]


def split_windows(ids: torch.Tensor, n: int, length: int,
                  split: tuple[float, float] = SPLIT) -> tuple[torch.Tensor, tuple[int, int]]:
    """About n windows of ``length`` tokens in the order train | validation | test, cut from three disjoint
    stretches of ids (proportions ``split`` and the rest), so no window of one split shares a token with
    another's. Returns the windows (n', length) int64 and the row bounds (end of train, end of validation)."""
    T = ids.numel()
    cuts = [0, int(T * split[0]), int(T * (split[0] + split[1])), T]
    counts = [int(n * split[0]), int(n * (split[0] + split[1])) - int(n * split[0])]
    counts.append(n - sum(counts))
    parts = []
    for (a, b), k in zip(zip(cuts, cuts[1:]), counts):
        if b - a < length + 1:
            raise ValueError(f"{T} tokens are too few: each of the train / validation / test stretches needs more "
                             f"than {length} tokens (give a longer --text)")
        parts.append(windows(ids[a:b], k, length))
    return torch.cat(parts), (len(parts[0]), len(parts[0]) + len(parts[1]))


def feature_bytes(n: int, channels: int, depth: int) -> int:
    """Bytes of the float64 feature matrices the lens holds for n paths with ``channels`` channels (time
    included) to ``depth``: the signature, the shuffled paths' signature and random features of its width,
    plus the Gram matrix of the widest fitted depth (at most n x n terms are fitted)."""
    width = signature_width(channels, depth)
    fitted = min(width, n)
    return 8 * (3 * n * width + fitted * fitted)


def run_lens(cfg: SignatureConfig, model=None, ids: torch.Tensor | None = None, source: str = "") -> SignatureResult:
    """The lens on the random exact cases, or, given a MambaLM ``model`` and token ids (T,), on its
    layer ``cfg.layer`` and residual streams. Returns R^2 per subject and depth with the controls."""
    g = torch.Generator().manual_seed(cfg.seed)
    c = 1 + cfg.channels  # time is a channel of the path
    need = feature_bytes(cfg.paths, c, cfg.depth)
    if need > cfg.max_memory_gb * 2**30:
        raise ValueError(f"depth {cfg.depth} with {cfg.channels} channels (+ time) has {signature_width(c, cfg.depth):,} "
                         f"signature terms per path: the features of {cfg.paths} paths would take "
                         f"{need / 2**30:.1f} GiB (limit {cfg.max_memory_gb:g} GiB); lower --depth, --channels or "
                         "--paths")
    if model is None:
        subjects = _default_subjects(cfg, g)
    else:
        if ids is None:
            raise ValueError("a checkpoint needs token ids to run on")
        w, bounds = split_windows(ids, cfg.paths, cfg.length)
        if len(w) < 50:
            raise ValueError(f"only {len(w)} windows of {cfg.length} tokens fit the text: give a longer --text")
        subjects = checkpoint_subjects(model, w, cfg.layer, cfg.channels, cfg.stack_depths)
    if model is None:
        bounds = None  # ridge_r2 splits the (shuffled) rows by proportion
    result = SignatureResult(cfg, source=source or ("checkpoint" if model is not None else "random exact cases"))
    for name, (path, Y) in tqdm(subjects.items(), desc="signature lens", disable=not cfg.progress):
        if not torch.isfinite(Y).all():
            raise ValueError(f"{name}: the states contain NaN or inf")
        c = path.shape[-1]
        if model is None:  # independent random paths: shuffling the rows changes nothing but the split
            perm = torch.randperm(len(Y), generator=g)
            path, Y = path[perm], Y[perm]
        rows = bounds[1] if bounds else int(len(Y) * (SPLIT[0] + SPLIT[1]))  # what the final fit sees
        S, S_shuf = signature(path, cfg.depth), signature(shuffled(path, g), cfg.depth)

        def fit(X):
            return ridge_r2(X, Y, bounds=bounds)

        linear = fit(path.flatten(1)).r2
        for k in range(1, cfg.depth + 1):
            width = signature_width(c, k)
            if width > rows:
                result.skipped.append(f"{name}: depth {k} has {width} signature terms for {rows} rows (train + "
                                      "validation): under-determined, not fitted")
                continue
            main = fit(level_prefix(S, c, k))
            result.rows.append({
                "subject": name, "depth": k, "width": width, "paths": len(Y), "rows_fitted": rows, "r2": main.r2,
                "alpha": main.alpha, "r2_shuffled": fit(level_prefix(S_shuf, c, k)).r2,
                "r2_random_features": fit(random_features(path, width, g)).r2, "r2_linear_path": linear})
    if not result.rows:
        raise ValueError(f"no depth could be fitted: even depth 1 has more terms than rows ({result.skipped[0]})")
    return result


def run_on_checkpoint(path: str | Path, cfg: SignatureConfig, text: str | None = None,
                      ids: torch.Tensor | None = None) -> SignatureResult:
    """Load a Mamba language model (any folder ``mambadyn probe`` reads), encode ``text`` (default: the
    probe's sample) with its tokenizer, or take ``ids``, and run the lens on it."""
    from ..nn.load import load_checkpoint, token_ids
    from ..probe.api import sample_text

    loaded = load_checkpoint(path)
    if loaded.kind != "lm":
        raise ValueError(f"{path} holds a {loaded.kind}; the signature lens reads language models")
    ids, _ = token_ids(loaded, text, ids, default_text=sample_text())
    return run_lens(cfg, loaded.model, ids, source=str(path))
