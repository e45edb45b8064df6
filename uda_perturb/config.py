"""Experiment configuration: typed dataclasses, YAML recipes with ``base:`` composition, strict validation
(unknown keys and wrong types are errors naming the key and the closest valid one), dotted overrides."""
from __future__ import annotations

import dataclasses
import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import yaml

from .config_schema import from_dict
from .errors import ConfigError
from .option_check import check_config_options, dataset_entries

__all__ = ["ConfigError", "ExperimentConfig", "dataset_entries", "load_config"]  # dataset_entries: re-exported

PACKAGED = Path(__file__).resolve().parent / "configs"
OPTIMIZERS = ("sgd", "adamw")
_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


@dataclass
class TransformConfig:
    """Input pipeline: resize to ``size`` (H, W), random ``scale`` + ``crop``, flip, photometric jitter.
    Images resize with ``interpolation`` (``bicubic``, antialiased when shrinking, is the references' PIL
    BICUBIC); labels always with nearest at pixel centres."""

    size: Optional[list[int]] = None
    crop: Optional[list[int]] = None
    scale: Optional[list[float]] = None
    flip: bool = False
    photometric: bool = False
    normalize: str = "imagenet"
    interpolation: str = "bilinear"
    cat_max_ratio: Optional[float] = None  # DAFormer's source crop rule (0.75 there); off by default


@dataclass
class DatasetConfig:
    """A registered dataset: ``name``, ``root``, ``split`` (one or several) and reader ``options``
    (e.g. ``sequences`` for CamVid, ``num_classes`` for SYNTHIA, ``domain`` for synthetic)."""

    name: str = "synthetic"
    root: Optional[str] = None
    split: Union[str, list[str]] = "train"
    options: dict[str, Any] = field(default_factory=dict)
    transforms: TransformConfig = field(default_factory=TransformConfig)


@dataclass
class RareClassSamplingConfig:
    """DAFormer's rare-class sampling of source images (temperature, min pixels per image, crop ratio).
    ``min_pixels`` counts pixels of a GTA5 label at full resolution (1914 x 1052, DAFormer's); with
    ``min_pixels_scale: label_area`` (default) it is scaled to each image's label area (CamVid's 480 x 360: 257),
    ``none`` counts it as is on any dataset (DAFormer's SYNTHIA config does)."""

    temperature: float = 0.01
    min_pixels: int = 3000
    min_crop_ratio: float = 0.5
    min_pixels_scale: str = "label_area"


@dataclass
class DataConfig:
    """Labelled source, unlabelled target, and named evaluation splits (the target test split is set here,
    never hard-coded)."""

    source: DatasetConfig = field(default_factory=DatasetConfig)
    target: DatasetConfig = field(default_factory=lambda: DatasetConfig(options={"domain": "target"}))
    eval: dict[str, DatasetConfig] = field(default_factory=dict)
    batch_size: int = 1
    num_workers: int = 0
    rare_class_sampling: Optional[RareClassSamplingConfig] = None


@dataclass
class ModelConfig:
    """Segmentor: backbone and head names, classes, multi-level aux head, optional init weights (local path)."""

    backbone: str = "lite"
    head: str = "aspp_v2"
    num_classes: int = 9
    multi_level: bool = False
    backbone_options: dict[str, Any] = field(default_factory=dict)
    head_options: dict[str, Any] = field(default_factory=dict)
    weights: Optional[str] = None


@dataclass
class MethodConfig:
    """Method name, add-ons stacked on it (names or ``{name: ..., settings}``) and the method's options."""

    name: str = "source_only"
    addons: list[Any] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class TrainConfig:
    """Optimisation (AdaptSegNet/ADVENT defaults): SGD + poly for G (heads ``head_lr_mult`` x), Adam for D.
    ``optimizer: adamw`` (as DAFormer; pretrained backbones converge faster with it) replaces SGD for G."""

    iters: int = 1000
    optimizer: str = "sgd"
    stop_at: Optional[int] = None
    lr: float = 2.5e-4
    momentum: float = 0.9
    weight_decay: float = 5e-4
    poly_power: float = 0.9
    # DAFormer's linear warm-up (mmcv ``warmup="linear"``): for iteration i < warmup_iters the poly lr is scaled
    # by 1 - (1 - i / warmup_iters) * (1 - warmup_ratio); DAFormer uses 1500 iterations from ratio 1e-6
    warmup_iters: int = 0
    warmup_ratio: float = 1e-6
    head_lr_mult: float = 10.0
    # ``optimizer: adamw`` gives the backbone's normalisation layers (and ``pos_block`` parameters) no weight
    # decay, as DAFormer's ``paramwise_cfg`` (``norm``/``pos_block`` decay_mult 0); true: decay them too (the
    # rule before, for resuming older runs)
    decay_norm: bool = False
    d_lr: float = 1e-4
    d_betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    accumulate: int = 1
    precision: str = "fp32"
    eval_every: int = 0
    checkpoint_every: int = 1000
    log_every: int = 10
    sync_bn: bool = False
    # channels-last tensors for the model and the training images: on CPU, depthwise and dilated convolutions
    # (EfficientNet) train faster this way; the values are the same
    channels_last: bool = False
    # per-class weights of the supervised source CE: null, "median_frequency" (from the source labels), or a list
    class_weights: Optional[Union[str, list[float]]] = None


@dataclass
class EvalConfig:
    """Inference settings and the class groups reported next to mIoU (e.g. tail classes)."""

    size: Optional[list[int]] = None
    flip: bool = False
    scales: list[float] = field(default_factory=lambda: [1.0])
    batch_size: int = 1
    class_groups: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class ExperimentConfig:
    """A whole experiment. ``device: auto`` picks CUDA when available."""

    name: str = "run"
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


def _merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_path(name: str | Path, relative_to: Optional[Path] = None) -> Path:
    """A config file: an existing path, a path relative to ``relative_to``, or a packaged recipe name."""
    candidates = [Path(name)]
    if relative_to is not None:
        candidates.append(relative_to / name)
    stem = Path(name).name
    candidates += [PACKAGED / stem, PACKAGED / f"{stem}.yaml"]
    for c in candidates:
        if c.is_file():
            return c
    avail = sorted(p.stem for p in PACKAGED.glob("*.yaml"))
    close = difflib.get_close_matches(stem.removesuffix(".yaml"), avail, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise FileNotFoundError(f"config {name!r} not found.{hint} Packaged recipes: {', '.join(avail)}")


def read_mapping(path: Path, kind: str = "config") -> dict:
    """A YAML file's top-level mapping, read with a safe loader; a one-line error naming the file otherwise."""
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{kind} {path}: invalid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{kind} {path} must hold a mapping at top level")
    return data


def load_raw(name: str | Path, _seen: Optional[set] = None) -> dict:
    """Read a YAML recipe with a safe loader, following ``base:`` (a name or list of names) first."""
    path = resolve_path(name)
    seen = _seen or set()
    if path.resolve() in seen:
        raise ConfigError(f"config {path} includes itself through 'base:'")
    seen.add(path.resolve())
    data = read_mapping(path)
    bases = data.pop("base", [])
    merged: dict = {}
    for b in [bases] if isinstance(bases, str) else bases:
        merged = _merge(merged, load_raw(resolve_path(b, path.parent), seen))
    return _merge(merged, data)


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """``["train.iters=2000", "method.addons=[perturbation]"]``: values are parsed as YAML."""
    data = dict(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, raw = item.split("=", 1)
        value = yaml.safe_load(raw)
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):  # YAML 1.1 reads 1e-3 as a string
            value = float(value)
        node = data
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node[p] = dict(node.get(p) or {})
            node = node[p]
        node[parts[-1]] = value
    return data


def build_config(data: dict) -> ExperimentConfig:
    """Validate a raw mapping into an :class:`ExperimentConfig`."""
    cfg = from_dict(ExperimentConfig, data)
    if cfg.train.precision not in ("fp32", "bf16", "fp16"):
        raise ConfigError(f"config key 'train.precision' must be fp32, bf16 or fp16, got {cfg.train.precision!r}")
    if cfg.train.optimizer not in OPTIMIZERS:
        close = difflib.get_close_matches(cfg.train.optimizer, OPTIMIZERS, n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"config key 'train.optimizer' must be one of {', '.join(OPTIMIZERS)}, "
                          f"got {cfg.train.optimizer!r}{hint}")
    if cfg.train.iters < 1 or cfg.train.accumulate < 1 or cfg.data.batch_size < 1:
        raise ConfigError("train.iters, train.accumulate and data.batch_size must be positive")
    if cfg.train.warmup_iters < 0 or not 0.0 <= cfg.train.warmup_ratio <= 1.0:
        raise ConfigError("train.warmup_iters must be >= 0 and train.warmup_ratio in [0, 1], got "
                          f"{cfg.train.warmup_iters} and {cfg.train.warmup_ratio}")
    if isinstance(cfg.train.class_weights, str) and cfg.train.class_weights != "median_frequency":
        close = difflib.get_close_matches(cfg.train.class_weights, ["median_frequency"], n=1, cutoff=0.5)
        hint = " (did you mean 'median_frequency'?)" if close else ""
        raise ConfigError(f"config key 'train.class_weights' must be null, median_frequency or a list of floats, "
                          f"got {cfg.train.class_weights!r}{hint}")
    rcs = cfg.data.rare_class_sampling
    if rcs is not None and rcs.min_pixels_scale not in ("label_area", "none"):
        raise ConfigError("config key 'data.rare_class_sampling.min_pixels_scale' must be label_area or none, got "
                          f"{rcs.min_pixels_scale!r}")
    for key, d in dataset_entries(cfg):
        ratio = d.transforms.cat_max_ratio
        if ratio is not None and not 0.0 < ratio <= 1.0:
            raise ConfigError(f"config key '{key}.transforms.cat_max_ratio' must be in (0, 1], got {ratio}")
    check_config_options(cfg)
    return cfg


def load_config(name: str | Path, overrides: Optional[list[str]] = None) -> ExperimentConfig:
    """Load a recipe (path or packaged name), apply dotted overrides, validate."""
    return build_config(apply_overrides(load_raw(name), overrides or []))


def to_dict(cfg: ExperimentConfig) -> dict:
    """Plain nested dict of a config."""
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (saved in every run folder)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def list_recipes() -> list[str]:
    """Names of the packaged YAML recipes."""
    return sorted(p.stem for p in PACKAGED.glob("*.yaml"))
