"""Typed configuration of a training run. A JSON config file and the CLI both map onto these."""

from __future__ import annotations

import json
from dataclasses import MISSING, asdict, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Any

from ..data.text import WIKITEXT
from ..nn.config import ClassifierConfig, MambaConfig
from ..typed import check_fields, positive


@dataclass
class OptimConfig:
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    min_lr_ratio: float = 0.1  # cosine decays to lr * min_lr_ratio
    warmup_steps: int = 100
    weight_decay: float = 0.1
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float = 1.0  # 0: no clipping

    def __post_init__(self):
        check_fields(self)
        positive(self, "steps", "batch_size", "lr")
        positive(self, "warmup_steps", "weight_decay", "grad_clip", allow_zero=True)
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"OptimConfig.min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"OptimConfig.betas must be in [0, 1), got {list(self.betas)}")
        self.betas = tuple(self.betas)


@dataclass
class RunConfig:
    out_dir: str = "runs/run"
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda
    amp: str = "auto"  # auto (bf16 on CUDA, none on CPU) | bf16 | fp16 | none
    eval_every: int = 200
    eval_batches: int = 20
    ckpt_every: int = 200
    log_every: int = 10
    progress: bool = True
    # replay each training step from a CUDA graph (one GPU, bf16 or no autocast; see train.graphed)
    cuda_graph: bool = False

    def __post_init__(self):
        check_fields(self)
        positive(self, "eval_batches", "log_every")
        positive(self, "seed", "eval_every", "ckpt_every", allow_zero=True)
        if not self.out_dir:
            raise ValueError("RunConfig.out_dir must name a folder")
        if self.amp not in ("auto", "bf16", "fp16", "none"):
            raise ValueError(f"run.amp must be auto, bf16, fp16 or none, got {self.amp!r}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise ValueError(f"run.device must be auto, cpu or cuda[:i], got {self.device!r}")
        if self.cuda_graph and (self.device == "cpu" or self.amp == "fp16"):
            raise ValueError("run.cuda_graph needs a CUDA device and amp bf16, none or auto (fp16's loss scaling "
                             "reads values on the CPU)")


LM_DATASETS = ("tiny-shakespeare", *WIKITEXT)


@dataclass
class LMData:
    # a UTF-8 text file, or (with a WikiText dataset) a local copy of it in the Hub's parquet layout;
    # empty: ``dataset`` from its home
    path: str = ""
    dataset: str = "tiny-shakespeare"  # tiny-shakespeare | wikitext-2 | wikitext-103
    tokenizer: str = "char"  # char | bpe | path/to/tokenizer.json (with a text file; WikiText always trains a BPE)
    bpe_vocab: int = 4096
    seq_len: int = 256
    val_path: str = ""  # with a text file: the validation text (then all of ``path`` trains); else its last 10%
    test_path: str = ""  # with a text file: a test text, only reported (WikiText has its own)

    def __post_init__(self):
        check_fields(self)
        positive(self, "bpe_vocab", "seq_len")
        if self.dataset not in LM_DATASETS:
            raise ValueError(f"LMData.dataset must be one of {LM_DATASETS}, got {self.dataset!r}")
        if (self.val_path or self.test_path) and not self.path:
            raise ValueError("data.val_path / data.test_path go with a text file in data.path")
        if self.path and Path(self.path).is_dir() and self.dataset not in WIKITEXT:
            raise ValueError(f"data.path {self.path} is a folder: a local WikiText copy needs "
                             "data.dataset=wikitext-2 or wikitext-103; otherwise give a text file")
        if not self.path and self.tokenizer != "char" and self.dataset == "tiny-shakespeare":
            raise ValueError(f"data.tokenizer={self.tokenizer!r} needs a corpus: give data.path (--data); "
                             "Tiny Shakespeare is character-level")


@dataclass
class ImageData:
    path: str = ""  # a Fashion-MNIST folder (IDX files); empty: the data cache (downloaded once)
    test_limit: int = 0  # evaluate on the first test_limit test images (0: all 10,000)
    val_size: int = 0  # hold out the last val_size training images for validation (0: none)

    def __post_init__(self):
        check_fields(self)
        positive(self, "test_limit", "val_size", allow_zero=True)


@dataclass
class SyntheticData:
    task: str = "selective_copy"  # selective_copy | mqar (mambadyn.data.synthetic)
    seq_len: int = 256
    n_items: int = 16  # tokens to copy, or key-value pairs to recall
    vocab: int = 16  # data tokens (MQAR: keys, and as many values)

    def __post_init__(self):
        from ..data.synthetic import check

        check_fields(self)
        check(self.task, self.seq_len, self.n_items, self.vocab)


@dataclass
class SyntheticTrainConfig:
    model: MambaConfig = field(default_factory=lambda: MambaConfig(vocab_size=18, d_model=64, n_layer=2))
    data: SyntheticData = field(default_factory=SyntheticData)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=1000, batch_size=32, lr=3e-3,
                                                                   weight_decay=0.0))
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        check_fields(self)


@dataclass
class LMTrainConfig:
    model: MambaConfig = field(default_factory=lambda: MambaConfig(vocab_size=65, d_model=128, n_layer=4))
    data: LMData = field(default_factory=LMData)
    optim: OptimConfig = field(default_factory=OptimConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        check_fields(self)


@dataclass
class ImageTrainConfig:
    model: ClassifierConfig = field(default_factory=ClassifierConfig)
    data: ImageData = field(default_factory=ImageData)
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(steps=1000, batch_size=128, lr=2e-3,
                                                                   weight_decay=0.05))
    run: RunConfig = field(default_factory=RunConfig)

    def __post_init__(self):
        check_fields(self)


def to_dict(cfg) -> dict[str, Any]:
    return asdict(cfg)


def from_dict(cls, d: dict[str, Any]):
    """Build a (nested) config dataclass from a dict; missing fields keep their defaults, unknown
    ones are named in the error."""
    if not isinstance(d, dict):
        raise ValueError(f"{cls.__name__} must be given as a JSON object, got a {type(d).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(d) - set(known))
    if unknown:
        raise ValueError(f"unknown {cls.__name__} fields: {unknown}")
    kw = {}
    for name, v in d.items():
        f = known[name]
        default = f.default_factory() if f.default_factory is not MISSING else None
        if is_dataclass(default):
            if not isinstance(v, dict):
                raise ValueError(f"section {name!r} must be a JSON object of fields, got {v!r}")
            kw[name] = from_dict(type(default), {**asdict(default), **v})
        else:
            kw[name] = v
    return cls(**kw)


def _coerce(text: str, current):
    if isinstance(current, bool):
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"expected a boolean, got {text!r}")
    if isinstance(current, (list, tuple)) or text.startswith("["):
        try:
            return json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"expected a JSON list, got {text!r}") from e
    if isinstance(current, (int, float)) or current == "auto":  # dt_rank: "auto" or a number
        # a number as JSON reads it: "10" an int, "1e-3" and "10.7" floats (the field's check then decides)
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return text
    return text


def apply_overrides(cfg, overrides: list[str]):
    """Apply ``section.key=value`` strings (e.g. ``model.d_model=256``) and re-validate. Returns a new config."""
    d = to_dict(cfg)
    new: dict[str, dict] = {}
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        key, value = item.split("=", 1)
        section, _, name = key.partition(".")
        if section not in d or not isinstance(d[section], dict) or not name:
            raise ValueError(f"override {key!r}: sections are {sorted(d)}, written section.key=value")
        if name not in d[section]:
            raise ValueError(f"override {key!r}: unknown field {name!r}; fields: {sorted(d[section])}")
        new.setdefault(section, {})[name] = _coerce(value, d[section][name])
    return from_dict(type(cfg), {section: {**values, **new.get(section, {})} for section, values in d.items()})


def load_config(cls, path: str | Path | None, overrides: list[str] = ()):
    """Defaults, then the JSON file (if any; sections merge field by field), then the overrides."""
    cfg = cls()
    if path:
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"config file {p} does not exist")
        try:
            raw = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"config file {p} is not valid JSON: {e}") from e
        try:
            cfg = from_dict(cls, raw)
        except (ValueError, TypeError) as e:
            raise ValueError(f"config file {p}: {e}") from e
    return apply_overrides(cfg, list(overrides))
