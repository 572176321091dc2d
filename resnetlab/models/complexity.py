"""Parameter and multiply-add counts, measured on the network itself (never typed in)."""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_parameters", "count_multiply_adds"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_multiply_adds(model: nn.Module, input_size: tuple[int, ...]) -> int:
    """Multiply-adds of one forward pass on a single image of ``input_size`` (C, H, W).

    Counted by ``torch.utils.flop_counter``, which sees every convolution and matrix product (BN, ReLU,
    pooling and the shortcut additions are not multiply-adds, as in the paper's count). It reports
    FLOPs = 2 x multiply-adds. Runs on whatever device the model is on; on the ``meta`` device it costs
    nothing, which is how ``resnetlab models`` counts ResNet-1202.
    """
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, *input_size, device=device))
    finally:
        model.train(was_training)
    return counter.get_total_flops() // 2
