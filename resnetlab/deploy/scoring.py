"""A network's class scores for an image's test views: probabilities averaged over the views.

Scores of one image's views are averaged as probabilities (softmax outputs), as the paper averages scores
(Sec. 3.4, Tables 2-4); in log space, ``log mean_v p_v = logsumexp_v log p_v - log V``, which keeps the loss
exact. For the single view this is the usual log-softmax and cross-entropy. ``resnetlab eval`` and
``resnetlab predict`` both score through ``class_log_probs``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["class_log_probs"]


def _forward(model: nn.Module, x: torch.Tensor, normalize: nn.Module, channels_last: bool) -> torch.Tensor:
    x = normalize(x)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    return model(x).float().log_softmax(dim=1)  # (N, classes)


def class_log_probs(
    model: nn.Module,
    views: torch.Tensor | Sequence[torch.Tensor],
    normalize: nn.Module,
    *,
    channels_last: bool = True,
) -> torch.Tensor:
    """log of the class probabilities averaged over each image's views, (B, classes).

    ``views``: float pixels (B, V, C, H, W) on the model's device, all V views in one forward pass; or
    (multi-scale) a list of V tensors (B, C, h_v, w_v), consecutive views of one size (an image and its
    flip) batched together. ``normalize``: ``Preprocessing.normalizer()``, on the same device.
    """
    if isinstance(views, torch.Tensor):
        b, v = views.shape[:2]
        log_p = _forward(model, views.flatten(0, 1), normalize, channels_last).view(b, v, -1)  # (B, V, K)
        return log_p[:, 0] if v == 1 else torch.logsumexp(log_p, dim=1) - math.log(v)
    per_view: list[torch.Tensor] = []
    i = 0
    while i < len(views):
        j = i
        while j < len(views) and views[j].shape == views[i].shape:
            j += 1
        group = torch.cat(list(views[i:j]))  # ((j - i) * B, C, h, w)
        per_view += list(_forward(model, group, normalize, channels_last).chunk(j - i))
        i = j
    return torch.logsumexp(torch.stack(per_view), dim=0) - math.log(len(per_view))  # (B, K)
