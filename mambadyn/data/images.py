"""Fashion-MNIST from its IDX gzip files (the format of the original MNIST distribution)."""

from __future__ import annotations

import gzip
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | Path) -> torch.Tensor:
    """Read an IDX file (gzip or plain) into a tensor of its declared shape and dtype."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"IDX file {p} does not exist")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{p}: cannot read ({e}); is it a complete gzip file?") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _DTYPES:
        raise ValueError(f"{p} is not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    shape = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    dtype = np.dtype(_DTYPES[raw[2]])
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise ValueError(f"{p}: header says shape {shape} ({expected} bytes) but the file holds {len(raw) - header}")
    arr = np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return torch.from_numpy(arr.astype(dtype.newbyteorder("=")).copy())


@dataclass
class ImageSplit:
    images: torch.Tensor  # (N, 1, 28, 28) float32 in [0, 1]
    labels: torch.Tensor  # (N,) int64

    def __len__(self) -> int:
        return self.labels.numel()


def load_fashion_mnist(root: str | Path | None = None) -> tuple[ImageSplit, ImageSplit]:
    """(train 60k, test 10k) from train-/t10k-{images-idx3,labels-idx1}-ubyte[.gz] under ``root``; without
    ``root`` from the data cache (downloaded once, see ``download.py``)."""
    if root is None:
        from .download import fetch

        root = fetch("fashion-mnist")
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"Fashion-MNIST folder {root} does not exist")

    def find(stem):
        for name in (stem + ".gz", stem):
            if (root / name).is_file():
                return root / name
        raise FileNotFoundError(f"{root} lacks {stem}[.gz]")

    splits = []
    for prefix in ("train", "t10k"):
        x = read_idx(find(f"{prefix}-images-idx3-ubyte"))
        y = read_idx(find(f"{prefix}-labels-idx1-ubyte"))
        if x.dim() != 3 or y.dim() != 1 or x.shape[0] != y.shape[0]:
            raise ValueError(f"{root}: {prefix} images {tuple(x.shape)} and labels {tuple(y.shape)} do not match")
        splits.append(ImageSplit(x[:, None].float() / 255.0, y.long()))
    return splits[0], splits[1]
