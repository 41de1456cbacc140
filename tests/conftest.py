"""Tests never touch the network: the data cache is ``../shared/data`` where the checkout has it (an
empty folder otherwise), and downloads are forbidden. Tests that need the real datasets take the
``shared_data`` fixture and skip, with the reason, when it is absent."""

import os
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = (ROOT / ".." / "shared" / "data").resolve()
if str(ROOT) not in sys.path:  # tests.support: the helpers the tests stand on (the benchmarks borrow them)
    sys.path.insert(0, str(ROOT))

os.environ["MAMBADYN_OFFLINE"] = "1"
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["MAMBADYN_DATA"] = str(SHARED_DATA) if SHARED_DATA.is_dir() else tempfile.mkdtemp(prefix="mambadyn-data-")


@pytest.fixture
def shared_data() -> Path:
    """The folder of real datasets beside the checkout (Tiny Shakespeare, Fashion-MNIST, WikiText-2)."""
    if not (SHARED_DATA / "tiny-shakespeare").is_dir() or not (SHARED_DATA / "fashion-mnist").is_dir():
        pytest.skip(f"needs the real datasets in {SHARED_DATA}, which this checkout lacks")
    return SHARED_DATA
