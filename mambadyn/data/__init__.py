"""Datasets read from local paths: character and BPE text corpora, Tiny Shakespeare, Fashion-MNIST
(IDX gzip), WikiText through ``datasets`` when online; and deterministic, resumable batch samplers."""

from .images import ImageSplit, load_fashion_mnist, read_idx
from .sampling import EpochSampler, WindowSampler
from .text import CharTokenizer, TextSplits, load_text, load_tiny_shakespeare, load_wikitext, train_bpe

__all__ = [
    "CharTokenizer",
    "EpochSampler",
    "ImageSplit",
    "TextSplits",
    "WindowSampler",
    "load_fashion_mnist",
    "load_text",
    "load_tiny_shakespeare",
    "load_wikitext",
    "read_idx",
    "train_bpe",
]
