"""Run the lens: for each subject and truncation depth, the held-out R^2 of a ridge regression of its
states on signature features, beside two controls of the same width (signatures of shuffled paths,
random features of the whole path)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..typed import check_fields, positive
from .features import level_prefix, random_features, shuffled, signature, signature_width, time_path
from .ridge import ridge_r2
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
    rows: list[dict] = field(default_factory=list)  # subject, depth, width, r2, r2_shuffled, r2_random_features
    source: str = "random exact cases"

    def to_dict(self) -> dict:
        return {"config": asdict(self.config), "source": self.source, "rows": self.rows}

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


def run_lens(cfg: SignatureConfig, model=None, ids: torch.Tensor | None = None, source: str = "") -> SignatureResult:
    """The lens on the random exact cases, or, given a MambaLM ``model`` and token ids (T,), on its
    layer ``cfg.layer`` and residual streams. Returns R^2 per subject and depth with both controls."""
    g = torch.Generator().manual_seed(cfg.seed)
    if model is None:
        subjects = _default_subjects(cfg, g)
    else:
        if ids is None:
            raise ValueError("a checkpoint needs token ids to run on")
        w = windows(ids, cfg.paths, cfg.length)
        if len(w) < 50:
            raise ValueError(f"only {len(w)} windows of {cfg.length} tokens fit the text: give a longer --text")
        subjects = checkpoint_subjects(model, w, cfg.layer, cfg.channels, cfg.stack_depths)
    result = SignatureResult(cfg, source=source or ("checkpoint" if model is not None else "random exact cases"))
    for name, (path, Y) in tqdm(subjects.items(), desc="signature lens", disable=not cfg.progress):
        if not torch.isfinite(Y).all():
            raise ValueError(f"{name}: the states contain NaN or inf")
        c = path.shape[-1]
        # the rows are shuffled once, so the split does not follow the order of the text
        perm = torch.randperm(len(Y), generator=g)
        path, Y = path[perm], Y[perm]
        S, S_shuf = signature(path, cfg.depth), signature(shuffled(path, g), cfg.depth)
        for k in range(1, cfg.depth + 1):
            width = signature_width(c, k)
            fit = ridge_r2(level_prefix(S, c, k), Y)
            result.rows.append({
                "subject": name, "depth": k, "width": width, "paths": len(Y), "r2": fit.r2, "alpha": fit.alpha,
                "r2_shuffled": ridge_r2(level_prefix(S_shuf, c, k), Y).r2,
                "r2_random_features": ridge_r2(random_features(path, width, g), Y).r2})
    return result


def run_on_checkpoint(path: str | Path, cfg: SignatureConfig, text: str | None = None,
                      ids: torch.Tensor | None = None) -> SignatureResult:
    """Load a Mamba language model (any folder ``mambadyn probe`` reads), encode ``text`` (default: the
    probe's sample) with its tokenizer, or take ``ids``, and run the lens on it."""
    from ..probe.api import sample_text
    from ..probe.load import check_ids, encode_text, load_checkpoint

    loaded = load_checkpoint(path)
    if loaded.kind != "lm":
        raise ValueError(f"{path} holds a {loaded.kind}; the signature lens reads language models")
    vocab = loaded.model.config.vocab_size
    if ids is None:
        if loaded.tokenizer_file is None:
            raise ValueError(f"{path} has no tokenizer.json: pass token ids instead")
        ids = encode_text(text if text is not None else sample_text(), loaded.tokenizer_file, vocab)
    check_ids(ids, vocab)
    return run_lens(cfg, loaded.model, ids.flatten(), source=str(path))
