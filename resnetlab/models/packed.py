"""K networks of one architecture trained as one: packed seeds.

The paper's CIFAR networks are narrow (16 to 64 channels): one of them leaves a GPU waiting on kernel
launches. Packing K of them (the K seeds of Table 6) makes every kernel K times wider and the step K times
more useful. Two layouts, each exactly K independent networks:

- ``grouped``: one network whose every convolution has ``groups=K`` (K*C channels, network k's in the k-th
  block), whose BN normalises K*C channels (so each network's statistics are its own), whose option-A
  shortcut pads each network's channels separately and whose fc is a batched matmul. Its input is
  (K, B, C, H, W), network k's batch in row k; its output (K, B, classes).
- ``branches``: the K networks side by side, run one after another (in one CUDA graph there is no launch
  cost to hide).

Either way the state of network k is ``members()[k]``-shaped: ``unpack`` gives K ordinary state dicts that
load into the single network with ``strict=True``, and ``pack`` the reverse, so a packed run saves K ordinary
checkpoints and resumes from them.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .norm import GroupedBatchNorm2d
from .resnet import ZeroPadShortcut

__all__ = ["LAYOUTS", "PackedNetworks", "pack_state", "unpack_state"]

LAYOUTS = ("grouped", "branches")


class PackedZeroPad(nn.Module):
    """Option A for K packed networks: each network's channels subsampled and padded with its own zeros."""

    def __init__(self, single: ZeroPadShortcut, k: int) -> None:
        super().__init__()
        self.stride, self.extra_planes, self.k = single.stride, single.extra_planes, k

    def forward(self, x: Tensor) -> Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        b, kc, h, w = x.shape
        x = x.reshape(b, self.k, kc // self.k, h, w)  # (B, K, C, H, W)
        return F.pad(x, (0, 0, 0, 0, 0, self.extra_planes)).reshape(b, -1, h, w)


class PackedLinear(nn.Module):
    """K fc layers as one batched matmul: (B, K*F) -> (K, B, classes). Weight (K*classes, F): network k's rows
    in the k-th block, as ``pack_state`` concatenates them."""

    def __init__(self, single: nn.Linear, k: int) -> None:
        super().__init__()
        self.k, self.out_features = k, single.out_features
        self.weight = nn.Parameter(torch.empty(k * single.out_features, single.in_features))
        self.bias = nn.Parameter(torch.empty(k * single.out_features))

    def forward(self, x: Tensor) -> Tensor:
        k, c = self.k, self.out_features
        features = x.reshape(x.shape[0], k, -1).transpose(0, 1)  # (K, B, F)
        weight = self.weight.view(k, c, -1).transpose(1, 2)  # (K, F, classes)
        return torch.baddbmm(self.bias.view(k, 1, c), features, weight)  # (K, B, classes)


def _widen(module: nn.Module, k: int) -> nn.Module:
    """``module`` (a single network, unchanged) as K packed copies: new layers, uninitialised weights."""
    if isinstance(module, nn.Conv2d):
        if module.groups != 1 or module.bias is not None:
            raise ValueError("packing needs ungrouped convolutions without bias (the paper's)")
        return nn.Conv2d(
            k * module.in_channels,
            k * module.out_channels,
            module.kernel_size,  # type: ignore[arg-type]
            stride=module.stride,  # type: ignore[arg-type]
            padding=module.padding,  # type: ignore[arg-type]
            groups=k,
            bias=False,
        )
    if isinstance(module, nn.BatchNorm2d):
        options = dict(eps=module.eps, momentum=module.momentum, affine=module.affine)
        if isinstance(module, GroupedBatchNorm2d):
            return GroupedBatchNorm2d(k * module.num_features, module.group_size, **options)
        if type(module) is not nn.BatchNorm2d:
            raise ValueError(f"cannot pack {type(module).__name__}")
        return nn.BatchNorm2d(k * module.num_features, **options)
    if isinstance(module, ZeroPadShortcut):
        return PackedZeroPad(module, k)
    if isinstance(module, nn.Linear):
        return PackedLinear(module, k)
    if any(True for _ in module.parameters(recurse=False)) or any(True for _ in module.buffers(recurse=False)):
        raise ValueError(f"cannot pack {type(module).__name__}")
    # A container or a parameter-free layer (ReLU, pooling, flatten): the same code over K*C channels.
    widened = copy.copy(module)
    widened._parameters, widened._buffers = {}, {}  # type: ignore[misc]
    widened._modules = {  # type: ignore[misc]
        name: None if child is None else _widen(child, k) for name, child in module._modules.items()
    }
    return widened


def pack_state(states: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    """K state dicts of one architecture as the grouped layout's: each tensor the K concatenated along dim 0
    (scalars, i.e. BN's ``num_batches_tracked``, must agree and are kept once)."""
    packed = {}
    for key, first in states[0].items():
        tensors = [state[key] for state in states]
        if first.dim() == 0:
            if any(not torch.equal(t, first) for t in tensors):
                raise ValueError(f"{key} differs between the networks: {[t.item() for t in tensors]}")
            packed[key] = first.clone()
        else:
            packed[key] = torch.cat(tensors)
    return packed


def unpack_state(packed: dict[str, Tensor], k: int) -> list[dict[str, Tensor]]:
    """The inverse of ``pack_state``: K ordinary state dicts (copies)."""
    states: list[dict[str, Tensor]] = [{} for _ in range(k)]
    for key, tensor in packed.items():
        parts = [tensor] * k if tensor.dim() == 0 else list(tensor.chunk(k))
        for state, part in zip(states, parts):
            state[key] = part.clone()
    return states


class PackedNetworks(nn.Module):
    """K networks of one architecture as one module: input (K, B, C, H, W), output (K, B, classes).

    ``template`` is one of the K networks (any of them: only its structure is read). ``channels_last``
    keeps the grouped layout's activations in that memory format.
    """

    def __init__(self, template: nn.Module, k: int, layout: str = "grouped", channels_last: bool = False) -> None:
        super().__init__()
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
        if k < 1:
            raise ValueError(f"need at least one network, got {k}")
        self.k, self.layout, self.channels_last = k, layout, channels_last
        self._keys = list(template.state_dict())
        if layout == "grouped":
            self.net = _widen(template, k)
        else:
            self.branches = nn.ModuleList(copy.deepcopy(template) for _ in range(k))

    def forward(self, x: Tensor) -> Tensor:
        memory_format = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.layout == "branches":
            outs = [net(x[i].contiguous(memory_format=memory_format)) for i, net in enumerate(self.branches)]
            return torch.stack(outs)  # (K, B, classes)
        k, b = x.shape[:2]
        x = x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])  # (B, K*C, H, W)
        return self.net(x.contiguous(memory_format=memory_format))

    def members(self) -> list[dict[str, Tensor]]:
        """The K networks' state dicts, each one loadable into the single network."""
        if self.layout == "branches":
            return [{key: t.detach().clone() for key, t in net.state_dict().items()} for net in self.branches]
        return unpack_state({key: t.detach() for key, t in self.net.state_dict().items()}, self.k)

    def load_members(self, states: Sequence[dict[str, Tensor]]) -> None:
        """Load K single-network state dicts (in place: the tensors keep their storage, as CUDA graphs need)."""
        if len(states) != self.k:
            raise ValueError(f"need {self.k} state dicts, got {len(states)}")
        for state in states:
            if list(state) != self._keys:
                raise ValueError("a state dict of another architecture")
        if self.layout == "branches":
            for net, state in zip(self.branches, states):
                net.load_state_dict(state, strict=True)
        else:
            self.net.load_state_dict(pack_state(states), strict=True)

    def member_parameters(self) -> list[tuple[nn.Parameter, int | None]]:
        """Every parameter with the network it belongs to: ``(p, k)`` for a branch's, ``(p, None)`` for a
        grouped one, whose K networks are the K blocks of its dim 0. In the single network's order, network
        after network for branches."""
        if self.layout == "branches":
            return [(p, i) for i, net in enumerate(self.branches) for p in net.parameters()]
        return [(p, None) for p in self.net.parameters()]

    def split_parameter(self, tensor: Tensor, owner: int | None) -> list[tuple[int, Tensor]]:
        """A tensor shaped like one of ``member_parameters`` as ``(k, network k's part)`` views."""
        if owner is not None:
            return [(owner, tensor)]
        return list(enumerate(tensor.chunk(self.k)))
