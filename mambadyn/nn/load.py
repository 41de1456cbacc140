"""Open whatever Mamba checkpoint a user has, and the tokenizer that goes with it; turn a user's text or
ids file into the checkpoint's token ids (``token_ids``: the one path, for the probe and the signature lens).

Accepted: a Hugging Face Mamba folder (config.json + model.safetensors or a sharded index, as
transformers' ``save_pretrained`` writes it), a mamba-ssm folder (config.json with d_model / n_layer /
ssm_cfg + pytorch_model.bin, read with ``torch.load(weights_only=True)`` only), a hub id (online), a
``mambadyn train lm`` run folder (its ``model/`` inside) and a MambaClassifier folder. A transformers folder
of another model_type (Mamba-2, Jamba, the hybrids) opens in transformers' own class.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .classifier import ARCHITECTURE as CLASSIFIER
from .classifier import MambaClassifier
from .families import FAMILIES, not_a_family
from .hf_io import CheckpointError, read_config_json, resolve_checkpoint
from .lm import MambaLM


@dataclass
class Loaded:
    model: nn.Module
    kind: str  # "lm" | "classifier"
    source: str  # what the folder was: "hf", "mamba_ssm", "mambadyn_run", "classifier", "transformers" (another
    # family than Mamba, in transformers' own class)
    folder: Path
    tokenizer_file: Path | None  # tokenizer.json beside the weights, if any


def _model_folder(path: Path) -> tuple[Path, str]:
    """The folder holding the weights, and what kind of folder ``path`` is."""
    cfg = path / "config.json"
    if (path / "model" / "config.json").is_file() and cfg.is_file():
        raw = json.loads(cfg.read_text())
        if isinstance(raw, dict) and {"model", "optim", "run"} <= set(raw):
            if not (path / "model" / "model.safetensors").is_file():
                raise CheckpointError(f"{path} is a mambadyn run that has not finished (no model/ weights yet)")
            return path / "model", "mambadyn_run"
    raw = read_config_json(path)
    if raw.get("architectures") == [CLASSIFIER]:
        return path, "classifier"
    if "d_model" in raw and "hidden_size" not in raw:
        return path, "mamba_ssm"
    model_type = raw.get("model_type", "mamba")
    if model_type != "mamba":  # another family: transformers' own class reads it
        if model_type not in FAMILIES:
            raise CheckpointError(f"{path}: {not_a_family(model_type)}")
        return path, "transformers"
    return path, "hf"


def _transformers_model(folder: Path) -> nn.Module:
    """A transformers causal LM from ``folder`` (safetensors only), refusing weights that do not match."""
    try:
        import transformers
    except ImportError:
        raise CheckpointError(f"{folder} is a transformers checkpoint of another family than Mamba: reading it "
                              "needs transformers (pip install 'mambadyn[hf]')") from None

    try:
        # mismatched shapes are loaded past (and reported in ``info``) so that the error can name the tensor
        model, info = transformers.AutoModelForCausalLM.from_pretrained(
            folder, use_safetensors=True, output_loading_info=True, ignore_mismatched_sizes=True)
    except (OSError, ValueError, KeyError, RuntimeError) as e:
        raise CheckpointError(f"transformers cannot read {folder}: {e}") from e
    bad = {k: v for k, v in info.items() if v and k in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    if bad:
        def name(x):  # mismatched keys come as (name, shape in the file, shape the config asks for)
            return f"{x[0]} ({tuple(x[1])} in the file, {tuple(x[2])} by the config)" if isinstance(x, tuple) else x

        what = "; ".join(f"{k.replace('_', ' ')}: {', '.join(name(x) for x in list(v)[:3])}" for k, v in bad.items())
        hint = ""
        if any("parametrizations." in str(k) for k in bad.get("unexpected_keys", ())):
            # torch saves a parametrized weight under its raw parameter, which from_pretrained does not read
            hint = (": it was saved from a model with a parametrized weight (say mambadyn's constrain_eigenvalues); "
                    "call mambadyn.refine.bake(model) before save_pretrained")
        raise CheckpointError(f"the weights in {folder} do not match its config.json ({what}){hint}")
    return model


def load_checkpoint(path: str | Path) -> Loaded:
    """Load the model at ``path`` (a folder or a hub id) on CPU in float32, in eval mode."""
    folder = resolve_checkpoint(path)
    weights_folder, source = _model_folder(folder)
    if source == "classifier":
        model: nn.Module = MambaClassifier.from_pretrained(weights_folder)
        kind = "classifier"
    elif source == "transformers":
        model, kind = _transformers_model(weights_folder), "lm"
    else:
        model = MambaLM.from_pretrained(weights_folder)
        kind = "lm"
    model = model.float().eval()
    tok = next((p for p in (weights_folder / "tokenizer.json", folder / "tokenizer.json") if p.is_file()), None)
    return Loaded(model, kind, source, folder, tok)


def _need_file(p: Path, what: str) -> None:
    """A one-line error where ``p`` is not a file: missing, or a folder (not "does not exist" then)."""
    if p.is_dir():
        raise IsADirectoryError(f"{what} file {p} is a folder: give a file")
    if not p.is_file():
        raise FileNotFoundError(f"{what} file {p} does not exist")


def encode_text(text: str, tokenizer_file: Path | str, vocab_size: int) -> torch.Tensor:
    """Token ids (L,) int64 of ``text`` with a ``tokenizers`` tokenizer.json; a clear error for empty
    text, characters the vocabulary lacks, or ids past the model's vocabulary."""
    from tokenizers import Tokenizer

    if not text.strip():
        raise ValueError("the text to probe is empty")
    p = Path(tokenizer_file)
    _need_file(p, "tokenizer")
    try:
        tok = Tokenizer.from_file(str(p))
    except Exception as e:  # noqa: BLE001 - tokenizers raises its own exception type
        raise ValueError(f"{p} is not a tokenizers tokenizer.json ({e})") from e
    try:
        ids = torch.tensor(tok.encode(text).ids, dtype=torch.int64)
    except Exception as e:  # noqa: BLE001 - a WordLevel vocabulary without the text's characters
        raise ValueError(f"the text has tokens that {p} cannot encode ({e}); probe with text in the model's "
                         "vocabulary or pass --ids") from e
    check_ids(ids, vocab_size)
    return ids


def decode_tokens(tokenizer_file: Path | str, ids: torch.Tensor) -> list[str]:
    """Each id of ids (L,) decoded on its own with a tokenizers tokenizer.json: labels for figures."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_file))
    return [tok.decode([int(i)]) for i in ids.tolist()]


def read_text(file: Path | str) -> str:
    """A UTF-8 text file's contents; a missing or binary file is a one-line error naming it."""
    p = Path(file)
    _need_file(p, "text")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{p} is not UTF-8 text (byte {e.start}: {e.reason})") from None


def read_ids(file: Path | str, vocab_size: int | None) -> torch.Tensor:
    """Token ids from a file of whitespace- or comma-separated integers: (L,) int64, checked against
    ``vocab_size`` (None: checked later, once the model is known)."""
    p = Path(file)
    _need_file(p, "ids")
    parts = read_text(p).replace(",", " ").split()
    try:
        ids = torch.tensor([int(x) for x in parts], dtype=torch.int64)
    except ValueError as e:
        raise ValueError(f"{p} must hold integers separated by spaces or commas ({e})") from e
    if vocab_size is not None:
        check_ids(ids, vocab_size)
    return ids


def check_ids(ids: torch.Tensor, vocab_size: int) -> None:
    if ids.numel() < 2:
        raise ValueError(f"need at least 2 tokens to probe, got {ids.numel()}")
    bad = ids[(ids < 0) | (ids >= vocab_size)]
    if bad.numel():
        raise ValueError(f"token ids {bad[:5].tolist()} are out of the model's vocabulary [0, {vocab_size})")


def token_ids(loaded: Loaded, text: str | None = None, ids: torch.Tensor | None = None,
              tokenizer: Path | str | None = None, default_text: str | None = None) -> tuple[torch.Tensor, str]:
    """The token ids (L,) int64 an LM checkpoint runs on, and where they came from: ``ids`` as given ("ids"),
    else ``text`` ("text") or ``default_text`` ("embedded sample") encoded with ``tokenizer`` or the
    checkpoint's own tokenizer.json. Every id is checked against the model's vocabulary."""
    if loaded.kind != "lm":
        raise ValueError(f"{loaded.folder} holds a {loaded.kind}, which reads images, not token ids")
    if text is not None and ids is not None:
        raise ValueError("give text or token ids, not both")
    vocab = loaded.model.config.vocab_size
    if ids is not None:
        ids = torch.as_tensor(ids, dtype=torch.int64).flatten()
        check_ids(ids, vocab)
        return ids, "ids"
    tok = tokenizer or loaded.tokenizer_file
    if tok is None:
        raise ValueError(f"{loaded.folder} has no tokenizer.json: pass token ids (--ids FILE) or a tokenizer "
                         "(--tokenizer tokenizer.json)")
    if text is None and default_text is None:
        raise ValueError("no text to encode: pass text or token ids")
    return encode_text(text if text is not None else default_text, tok, vocab), (
        "text" if text is not None else "embedded sample")

