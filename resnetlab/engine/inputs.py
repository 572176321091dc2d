"""Build a run's training and evaluation batches from its config: in memory or streamed from files.

- ``memory`` (CIFAR, Fashion-MNIST, MNIST, small ImageFolders): the dataset decoded once into a cached
  uint8 tensor; Sec. 4.2's pad-4 crop and flip applied to whole batches on the device; exact resume.
- ``stream`` (ImageNet-layout folders): files decoded by DataLoader workers through Sec. 3.4's pipeline
  (shorter side random in [256, 480], 224 crop, flip, PCA colour noise, per-pixel mean estimated from the
  training images and cached); evaluated on the centre view (shorter side 256, crop 224).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from .. import data as rdata
from .. import runtime
from ..config import RunConfig
from ..data.preprocessing import Preprocessing
from ..data.stream import to_device
from ..errors import UserError

__all__ = ["TrainingData", "build_data", "memory_dataset", "uses_memory_loader"]

EVAL_BATCH = 500
PIXEL_SCALE = 1 / 255  # the in-memory input (x - mean) * scale: in pixel units over 255


@dataclass
class TrainingData:
    name: str
    classes: list[str]
    mean: torch.Tensor  # (C, H, W) per-pixel mean of the training images, pixel units 0..255
    num_train: int
    train: rdata.InMemoryLoader | rdata.StreamLoader
    evals: dict[str, Iterable[tuple[torch.Tensor, torch.Tensor]]]  # "test" (the held-out split), "val"
    preprocessing: Preprocessing  # how the network's input is made, as eval, predict and export read it
    source: str  # where the images came from, for the run's record (e.g. the CIFAR-10 JPEG archive)


class _DeviceBatches:
    """Re-iterable evaluation batches of a DataLoader, moved to the device; all-bad batches left out."""

    def __init__(self, loader: Iterable[Any], device: torch.device, channels_last: bool) -> None:
        self.loader, self.device, self.channels_last = loader, device, channels_last

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        for batch in self.loader:
            if batch is not None:
                yield to_device(batch, self.device, self.channels_last)


def _use_stream(config: RunConfig) -> bool:
    if config.data.loader == "auto":
        return config.data.dataset == "imagefolder"
    return config.data.loader == "stream"


def build_data(config: RunConfig, device: torch.device, dataset: rdata.ImageDataset | None = None) -> TrainingData:
    """The run's batches. ``dataset``: the in-memory dataset already loaded (``memory_dataset``), for K packed
    seeds that share it."""
    rank, world = runtime.get_rank(), runtime.get_world_size()
    per_rank = config.optim.batch_size // world
    if _use_stream(config):
        return _stream(config, device, rank, world, per_rank)
    return _memory(config, device, rank, world, per_rank, dataset)


def uses_memory_loader(config: RunConfig) -> bool:
    return not _use_stream(config)


def memory_dataset(config: RunConfig, device: torch.device | None = None) -> rdata.ImageDataset:
    """The config's dataset decoded into memory (rank 0 first: it writes the cache), on ``device`` if given."""
    dc = config.data
    kwargs = dict(val_size=dc.val_split, on_bad_image=dc.on_bad_image)
    dataset = None
    if runtime.get_rank() == 0:  # rank 0 decodes and writes the cache; the others wait, then read it
        dataset = rdata.load_dataset(dc.dataset, dc.data_dir, **kwargs)
    runtime.barrier()
    if dataset is None:
        dataset = rdata.load_dataset(dc.dataset, dc.data_dir, progress=False, **kwargs)
    if device is not None:  # once, so that every loader of every seed shares the same tensors
        move = lambda split: None if split is None else rdata.Split(split.images.to(device), split.labels.to(device))  # noqa: E731
        dataset = dataclasses.replace(
            dataset, train=move(dataset.train), test=move(dataset.test), val=move(dataset.val)
        )
    return dataset


def _memory(
    config: RunConfig,
    device: torch.device,
    rank: int,
    world: int,
    per_rank: int,
    dataset: rdata.ImageDataset | None = None,
) -> TrainingData:
    dc, tc = config.data, config.train
    dataset = memory_dataset(config) if dataset is None else dataset
    train_split, mean = dataset.train, dataset.mean
    if dc.train_subset:
        if dc.train_subset > len(train_split):
            raise UserError(f"--train-subset {dc.train_subset} is more than the {len(train_split)} training images")
        # Each class its share, drawn from train.seed: the same images on every rank and every resume (the
        # first N files of a folder sorted by class would be one class).
        chosen = rdata.stratified_subset(train_split.labels.cpu(), dc.train_subset, seed=tc.seed)
        train_split = rdata.Split(train_split.images[chosen], train_split.labels[chosen])
        mean = rdata.pixel_mean(train_split.images)
    common = dict(
        mean=mean, scale=PIXEL_SCALE, device=device, rank=rank, world_size=world, channels_last=tc.channels_last
    )
    train = rdata.InMemoryLoader(
        train_split.images,
        train_split.labels,
        batch_size=per_rank,
        train=True,
        augment=dc.augment,
        seed=tc.seed,
        drop_last=True,
        **common,
    )
    if len(train) == 0:
        raise UserError(f"{len(train_split)} training images make no full batch of {config.optim.batch_size}")
    splits = {"test": dataset.test} | ({"val": dataset.val} if dataset.val is not None else {})
    evals = {
        name: rdata.InMemoryLoader(split.images, split.labels, batch_size=EVAL_BATCH, train=False, **common)
        for name, split in splits.items()
    }
    preprocessing = Preprocessing(
        mean=mean.cpu(),
        image_size=(int(dataset.image_size[0]), int(dataset.image_size[1])),
        channels=dataset.channels,
        view="single",  # the stored images as they are: what this run evaluated on
        scale=PIXEL_SCALE,
    )
    source = f"{dataset.source.path} ({dataset.source.format})" if dataset.source else dataset.name
    return TrainingData(
        dataset.name, list(dataset.classes), mean, len(train_split), train, evals, preprocessing, source
    )


def _stream(config: RunConfig, device: torch.device, rank: int, world: int, per_rank: int) -> TrainingData:
    dc, tc = config.data, config.train
    if dc.dataset != "imagefolder":
        raise UserError(f"data.loader=stream reads image files (dataset imagefolder), not {dc.dataset}")
    if dc.val_split or dc.train_subset:
        raise UserError("data.val_split and data.train_subset apply to in-memory datasets (data.loader=memory)")
    train_index, val_index = rdata.open_image_folder(dc.data_dir, on_bad_image=dc.on_bad_image)
    if rank == 0:  # checked before training so that nothing fails mid-epoch; the others wait for the stats
        train_index = rdata.verify_images(train_index, on_bad_image=dc.on_bad_image)
        val_index = rdata.verify_images(val_index, on_bad_image=dc.on_bad_image)
        rdata.folder_statistics(train_index)
    runtime.barrier()
    if rank != 0 and dc.on_bad_image == "skip":  # the other ranks must leave out the same files
        train_index = rdata.verify_images(train_index, on_bad_image="skip", progress=False)
        val_index = rdata.verify_images(val_index, on_bad_image="skip", progress=False)
    stats = rdata.folder_statistics(train_index, progress=False)  # cached: the mean image at 224x224
    mean = stats.mean_image
    train_set = rdata.FileDataset(train_index, rdata.imagenet_train_transform(mean), on_bad_image=dc.on_bad_image)
    train = rdata.StreamLoader(
        train_set,
        batch_size=per_rank,
        device=device,
        seed=tc.seed,
        workers=dc.num_workers,
        channels_last=tc.channels_last,
        rank=rank,
        world_size=world,
    )
    if len(train) == 0:
        raise UserError(f"{len(train_index.files)} training images make no full batch of {config.optim.batch_size}")
    val_set = rdata.FileDataset(val_index, rdata.center_view(mean), on_bad_image=dc.on_bad_image)
    val_loader = rdata.make_loader(val_set, batch_size=max(per_rank, 1), train=False, workers=dc.num_workers)
    evals = {"test": _DeviceBatches(val_loader, device, tc.channels_last)}
    preprocessing = Preprocessing(mean=mean.cpu(), image_size=(224, 224), channels=3, view="center", scale=1 / 255)
    source = f"{train_index.root.parent} (imagefolder)"
    return TrainingData(
        "imagefolder", list(train_index.classes), mean, len(train_index.files), train, evals, preprocessing, source
    )
