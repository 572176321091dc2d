"""The DataLoader path, for datasets too large to hold decoded in memory (ImageNet): files decoded per
image in worker processes (torchvision.io for JPEG/PNG, see :mod:`.decode`), pinned memory, persistent
workers, and a sampler that splits the data across distributed ranks.

Training uses torch's DistributedSampler (world size 1 without torch.distributed; call
``loader.sampler.set_epoch(epoch)`` each epoch). Evaluation uses :class:`ShardSampler`, which gives every
image to exactly one rank: DistributedSampler pads the last shard with repeated images, and an evaluation
that counts some images twice is one of the departures PAPER.md Sec. 6 lists.

Bad files: :func:`verify_images` checks a split before training (headers and end markers, or a full decode),
so that nothing fails mid-epoch; a file that still fails is an error naming it, or under
``on_bad_image="skip"`` is logged and dropped from its batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler, default_collate
from tqdm import tqdm

from ..errors import UserError
from .decode import SKIP_HINT, BadImage, check_policy, open_image, read_image
from .readers import FolderIndex, index_folder
from .sources import SPECS, locate

__all__ = ["FileDataset", "ShardSampler", "collate_skipping", "make_loader", "open_image_folder", "verify_images"]

log = logging.getLogger("resnetlab.data")


class FileDataset(Dataset):
    """``(transform(image), label)`` per file of a :class:`FolderIndex`; the image is uint8 (C, H, W).

    Under ``on_bad_image="skip"`` a bad file yields None (logged), which :func:`collate_skipping` drops.
    """

    def __init__(
        self,
        index: FolderIndex,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        *,
        channels: int = 3,
        on_bad_image: str = "error",
    ):
        self.index, self.transform, self.channels = index, transform, channels
        self.on_bad_image = check_policy(on_bad_image)

    def __len__(self) -> int:
        return len(self.index.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int] | None:
        path = self.index.files[i]
        try:
            image = read_image(path, self.channels)
        except BadImage as bad:
            if self.on_bad_image == "error":
                raise UserError(f"{bad.path}: {bad.reason}; {SKIP_HINT}") from None
            log.warning("skipped bad image %s: %s", bad.path, bad.reason)
            return None
        return (self.transform(image) if self.transform else image), self.index.labels[i]


def collate_skipping(batch: Sequence[tuple[torch.Tensor, int] | None]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stack the samples that are not None; None when every sample of the batch was a skipped bad file."""
    kept = [sample for sample in batch if sample is not None]
    return default_collate(kept) if kept else None


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world_size, ...`` of ``0..n-1`` in order: every index on exactly one rank."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, n, world_size)

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)


def _rank_world(distributed: bool | None) -> tuple[int, int]:
    if distributed is False or not (dist.is_available() and dist.is_initialized()):
        return 0, 1
    return dist.get_rank(), dist.get_world_size()


def make_loader(
    dataset: Dataset,
    *,
    batch_size: int,
    train: bool,
    workers: int | None = None,
    seed: int = 0,
    distributed: bool | None = None,
    pin_memory: bool | None = None,
    sampler: Sampler[int] | None = None,
) -> DataLoader:
    """A DataLoader over ``dataset``: shuffled and split across ranks (DistributedSampler, last partial batch
    dropped) when ``train``, else in order and sharded with every image counted once (ShardSampler).

    ``workers``: decoding processes (default: the CPU count, at most 8), kept alive between epochs.
    ``distributed``: None follows torch.distributed when it is initialised; False ignores it.
    ``pin_memory``: default on when CUDA is available. ``seed`` fixes the shuffle and the workers' RNG.
    ``sampler``: one of your own instead (e.g. :class:`.stream.ResumableSampler`).
    """
    rank, world = _rank_world(distributed)
    workers = min(8, os.cpu_count() or 1) if workers is None else workers
    if sampler is None and train:
        sampler = DistributedSampler(dataset, num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
    elif sampler is None:
        sampler = ShardSampler(len(dataset), rank, world)  # type: ignore[arg-type]
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        collate_fn=collate_skipping,
        pin_memory=torch.cuda.is_available() if pin_memory is None else pin_memory,
        persistent_workers=workers > 0,
        drop_last=train,
        generator=torch.Generator().manual_seed(seed),
    )


def open_image_folder(
    data_dir: str | os.PathLike[str] | None = None, *, on_bad_image: str = "error"
) -> tuple[FolderIndex, FolderIndex]:
    """The train and val indexes of an ImageNet-layout folder (``train/<class>/*``, ``val/<class>/*``),
    found like every dataset (``data_dir``, ``$RESNETLAB_DATA``; also under an ``imagenet/`` subfolder)."""
    check_policy(on_bad_image)
    source = locate("imagefolder", data_dir, download=False)
    train = index_folder(source.path / "train", on_bad_image=on_bad_image)
    val = index_folder(source.path / SPECS["imagefolder"].eval_split, on_bad_image=on_bad_image, classes=train.classes)
    return train, val


def _check(path: Path, channels: int, full: bool) -> str | None:
    """Why ``path`` would fail to load, or None. Quick: header (format, size, decompression bomb) and the
    format's end marker, which a truncated JPEG or PNG lacks; full: a complete decode."""
    try:
        if full:
            read_image(path, channels)
            return None
        with open_image(path) as img:
            fmt = img.format
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 1024))
            tail = f.read()
    except BadImage as bad:
        return bad.reason
    except OSError as err:
        return f"unreadable ({err.strerror})"
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "truncated (no JPEG end-of-image marker)"
    if fmt == "PNG" and b"IEND" not in tail:
        return "truncated (no PNG IEND chunk)"
    return None


def verify_images(
    index: FolderIndex, *, channels: int = 3, full: bool = False, on_bad_image: str = "error", progress: bool = True
) -> FolderIndex:
    """Check every file of ``index`` before training; under "skip" the index without the bad files (the
    count is logged), under "error" a UserError naming the first bad file."""
    check_policy(on_bad_image)
    bad: list[tuple[Path, str]] = []
    for path in tqdm(index.files, desc=f"{index.root}: checking images", disable=not progress, leave=False):
        if (reason := _check(path, channels, full)) is not None:
            if on_bad_image == "error":
                raise UserError(f"{path}: {reason}; {SKIP_HINT}")
            bad.append((path, reason))
    if not bad:
        return index
    log.warning("%s: skipped %d bad image(s) of %d (first: %s: %s)", index.root, len(bad), len(index.files), *bad[0])
    drop = {path for path, _ in bad}
    kept = [(f, y) for f, y in zip(index.files, index.labels) if f not in drop]
    return FolderIndex(index.root, index.classes, [f for f, _ in kept], [y for _, y in kept], index.empty_classes)
