"""The networks of He et al., "Deep Residual Learning for Image Recognition" (CVPR 2016).

One network class, :class:`ResNet`, covers both families of the paper:

- the ImageNet nets of Table 1 (7x7 stem, max pool, four stages of basic or bottleneck blocks), and
- the CIFAR-10 nets of Sec. 4.2 (3x3 stem with 16 filters, three stages of 2n 3x3 layers),

each with or without shortcuts (the paper's "plain" baselines). Module and parameter names follow
torchvision's ``ResNet`` so that its state dicts load with ``strict=True`` (see ``stride_in_1x1``).
"""

from __future__ import annotations

from enum import Enum
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Shortcut", "ZeroPadShortcut", "BasicBlock", "Bottleneck", "ResNet", "FeatureInfo"]


class Shortcut(str, Enum):
    """The paper's shortcut options (Sec. 3.3, Table 3).

    A: identity; where dimensions increase, a strided identity padded with zero channels (no parameters).
    B: identity; where dimensions increase, a 1x1 projection with stride 2, followed by BN.
    C: a 1x1 projection (+ BN) on every shortcut.
    """

    A = "A"
    B = "B"
    C = "C"

    @classmethod
    def parse(cls, value: Shortcut | str) -> Shortcut:
        try:
            return cls(str(value.value if isinstance(value, Shortcut) else value).upper())
        except ValueError:
            raise ValueError(f"shortcut must be one of A, B, C (the paper's options), got {value!r}") from None


class ZeroPadShortcut(nn.Module):
    """Option A: identity subsampled with ``stride`` and padded with zero channels; parameter-free.

    The zero channels are appended after the identity channels, as in Facebook's Torch
    reimplementation (fb.resnet.torch concatenates the identity with zeros). A real module, not a lambda,
    so that the network pickles.
    """

    def __init__(self, in_planes: int, out_planes: int, stride: int) -> None:
        super().__init__()
        if out_planes < in_planes:
            raise ValueError(f"option A can only add channels ({in_planes} -> {out_planes})")
        self.stride = stride
        self.extra_planes = out_planes - in_planes

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]  # (N, C, ceil(H/s), ceil(W/s)), as the strided conv
        # F.pad pads the last dims first: (W left, W right, H top, H bottom, C front, C back).
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_planes))

    def extra_repr(self) -> str:
        return f"stride={self.stride}, extra_planes={self.extra_planes}"


def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


def make_shortcut(kind: Shortcut, in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
    """The shortcut module of one residual block; ``None`` means the plain identity."""
    changes_shape = stride != 1 or in_planes != out_planes
    if kind is Shortcut.C or (kind is Shortcut.B and changes_shape):
        # torchvision calls this module `downsample`: a Sequential of (conv, bn), keys downsample.0/1.
        return nn.Sequential(conv1x1(in_planes, out_planes, stride), nn.BatchNorm2d(out_planes))
    if kind is Shortcut.A and changes_shape:
        return ZeroPadShortcut(in_planes, out_planes, stride)
    return None


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (Fig. 5 left); BN after each conv, ReLU after the addition.

    ``shortcut=None`` builds the plain block: no shortcut path at all, y = ReLU(F(x)).
    """

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int, shortcut: Shortcut | None, stride_in_1x1: bool = True
    ) -> None:
        super().__init__()
        del stride_in_1x1  # only bottlenecks have a 1x1 to carry the stride
        self.conv1 = conv3x3(in_planes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.residual = shortcut is not None
        self.downsample = make_shortcut(shortcut, in_planes, planes, stride) if self.residual else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3, 1x1 expand (x4) (Fig. 5 right); BN after each conv, ReLU after the addition.

    ``stride_in_1x1=True`` puts the stride on the first 1x1 as the paper and the authors' released models
    do ("v1"); ``False`` puts it on the 3x3 as torchvision, timm and NVIDIA do ("v1.5", more FLOPs).
    """

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int, shortcut: Shortcut | None, stride_in_1x1: bool = True
    ) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        stride_1x1, stride_3x3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = conv1x1(in_planes, planes, stride_1x1)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = conv3x3(planes, planes, stride_3x3)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = conv1x1(planes, out_planes)
        self.bn3 = nn.BatchNorm2d(out_planes)
        self.relu = nn.ReLU(inplace=True)
        self.residual = shortcut is not None
        self.downsample = make_shortcut(shortcut, in_planes, out_planes, stride) if self.residual else None

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        if self.residual:
            out = out + (x if self.downsample is None else self.downsample(x))
        return self.relu(out)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3


class FeatureInfo(NamedTuple):
    """One stage output: the module that produces it, the paper's name, its channels and its stride."""

    module: str
    name: str
    channels: int
    reduction: int


class ResNet(nn.Module):
    """A residual (or plain) network of the paper, ImageNet or CIFAR layout.

    Args:
        block: ``BasicBlock`` or ``Bottleneck``.
        layers: blocks per stage, e.g. (3, 4, 6, 3) for the 50-layer net (Table 1), (n, n, n) on CIFAR.
        widths: planes per stage, e.g. (64, 128, 256, 512) on ImageNet, (16, 32, 64) on CIFAR.
        stem: ``"imagenet"`` (7x7/2 conv, 3x3/2 max pool; Table 1) or ``"cifar"`` (3x3 conv; Sec. 4.2).
        shortcut: the shortcut option (Sec. 3.3), or ``None`` for the plain net without shortcuts.
        stride_in_1x1: stride on the bottleneck's first 1x1 (paper) or on its 3x3 (torchvision's v1.5).
        zero_init_residual: start each block's last BN at gamma = 0 (off in the paper; Goyal et al. 2017).
        num_classes: outputs of the final fc layer.
        in_channels: image channels (3 for RGB, 1 for grayscale).
    """

    def __init__(
        self,
        block: type[BasicBlock | Bottleneck],
        layers: tuple[int, ...],
        widths: tuple[int, ...],
        *,
        stem: str,
        shortcut: Shortcut | None,
        stride_in_1x1: bool = True,
        zero_init_residual: bool = False,
        num_classes: int = 1000,
        in_channels: int = 3,
    ) -> None:
        super().__init__()
        if stem not in ("imagenet", "cifar"):
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if len(layers) != len(widths) or min(layers) < 1:
            raise ValueError(f"need one positive block count per stage, got layers={layers}, widths={widths}")
        if num_classes < 1 or in_channels < 1:
            raise ValueError(f"num_classes and in_channels must be positive, got {num_classes}, {in_channels}")
        if zero_init_residual and shortcut is None:
            raise ValueError("zero_init_residual needs shortcuts: a plain net would start with every block at zero")

        if stem == "imagenet":  # conv1: 7x7, 64, stride 2; then 3x3 max pool, stride 2 (Table 1)
            self.conv1 = nn.Conv2d(in_channels, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
            reduction, paper_names = 4, [f"conv{i + 2}_x" for i in range(len(layers))]
        else:  # first layer: 3x3 conv, 16 filters, on the 32x32 image (Sec. 4.2)
            self.conv1 = conv3x3(in_channels, widths[0])
            self.maxpool = nn.Identity()
            reduction, paper_names = 1, [f"stage{i + 1}" for i in range(len(layers))]
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)

        self.feature_info: list[FeatureInfo] = []
        in_planes = widths[0]
        for i, (blocks, planes) in enumerate(zip(layers, widths)):
            stride = 1 if i == 0 else 2  # conv3_1, conv4_1, conv5_1 subsample with stride 2 (Sec. 3.3)
            reduction *= stride
            stage = []
            for j in range(blocks):
                stage.append(block(in_planes, planes, stride if j == 0 else 1, shortcut, stride_in_1x1))
                in_planes = planes * block.expansion
            self.add_module(f"layer{i + 1}", nn.Sequential(*stage))
            self.feature_info.append(FeatureInfo(f"layer{i + 1}", paper_names[i], in_planes, reduction))

        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_planes, num_classes)
        self.num_features = in_planes
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        # He et al. 2015 ("MSRA") initialisation, fan-out as in fb.resnet.torch (Facebook's reimplementation)
        # and torchvision; BN at gamma 1, beta 0. The fc keeps PyTorch's default init, as torchvision does
        # (fb.resnet.torch also zeroes the fc bias).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(m.last_bn.weight)

    @property
    def stages(self) -> list[nn.Sequential]:
        return [getattr(self, info.module) for info in self.feature_info]

    @property
    def feature_nodes(self) -> dict[str, str]:
        """``return_nodes`` for torchvision's ``create_feature_extractor``: module name -> paper's name."""
        return {info.module: info.name for info in self.feature_info}

    def stem(self, x: Tensor) -> Tensor:
        return self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, widths[0], H/4, W/4) on ImageNet

    def forward_stages(self, x: Tensor) -> dict[str, Tensor]:
        """Every stage's output by the paper's name: conv2_x..conv5_x (ImageNet) or stage1..stage3 (CIFAR)."""
        x = self.stem(x)
        out = {}
        for info, stage in zip(self.feature_info, self.stages):
            x = stage(x)
            out[info.name] = x
        return out

    def forward(self, x: Tensor) -> Tensor:
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        x = torch.flatten(self.avgpool(x), 1)  # (N, num_features)
        return self.fc(x)
