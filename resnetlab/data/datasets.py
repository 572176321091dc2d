"""Datasets by name, decoded once into memory: uint8 images (N, C, H, W), labels, classes, per-pixel mean.

``load_dataset("cifar10")`` finds the data (:mod:`.sources`), reads or decodes it (:mod:`.readers`,
:mod:`.decode`) and caches the decoded tensors on disk (:mod:`.cache`), so a second call reads one
safetensors file per split. Decoding happens here, before training, so a bad file stops the run at load
time (or is skipped and counted) and nothing can fail mid-epoch.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..errors import UserError
from .cache import cache_root, file_key, fingerprint, load_tensors, save_tensors
from .decode import DECODER_VERSION, check_policy, decode_files
from .readers import idx_files, index_folder, read_cifar_python, read_idx_split, synthetic_images, walk_once
from .sources import SPECS, Source, archive_image_folder, locate

__all__ = [
    "Split",
    "ImageDataset",
    "load_dataset",
    "synthetic_dataset",
    "pixel_mean",
    "stratified_subset",
    "train_val_split",
]

_Splits = dict[str, tuple[torch.Tensor, torch.Tensor, int]]  # split -> (images, labels, skipped)


@dataclass(frozen=True)
class Split:
    """One split in memory: uint8 images (N, C, H, W) and int64 labels (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    skipped: int = 0  # bad files left out under on_bad_image="skip"

    def __len__(self) -> int:
        return len(self.labels)

    def counts(self, num_classes: int) -> list[int]:
        return torch.bincount(self.labels, minlength=num_classes).tolist()


@dataclass(frozen=True)
class ImageDataset:
    """A dataset decoded into memory, with the per-pixel mean of its training images (Sec. 3.4, 4.2)."""

    name: str
    classes: list[str]
    train: Split
    test: Split  # the evaluation split: test/ (CIFAR, MNIST) or val/ (the ImageNet layout)
    mean: torch.Tensor  # (C, H, W) float32 in pixel units 0..255: the mean of the `train` images
    val: Split | None = None  # held out of the training images by train_val_split (Sec. 4.2's 45k/5k)
    source: Source | None = None  # None for synthetic data
    cache_files: list[Path] = field(default_factory=list)

    @property
    def channels(self) -> int:
        return self.train.images.shape[1]

    @property
    def image_size(self) -> tuple[int, int]:
        height, width = self.train.images.shape[-2:]
        return height, width


def pixel_mean(images: torch.Tensor) -> torch.Tensor:
    """The per-pixel mean (C, H, W), float32 in 0..255, of uint8 images (N, C, H, W); exact.

    Summed in chunks of 2048 in float32 (exact: 2048 * 255 < 2**24) so no float copy of the whole set
    is made; 0.4 s for CIFAR-10's training set on 2 cores.
    """
    total = torch.zeros(images.shape[1:], dtype=torch.float64)
    for chunk in images.split(2048):
        total += chunk.to(torch.float32).sum(0).double()
    return (total / max(len(images), 1)).float()


def train_val_split(labels: torch.Tensor, val_size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sorted indices (train, val) holding out ``val_size`` images, stratified by class, deterministic in
    ``seed``. Sec. 4.2 chose its schedule on a 45k/5k split of CIFAR-10's training set: 500 per class here.

    Each class gives its share of ``val_size`` (largest remainder rounding), drawn by a seeded permutation.
    """
    n = len(labels)
    if not 0 < val_size < n:
        raise UserError(f"val_size must be between 1 and {n - 1} (the training images), got {val_size}")
    val = _per_class_draw(labels, val_size, seed)
    keep = torch.ones(n, dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().squeeze(1), val


def stratified_subset(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``size`` images drawn class by class, deterministic in ``seed``: what
    ``--train-subset N`` trains on (the first N files of an ImageFolder, sorted by class, are one class).

    Each class gets its share ``size * count / total``, rounded by largest remainder so that the shares add up
    to exactly ``size``, and draws that many by a seeded permutation. It depends only on (labels, size, seed),
    so every rank and every resume draws the same images. With fewer images than classes the classes with the
    largest shares get one each (ties: the lower label) and the others none.
    """
    if size > len(labels):
        raise UserError(f"a subset of {size} images is more than the {len(labels)} training images")
    if size < 1:
        raise UserError(f"a subset needs at least 1 image, got {size}")
    return _per_class_draw(labels, size, seed)


def _per_class_draw(labels: torch.Tensor, size: int, seed: int) -> torch.Tensor:
    """Sorted indices of ``size`` of ``labels``, each class its largest-remainder share, seeded."""
    counts = torch.bincount(labels)
    exact = counts.double() * size / len(labels)
    quota = exact.floor().long()
    quota[torch.argsort(exact - quota, descending=True, stable=True)[: size - int(quota.sum())]] += 1
    g = torch.Generator().manual_seed(seed)
    chosen = []
    for label, take in enumerate(quota.tolist()):
        members = (labels == label).nonzero().squeeze(1)
        chosen.append(members[torch.randperm(len(members), generator=g)[:take]])
    return torch.cat(chosen).sort().values


def _source_lines(source: Source) -> list[str]:
    """What the cache key of a source hashes: relative path, size and mtime of every file (and folder)."""
    if source.format == "archive":
        return file_key([source.path])
    if source.format == "idx":
        return file_key(idx_files(source.path))
    if source.format == "cifar-python":
        return file_key(sorted(p for p in source.path.iterdir() if p.is_file() and not p.name.startswith(".")))
    lines = []
    for split in ("train", SPECS[source.dataset].eval_split):
        top = source.path / split
        for folder, filenames, _ in walk_once(top, {os.path.realpath(top): top}):  # links loops: index_folder's
            lines.append(folder.relative_to(source.path).as_posix() + "/")
            lines += file_key([folder / f for f in filenames], source.path)
    return lines


def _decode_source(
    source: Source, image_size: int | None, on_bad_image: str, progress: bool
) -> tuple[_Splits, list[str]]:
    """Read every split of ``source``: {split: (images, labels, skipped)} and the class names."""
    spec = SPECS[source.dataset]
    if source.format == "cifar-python":
        splits, classes = read_cifar_python(source.path, source.dataset)
        return {k: (*v, 0) for k, v in splits.items()}, classes
    if source.format == "idx":
        return {s: (*read_idx_split(source.path, s, spec.num_classes or 10), 0) for s in ("train", "test")}, list(
            spec.classes or ()
        )
    root = archive_image_folder(source, progress=progress) if source.format == "archive" else source.path
    train_index = index_folder(root / "train", on_bad_image=on_bad_image)
    if spec.num_classes is not None and len(train_index.classes) != spec.num_classes:
        found = len(train_index.classes)
        raise UserError(f"{root / 'train'}: {found} class folders; {spec.name} has {spec.num_classes}")
    out = {}
    for split in ("train", spec.eval_split):
        index = (
            train_index
            if split == "train"
            else index_folder(root / split, on_bad_image=on_bad_image, classes=train_index.classes)
        )
        images, labels, skipped = decode_files(
            index.files,
            index.labels,
            channels=spec.channels,
            size=image_size or spec.image_size,
            resize=image_size is not None,
            on_bad_image=on_bad_image,
            progress=progress,
            desc=f"{spec.name} {split}: decoding {len(index.files)} images (once; cached)",
        )
        out[split] = (images, labels, len(skipped))
    return out, train_index.classes


def _read_cache(paths: dict[str, Path]) -> tuple[_Splits, list[str], torch.Tensor] | None:
    """The cached splits, classes and mean, or None if any entry is missing or not what this code writes."""
    splits = {}
    for split, path in paths.items():
        hit = load_tensors(path)
        if hit is None or not {"images", "labels"} <= hit[0].keys() or "classes" not in hit[1]:
            return None
        tensors, meta = hit
        splits[split] = (tensors["images"], tensors["labels"], int(meta.get("skipped", 0)))
        if split == "train":
            if "mean" not in tensors:
                return None
            classes, mean = list(meta["classes"]), tensors["mean"]
    return splits, classes, mean


def _cached_splits(
    source: Source, image_size: int | None, on_bad_image: str, progress: bool
) -> tuple[_Splits, list[str], torch.Tensor, list[Path]]:
    """Every split of ``source`` from the cache, or decoded and written to it: (splits, classes, mean, files)."""
    spec = SPECS[source.dataset]
    decoder = {"decoder": DECODER_VERSION} if source.format in ("imagefolder", "archive") else {}  # image files
    key = fingerprint(
        _source_lines(source), format=source.format, image_size=image_size, on_bad_image=on_bad_image, **decoder
    )
    where = hashlib.sha256(os.fsencode(source.path.resolve())).hexdigest()[:8]  # the name's bytes: any name
    folder = cache_root() / "decoded" / f"{source.dataset}-{where}"
    paths = {split: folder / f"{split}-{key[:16]}.safetensors" for split in ("train", spec.eval_split)}
    if (cached := _read_cache(paths)) is not None:
        return (*cached, list(paths.values()))
    splits, classes = _decode_source(source, image_size, on_bad_image, progress)
    mean = pixel_mean(splits["train"][0])
    for split, (images, labels, skipped) in splits.items():
        tensors = {"images": images, "labels": labels, **({"mean": mean} if split == "train" else {})}
        meta = {"dataset": source.dataset, "source": str(source.path), "classes": classes, "skipped": skipped}
        save_tensors(paths[split], tensors, meta)
    return splits, classes, mean, list(paths.values())


def synthetic_dataset(
    *,
    num_train: int = 50_000,
    num_test: int = 10_000,
    image_size: int = 32,
    channels: int = 3,
    num_classes: int = 10,
    seed: int = 0,
) -> ImageDataset:
    """Random images shaped like CIFAR-10 by default, for smoke runs and benchmarks; not cached (it is
    generated from ``seed`` in about a second)."""
    train, test = (
        Split(*synthetic_images(n, channels=channels, size=image_size, num_classes=num_classes, seed=seed + i))
        for i, n in enumerate((num_train, num_test))
    )
    return ImageDataset("synthetic", [f"class{i}" for i in range(num_classes)], train, test, pixel_mean(train.images))


def load_dataset(
    name: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    val_size: int = 0,
    split_seed: int = 0,
    image_size: int | None = None,
    on_bad_image: str = "error",
    download: bool = True,
    progress: bool = True,
) -> ImageDataset:
    """Dataset ``name`` ("cifar10", "cifar100", "fashion-mnist", "mnist", "imagefolder", "synthetic"),
    decoded into memory and cached.

    ``val_size``: hold out this many training images as ``val`` (5000 gives Sec. 4.2's 45k/5k split; the
    mean is then that of the remaining training images). ``image_size``: resize every image of an
    ImageFolder source to this side (shorter side, centre crop); without it all images must share one size.
    ``on_bad_image``: "error" (default) or "skip" (skipped files are counted and logged).
    """
    check_policy(on_bad_image)
    if name == "synthetic":
        if data_dir is not None:  # generated, not read: a named folder would be silently ignored
            raise UserError(f"synthetic images are generated, not read from a folder: leave out --data-dir {data_dir}")
        dataset = synthetic_dataset()
        source: Source | None = None
        files: list[Path] = []
    else:
        source = locate(name, data_dir, download=download)
        if image_size is not None and source.format not in ("imagefolder", "archive"):
            raise UserError(f"image_size applies to image files; {source.path} holds {name} in its native size")
        splits, classes, mean, files = _cached_splits(source, image_size, on_bad_image, progress)
        eval_split = SPECS[name].eval_split
        dataset = ImageDataset(
            name, classes, Split(*splits["train"]), Split(*splits[eval_split]), mean, source=source, cache_files=files
        )
    if val_size:
        train_idx, val_idx = train_val_split(dataset.train.labels, val_size, split_seed)
        images, labels = dataset.train.images, dataset.train.labels
        train = Split(images[train_idx], labels[train_idx], dataset.train.skipped)
        val = Split(images[val_idx], labels[val_idx])
        dataset = ImageDataset(
            name, dataset.classes, train, dataset.test, pixel_mean(train.images), val, source, dataset.cache_files
        )
    return dataset
