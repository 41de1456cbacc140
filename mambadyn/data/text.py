"""Text corpora as token-id tensors: characters (Tiny Shakespeare) or a BPE trained with ``tokenizers``;
WikiText through the ``datasets`` library. Every tokenizer saves as a ``tokenizers`` tokenizer.json, so a
run folder (and the probe) reads it back with the same library."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .download import OFFLINE_ENV

WIKITEXT = {"wikitext-2": "wikitext-2-raw-v1", "wikitext-103": "wikitext-103-raw-v1"}


class CharTokenizer:
    """Character-level vocabulary, sorted so that the same text always gives the same ids."""

    def __init__(self, chars: list[str]):
        if len(set(chars)) != len(chars):
            raise ValueError("CharTokenizer: repeated characters in the vocabulary")
        self.chars = list(chars)
        self.index = {c: i for i, c in enumerate(self.chars)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        unknown = sorted(set(text) - set(self.index))
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {unknown[:10]}")
        return torch.tensor([self.index[c] for c in text], dtype=torch.int64)

    def decode(self, ids) -> str:
        return "".join(self.chars[int(i)] for i in ids)

    def to_tokenizers(self):
        """The same vocabulary as a ``tokenizers.Tokenizer`` (one WordLevel token per character)."""
        from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

        vocab = {c: i for i, c in enumerate(self.chars)}
        tok = Tokenizer(models.WordLevel(vocab, unk_token=None))
        tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
        tok.decoder = decoders.Fuse()
        return tok

    def save(self, path: str | Path) -> None:
        """Write a tokenizers-format tokenizer.json."""
        self.to_tokenizers().save(str(path))

    @classmethod
    def load(cls, path: str | Path) -> "CharTokenizer":
        d = json.loads(Path(path).read_text())
        if d.get("type") == "char":  # the format of mambadyn 0.1's first runs
            return cls(d["chars"])
        vocab = d["model"]["vocab"]
        return cls(sorted(vocab, key=vocab.get))


@dataclass
class TextSplits:
    """Token ids per split. ``val`` picks models (best evaluation, hyper-parameters); ``test``, when there
    is one, is only reported."""

    train: torch.Tensor  # (n_train,) int64 token ids
    val: torch.Tensor  # (n_val,) int64 token ids
    vocab_size: int
    tokenizer: object
    test: torch.Tensor | None = None  # (n_test,) int64 token ids

    def __post_init__(self):
        if self.train.numel() < 2 or self.val.numel() < 2:
            raise ValueError(f"corpus too small: {self.train.numel()} train and {self.val.numel()} val tokens")
        if self.test is not None and self.test.numel() < 2:
            raise ValueError(f"test split too small: {self.test.numel()} tokens")


def _read(path: str | Path) -> str:
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"text corpus {p} does not exist (pass the path of a UTF-8 text file)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not UTF-8 text: {e}") from e
    if not text:
        raise ValueError(f"{p} is empty")
    return text


def _split(ids: torch.Tensor, train_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    if not 0 < train_fraction < 1:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction}")
    n = int(train_fraction * ids.numel())
    return ids[:n], ids[n:]


def load_tiny_shakespeare(path: str | Path | None = None, train_fraction: float = 0.9) -> TextSplits:
    """Tiny Shakespeare at character level with the standard split: the first 90% trains. Without
    ``path`` the file comes from the data cache (downloaded once, see ``download.py``)."""
    if path is None:
        from .download import fetch

        path = fetch("tiny-shakespeare") / "input.txt"
    text = _read(path)
    tok = CharTokenizer.from_text(text)
    train, val = _split(tok.encode(text), train_fraction)
    return TextSplits(train, val, tok.vocab_size, tok)


def _byte_level_bpe(vocab_size: int):
    """An untrained byte-level BPE tokenizer and its trainer (every byte in the alphabet, so any
    text encodes)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    return tok, trainer


def train_bpe(files: list[str | Path], vocab_size: int = 4096, save_to: str | Path | None = None):
    """A byte-level BPE tokenizer trained on ``files`` with the ``tokenizers`` library."""
    for f in files:
        _read(f)
    tok, trainer = _byte_level_bpe(vocab_size)
    tok.train([str(f) for f in files], trainer)
    if save_to:
        tok.save(str(save_to))
    return tok


def load_text(path: str | Path, tokenizer: str = "char", vocab_size: int = 4096,
              train_fraction: float = 0.9, val_path: str | Path | None = None,
              test_path: str | Path | None = None) -> TextSplits:
    """Any plain-text corpus: ``tokenizer`` "char", "bpe" (trained on the training text only) or a
    tokenizer.json path. Without ``val_path`` the first ``train_fraction`` of ``path`` trains and the rest
    validates; with it, ``path`` is all training text. ``test_path``: a test split, reported, never used
    for choosing."""
    texts = {"train": _read(path)}
    if val_path:
        texts["val"] = _read(val_path)
    if test_path:
        texts["test"] = _read(test_path)
    if tokenizer == "char":
        tok = CharTokenizer.from_text("".join(texts.values()))  # a character unseen in training still encodes
        vocab = tok.vocab_size
    else:
        if tokenizer == "bpe":
            tok = train_bpe([path], vocab_size)
        else:
            from tokenizers import Tokenizer

            if not Path(tokenizer).is_file():
                raise FileNotFoundError(f"tokenizer file {tokenizer} does not exist ('char', 'bpe' or a tokenizer.json)")
            try:
                tok = Tokenizer.from_file(str(tokenizer))
            except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception type
                msg = str(e).splitlines()[0] if str(e) else type(e).__name__
                raise ValueError(f"data.tokenizer {tokenizer} is not a tokenizers tokenizer.json ({msg})") from None
        vocab = tok.get_vocab_size()
    ids = {k: _encode(tok, v) for k, v in texts.items()}
    train, val = (ids["train"], ids["val"]) if val_path else _split(ids["train"], train_fraction)
    return TextSplits(train, val, vocab, tok, ids.get("test"))


def _encode(tok, text: str) -> torch.Tensor:
    if isinstance(tok, CharTokenizer):
        return tok.encode(text)
    return torch.tensor(tok.encode(text).ids, dtype=torch.int64)


WIKITEXT_SPLITS = {"train": "train", "val": "validation", "test": "test"}


def _wikitext_dataset(name: str, folder: str | Path | None):
    try:
        from datasets import load_dataset
    except ImportError as e:
        raise ImportError("WikiText needs the `datasets` library: pip install 'mambadyn[data]'") from e
    if folder is not None:
        # the layout of the Hub's Salesforce/wikitext: <config>/{train,validation,test}-NNNNN-of-NNNNN.parquet
        root = Path(folder)
        if (root / WIKITEXT[name]).is_dir():
            root = root / WIKITEXT[name]
        files = {split: sorted(str(f) for f in root.glob(f"{split}-*.parquet")) for split in WIKITEXT_SPLITS.values()}
        missing = [split for split, f in files.items() if not f]
        if missing:
            raise FileNotFoundError(f"{root} has no {', '.join(f'{m}-*.parquet' for m in missing)} "
                                    "(the Hub's Salesforce/wikitext layout)")
        return load_dataset("parquet", data_files=files)
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        # datasets would try the Hub first (five retries, ~26 s) even with the data cached: with the network
        # forbidden, only its own offline mode reads the cache, and nothing may go out
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    try:
        return load_dataset("Salesforce/wikitext", WIKITEXT[name])
    except Exception as e:  # noqa: BLE001 - datasets raises several kinds for "not cached and offline"
        raise FileNotFoundError(f"could not load {name} through datasets ({type(e).__name__}: {e}); it needs a "
                                "network the first time, or pass a local copy as data.path") from e


def load_wikitext(name: str = "wikitext-2", vocab_size: int = 8192, folder: str | Path | None = None) -> TextSplits:
    """WikiText-2 or -103 (raw) through the ``datasets`` library, from the Hub (its own cache; a network the
    first time) or from ``folder``, a local copy in the Hub's parquet layout. A byte-level BPE is trained
    on the train split; validation and test are the dataset's own."""
    if name not in WIKITEXT:
        raise ValueError(f"unknown WikiText {name!r}; choose from {sorted(WIKITEXT)}")
    ds = _wikitext_dataset(name, folder)
    for split in WIKITEXT_SPLITS.values():
        if "text" not in ds[split].column_names:
            raise ValueError(f"WikiText {split} split has no 'text' column (columns: {ds[split].column_names})")
    tok, trainer = _byte_level_bpe(vocab_size)
    tok.train_from_iterator(ds["train"]["text"], trainer, length=len(ds["train"]))
    ids = {k: _encode(tok, "".join(ds[split]["text"])) for k, split in WIKITEXT_SPLITS.items()}
    return TextSplits(ids["train"], ids["val"], tok.get_vocab_size(), tok, ids["test"])
