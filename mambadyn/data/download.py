"""Public datasets fetched into a local cache, with checksums, a progress bar and a clear offline error.

The cache is ``$MAMBADYN_DATA`` when set, else ``~/.cache/mambadyn``; a dataset lives in a folder of
its name there (``tiny-shakespeare/input.txt``, ``fashion-mnist/train-images-idx3-ubyte.gz`` ...), so a
folder of files obtained elsewhere can be pointed at with the variable. A file already present is
accepted when it matches one of its known checksums (the upstream file, or a known repackaging of the
same data such as Debian's recompressed Fashion-MNIST); otherwise it is downloaded by pooch, which
checks it before moving it into place. ``MAMBADYN_OFFLINE=1`` forbids the network (tests set it).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import MambadynError

DATA_ENV = "MAMBADYN_DATA"
OFFLINE_ENV = "MAMBADYN_OFFLINE"


class DataUnavailableError(MambadynError, FileNotFoundError):
    """A dataset file is neither in the cache nor downloadable (offline, or the server refused)."""


@dataclass(frozen=True)
class RemoteFile:
    name: str  # path inside the dataset's folder
    url: str
    hashes: tuple[str, ...]  # "alg:hex"; the first is the file at ``url``


_FASHION = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"
# (file, upstream md5, sha256 of Debian's dataset-fashion-mnist: the same arrays, gzip redone)
_FASHION_FILES = (
    ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
     "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7"),
    ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe",
     "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056"),
    ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79",
     "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa"),
    ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310",
     "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05"),
)
DATASETS: dict[str, tuple[RemoteFile, ...]] = {
    "tiny-shakespeare": (
        RemoteFile("input.txt",
                   "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
                   ("sha256:86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",)),
    ),
    "fashion-mnist": tuple(RemoteFile(name, _FASHION + name, (f"md5:{md5}", f"sha256:{sha}"))
                           for name, md5, sha in _FASHION_FILES),
}


def data_home() -> Path:
    """The cache folder: ``$MAMBADYN_DATA`` or ``~/.cache/mambadyn``."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "mambadyn").expanduser()


def _digest(path: Path, alg: str) -> str:
    h = hashlib.new(alg)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _matches(path: Path, hashes: tuple[str, ...]) -> bool:
    return any(_digest(path, h.partition(":")[0]) == h.partition(":")[2] for h in hashes)


def fetch(dataset: str, progress: bool = True) -> Path:
    """The folder of ``dataset`` (a key of ``DATASETS``) in the cache, every file present and checked;
    files that are missing are downloaded. Raises ``DataUnavailableError`` naming the file and where to
    put it when it cannot be had, and ``ValueError`` when a present file fails its checksum."""
    if dataset not in DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}; known: {sorted(DATASETS)}")
    folder = data_home() / dataset
    for f in DATASETS[dataset]:
        target = folder / f.name
        if target.is_file():
            if not _matches(target, f.hashes):
                raise ValueError(f"{target} does not match its checksum ({f.hashes[0]}); delete it to download "
                                 f"it again from {f.url}")
            continue
        _download(f, target, progress)
    return folder


def _download(f: RemoteFile, target: Path, progress: bool) -> None:
    hint = (f"put {f.name} ({f.hashes[0]}, from {f.url}) at {target}, or set {DATA_ENV} to a folder "
            f"holding {target.parent.name}/{f.name}")
    if os.environ.get(OFFLINE_ENV, "") not in ("", "0"):
        raise DataUnavailableError(f"{target} is missing and {OFFLINE_ENV} forbids downloading: {hint}")
    import pooch

    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        pooch.retrieve(f.url, known_hash=f.hashes[0], fname=f.name, path=target.parent, progressbar=progress)
    except PermissionError as e:
        raise DataUnavailableError(f"cannot write {target} ({e}): {hint}") from e
    except ValueError:  # pooch's checksum mismatch: the server sent something else
        raise
    except Exception as e:  # noqa: BLE001 - requests' connection errors and HTTP errors alike
        raise DataUnavailableError(f"could not download {f.url} ({type(e).__name__}: {e}); {hint}") from e
