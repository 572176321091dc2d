"""The fast path for data held in memory (CIFAR, Fashion-MNIST, small ImageFolders): Sec. 4.2's
augmentation applied to whole batches with tensor ops on the training device, no per-image Python.

The decoded uint8 set (N, C, H, W) is moved to the device once. Each batch is one index_select, one
subtraction of the per-pixel mean, one zero pad and one gather that does the random crop and the random
flip together (a flipped crop reads the padded image's columns in reverse order). All randomness of a
batch comes from a CPU generator seeded by (seed, epoch, batch index): the same seed gives the same
batches on the CPU and on a GPU, and resuming from (epoch, position) reproduces the interrupted epoch
exactly, with no generator state to save.

Under data parallelism each global batch (``batch_size * world_size`` images, with their crops and flips)
is drawn once and split into consecutive per-rank slices, so N ranks see exactly the images and
augmentations one process would, whatever the world size.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = ["BatchAugment", "DeviceSplit", "InMemoryLoader", "LoaderPosition", "subtract_mean"]


def _seed(*parts: object) -> int:
    """A 63-bit seed from a tuple, the same on every machine and Python (unlike ``hash``)."""
    return int.from_bytes(hashlib.sha256(repr(parts).encode()).digest()[:8], "little") >> 1


def subtract_mean(images: torch.Tensor, mean: torch.Tensor, scale: float) -> torch.Tensor:
    """Pixels (0..255, any dtype) -> the network's input, float32 ``(x - mean) * scale``: the one place this
    formula is written. ``mean`` broadcasts against ``images``: a mean image (C, H, W), or one per packed
    network (K, 1, C, H, W) against (K, B, C, H, W)."""
    return (images.float() - mean) * scale


class BatchAugment:
    """Per-pixel mean subtraction, zero padding, random crop and random horizontal flip of a whole batch.

    ``mean``: the per-pixel mean image (C, H, W) in pixel units 0..255. Output: float32 (B, C, H, W),
    ``(x - mean) * scale``, padded with zeros (the mean colour) where a crop reaches past the image.
    """

    def __init__(self, mean: torch.Tensor, *, pad: int = 4, flip: bool = True, scale: float = 1 / 255):
        self.mean, self.pad, self.flip, self.scale = mean.float(), pad, flip, scale

    def draw(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Random (dy, dx) offsets in -pad..pad, shape (n, 2), and flips, bool (n,), on the CPU."""
        offsets = torch.randint(-self.pad, self.pad + 1, (n, 2), generator=generator)
        flips = torch.rand(n, generator=generator) < 0.5 if self.flip else torch.zeros(n, dtype=torch.bool)
        return offsets, flips

    def normalize(self, images: torch.Tensor, mean: torch.Tensor | None = None) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 ``(x - mean) * scale``: the test-time view (Sec. 4.2). ``mean``: another
        mean than this one's, e.g. K networks' means (K, 1, C, H, W) for their batches (K, B, C, H, W)."""
        mean = self.mean if mean is None else mean
        return subtract_mean(images, mean.to(images.device, non_blocking=True), self.scale)

    def __call__(self, images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """uint8 (B, C, H, W) -> float32 (B, C, H, W): crop ``offsets`` from the padded image, ``flips`` mirrored."""
        return self.crop_flip(self.normalize(images), offsets, flips)

    def crop_flip(self, x: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor) -> torch.Tensor:
        """The crops and flips of normalised float images (B, C, H, W), zero padded (the mean colour)."""
        b, c, h, w = x.shape
        p, device = self.pad, x.device
        offsets, flips = offsets.to(device, non_blocking=True), flips.to(device, non_blocking=True)
        padded = F.pad(x, (p, p, p, p))  # (B, C, H+2p, W+2p)
        rows = offsets[:, :1] + p + torch.arange(h, device=device)  # (B, H)
        j = torch.arange(w, device=device)
        cols = offsets[:, 1:] + p + torch.where(flips[:, None], w - 1 - j, j)  # (B, W)
        index = rows[:, :, None] * (w + 2 * p) + cols[:, None, :]  # (B, H, W) into the flattened padded plane
        index = index.view(b, 1, h * w).expand(b, c, h * w)
        return padded.flatten(2).gather(2, index).view(b, c, h, w)


@dataclass(frozen=True)
class DeviceSplit:
    """What a step that gathers its own batches on the device (``resnetlab.engine.fused``) needs of an
    ``InMemoryLoader``: the split as it sits there, and how the loader turns its pixels into a batch."""

    images: torch.Tensor  # (N, C, H, W) uint8 on the device; the same tensor for loaders that share a split
    labels: torch.Tensor  # (N,) int64
    mean: torch.Tensor  # (C, H, W) float32, pixel units: this loader's mean image
    batch_size: int  # per batch (per rank)
    augment: BatchAugment  # normalize (the formula, with any mean) and crop_flip


class LoaderPosition:
    """Where a training loader is in its data order: (epoch, position, seed), all its randomness depends on.

    Shared by :class:`InMemoryLoader` and :class:`.stream.StreamLoader`; ``__len__`` is batches per epoch.
    """

    epoch: int
    position: int
    seed: int

    def __len__(self) -> int:
        raise NotImplementedError

    def set_epoch(self, epoch: int) -> None:
        """Start ``epoch`` from its first batch at the next iteration."""
        self.epoch, self.position = epoch, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "seed": self.seed}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if not 0 <= state["position"] <= len(self):
            raise ValueError(f"position {state['position']} is outside this loader's {len(self)} batches")
        self.epoch, self.position, self.seed = int(state["epoch"]), int(state["position"]), int(state["seed"])


class InMemoryLoader(LoaderPosition):
    """Batches ``(x, y)`` of an in-memory split: x float32 (B, C, H, W), y int64 (B,), on ``device``.

    ``train=True``: a fresh permutation per epoch, Sec. 4.2's augmentation (``augment=False`` turns it off,
    keeping the shuffle), the last partial batch dropped (``drop_last``); ``train=False``: every image once,
    in order, mean subtracted only. ``batch_size`` is per rank. With ``world_size > 1``, training splits
    each global batch of ``batch_size * world_size`` into consecutive slices, one per rank (the same images
    and augmentations as one process with the whole batch); evaluation gives every image to exactly one
    rank (``rank, rank + world_size, ...``), nothing padded.

    It is an iterator with a position: iterating resumes where the last iteration stopped, and one full pass
    ends the epoch. ``state_dict()`` / ``load_state_dict()`` save and restore (epoch, position, seed), which
    is all the randomness depends on, so a run resumed mid-epoch sees exactly the batches it would have.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        mean: torch.Tensor,
        train: bool,
        device: torch.device | str = "cpu",
        seed: int = 0,
        drop_last: bool | None = None,
        augment: bool | None = None,
        pad: int = 4,
        scale: float = 1 / 255,
        rank: int = 0,
        world_size: int = 1,
        channels_last: bool = False,
    ):
        if images.dtype != torch.uint8 or images.dim() != 4 or len(images) != len(labels):
            raise ValueError(f"need uint8 images (N, C, H, W) and N labels, got {tuple(images.shape)} {images.dtype}")
        if mean.shape != images.shape[1:]:
            raise ValueError(f"mean image {tuple(mean.shape)} does not match the images {tuple(images.shape[1:])}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.device = torch.device(device)
        self.images = images.to(self.device)  # (N, C, H, W) uint8, moved once
        self.labels = labels.to(self.device)
        self.batch_size, self.train, self.seed = batch_size, train, seed
        self.drop_last = train if drop_last is None else drop_last
        self.augmenting = train if augment is None else augment
        self.rank, self.world_size, self.channels_last = rank, world_size, channels_last
        self.augment = BatchAugment(mean.to(self.device), pad=pad, scale=scale)
        self.epoch, self.position = 0, 0

    @property
    def _step(self) -> int:
        """Images drawn together per batch: the global batch in training, this rank's in evaluation."""
        return self.batch_size * self.world_size if self.train else self.batch_size

    def __len__(self) -> int:
        n = len(self.labels) if self.train else len(range(self.rank, len(self.labels), self.world_size))
        return n // self._step if self.drop_last else -(-n // self._step)

    def _order(self, epoch: int) -> torch.Tensor:
        """The indices of ``epoch`` (CPU int64): the permutation shared by all ranks (training), or this
        rank's shard in order (evaluation)."""
        n = len(self.labels)
        if not self.train:
            return torch.arange(self.rank, n, self.world_size)
        return torch.randperm(n, generator=torch.Generator().manual_seed(_seed(self.seed, epoch, "order")))

    def _rank_slice(self, n: int) -> tuple[int, int]:
        """This rank's consecutive share of a global batch of ``n`` (sizes differ by at most one)."""
        if not self.train:
            return 0, n
        base, extra = divmod(n, self.world_size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + int(self.rank < extra)

    def batch(self, epoch: int, position: int, order: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Batch ``position`` of ``epoch``, computed from scratch (iteration uses the same function)."""
        order = self._order(epoch) if order is None else order
        drawn = order[position * self._step : (position + 1) * self._step]  # drawn together, on every rank
        start, stop = self._rank_slice(len(drawn))
        index = drawn[start:stop].to(self.device, non_blocking=True)
        images = self.images.index_select(0, index)
        if self.augmenting:
            # Seeded by the global batch, drawn for all of it: every world size sees the same crops and flips.
            g = torch.Generator().manual_seed(_seed(self.seed, epoch, position, None if self.train else self.rank))
            offsets, flips = self.augment.draw(len(drawn), g)
            x = self.augment(images, offsets[start:stop], flips[start:stop])
        else:
            x = self.augment.normalize(images)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, self.labels.index_select(0, index)

    def on_device(self) -> DeviceSplit:
        """The split on the device and how a batch is made of it, for a step that gathers its own batches."""
        return DeviceSplit(self.images, self.labels, self.augment.mean, self.batch_size, self.augment)

    def epoch_plan(self, epoch: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """All of a training epoch's randomness at once, on the CPU, exactly as ``batch`` draws it (one process):
        the image indices (n, B) of its n batches, their crop offsets (n, B, 2) and flips (n, B). For a step
        that gathers its batch on the device with no host work (``resnetlab.engine.fused``)."""
        if not self.train or self.world_size != 1:
            raise ValueError("an epoch plan is for training in one process")
        n, b = len(self), self.batch_size
        order = self._order(epoch)[: n * b].view(n, b)
        offsets = torch.zeros(n, b, 2, dtype=torch.int64)
        flips = torch.zeros(n, b, dtype=torch.bool)
        if self.augmenting:
            for position in range(n):
                g = torch.Generator().manual_seed(_seed(self.seed, epoch, position, None))
                offsets[position], flips[position] = self.augment.draw(b, g)
        return order, offsets, flips

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        epoch, start, n = self.epoch, self.position, len(self)
        if start >= n > 0:  # a state saved at the very end of an epoch: the next one begins
            epoch, start = epoch + 1, 0
        order = self._order(epoch)
        for position in range(start, n):
            batch = self.batch(epoch, position, order)
            # Advance before yielding: a state_dict() taken while the batch is in use resumes after it.
            self.epoch, self.position = (epoch + 1, 0) if position + 1 == n else (epoch, position + 1)
            yield batch
