"""The images an evaluation sees, as batches of test views, split across ranks with every image once.

Where the images come from:

- datasets held in memory (CIFAR-10/100, MNIST, Fashion-MNIST, synthetic): ``load_dataset``'s decoded
  split, read from the cache. The single view goes through the engine's ``InMemoryLoader`` (whole batches,
  the same arithmetic as training's evaluation); the other views are made per image.
- the ImageNet layout (``imagefolder``): the image files of ``val/`` at their own resolution, decoded per
  image in DataLoader workers, since the views resize the original image (Sec. 3.4).

``split="test"`` is the dataset's evaluation split (``test/``, or ``val/`` in the ImageNet layout);
``split="val"`` is the validation split held out of the training images when the run had one (Sec. 4.2's
45k/5k, ``data.val_split``), rebuilt exactly as training drew it (``train_val_split``, seed 0). In the
ImageNet layout a run without one has ``val/`` as its only validation split, and ImageNet users call that
folder "val": ``split="val"`` reads it (the same images as ``"test"``); with both, the held-out split is
used, as training evaluated it, and a note on stderr says so.
Sharding: ``rank, rank + world_size, ...`` (``InMemoryLoader``'s evaluation order, ``ShardSampler``), so
nothing is padded and no image is counted twice.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import Dataset

from .. import data as rdata
from .. import runtime
from ..data.preprocessing import Preprocessing, view_transform, views_per_image
from ..errors import UserError, user_message

__all__ = ["EvalData", "eval_data", "default_batch_size"]

Batch = tuple[torch.Tensor | list[torch.Tensor], torch.Tensor]  # views (B, V, C, H, W) or V x (B, C, h, w); labels (B,)


@dataclass
class EvalData:
    """Batches of (views, labels) for this rank, and what they are: the dataset's classes and size."""

    batches: Iterable[Batch]
    images: int  # in the whole split, over every rank
    classes: list[str]
    dataset: str
    split: str


class TensorImages(Dataset):
    """``(transform(images[i]), labels[i])`` of an in-memory split (uint8 (N, C, H, W))."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable[[torch.Tensor], Any]) -> None:
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self.images[i]), int(self.labels[i])


def default_batch_size(view: str, crop: int, same_size: bool = True) -> int:
    """Images per batch: about 256 small (CIFAR-sized) or 32 ImageNet-sized views per forward pass. Multi-scale
    views of images of different sizes differ in size from image to image: one image per batch."""
    if view == "multiscale" and not same_size:
        return 1
    return max(1, (256 if crop <= 64 else 32) // views_per_image(view))


def _rank_first(load: Callable[[bool], Any]) -> Any:
    """Rank 0 loads first (and writes the decode cache); the others wait, then read it."""
    value = load(True) if runtime.is_main_process() else None
    runtime.barrier()
    return value if value is not None else load(False)


def _no_val_split(dataset: str) -> UserError:
    return UserError(
        f"--split val: the run trained on all of {dataset}'s training images (data.val_split=0), so "
        "there is no validation split; evaluate --split test"
    )


def _unwrapped(batches: Iterable[Batch | None]) -> Iterator[Batch]:
    """Skip batches whose every file was skipped; a worker's UserError as its own one line (a DataLoader
    re-raises it with the worker's traceback in the message)."""
    try:
        for batch in batches:
            if batch is not None:
                yield batch
    except UserError as err:
        raise UserError(user_message(err)) from None


def _files(
    pre: Preprocessing,
    view: str,
    data_dir: str | None,
    split: str,
    val_split: int,
    on_bad_image: str,
    batch_size: int,
    workers: int | None,
) -> EvalData:
    train, val = rdata.open_image_folder(data_dir, on_bad_image=on_bad_image)
    index = val  # the val/ folder: --split test, and --split val when nothing was held out of train/
    if split == "val" and val_split:
        if runtime.is_main_process():  # two splits answer to "val": say which one this is
            print(
                f"note: --split val is the {val_split} images held out of train/ (data.val_split), as training "
                "evaluated them; evaluate the val/ folder with --split test",
                file=sys.stderr,
            )
        if on_bad_image == "skip":  # training drew the split after dropping the files it could not decode
            raise UserError(
                "--split val of an image folder trained with on_bad_image=skip cannot be rebuilt file "
                "by file (the skipped files shift it); evaluate --split test"
            )
        _, held = rdata.train_val_split(torch.tensor(train.labels), val_split, seed=0)
        index = rdata.FolderIndex(
            train.root,
            train.classes,
            [train.files[i] for i in held],
            [train.labels[i] for i in held],
            train.empty_classes,
        )
    dataset = rdata.FileDataset(index, view_transform(view, pre), channels=pre.channels, on_bad_image=on_bad_image)
    loader = rdata.make_loader(dataset, batch_size=batch_size, train=False, workers=workers)
    return EvalData(_unwrapped(loader), len(index.files), list(index.classes), "imagefolder", split)


def _in_memory(
    pre: Preprocessing,
    view: str,
    name: str,
    data_dir: str | None,
    split: str,
    val_split: int,
    on_bad_image: str,
    batch_size: int,
    workers: int,
    device: torch.device,
) -> EvalData:
    if split == "val" and not val_split:
        raise _no_val_split(name)
    kwargs = dict(val_size=val_split if split == "val" else 0, on_bad_image=on_bad_image)
    dataset = _rank_first(lambda main: rdata.load_dataset(name, data_dir, progress=main, **kwargs))
    part = dataset.val if split == "val" else dataset.test
    if part.images.shape[1] != pre.channels:
        raise UserError(f"the network takes {pre.channels}-channel images; {name} has {part.images.shape[1]} channels")
    rank, world = runtime.get_rank(), runtime.get_world_size()
    if view == "single" and tuple(part.images.shape[-2:]) == pre.image_size:
        # The engine's evaluation batches, pixels left unnormalised (zero mean, scale 1): the checkpoint's
        # own normalisation follows in class_log_probs.
        zero = torch.zeros(part.images.shape[1:])
        loader = rdata.InMemoryLoader(
            part.images,
            part.labels,
            batch_size=batch_size,
            mean=zero,
            scale=1.0,
            train=False,
            device=device,
            rank=rank,
            world_size=world,
        )
        batches: Iterable[Batch] = ((x.unsqueeze(1), y) for x, y in loader)  # (B, 1, C, H, W)
    else:
        images = TensorImages(part.images, part.labels, view_transform(view, pre))
        batches = rdata.make_loader(images, batch_size=batch_size, train=False, workers=workers)
    return EvalData(batches, len(part), list(dataset.classes), name, split)


def eval_data(
    pre: Preprocessing,
    view: str,
    data: dict[str, Any],
    *,
    data_dir: str | None = None,
    split: str = "test",
    batch_size: int | None = None,
    workers: int | None = None,
    device: torch.device | str = "cpu",
) -> EvalData:
    """This rank's batches of ``view`` over ``split`` of the dataset ``data`` names (a bundle's ``data``:
    dataset, data_dir, val_split, on_bad_image). ``data_dir`` overrides where the data is looked for;
    ``workers``: decoding processes (default: 0 in memory; for image files ``make_loader``'s, up to 8)."""
    if split not in ("test", "val"):
        raise UserError(f"--split must be test or val, got {split!r}")
    name = data.get("dataset") or ""
    if not name:
        raise UserError("the checkpoint does not say which dataset it was trained on")
    where = data_dir or data.get("data_dir")
    val_split, on_bad_image = int(data.get("val_split") or 0), str(data.get("on_bad_image") or "error")
    if view == "multiscale" and name == "imagefolder" and batch_size not in (None, 1):
        raise UserError(
            "multi-scale views of image files have each image's own sizes, so they run one image "
            f"at a time: --batch-size must be 1, got {batch_size}"
        )
    batch_size = batch_size or default_batch_size(view, pre.crop, same_size=name != "imagefolder")
    if name == "imagefolder":
        return _files(pre, view, where, split, val_split, on_bad_image, batch_size, workers)
    return _in_memory(
        pre, view, name, where, split, val_split, on_bad_image, batch_size, workers or 0, torch.device(device)
    )
