"""The networks of the paper: ImageNet (Table 1) and CIFAR-10 (Sec. 4.2), residual and plain."""

from .complexity import count_multiply_adds, count_parameters
from .freeze import freeze_stages, stage_modules
from .registry import (
    CIFAR_DEPTHS,
    IMAGENET_LAYERS,
    ModelInfo,
    cifar_plain,
    cifar_resnet,
    create_model,
    imagenet_plain,
    imagenet_resnet,
    list_models,
    model_info,
    register_model,
)
from .resnet import BasicBlock, Bottleneck, FeatureInfo, ResNet, Shortcut, ZeroPadShortcut

__all__ = [
    "BasicBlock",
    "Bottleneck",
    "CIFAR_DEPTHS",
    "FeatureInfo",
    "IMAGENET_LAYERS",
    "ModelInfo",
    "ResNet",
    "Shortcut",
    "ZeroPadShortcut",
    "cifar_plain",
    "cifar_resnet",
    "count_multiply_adds",
    "count_parameters",
    "create_model",
    "freeze_stages",
    "imagenet_plain",
    "imagenet_resnet",
    "list_models",
    "model_info",
    "register_model",
    "stage_modules",
]
