"""One training step and one evaluation pass: plain functions over explicit arguments."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..evaluation.metrics import Tally

__all__ = ["autocast", "train_step", "evaluate", "tally_record"]


def autocast(device: torch.device, enabled: bool, cache: bool = True) -> contextlib.AbstractContextManager:
    """The one mixed-precision path: bf16 autocast when enabled, a no-op otherwise (no GradScaler is needed
    for bf16, whose range is float32's). ``cache=False`` inside a CUDA graph capture, which must not keep
    autocast's cast weights across replays."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled, cache_enabled=cache)


def train_step(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    lr: float,
    *,
    amp: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One SGD step at ``lr``; returns the (detached) mean loss and the number of top-1 mistakes."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with autocast(images.device, amp):
        logits = model(images)  # (B, classes)
        loss = F.cross_entropy(logits, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    mistakes = (logits.detach().argmax(dim=1) != labels).sum()
    return loss.detach(), mistakes


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    device: torch.device,
    *,
    num_classes: int,
    amp: bool,
    networks: int = 0,
) -> Any:
    """Top-1/top-5 error and mean loss over every image of ``batches``, summed over ranks, counted by the
    evaluation package's ``Tally`` (what ``resnetlab eval`` counts with).

    Each rank passes its own shard, in which every image appears exactly once; sums (not means) are reduced,
    so the result is the same at any world size and no padded image is counted twice. ``networks``: ``model``
    is K packed networks (``PackedNetworks``), its batches (K, B, C, H, W) with one labels (B,); each network's
    record, in a list of K.
    """
    was_training = model.training
    model.eval()
    tallies = [Tally(num_classes, device, confusion=False) for _ in range(max(networks, 1))]
    for images, labels in batches:
        with autocast(device, amp):
            logits = model(images).float()  # (B, classes), or (K, B, classes) packed
        for tally, out in zip(tallies, logits if networks else [logits]):
            tally.add(out.log_softmax(dim=1), labels)
    model.train(was_training)
    records = [tally_record(tally) for tally in tallies]
    return records if networks else records[0]


def tally_record(tally: Tally) -> dict[str, float]:
    """A Tally's sums (over ranks) as the evaluation record: mean loss, top-1/top-5 error, images."""
    (loss, top1, top5, n), _ = tally.reduce()
    n = max(n, 1.0)
    return {"loss": loss / n, "top1_error": top1 / n, "top5_error": top5 / n, "images": int(n)}
