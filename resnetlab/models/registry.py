"""The paper's networks by name: one table of data, four builders, a registry that refuses duplicates."""

from __future__ import annotations

import difflib
import functools
import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass

from .resnet import BasicBlock, Bottleneck, ResNet, Shortcut

__all__ = [
    "IMAGENET_LAYERS",
    "CIFAR_DEPTHS",
    "CIFAR_PLAIN_DEPTHS",
    "ModelInfo",
    "imagenet_resnet",
    "imagenet_plain",
    "cifar_resnet",
    "cifar_plain",
    "register_model",
    "list_models",
    "model_info",
    "create_model",
]

# Table 1: block type and blocks per stage (conv2_x..conv5_x) of each ImageNet depth.
IMAGENET_LAYERS: dict[int, tuple[type[BasicBlock | Bottleneck], tuple[int, ...]]] = {
    18: (BasicBlock, (2, 2, 2, 2)),
    34: (BasicBlock, (3, 4, 6, 3)),
    50: (Bottleneck, (3, 4, 6, 3)),
    101: (Bottleneck, (3, 4, 23, 3)),
    152: (Bottleneck, (3, 8, 36, 3)),
}
IMAGENET_WIDTHS = (64, 128, 256, 512)
# Sec. 4.2: 6n+2 layers, three stages of n basic blocks with 16, 32, 64 filters.
CIFAR_WIDTHS = (16, 32, 64)
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)  # n = 3, 5, 7, 9, 18, 200 (Table 6)
CIFAR_PLAIN_DEPTHS = (20, 32, 44, 56, 110)  # Fig. 6 left (plain-110 is mentioned, above 60% error)


def _cifar_blocks(depth: int) -> int:
    if depth < 8 or (depth - 2) % 6:
        raise ValueError(f"CIFAR nets have 6n+2 layers (20, 32, 44, 56, 110, 1202, ...), got depth {depth}")
    return (depth - 2) // 6


def _imagenet_layers(depth: int) -> tuple[type[BasicBlock | Bottleneck], tuple[int, ...]]:
    if depth not in IMAGENET_LAYERS:
        raise ValueError(f"ImageNet depths are {sorted(IMAGENET_LAYERS)} (Table 1), got {depth}")
    return IMAGENET_LAYERS[depth]


def imagenet_resnet(
    depth: int,
    *,
    shortcut: Shortcut | str = Shortcut.B,
    stride_in_1x1: bool = True,
    zero_init_residual: bool = False,
    num_classes: int = 1000,
    in_channels: int = 3,
) -> ResNet:
    """ResNet-18/34/50/101/152 of Table 1; defaults are the paper's (option B, stride on the 1x1).

    ``stride_in_1x1=False`` with option B gives torchvision's v1.5 network, key for key: its weights load
    with ``strict=True`` and give the same outputs. In the default v1 mode the same weights also load (the
    keys and shapes are identical) but compute a different network, so load them into v1.5 only.
    ``stride_in_1x1`` has no effect on the basic-block nets (18, 34), which have no 1x1 convolution.
    """
    block, layers = _imagenet_layers(depth)
    return ResNet(
        block,
        layers,
        IMAGENET_WIDTHS,
        stem="imagenet",
        shortcut=Shortcut.parse(shortcut),
        stride_in_1x1=stride_in_1x1,
        zero_init_residual=zero_init_residual,
        num_classes=num_classes,
        in_channels=in_channels,
    )


def imagenet_plain(depth: int, *, stride_in_1x1: bool = True, num_classes: int = 1000, in_channels: int = 3) -> ResNet:
    """The plain twin of ``imagenet_resnet(depth)``: the same stack with no shortcuts (Sec. 3.3, Fig. 3 middle)."""
    block, layers = _imagenet_layers(depth)
    return ResNet(
        block,
        layers,
        IMAGENET_WIDTHS,
        stem="imagenet",
        shortcut=None,
        stride_in_1x1=stride_in_1x1,
        num_classes=num_classes,
        in_channels=in_channels,
    )


def cifar_resnet(
    depth: int,
    *,
    shortcut: Shortcut | str = Shortcut.A,
    zero_init_residual: bool = False,
    num_classes: int = 10,
    in_channels: int = 3,
) -> ResNet:
    """The 6n+2-layer CIFAR-10 ResNet of Sec. 4.2, any valid depth; option A everywhere, as the paper."""
    n = _cifar_blocks(depth)
    return ResNet(
        BasicBlock,
        (n, n, n),
        CIFAR_WIDTHS,
        stem="cifar",
        shortcut=Shortcut.parse(shortcut),
        zero_init_residual=zero_init_residual,
        num_classes=num_classes,
        in_channels=in_channels,
    )


def cifar_plain(depth: int, *, num_classes: int = 10, in_channels: int = 3) -> ResNet:
    """The plain 6n+2-layer CIFAR-10 net: same depth, width and parameters as its ResNet twin (Sec. 4.2)."""
    n = _cifar_blocks(depth)
    return ResNet(
        BasicBlock,
        (n, n, n),
        CIFAR_WIDTHS,
        stem="cifar",
        shortcut=None,
        num_classes=num_classes,
        in_channels=in_channels,
    )


@dataclass(frozen=True)
class ModelInfo:
    """What the table and the tests need to know about a registered network without building it."""

    name: str
    family: str  # "imagenet" | "cifar"
    depth: int
    block: str  # "basic" | "bottleneck"
    residual: bool
    input_size: int  # the paper's native resolution: 224 (ImageNet) or 32 (CIFAR)
    builder: Callable[..., ResNet]

    @property
    def options(self) -> dict[str, object]:
        """The options ``create_model`` accepts for this network, with their (paper) defaults."""
        params = inspect.signature(self.builder).parameters.values()
        return {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}


_MODELS: dict[str, ModelInfo] = {}


def register_model(info: ModelInfo) -> ModelInfo:
    if info.name in _MODELS:
        raise ValueError(f"model {info.name!r} is already registered")
    _MODELS[info.name] = info
    return info


def _imagenet_info(depth: int, residual: bool) -> ModelInfo:
    block = IMAGENET_LAYERS[depth][0]
    builder = imagenet_resnet if residual else imagenet_plain
    name = f"{'resnet' if residual else 'plain'}{depth}"
    block_name = "basic" if block is BasicBlock else "bottleneck"
    return ModelInfo(name, "imagenet", depth, block_name, residual, 224, functools.partial(builder, depth))


def _cifar_info(depth: int, residual: bool, name: str | None = None) -> ModelInfo:
    builder = cifar_resnet if residual else cifar_plain
    name = name or f"{'resnet' if residual else 'plain'}{depth}"
    return ModelInfo(name, "cifar", depth, "basic", residual, 32, functools.partial(builder, depth))


for _depth in IMAGENET_LAYERS:
    register_model(_imagenet_info(_depth, residual=True))
    register_model(_imagenet_info(_depth, residual=False))
for _depth in CIFAR_DEPTHS:
    register_model(_cifar_info(_depth, residual=True))
for _depth in CIFAR_PLAIN_DEPTHS:
    register_model(_cifar_info(_depth, residual=False))

# Any other 6n+2 depth, on the CIFAR layout: cifar_resnet74, cifar_plain8, ... (also cifar_resnet50, which
# "resnet50" cannot mean since that name is the ImageNet net).
_CIFAR_ANY_DEPTH = re.compile(r"cifar_(resnet|plain)(\d+)")


def list_models(family: str | None = None) -> list[str]:
    """Registered names, ImageNet nets first, then CIFAR, each by depth; optionally one family only."""
    infos = [i for i in _MODELS.values() if family in (None, i.family)]
    return [i.name for i in sorted(infos, key=lambda i: (i.family != "imagenet", not i.residual, i.depth))]


def model_info(name: str) -> ModelInfo:
    if name in _MODELS:
        return _MODELS[name]
    match = _CIFAR_ANY_DEPTH.fullmatch(name)
    if match:
        kind, depth = match.group(1), int(match.group(2))
        _cifar_blocks(depth)  # a clear error for a depth that is not 6n+2
        return _cifar_info(depth, residual=kind == "resnet", name=name)
    close = difflib.get_close_matches(name, list(_MODELS), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else "; `resnetlab models` lists them"
    raise ValueError(f"unknown model {name!r}{hint}")


def create_model(name: str, **options: object) -> ResNet:
    """Build a network of the paper by name, e.g. ``create_model("resnet56")`` or
    ``create_model("resnet50", stride_in_1x1=False)``. Every option defaults to the paper's choice;
    an option the network does not take is an error, never silently dropped."""
    info = model_info(name)
    accepted = info.options
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise TypeError(f"{name} does not take option(s) {', '.join(unknown)}; it takes {', '.join(accepted)}")
    return info.builder(**options)
