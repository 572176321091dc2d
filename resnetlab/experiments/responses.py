"""Fig. 7: standard deviations of layer responses, from trained checkpoints (Sec. 4.2).

"The responses are the outputs of each 3x3 layer, after BN and before other nonlinearity (ReLU/addition)":
in a basic block, the outputs of ``bn1`` (before its ReLU) and ``bn2`` (before the shortcut addition), two
per block, 6n for a 6n+2 net. The paper leaves three choices open; each is an option, and the defaults are
stated on the figure:

- ``split``: which images (default: the test set, as the paper analyses the trained models);
- ``bn_mode``: ``eval`` (running statistics, the trained model as it is used; default) or ``train``
  (batch statistics, where every response has std 1 before BN's affine scale);
- ``std_over``: ``all`` (one std over every element of the response; default) or ``channel`` (the std of
  each channel over images and positions, averaged over channels).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..models.resnet import BasicBlock, ResNet

__all__ = ["response_layers", "layer_response_stds"]


def response_layers(model: ResNet) -> list[tuple[str, nn.BatchNorm2d]]:
    """The BN after each 3x3 layer of every basic block, in layer order: (name, module), 6n of them."""
    layers = []
    for name, module in model.named_modules():
        if isinstance(module, BasicBlock):
            layers += [(f"{name}.bn1", module.bn1), (f"{name}.bn2", module.bn2)]
    return layers


class _Moments:
    """Running sums for the std of a response, over all elements or per channel (float64)."""

    def __init__(self, per_channel: bool) -> None:
        self.per_channel = per_channel
        self.n = 0
        self.s1: Tensor | float = 0.0
        self.s2: Tensor | float = 0.0

    def add(self, x: Tensor) -> None:
        x = x.detach().double()  # (N, C, H, W)
        if self.per_channel:
            self.s1 = self.s1 + x.sum(dim=(0, 2, 3))
            self.s2 = self.s2 + (x * x).sum(dim=(0, 2, 3))
            self.n += x.numel() // x.shape[1]
        else:
            self.s1 = self.s1 + x.sum()
            self.s2 = self.s2 + (x * x).sum()
            self.n += x.numel()

    def std(self) -> float:
        mean = self.s1 / self.n
        var = torch.clamp(torch.as_tensor(self.s2 / self.n - mean * mean), min=0)
        return float(var.sqrt().mean())  # per channel: the channels' stds averaged


@torch.no_grad()
def layer_response_stds(
    model: ResNet, batches: Iterable[tuple[Tensor, Tensor]], *, bn_mode: str = "eval", std_over: str = "all"
) -> list[float]:
    """The std of every 3x3 layer's response (after BN, before ReLU/addition) over ``batches``, layer order."""
    if bn_mode not in ("eval", "train") or std_over not in ("all", "channel"):
        raise ValueError(f"bn_mode must be eval or train, std_over all or channel; got {bn_mode!r}, {std_over!r}")
    layers = response_layers(model)
    moments = [_Moments(std_over == "channel") for _ in layers]
    hooks = [
        bn.register_forward_hook(lambda _m, _i, out, acc=acc: acc.add(out)) for (_, bn), acc in zip(layers, moments)
    ]
    was_training = model.training
    model.train(bn_mode == "train")
    # Batch statistics (train mode) must not change the trained running statistics: momentum 0, and the
    # batch counter put back afterwards. (An exported network's BN is folded into its convolution: an
    # Identity, whose output is the folded convolution's, i.e. BN's eval-mode output.)
    norms = [bn for _, bn in layers if isinstance(bn, nn.BatchNorm2d)]
    saved = [(bn.momentum, bn.num_batches_tracked.clone()) for bn in norms]
    for bn in norms:
        bn.momentum = 0.0
    try:
        for images, _ in batches:
            model(images)
    finally:
        for hook in hooks:
            hook.remove()
        for bn, (momentum, tracked) in zip(norms, saved):
            bn.momentum = momentum
            bn.num_batches_tracked.copy_(tracked)
        model.train(was_training)
    return [m.std() for m in moments]
