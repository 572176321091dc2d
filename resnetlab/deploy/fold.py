"""Inference form of a network: BatchNorm folded into the convolutions, NHWC memory, no autograd.

In evaluation mode BN is an affine map per channel, ``y = gamma * (x - mu) / sqrt(var + eps) + beta``, with
the running statistics ``mu`` and ``var`` frozen. Every BN of the paper's networks directly follows a
convolution ("BN right after each convolution and before activation", Sec. 3.4), so it folds into that
convolution's weight and a new bias:

    W' = W * gamma / sqrt(var + eps)        b' = beta - mu * gamma / sqrt(var + eps)

The folded network computes the same function with one pass over memory less per layer; the outputs
differ only by float rounding (measured: at most a few 1e-6 on ResNet-50's logits, see
``docs/inference.md``). Module names are kept (each BN becomes an ``nn.Identity``), so a folded state dict
has the eager one's convolution and fc keys plus one ``.bias`` per folded convolution.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["conv_bn_pairs", "fold_batchnorm", "structure_for_folded", "prepare_inference"]


def conv_bn_pairs(model: nn.Module) -> list[tuple[nn.Module, str, str]]:
    """Every (parent, conv name, BN name) pair in which the BN normalises that convolution's output.

    The networks name them as torchvision does: ``convK``/``bnK`` in the stem and the blocks, and index
    ``i - 1``/``i`` inside the shortcut projection ``downsample = Sequential(conv1x1, BN)``. A BN that
    pairs with no convolution is an error (the network is not one this module knows how to fold).
    """
    pairs = []
    for parent_name, parent in model.named_modules():
        children = dict(parent.named_children())
        for name, child in children.items():
            if not isinstance(child, nn.BatchNorm2d):
                continue
            conv_name = f"conv{name[2:]}" if name.startswith("bn") else str(int(name) - 1) if name.isdigit() else ""
            if not isinstance(children.get(conv_name), nn.Conv2d):
                where = f"{parent_name}.{name}" if parent_name else name
                raise ValueError(f"cannot fold {where}: no convolution named {conv_name or '?'} precedes it")
            pairs.append((parent, conv_name, name))
    return pairs


@torch.no_grad()
def fold_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in evaluation mode with every BN folded into the convolution before it.

    A network without BN (an already folded one) comes back as an unchanged copy.
    """
    folded = copy.deepcopy(model).eval()
    for parent, conv_name, bn_name in conv_bn_pairs(folded):
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))  # W', b' as in the module docstring
        setattr(parent, bn_name, nn.Identity())
    return folded


def structure_for_folded(model: nn.Module) -> nn.Module:
    """``model`` (freshly built) turned into the module structure of its folded form, in place: each BN
    an ``nn.Identity``, each convolution before one given a bias. Loading a folded state dict into it with
    ``strict=True`` restores the folded network exactly (how exported weights are read back)."""
    for parent, conv_name, bn_name in conv_bn_pairs(model):
        conv = getattr(parent, conv_name)
        if conv.bias is None:
            conv.bias = nn.Parameter(torch.zeros(conv.out_channels, dtype=conv.weight.dtype, device=conv.weight.device))
        setattr(parent, bn_name, nn.Identity())
    return model


def prepare_inference(
    model: nn.Module,
    *,
    fold_bn: bool = True,
    channels_last: bool = True,
    compile: bool = False,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """The network as ``resnetlab eval`` and ``predict`` run it: evaluation mode, BN folded, weights in
    channels_last (NHWC) memory, gradients off; call it under ``torch.inference_mode()``.

    channels_last is what oneDNN (CPU) and cuDNN's tensor-core kernels run natively: with NCHW weights
    every convolution reorders its input and output. Feed it inputs made contiguous the same way.
    ``compile=True`` adds ``torch.compile`` with Inductor's freezing (weights become constants, packed once
    for oneDNN, ReLU and the residual addition fused into the convolutions): faster per image, but the
    first batch of each new input shape waits for a compilation (seconds to a minute on a small CPU).
    """
    out = fold_batchnorm(model) if fold_bn else copy.deepcopy(model).eval()
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    out = out.to(device=device, memory_format=memory_format)
    out.requires_grad_(False)
    if compile:
        out = torch.compile(out, options={"freezing": True})
    return out
