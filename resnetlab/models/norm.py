"""BatchNorm with statistics over fixed-size groups of the batch ("ghost" BN), as on several GPUs.

The paper's BN statistics are per GPU: its CIFAR runs split the mini-batch of 128 over two GPUs (64 images
per BN), its ImageNet runs use 32 images per GPU (Sec. 3.4 and 4.2). ``GroupedBatchNorm2d`` reproduces
that on one device: in training, each consecutive group of ``group_size`` images is normalised with its own
mean and variance, exactly as if each group ran on its own GPU. Its parameters and buffers are those of
``nn.BatchNorm2d``, so state dicts are unchanged. The running statistics are updated with the average of
the groups' statistics.

Speed: each group goes through PyTorch's own fused batch-norm kernel (``native_batch_norm`` and its
backward), the one ``nn.BatchNorm2d`` calls, so BN over 64 costs little more than BN over the batch (a
ResNet-20 step at 0.94-0.96x, docs/training.md; the composite form it replaced ran at 0.52x). A group of
a channels_last (or contiguous) batch is a view, so the forward writes each group's output straight into
its slice of one output tensor; the backward's input gradient is the only copy (one ``cat``). The
statistics are those kernels' own: float32 whatever the input's precision (under bf16 autocast the
convolutions' outputs are bf16, normalised in float32 as ``nn.BatchNorm2d`` does).
"""

from __future__ import annotations

import functools
import operator

import torch
from torch import Tensor, nn

__all__ = ["GroupedBatchNorm2d", "group_batchnorm"]


def _group_momenta(momentum: float, groups: int) -> list[float]:
    """Momenta m_1..m_G for G running-statistics updates in a row that together make one update with
    ``momentum`` m by the groups' mean: r <- (1 - m) r + (m / G) sum_k s_k.

    Update k weighs its group's statistic by m_k and everything before by (1 - m_k); for every group to end
    with weight m/G, the factor that update k's statistic keeps from the later updates, P_k = prod_{j>k}
    (1 - m_j), must satisfy m_k P_k = m/G. With P_G = 1 that gives P_k = 1 - (G - k) m / G and
    m_k = (m / G) / P_k; the old value keeps P_0 = 1 - m. So each group's native kernel updates the running
    statistics itself (its unbiased variance, as the definition asks), without a pass of our own."""
    share = momentum / groups
    return [share / (1.0 - (groups - k) * share) for k in range(1, groups + 1)]


class _GroupedBatchNorm(torch.autograd.Function):
    """Training-mode BN of each of the G = len(momenta) groups of ``x`` through the native kernel, which also
    updates the running statistics (if given) with that group's momentum (``_group_momenta``)."""

    @staticmethod
    def forward(  # type: ignore[override]
        ctx,
        x: Tensor,
        weight: Tensor | None,
        bias: Tensor | None,
        running_mean: Tensor | None,
        running_var: Tensor | None,
        momenta: list[float],
        eps: float,
    ):
        group = x.shape[0] // len(momenta)
        out = torch.empty_like(x)  # keeps x's memory format
        stat_dtype = torch.promote_types(x.dtype, torch.float32)
        stats = x.new_empty((2, len(momenta), x.shape[1]), dtype=stat_dtype)  # (mean, 1/std) x (G, C)
        for i, (x_i, out_i, momentum) in enumerate(zip(x.split(group), out.split(group), momenta)):
            torch.native_batch_norm(
                x_i, weight, bias, running_mean, running_var, True, momentum, eps, out=(out_i, stats[0, i], stats[1, i])
            )
        ctx.save_for_backward(x, weight, stats)
        ctx.group, ctx.eps = group, eps
        return out

    @staticmethod
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        x, weight, stats = ctx.saved_tensors
        if x.is_contiguous(memory_format=torch.channels_last):
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)  # a no-op when it already is
        affine = weight is not None
        mask = [ctx.needs_input_grad[0], affine and ctx.needs_input_grad[1], affine and ctx.needs_input_grad[2]]
        grads = [
            torch.ops.aten.native_batch_norm_backward(
                g_i, x_i, weight, None, None, stats[0, i], stats[1, i], True, ctx.eps, mask
            )
            for i, (g_i, x_i) in enumerate(zip(grad_out.split(ctx.group), x.split(ctx.group)))
        ]
        grad_x = torch.cat([g[0] for g in grads]) if mask[0] else None  # the one copy: a group's is its own tensor
        grad_w = functools.reduce(operator.add, [g[1] for g in grads]) if mask[1] else None
        grad_b = functools.reduce(operator.add, [g[2] for g in grads]) if mask[2] else None
        return grad_x, grad_w, grad_b, None, None, None, None


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
        if torch.compiler.is_compiling():
            return self._composite(x)
        if not (x.is_contiguous() or x.is_contiguous(memory_format=torch.channels_last)):
            x = x.contiguous()  # a group must be a view of one block of memory
        groups = n // self.group_size
        momentum = 0.0
        if self.track_running_stats:
            self.num_batches_tracked.add_(1)
            momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        running_mean, running_var = (self.running_mean, self.running_var) if self.track_running_stats else (None, None)
        return _GroupedBatchNorm.apply(
            x, self.weight, self.bias, running_mean, running_var, _group_momenta(momentum, groups), self.eps
        )

    def _composite(self, x: Tensor) -> Tensor:
        """The same BN written in plain tensor operations, for torch.compile: Inductor fuses them into a few
        kernels (where it cannot trace the native kernels' out= form)."""
        n, shape = x.shape[0], x.shape
        groups = x.float().reshape(n // self.group_size, self.group_size, *shape[1:])  # (G, n/G, C, H, W)
        var, mean = torch.var_mean(groups, dim=(1, 3, 4), unbiased=False, keepdim=True)  # (G, 1, C, 1, 1)
        out = ((groups - mean) * torch.rsqrt(var + self.eps)).reshape(shape)
        if self.weight is not None:
            out = out * self.weight[:, None, None] + self.bias[:, None, None]
        if self.track_running_stats:
            with torch.no_grad():
                count = self.group_size * x[0, 0].numel()
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                self.running_mean.lerp_(mean.mean(0).flatten(), m)
                self.running_var.lerp_(var.mean(0).flatten() * (count / max(count - 1, 1)), m)
        return out.to(x.dtype)

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
