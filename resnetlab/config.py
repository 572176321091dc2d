"""Run configuration: small typed dataclasses, validated in ``__post_init__``, overridable by ``--set``.

Only the builders in ``resnetlab.engine.trainer`` read a config; the network, the datasets and the loop take
explicit arguments. Hyperparameters are in the paper's units: iterations, not epochs.

Each option is declared once, here: its type annotation is what ``--set`` parses (a ``Literal`` lists the
choices, checked by ``_check_choices`` in every ``__post_init__``), and a field made with ``flag(...)`` is also a
first-class ``resnetlab train`` flag that ``resnetlab.cli`` generates from ``train_flags()``. An unknown section
or key is an error everywhere: in ``--set``, in ``set_values`` and in ``config_from_dict``. ``model.name`` and
``data.dataset`` stay ``str``: their registries own the names (and the did-you-mean hints), not this file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import Any, Literal

from .errors import UserError

__all__ = [
    "ModelConfig",
    "DataConfig",
    "OptimConfig",
    "ScheduleConfig",
    "TrainConfig",
    "RunConfig",
    "Flag",
    "train_flags",
    "parse_overrides",
    "set_values",
    "apply_overrides",
    "config_from_dict",
]


def flag(default: Any, name: str, help: str, metavar: str | None = None) -> Any:
    """A config field that is also the ``resnetlab train`` flag ``name`` (help text and metavar as in --help)."""
    return field(default=default, metadata={"flag": name, "help": help, "metavar": metavar})


def _choices_text(choices: tuple[Any, ...]) -> str:
    words = [str(c) for c in choices]
    return ", ".join(words[:-1]) + " or " + words[-1] if len(words) > 1 else words[0]


def _choose(value: Any, choices: tuple[Any, ...], key: str) -> Any:
    """``value`` as one of ``choices`` (case-insensitively for words: --set train.amp=BF16 is bf16); else a
    one-line UserError naming the key and the choices."""
    for choice in choices:
        if value == choice or (isinstance(value, str) and str(choice).lower() == value.lower()):
            return choice
    raise UserError(f"{key} must be {_choices_text(choices)}, got {value!r}")


def _require(ok: bool, message: str) -> None:
    """A value torch (or the schedule) would refuse later with a traceback, or take and train on nonsense,
    is a one-line UserError now."""
    if not ok:
        raise UserError(message)


def _literal_choices(annotation: Any) -> tuple[tuple[Any, ...], bool] | None:
    """The choices of ``Literal[...]`` or ``Literal[...] | None`` and whether None is allowed; None otherwise."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return typing.get_args(annotation), False
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(annotation)
        literals = [a for a in args if typing.get_origin(a) is Literal]
        if len(literals) == 1 and len(args) == 2 and type(None) in args:
            return typing.get_args(literals[0]), True
    return None


def _check_choices(config: Any, section: str) -> None:
    """Every ``Literal`` field of ``config`` holds one of its choices (stored in the choice's own spelling)."""
    for name, annotation in _field_types(type(config)).items():
        literal = _literal_choices(annotation)
        value = getattr(config, name)
        if literal is None or (value is None and literal[1]):
            continue
        setattr(config, name, _choose(value, literal[0], f"{section}.{name}"))


@dataclass
class ModelConfig:
    name: str = "resnet20"
    """A registered network (`resnetlab models`) or cifar_resnetD / cifar_plainD."""
    shortcut: Literal["A", "B", "C"] | None = None
    """A, B or C (a, b, c read as A, B, C, as create_model does); None keeps the network's paper default (B
    ImageNet, A CIFAR)."""
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
        _check_choices(self, "model")
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
    data_dir: str | None = flag(
        None, "--data-dir", "where the dataset is (then $RESNETLAB_DATA, the system location)", metavar="DIR"
    )
    """Where to look first; then RESNETLAB_DATA, the system location, a download."""
    train_subset: int = flag(
        0, "--train-subset", "train on N training images, a class-stratified sample drawn with --seed", metavar="N"
    )
    """Train on N training images (0: all): each class its share, drawn with train.seed, the same on every rank
    and every resume."""
    val_split: int = 0
    """Hold out this many training images as a validation split (the paper's 45k/5k: 5000); 0: none."""
    loader: Literal["auto", "memory", "stream"] = "auto"
    """memory: decode once into a cached tensor, augment whole batches on the device (Sec. 4.2's crops);
    stream: decode files in DataLoader workers with Sec. 3.4's ImageNet pipeline; auto: stream for
    imagefolder, memory for the others."""
    augment: bool = True
    """The paper's training augmentation (CIFAR: pad 4, crop, flip; ImageNet: scale, crop, flip, PCA)."""
    num_workers: int = 4
    """DataLoader workers for datasets that do not fit in memory (ImageFolder at ImageNet scale)."""
    on_bad_image: Literal["error", "skip"] = "error"
    """error: stop with the file's name; skip: leave it out and count it in the log."""

    def __post_init__(self) -> None:
        _check_choices(self, "data")
        if self.train_subset < 0 or self.val_split < 0:
            raise UserError("data.train_subset and data.val_split must be >= 0")
        _require(self.num_workers >= 0, f"data.num_workers must be >= 0 (0: this process), got {self.num_workers}")


@dataclass
class OptimConfig:
    batch_size: int = flag(128, "--batch-size", "global mini-batch", metavar="N")
    """Global mini-batch, split across ranks (CIFAR 128, ImageNet 256)."""
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False

    def __post_init__(self) -> None:
        _check_choices(self, "optim")
        if self.batch_size < 1 or self.lr <= 0:
            raise UserError("optim.batch_size must be >= 1 and optim.lr > 0")
        _require(math.isfinite(self.lr), f"optim.lr must be a finite number, got {self.lr}")
        # not (a <= x < b) also refuses NaN, which every comparison fails
        _require(0 <= self.momentum < 1, f"optim.momentum must be in [0, 1) (the paper: 0.9), got {self.momentum}")
        _require(
            0 <= self.weight_decay < math.inf,
            f"optim.weight_decay must be >= 0 and finite (the paper: 1e-4), got {self.weight_decay}",
        )


@dataclass
class ScheduleConfig:
    kind: Literal["steps", "plateau"] = "steps"
    """steps: divide at fixed iterations (CIFAR); plateau: divide when the validation error plateaus (ImageNet)."""
    milestones: list[int] = field(default_factory=lambda: [32000, 48000])
    gamma: float = 0.1
    warmup_lr: float | None = None
    """ResNet-110 (the paper; ResNet-1202 too, this project's reading): 0.01 until the running training error
    < warmup_until_error, then back to lr."""
    warmup_until_error: float = 0.8
    plateau_patience: int = 3
    """Evaluations without improvement before the plateau schedule divides the lr."""

    def __post_init__(self) -> None:
        _check_choices(self, "schedule")
        ms = self.milestones
        _require(
            all(m >= 0 for m in ms) and ms == sorted(ms),
            f"schedule.milestones must be iterations >= 0 in increasing order, got {ms}",
        )
        # gamma multiplies the lr at each step: (0, 1] divides it (the paper: by 10), as the schedule means
        _require(0 < self.gamma <= 1, f"schedule.gamma must be in (0, 1] (the paper: 0.1), got {self.gamma}")
        _require(
            self.warmup_lr is None or 0 < self.warmup_lr < math.inf,
            f"schedule.warmup_lr must be > 0 and finite, or none (the paper's ResNet-110: 0.01), got {self.warmup_lr}",
        )
        _require(
            0 < self.warmup_until_error <= 1,
            f"schedule.warmup_until_error must be in (0, 1] (a training error; the paper: 0.8), got "
            f"{self.warmup_until_error}",
        )
        _require(self.plateau_patience >= 1, f"schedule.plateau_patience must be >= 1, got {self.plateau_patience}")


@dataclass
class TrainConfig:
    iterations: int = flag(
        64000, "--iterations", "total training iterations (the schedule is not rescaled)", metavar="N"
    )
    eval_every: int = flag(1000, "--eval-every", "evaluate every N iterations", metavar="N")
    """Evaluate on the held-out split every N iterations (and at the end)."""
    checkpoint_every: int = flag(1000, "--checkpoint-every", "save last.pt every N iterations", metavar="N")
    keep_every: int = 0
    """Also keep a periodic copy every N iterations (0: only last and best)."""
    seed: int = flag(0, "--seed", "random seed (data order, augmentation, initialisation)")
    device: str = flag("auto", "--device", "auto, cpu, cuda, cuda:N")
    """auto (cuda if available), cpu, cuda, cuda:1, ..."""
    amp: Literal["auto", "bf16", "off"] = "auto"
    """Precision of the step. off: float32, the paper's (on CUDA with PyTorch's default TF32 convolutions);
    bf16: bf16 autocast, a named deviation; auto: bf16 on a CPU that computes bf16 natively (AVX512-BF16 or
    AMX), where it was measured to reach float32's error (docs/training.md), float32 everywhere else (CUDA
    included). env.json and every evaluation record name the precision a run trained in."""
    cuda_graph: Literal["auto", "on", "off"] = "auto"
    """Packed and in-memory single runs on CUDA: replay the whole step as one CUDA graph (auto: on CUDA)."""
    packing: Literal["auto", "grouped", "branches"] = "auto"
    """How --seeds packs K networks: one network with groups=K convolutions, or K branches side by side
    (auto: grouped on CUDA; branches on the CPU, measured 1.5x faster there than grouped)."""
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    """Deterministic kernels; on the CPU a resumed run is then bit-identical to an uninterrupted one."""
    log_every: int = 50
    tensorboard: Literal["auto", "on", "off"] = "auto"
    """Mirror metrics.jsonl into RUN_DIR/tensorboard/: auto (when tensorboard is installed), on, off."""
    init: str | None = flag(
        None,
        "--init",
        "fine-tune: start from these weights (checkpoint or torchvision .pth); optimizer, schedule fresh",
        metavar="FILE",
    )
    """Fine-tuning: initialise the network from this file's weights (weights only, unlike --resume). An fc
    for another number of classes is replaced by a freshly initialised one; any other difference (network,
    options, input channels) is an error. Its path and sha256 go into the run's env.json."""
    freeze: list[str] = field(default_factory=list)
    """Fine-tuning: stages to freeze, by the names of the network's ``feature_info`` (``stem``, then ``conv2_x``
    .. ``conv5_x`` on ImageNet networks, ``stage1`` .. ``stage3`` on CIFAR ones; ``layer1``.. too): their
    parameters get no gradient and stay out of the optimizer (weight decay does not move them) and their BN
    layers stay in eval mode (running statistics fixed) throughout training."""

    def __post_init__(self) -> None:
        _check_choices(self, "train")
        self.freeze = [name.strip().lower() for name in self.freeze if name.strip()]
        _require(
            len(set(self.freeze)) == len(self.freeze), f"train.freeze names a stage twice: {','.join(self.freeze)}"
        )
        _require(self.init is None or bool(self.init.strip()), "train.init must be a file, or none")
        if self.iterations < 1 or self.eval_every < 1 or self.checkpoint_every < 1 or self.log_every < 1:
            raise UserError("train.iterations, eval_every, checkpoint_every and log_every must be >= 1")
        _require(self.keep_every >= 0, f"train.keep_every must be >= 0 (0: only last and best), got {self.keep_every}")
        _require(0 <= self.seed < 2**63, f"train.seed must be in 0 .. 2**63 - 1 (what torch takes), got {self.seed}")


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


@cache
def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _section_type(section: str) -> type:
    return _field_types(RunConfig)[section]


def _parse_value(text: str, annotation: Any, key: str) -> Any:
    """Parse ``text`` as ``annotation`` (bool, int, float, str, Literal[...], list[int], X | None)."""
    origin = typing.get_origin(annotation)
    if origin is Literal:
        return _choose(text, typing.get_args(annotation), key)
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


@dataclass(frozen=True)
class Flag:
    """A config field that ``resnetlab train`` takes as a flag of its own (declared with ``flag(...)``)."""

    key: str
    """section.name, e.g. train.iterations."""
    name: str
    """The flag, e.g. --iterations."""
    help: str
    metavar: str | None
    annotation: Any

    @property
    def dest(self) -> str:
        """The argparse attribute the flag's value lands in, e.g. iterations."""
        return self.name.lstrip("-").replace("-", "_")

    def parse(self, text: str) -> Any:
        """``text`` as the field's type, by the parser ``--set`` uses (a one-line UserError if it is not)."""
        return _parse_value(text, self.annotation, self.key)


def train_flags() -> list[Flag]:
    """The first-class ``resnetlab train`` flags, in the order of the config's sections and fields."""
    flags = []
    for section in SECTIONS:
        cls = _section_type(section)
        hints = _field_types(cls)
        for f in dataclasses.fields(cls):
            if "flag" in f.metadata:
                meta = f.metadata
                flags.append(Flag(f"{section}.{f.name}", meta["flag"], meta["help"], meta["metavar"], hints[f.name]))
    return flags


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """``section.key=value`` strings as typed values by key; an unknown key or a wrong type is a one-line
    UserError."""
    values: dict[str, Any] = {}
    for item in overrides:
        key, sep, text = item.partition("=")
        section, dot, name = key.strip().partition(".")
        if not sep or not dot:
            raise UserError(f"--set takes section.key=value, got {item!r}")
        if section not in SECTIONS:
            raise UserError(f"unknown --set section {section!r} in {item!r}; sections: {', '.join(SECTIONS)}")
        hints = _field_types(_section_type(section))
        if name not in hints:
            raise UserError(f"unknown --set key {key!r}; {section} has: {', '.join(hints)}")
        values[f"{section}.{name}"] = _parse_value(text.strip(), hints[name], key)
    return values


def set_values(config: RunConfig, values: Mapping[str, Any]) -> RunConfig:
    """Set typed values by ``section.name`` key, each section validated once with all its new values."""
    changes: dict[str, dict[str, Any]] = {}
    for key, value in values.items():
        section, _, name = key.partition(".")
        if section not in SECTIONS or name not in _field_types(_section_type(section)):
            raise UserError(f"unknown config key {key!r}")
        changes.setdefault(section, {})[name] = value
    for section, new in changes.items():
        # replace() re-runs __post_init__, so the new values are validated like a fresh config.
        setattr(config, section, dataclasses.replace(getattr(config, section), **new))
    return config


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``section.key=value`` strings; an unknown key or a wrong type is a one-line UserError."""
    return set_values(config, parse_overrides(overrides))


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    """Rebuild a RunConfig from ``to_dict()`` output (a run's config.json or a checkpoint's config).

    A key this version does not know is a one-line UserError naming it (it would otherwise be dropped
    silently); a key that is missing takes the field's default (a record written before the field existed)."""
    top = _field_types(RunConfig)
    for key in data:
        if key not in top:
            raise UserError(f"unknown config section {key!r}; a config has: {', '.join(top)}")
    sections = {}
    for section in SECTIONS:
        cls = _section_type(section)
        values = data.get(section, {})
        for name in values:
            if name not in _field_types(cls):
                raise UserError(f"unknown config key '{section}.{name}'; {section} has: {', '.join(_field_types(cls))}")
        sections[section] = cls(**values)
    return RunConfig(preset=data.get("preset", ""), description=data.get("description", ""), **sections)
