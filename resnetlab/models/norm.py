"""BatchNorm with statistics over fixed-size groups of the batch ("ghost" BN), as on several GPUs.

The paper's BN statistics are per GPU: its CIFAR runs split the mini-batch of 128 over two GPUs (64 images
per BN), its ImageNet runs use 32 images per GPU (Sec. 3.4 and 4.2). ``GroupedBatchNorm2d`` reproduces
that on one device: in training, each consecutive group of ``group_size`` images is normalised with its own
mean and variance, exactly as if each group ran on its own GPU. Its parameters and buffers are those of
``nn.BatchNorm2d``, so state dicts are unchanged. The running statistics are updated with the average of
the groups' statistics.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GroupedBatchNorm2d", "group_batchnorm"]


class GroupedBatchNorm2d(nn.BatchNorm2d):
    def __init__(self, num_features: int, group_size: int, **kwargs: object) -> None:
        super().__init__(num_features, **kwargs)  # type: ignore[arg-type]
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.group_size = group_size

    def forward(self, x: Tensor) -> Tensor:
        n = x.shape[0]
        if not self.training or n <= self.group_size:
            return super().forward(x)
        if n % self.group_size:
            raise ValueError(f"batch of {n} does not split into BN groups of {self.group_size}")
        # Statistics in float32 whatever the input's precision (under bf16 autocast the convolutions' outputs
        # are bf16; nn.BatchNorm2d normalises them in float32 too).
        groups = x.float().reshape(n // self.group_size, self.group_size, *x.shape[1:])  # (G, n/G, C, H, W)
        mean = groups.mean(dim=(1, 3, 4), keepdim=True)  # (G, 1, C, 1, 1)
        var = groups.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
        out = (groups - mean) * torch.rsqrt(var + self.eps)
        out = (out.reshape(x.shape) * self.weight[:, None, None] + self.bias[:, None, None]).to(x.dtype)
        if self.track_running_stats:
            with torch.no_grad():
                count = groups[0].numel() / groups.shape[2]  # values per channel in one group
                self.num_batches_tracked += 1
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.mul_(1 - m).add_(mean.mean(dim=0).flatten(), alpha=m)
                unbiased = var.mean(dim=0).flatten() * count / max(count - 1, 1)
                self.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        return (
            out.contiguous(memory_format=torch.channels_last)
            if x.is_contiguous(memory_format=torch.channels_last)
            else out
        )

    def extra_repr(self) -> str:
        return super().extra_repr() + f", group_size={self.group_size}"


def group_batchnorm(module: nn.Module, group_size: int) -> nn.Module:
    """Replace every ``nn.BatchNorm2d`` of ``module`` by a ``GroupedBatchNorm2d`` sharing its parameters."""
    for name, child in module.named_children():
        if type(child) is nn.BatchNorm2d:
            grouped = GroupedBatchNorm2d(
                child.num_features,
                group_size,
                eps=child.eps,
                momentum=child.momentum,
                affine=child.affine,
                track_running_stats=child.track_running_stats,
            )
            grouped.load_state_dict(child.state_dict())
            grouped.to(child.weight.device)
            setattr(module, name, grouped)
        else:
            group_batchnorm(child, group_size)
    return module
