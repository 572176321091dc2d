"""What an evaluation measures: top-1/top-5 error, loss, per-class accuracy, the confusion matrix.

Counts, not means, are accumulated and summed over ranks (``runtime.all_reduce_sum``), so each rank passes its
own shard, every image is counted exactly once and the result is the same at any world size (the departure
PAPER.md Sec. 6 lists, a padded shard counting some images twice, cannot happen). The top-k counts are
``topk_errors``'; the training loop's evaluations count with the same ``Tally``.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from .. import runtime

__all__ = ["topk_errors", "Tally", "EvalResult", "plot_confusion", "format_result"]


def topk_errors(logits: torch.Tensor, labels: torch.Tensor, ks: tuple[int, ...] = (1, 5)) -> list[torch.Tensor]:
    """Number of images whose label is not among the top k scores, for each k (capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (B, k)
    hits = top == labels[:, None]
    return [(~hits[:, : min(k, logits.shape[1])].any(dim=1)).sum() for k in ks]


class Tally:
    """Running sums of one rank's evaluation: loss, top-1 and top-5 mistakes, images, and (unless
    ``confusion=False``, as in the training loop's evaluations) the confusion counts."""

    def __init__(self, num_classes: int, device: torch.device | str = "cpu", *, confusion: bool = True) -> None:
        self.num_classes = num_classes
        self.sums = torch.zeros(4, dtype=torch.float64, device=device)  # loss, top-1 wrong, top-5 wrong, images
        k = num_classes if confusion else 0
        self.confusion = torch.zeros(k, k, dtype=torch.int64, device=device)  # (true, predicted)

    def add(self, log_probs: torch.Tensor, labels: torch.Tensor) -> None:
        """One batch: ``log_probs`` (B, classes), as ``deploy.scoring.class_log_probs`` returns, labels (B,)."""
        k = self.num_classes
        top1, top5 = topk_errors(log_probs, labels)
        loss = F.nll_loss(log_probs, labels, reduction="sum")
        self.sums += torch.stack([loss.double(), top1.double(), top5.double(), self.sums.new_tensor(len(labels))])
        if self.confusion.numel():
            pairs = labels * k + log_probs.argmax(dim=1)
            self.confusion += torch.bincount(pairs, minlength=k * k).view(k, k)

    def reduce(self) -> tuple[list[float], torch.Tensor]:
        """The sums over every rank (a collective: every rank must call it) and the (K, K) confusion counts."""
        sums = runtime.all_reduce_sum(self.sums.clone()).tolist()
        confusion = runtime.all_reduce_sum(self.confusion.clone()).cpu() if self.confusion.numel() else self.confusion
        return sums, confusion


@dataclass
class EvalResult:
    """One evaluation of a network on one split with one test view; errors are fractions (0.0734 = 7.34%)."""

    model: str
    dataset: str
    split: str
    view: str
    views_per_image: int
    images: int
    top1_error: float
    top5_error: float
    loss: float
    images_per_s: float
    seconds: float
    classes: list[str]
    class_images: list[int]
    class_accuracy: list[float | None]  # None for a class with no image in the split
    confusion: list[list[int]] = field(repr=False)  # [true][predicted]
    world_size: int = 1

    @classmethod
    def from_tally(cls, tally: Tally, *, seconds: float, classes: list[str], **info: Any) -> EvalResult:
        (loss, top1, top5, n), confusion = tally.reduce()
        per_class = confusion.sum(dim=1)
        correct = confusion.diagonal()
        accuracy = [float(c) / float(t) if t else None for c, t in zip(correct.tolist(), per_class.tolist())]
        images = int(n)
        return cls(
            images=images,
            top1_error=top1 / max(n, 1),
            top5_error=top5 / max(n, 1),
            loss=loss / max(n, 1),
            images_per_s=images / max(seconds, 1e-9),
            seconds=seconds,
            classes=list(classes),
            class_images=per_class.tolist(),
            class_accuracy=accuracy,
            confusion=confusion.tolist(),
            world_size=runtime.get_world_size(),
            **info,
        )

    def to_json(self, with_confusion: bool = True) -> dict[str, Any]:
        out = asdict(self)
        if not with_confusion:
            del out["confusion"]
        return out

    def write_json(self, path: Path) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")
        return path


def plot_confusion(result: EvalResult, path: Path) -> Path:
    """The confusion matrix as a PNG: rows are true classes, columns predictions, each row normalised to
    sum to 1 (so the diagonal is the per-class accuracy); class names on the axes up to 30 classes."""
    from matplotlib.figure import Figure  # no pyplot: a file is drawn without touching the user's backend

    counts = torch.tensor(result.confusion, dtype=torch.float64)
    rates = counts / counts.sum(dim=1, keepdim=True).clamp_min(1)
    k = len(result.classes)
    side = min(4.0 + 0.35 * k, 16.0)
    fig = Figure(figsize=(side + 1.5, side))
    ax = fig.subplots()
    image = ax.imshow(rates.numpy(), cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    if k <= 30:
        ax.set_xticks(range(k), result.classes, rotation=90, fontsize=8)
        ax.set_yticks(range(k), result.classes, fontsize=8)
        if k <= 12:
            for t in range(k):
                for p in range(k):
                    if counts[t, p]:
                        ax.text(
                            p,
                            t,
                            int(counts[t, p]),
                            ha="center",
                            va="center",
                            fontsize=7,
                            color="white" if rates[t, p] > 0.5 else "black",
                        )
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(
        f"{result.model} on {result.dataset} {result.split}, {result.view} view: "
        f"top-1 error {result.top1_error:.2%} ({result.images} images)",
        fontsize=9,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def format_result(result: EvalResult, worst: int = 10) -> str:
    """The text report: errors, loss, speed, then per-class accuracy (every class up to 20, else the
    ``worst`` lowest)."""
    lines = [
        f"{result.model} on {result.dataset} {result.split}: {result.images:,} images, {result.view} view "
        f"({result.views_per_image} per image)" + (f", {result.world_size} processes" if result.world_size > 1 else ""),
        f"top-1 error {result.top1_error:.2%}   top-5 error {result.top5_error:.2%}   loss {result.loss:.4f}   "
        f"{result.images_per_s:,.1f} images/s ({result.seconds:.1f} s)",
    ]
    rows = [(name, acc, n) for name, acc, n in zip(result.classes, result.class_accuracy, result.class_images)]
    shown = rows if len(rows) <= 20 else sorted((r for r in rows if r[1] is not None), key=lambda r: r[1])[:worst]
    lines.append("per-class accuracy" + ("" if len(rows) <= 20 else f" (the {len(shown)} lowest of {len(rows)})") + ":")
    width = max((len(name) for name, _, _ in shown), default=0)
    for name, acc, n in shown:
        lines.append(
            f"  {name:<{width}}  "
            + (f"{acc:7.2%}  ({round(acc * n)}/{n})" if acc is not None else "    -    (0 images)")
        )
    return "\n".join(lines)
