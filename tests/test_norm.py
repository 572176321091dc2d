"""Grouped ("ghost") BatchNorm: per-group statistics, exactly as separate GPUs would compute them."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resnetlab.models import create_model
from resnetlab.models.norm import GroupedBatchNorm2d, group_batchnorm


def test_grouped_bn_equals_bn_on_each_group():
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(8)
    nn.init.uniform_(reference.weight)
    nn.init.uniform_(reference.bias)
    grouped = GroupedBatchNorm2d(8, group_size=4)
    grouped.load_state_dict(reference.state_dict())
    x = torch.randn(12, 8, 5, 5) * 3 + 1
    expected = torch.cat(
        [nn.functional.batch_norm(g, None, None, reference.weight, reference.bias, True) for g in x.split(4)]
    )
    torch.testing.assert_close(grouped(x), expected, rtol=1e-5, atol=1e-5)
    # running statistics: the average of the groups' statistics, with PyTorch's momentum and unbiased variance
    means = torch.stack([g.mean(dim=(0, 2, 3)) for g in x.split(4)]).mean(0)
    vars_ = torch.stack([g.var(dim=(0, 2, 3), unbiased=True) for g in x.split(4)]).mean(0)
    torch.testing.assert_close(grouped.running_mean, 0.1 * means, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grouped.running_var, 0.9 + 0.1 * vars_, rtol=1e-5, atol=1e-6)
    grouped.eval()
    torch.testing.assert_close(
        grouped(x),
        nn.functional.batch_norm(x, grouped.running_mean, grouped.running_var, grouped.weight, grouped.bias, False),
    )


def test_group_batchnorm_keeps_the_state_dict_and_channels_last():
    model = create_model("resnet20")
    keys = list(model.state_dict())
    group_batchnorm(model, 2)
    assert list(model.state_dict()) == keys
    assert sum(isinstance(m, GroupedBatchNorm2d) for m in model.modules()) == 19
    x = torch.randn(4, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    assert model(x).shape == (4, 10)


# -- the fused implementation against the plain definition -------------------------------------------------


def _reference_grouped_bn(bn: nn.BatchNorm2d, x: torch.Tensor, group: int) -> torch.Tensor:
    """Grouped BN written out from its definition (composite ops, float32 statistics), updating ``bn``'s
    running statistics the way GroupedBatchNorm2d must: the groups' mean and unbiased variance, averaged."""
    n = x.shape[0]
    groups = x.float().reshape(n // group, group, *x.shape[1:])  # (G, n/G, C, H, W)
    mean = groups.mean(dim=(1, 3, 4), keepdim=True)  # (G, 1, C, 1, 1)
    var = groups.var(dim=(1, 3, 4), unbiased=False, keepdim=True)
    out = ((groups - mean) * torch.rsqrt(var + bn.eps)).reshape(x.shape)
    out = (out * bn.weight[:, None, None] + bn.bias[:, None, None]).to(x.dtype)
    with torch.no_grad():
        count = groups[0].numel() / groups.shape[2]
        bn.num_batches_tracked += 1
        bn.running_mean.mul_(1 - bn.momentum).add_(mean.mean(dim=0).flatten(), alpha=bn.momentum)
        unbiased = var.mean(dim=0).flatten() * count / (count - 1)
        bn.running_var.mul_(1 - bn.momentum).add_(unbiased, alpha=bn.momentum)
    return out


def _forward_backward(fn, x: torch.Tensor, grad: torch.Tensor, bf16: bool):
    """fn's output, and the gradients of <output, grad> for the input and the BN's parameters."""
    x = x.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = fn(x.to(torch.bfloat16) if bf16 else x)
    (out.float() * grad).sum().backward()
    return out, x.grad


@pytest.mark.parametrize("bf16", [False, True], ids=["float32", "bf16-autocast"])
@pytest.mark.parametrize("memory_format", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
def test_grouped_bn_matches_its_definition(bf16, memory_format):
    torch.manual_seed(0)
    reference = nn.BatchNorm2d(16)
    nn.init.uniform_(reference.weight, 0.5, 1.5)
    nn.init.uniform_(reference.bias, -0.5, 0.5)
    fused = GroupedBatchNorm2d(16, group_size=64)
    fused.load_state_dict(reference.state_dict())
    x = (torch.randn(192, 16, 8, 8) * 3 + 1).contiguous(memory_format=memory_format)
    grad = torch.randn(192, 16, 8, 8).contiguous(memory_format=memory_format)

    out, grad_x = _forward_backward(fused, x, grad, bf16)
    expected, expected_grad_x = _forward_backward(lambda t: _reference_grouped_bn(reference, t, 64), x, grad, bf16)

    assert out.dtype == expected.dtype == (torch.bfloat16 if bf16 else torch.float32)
    assert out.is_contiguous(memory_format=memory_format)
    # bf16 outputs differ by at most one rounding of the output (2^-8 relative); float32 by rounding alone
    tol = dict(rtol=8e-3, atol=8e-3) if bf16 else dict(rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out.float(), expected.float(), **tol)
    torch.testing.assert_close(grad_x, expected_grad_x, **tol)
    for mine, theirs in ((fused.weight.grad, reference.weight.grad), (fused.bias.grad, reference.bias.grad)):
        torch.testing.assert_close(mine, theirs, rtol=1e-4 if not bf16 else 2e-2, atol=1e-3 if not bf16 else 0.5)
    torch.testing.assert_close(fused.running_mean, reference.running_mean, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused.running_var, reference.running_var, rtol=1e-5, atol=1e-5)
    assert fused.num_batches_tracked.item() == reference.num_batches_tracked.item() == 1


def test_grouped_bn_without_affine_or_running_stats():
    x = torch.randn(8, 4, 3, 3, requires_grad=True)
    bn = GroupedBatchNorm2d(4, group_size=4, affine=False, track_running_stats=False)
    out = bn(x)
    expected = torch.cat([nn.functional.batch_norm(g, None, None, training=True) for g in x.split(4)])
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_grouped_bn_on_a_strided_input():
    """A non-contiguous batch (a transposed view) is made contiguous first: each group must be one block."""
    bn = GroupedBatchNorm2d(4, group_size=2)
    x = torch.randn(4, 4, 5, 6).transpose(2, 3)
    expected = torch.cat([nn.functional.batch_norm(g, None, None, bn.weight, bn.bias, True) for g in x.split(2)])
    torch.testing.assert_close(bn(x), expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("layout", ["grouped", "branches"])
def test_packed_layouts_keep_grouped_bn_exact(layout):
    """K networks with BN over 64 packed into one train as K separate networks do (outputs, gradients)."""
    from resnetlab.models.packed import PackedNetworks

    k, fmt = 2, torch.channels_last
    nets = []
    for seed in range(k):
        torch.manual_seed(seed)
        nets.append(group_batchnorm(create_model("resnet20"), 64).to(memory_format=fmt))
    packed = PackedNetworks(nets[0], k, layout, True).to(memory_format=fmt)
    packed.load_members([n.state_dict() for n in nets])
    x = torch.randn(k, 128, 3, 16, 16)
    logits = packed(x)  # (K, B, classes)
    logits.square().sum().backward()
    for i, net in enumerate(nets):
        single = net(x[i].contiguous(memory_format=fmt))
        single.square().sum().backward()
        torch.testing.assert_close(logits[i], single, rtol=1e-4, atol=1e-4)
    member = packed.members()[1]
    torch.testing.assert_close(member["bn1.running_var"], nets[1].bn1.running_var, rtol=1e-5, atol=1e-6)


def test_grouped_bn_running_statistics_with_cumulative_momentum():
    """momentum=None (PyTorch's cumulative average) over three steps of four groups: the running statistics
    are the average over steps of each step's group-averaged statistics, as the definition gives."""
    torch.manual_seed(0)
    bn = GroupedBatchNorm2d(3, group_size=2, momentum=None)
    steps = [torch.randn(8, 3, 4, 4) * (1 + i) + i for i in range(3)]
    for x in steps:
        bn(x)
    means = [torch.stack([g.mean(dim=(0, 2, 3)) for g in x.split(2)]).mean(0) for x in steps]
    vars_ = [torch.stack([g.var(dim=(0, 2, 3), unbiased=True) for g in x.split(2)]).mean(0) for x in steps]
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, torch.stack(vars_).mean(0), rtol=1e-5, atol=1e-5)
    assert bn.num_batches_tracked.item() == 3
