"""Run configuration: small typed dataclasses, validated in ``__post_init__``, overridable by ``--set``.

Only the builders in ``resnetlab.engine.trainer`` read a config; the network, the datasets and the loop take
explicit arguments. Hyperparameters are in the paper's units: iterations, not epochs.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from .errors import UserError

__all__ = [
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "RunConfig",
    "apply_overrides",
    "config_from_dict",
]


@dataclass
class ModelConfig:
    name: str = "resnet20"
    """A registered network (`resnetlab models`) or cifar_resnetD / cifar_plainD."""
    shortcut: str | None = None
    """A, B or C; None keeps the network's paper default (B ImageNet, A CIFAR)."""
    stride_in_1x1: bool | None = None
    """Bottleneck stride on the 1x1 (paper) or the 3x3 (v1.5); None keeps the paper's."""
    zero_init_residual: bool = False
    """Zero-init each block's last BN gamma (off in the paper)."""
    sync_bn: bool = False
    """SyncBatchNorm across ranks (CUDA only); off in the paper, whose BN statistics are per GPU."""
    bn_group: int = 0
    """BN statistics over groups of this many images of each process's batch, as on that many GPUs (the
    paper: 64 on CIFAR, 128 over two GPUs; 32 on ImageNet); 0: over the whole batch of each process."""

    def __post_init__(self) -> None:
        if self.bn_group < 0:
            raise UserError("model.bn_group must be >= 0")
        if self.sync_bn and self.bn_group:
            raise UserError("model.sync_bn and model.bn_group contradict each other; choose one")

    def options(self) -> dict[str, Any]:
        """The create_model options this config sets (None means: the network's default)."""
        opts = {"shortcut": self.shortcut, "stride_in_1x1": self.stride_in_1x1}
        opts = {k: v for k, v in opts.items() if v is not None}
        if self.zero_init_residual:
            opts["zero_init_residual"] = True
        return opts


@dataclass
class DataConfig:
    dataset: str = "cifar10"
    """cifar10, cifar100, fashion-mnist, mnist, imagefolder or synthetic."""
    data_dir: str | None = None
    """Where to look first; then RESNETLAB_DATA, the system location, a download."""
    train_subset: int = 0
    """Train on the first N training images only (0: all)."""
    val_split: int = 0
    """Hold out this many training images as a validation split (the paper's 45k/5k: 5000); 0: none."""
    loader: str = "auto"
    """memory: decode once into a cached tensor, augment whole batches on the device (Sec. 4.2's crops);
    stream: decode files in DataLoader workers with Sec. 3.4's ImageNet pipeline; auto: stream for
    imagefolder, memory for the others."""
    augment: bool = True
    """The paper's training augmentation (CIFAR: pad 4, crop, flip; ImageNet: scale, crop, flip, PCA)."""
    num_workers: int = 4
    """DataLoader workers for datasets that do not fit in memory (ImageFolder at ImageNet scale)."""
    on_bad_image: str = "error"
    """error: stop with the file's name; skip: leave it out and count it in the log."""

    def __post_init__(self) -> None:
        if self.train_subset < 0 or self.val_split < 0:
            raise UserError("data.train_subset and data.val_split must be >= 0")
        if self.loader not in ("auto", "memory", "stream"):
            raise UserError(f"data.loader must be auto, memory or stream, got {self.loader!r}")
        if self.on_bad_image not in ("error", "skip"):
            raise UserError(f"data.on_bad_image must be 'error' or 'skip', got {self.on_bad_image!r}")


@dataclass
class OptimConfig:
    batch_size: int = 128
    """Global mini-batch, split across ranks (CIFAR 128, ImageNet 256)."""
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.lr <= 0:
            raise UserError("optim.batch_size must be >= 1 and optim.lr > 0")


@dataclass
class ScheduleConfig:
    kind: str = "steps"
    """steps: divide at fixed iterations (CIFAR); plateau: divide when the validation error plateaus (ImageNet)."""
    milestones: list[int] = field(default_factory=lambda: [32000, 48000])
    gamma: float = 0.1
    warmup_lr: float | None = None
    """ResNet-110/1202: 0.01 until the running training error < warmup_until_error, then back to lr."""
    warmup_until_error: float = 0.8
    plateau_patience: int = 3
    """Evaluations without improvement before the plateau schedule divides the lr."""

    def __post_init__(self) -> None:
        if self.kind not in ("steps", "plateau"):
            raise UserError(f"schedule.kind must be 'steps' or 'plateau', got {self.kind!r}")


@dataclass
class TrainConfig:
    iterations: int = 64000
    eval_every: int = 1000
    """Evaluate on the held-out split every N iterations (and at the end)."""
    checkpoint_every: int = 1000
    keep_every: int = 0
    """Also keep a periodic copy every N iterations (0: only last and best)."""
    seed: int = 0
    device: str = "auto"
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    amp: str = "auto"
    """auto: bf16 autocast on CUDA, off on the CPU; bf16; off."""
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    """Deterministic kernels; on the CPU a resumed run is then bit-identical to an uninterrupted one."""
    log_every: int = 50

    def __post_init__(self) -> None:
        if self.iterations < 1 or self.eval_every < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise UserError("train.iterations, eval_every, checkpoint_every and log_every must be >= 1")
        if self.amp not in ("auto", "bf16", "off"):
            raise UserError(f"train.amp must be auto, bf16 or off, got {self.amp!r}")


@dataclass
class RunConfig:
    preset: str = ""
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)


SECTIONS = ("model", "data", "optim", "schedule", "train")


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _parse_value(text: str, annotation: Any, key: str) -> Any:
    """Parse ``text`` as ``annotation`` (bool, int, float, str, list[int], X | None)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if text.lower() in ("none", "null", ""):
            return None
        return _parse_value(text, args[0], key)
    if origin is list:
        (item,) = typing.get_args(annotation)
        parts = [p for p in text.strip("[]").split(",") if p.strip()]
        return [_parse_value(p.strip(), item, key) for p in parts]
    if annotation is bool:
        if text.lower() in ("1", "true", "yes", "on"):
            return True
        if text.lower() in ("0", "false", "no", "off"):
            return False
        raise UserError(f"{key} takes true or false, got {text!r}")
    if annotation in (int, float):
        try:
            value = float(text) if annotation is float else int(text.replace("_", ""))
        except ValueError:
            raise UserError(
                f"{key} takes {'a number' if annotation is float else 'an integer'}, got {text!r}"
            ) from None
        return value
    return text


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` strings; an unknown key or a wrong type is a one-line UserError."""
    values: dict[str, dict[str, Any]] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise UserError(f"--set takes section.key=value, got {item!r}")
        if section not in SECTIONS:
            raise UserError(f"unknown --set section {section!r} in {item!r}; sections: {', '.join(SECTIONS)}")
        hints = _field_types(type(getattr(config, section)))
        if name not in hints:
            raise UserError(f"unknown --set key {key!r}; {section} has: {', '.join(hints)}")
        values.setdefault(section, {})[name] = _parse_value(text.strip(), hints[name], key)
    for section, changes in values.items():
        # replace() re-runs __post_init__, so the new values are validated like a fresh config.
        setattr(config, section, dataclasses.replace(getattr(config, section), **changes))
    return config


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from ``to_dict()`` output (a run's config.json or a checkpoint's config)."""
    sections = {}
    for section in SECTIONS:
        cls = type(getattr(RunConfig(), section))
        known = {f.name for f in dataclasses.fields(cls)}
        sections[section] = cls(**{k: v for k, v in data.get(section, {}).items() if k in known})
    return RunConfig(preset=data.get("preset", ""), description=data.get("description", ""), **sections)
