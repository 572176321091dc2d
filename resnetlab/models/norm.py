"""BatchNorm with statistics over fixed-size groups of the batch ("ghost" BN), as on several GPUs.

The paper's BN statistics are per GPU: its CIFAR runs split the mini-batch of 128 over two GPUs (64 images
per BN), its ImageNet runs use 32 images per GPU (Sec. 3.4 and 4.2). ``GroupedBatchNorm2d`` reproduces
that on one device: in training, each consecutive group of ``group_size`` images is normalised with its own
mean and variance, exactly as if each group ran on its own GPU. Its parameters and buffers are those of
``nn.BatchNorm2d``, so state dicts are unchanged. The running statistics are updated with the average of
the groups' statistics.

Speed: each group goes through PyTorch's own fused batch-norm kernel (``native_batch_norm`` and its
backward), the one ``nn.BatchNorm2d`` calls, so BN over 64 costs what BN over the batch costs. A group of
a channels_last (or contiguous) batch is a view, so the forward writes each group's output straight into
its slice of one output tensor; the backward's input gradient is the only copy (one ``cat``). The
statistics are those kernels' own: float32 whatever the input's precision (under bf16 autocast the
convolutions' outputs are bf16, normalised in float32 as ``nn.BatchNorm2d`` does).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["GroupedBatchNorm2d", "group_batchnorm"]


class _GroupedBatchNorm(torch.autograd.Function):
    """Training-mode BN of each group of ``group`` images; returns (output, means, inverse stds), the last
    two (G, C) in float32 (or the input's dtype if wider) and without gradient."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor | None, bias: Tensor | None, group: int, eps: float):  # type: ignore[override]
        groups, channels = x.shape[0] // group, x.shape[1]
        out = torch.empty_like(x)  # keeps x's memory format
        stat_dtype = torch.promote_types(x.dtype, torch.float32)
        means = x.new_empty((groups, channels), dtype=stat_dtype)
        invstds = x.new_empty((groups, channels), dtype=stat_dtype)
        for i, (x_i, out_i) in enumerate(zip(x.split(group), out.split(group))):
            torch.native_batch_norm(x_i, weight, bias, None, None, True, 0.0, eps, out=(out_i, means[i], invstds[i]))
        ctx.save_for_backward(x, weight, means, invstds)
        ctx.group, ctx.eps = group, eps
        ctx.mark_non_differentiable(means, invstds)
        return out, means, invstds

    @staticmethod
    def backward(ctx, grad_out: Tensor, _means: Tensor, _invstds: Tensor):  # type: ignore[override]
        x, weight, means, invstds = ctx.saved_tensors
        if x.is_contiguous(memory_format=torch.channels_last):
            grad_out = grad_out.contiguous(memory_format=torch.channels_last)  # a no-op when it already is
        affine = weight is not None
        mask = [ctx.needs_input_grad[0], affine and ctx.needs_input_grad[1], affine and ctx.needs_input_grad[2]]
        grads = [
            torch.ops.aten.native_batch_norm_backward(
                g_i, x_i, weight, None, None, means[i], invstds[i], True, ctx.eps, mask
            )
            for i, (g_i, x_i) in enumerate(zip(grad_out.split(ctx.group), x.split(ctx.group)))
        ]
        grad_x = torch.cat([g[0] for g in grads]) if mask[0] else None
        grad_w = torch.stack([g[1] for g in grads]).sum(0) if mask[1] else None
        grad_b = torch.stack([g[2] for g in grads]).sum(0) if mask[2] else None
        return grad_x, grad_w, grad_b, None, None


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
        out, means, invstds = _GroupedBatchNorm.apply(x, self.weight, self.bias, self.group_size, self.eps)
        if self.track_running_stats:
            with torch.no_grad():
                count = self.group_size * x[0, 0].numel()  # values per channel in one group
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                # the groups' biased variances, from the kernel's 1/sqrt(var + eps), made unbiased as BN does
                var = invstds.pow(-2).sub_(self.eps).mean(0).mul_(count / max(count - 1, 1))
                self.running_mean.lerp_(means.mean(0).to(self.running_mean.dtype), m)
                self.running_var.lerp_(var.to(self.running_var.dtype), m)
        return out

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
