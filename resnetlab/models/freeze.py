"""Freezing stages of a network for fine-tuning: no gradient, and BatchNorm held in evaluation mode.

A frozen stage is named as the network's ``feature_info`` names its stage outputs (``conv2_x`` .. ``conv5_x``
on the ImageNet networks of Table 1, ``stage1`` .. ``stage3`` on the CIFAR ones of Sec. 4.2), or by its module
(``layer1``...); ``stem`` is the first convolution and its BN. Freezing a BN layer means more than
``requires_grad=False``: in training mode it would still normalise with the batch's statistics and update its
running ones. Its ``train`` is replaced on the instance, so that ``model.train()`` (which the training loop
calls after every evaluation) leaves it in evaluation mode; the state-dict keys do not change.
"""

from __future__ import annotations

import types

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

__all__ = ["stage_modules", "freeze_stages", "is_frozen"]


def stage_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Stage name -> its modules: ``stem`` (conv1, bn1), then each ``feature_info`` stage under its paper
    name and its module name (``conv2_x`` and ``layer1`` are the same stage)."""
    infos = getattr(model, "feature_info", None)
    if infos is None:
        raise ValueError(f"{type(model).__name__} names no stages (no feature_info)")
    stages: dict[str, list[nn.Module]] = {"stem": [model.conv1, model.bn1]}
    for info in infos:
        stage = getattr(model, info.module)
        stages[info.name.lower()] = [stage]
        stages[info.module.lower()] = [stage]
    return stages


def _train_in_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    """A frozen BN's ``train``: evaluation mode whatever ``mode`` (its running statistics stay fixed)."""
    return type(self).train(self, False)


def is_frozen(module: nn.Module) -> bool:
    """Whether ``freeze_stages`` froze this BN layer."""
    return getattr(module.__dict__.get("train"), "__func__", None) is _train_in_eval


def freeze_stages(model: nn.Module, names: list[str]) -> int:
    """Freeze the stages ``names`` of ``model`` in place; returns the number of parameters frozen. An unknown
    name is a ``ValueError`` listing the network's stages. Apply it after any BN conversion (SyncBatchNorm,
    grouped BN), which builds new BN modules."""
    stages = stage_modules(model)
    unknown = [name for name in names if name.lower() not in stages]
    if unknown:
        raise ValueError(f"unknown stage {unknown[0]!r} to freeze; this network has: {', '.join(stages)}")
    frozen = 0
    for name in names:
        for module in stages[name.lower()]:
            for param in module.parameters():
                frozen += param.numel() if param.requires_grad else 0
                param.requires_grad_(False)
            for bn in module.modules():
                if isinstance(bn, _BatchNorm):
                    # A bound method survives deepcopy bound to the copy (a closure would stay on the original).
                    bn.train = types.MethodType(_train_in_eval, bn)
                    bn.eval()
    return frozen
