"""Training batches streamed from image files (ImageNet scale), with a position a run can resume from.

:class:`StreamLoader` wraps the DataLoader path of :mod:`.loaders` (decoding workers, pinned memory, a
sampler that splits each epoch across ranks) in the interface of :class:`.fast.InMemoryLoader`: it iterates
one epoch from its saved position, moves batches to the device, and has ``state_dict()``/``load_state_dict()``
holding (epoch, position, seed). On resume the epoch's image order is the same (the sampler is seeded by
seed and epoch) and the batches already trained on are skipped without being read. The random crops, flips
and colour noise are drawn in the worker processes and are not replayed: an exact resume, bit for bit, is
the in-memory path's.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DistributedSampler

from .fast import LoaderPosition
from .loaders import FileDataset, make_loader

__all__ = ["ResumableSampler", "StreamLoader", "to_device"]


def to_device(
    batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, channels_last: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A DataLoader batch (images, labels) on ``device``, images channels_last if asked."""
    images, labels = batch
    images = images.to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images, labels.to(device, non_blocking=True)


class ResumableSampler(DistributedSampler):
    """DistributedSampler (shuffled by seed and epoch, split across ranks) that can start mid-epoch."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.start = 0  # samples of this rank's share of the epoch to skip

    def __iter__(self) -> Iterator[int]:
        return iter(list(super().__iter__())[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class StreamLoader(LoaderPosition):
    """Batches ``(x, y)`` of a :class:`.loaders.FileDataset` on ``device``; one pass is one epoch.

    ``batch_size`` is per rank; the sampler drops the last partial batch of each epoch, as the in-memory
    path does. Batches whose every image was a skipped bad file (``on_bad_image="skip"``) are left out.
    """

    def __init__(
        self,
        dataset: FileDataset,
        *,
        batch_size: int,
        device: torch.device | str = "cpu",
        seed: int = 0,
        workers: int | None = None,
        channels_last: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        self.device, self.batch_size, self.channels_last = torch.device(device), batch_size, channels_last
        self.sampler = ResumableSampler(
            dataset, num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.loader = make_loader(
            dataset, batch_size=batch_size, train=True, workers=workers, seed=seed, sampler=self.sampler
        )
        self.seed, self.epoch, self.position = seed, 0, 0

    def __len__(self) -> int:
        return self.sampler.num_samples // self.batch_size

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n = len(self)
        if self.position >= n > 0:
            self.epoch, self.position = self.epoch + 1, 0
        self.sampler.seed = self.seed  # a restored state's seed orders the epoch
        self.sampler.set_epoch(self.epoch)
        self.sampler.start = self.position * self.batch_size
        for batch in self.loader:
            self.position += 1
            if self.position >= n:
                self.epoch, self.position = self.epoch + 1, 0
            if batch is not None:
                yield to_device(batch, self.device, self.channels_last)
