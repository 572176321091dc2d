"""Grouped ("ghost") BatchNorm: per-group statistics, exactly as separate GPUs would compute them."""

from __future__ import annotations

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
