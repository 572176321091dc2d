"""Reading each on-disk format into uint8 tensors: the official CIFAR python batches, the idx files of the
MNIST family, the file list of an ImageFolder tree, and synthetic images.

Every reader turns a missing, truncated or malformed file into a UserError that names the file.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import pickle
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.datasets.folder import IMG_EXTENSIONS

from ..errors import UserError

__all__ = [
    "IDX_STEMS",
    "FolderIndex",
    "index_folder",
    "walk_once",
    "idx_files",
    "read_cifar_python",
    "read_idx_split",
    "synthetic_images",
]

log = logging.getLogger("resnetlab.data")


# --- CIFAR python batches --------------------------------------------------------------------------------
# The official CIFAR-10/100 "python version" files are pickles by format, so reading them means unpickling.
# A plain pickle.load would run whatever a crafted file asks for; this Unpickler resolves only the numpy
# array reconstructors such a batch contains (and _codecs.encode, which protocol-2 pickles of bytes use),
# so a file that is not a genuine batch fails with an error instead of running code.
_CIFAR_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _CifarUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) in _CIFAR_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"{module}.{name} is not part of a CIFAR batch")


def _load_batch(path: Path) -> dict[str, object]:
    try:
        with open(path, "rb") as f:
            # latin1: the batches were written by Python 2; this is what torchvision's CIFAR10 uses too.
            batch = _CifarUnpickler(f, encoding="latin1").load()
    except FileNotFoundError as err:
        raise UserError(f"{path}: missing (a CIFAR python folder needs every batch file)") from err
    except Exception as err:  # UnpicklingError, EOFError, ValueError...: all mean "not a CIFAR batch"
        raise UserError(f"{path}: not a readable CIFAR python batch ({type(err).__name__}: {err})") from err
    if not isinstance(batch, dict):
        raise UserError(f"{path}: not a CIFAR python batch (a {type(batch).__name__}, not a dict)")
    return {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}


def read_cifar_python(folder: Path, dataset: str) -> tuple[dict[str, tuple[torch.Tensor, torch.Tensor]], list[str]]:
    """The train and test splits of ``cifar-10-batches-py`` or ``cifar-100-python`` (fine labels) and the
    class names in label order. Images: uint8 (N, 3, 32, 32); labels: int64 (N,)."""
    if dataset == "cifar10":
        files = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
        meta, names_key, labels_key = "batches.meta", "label_names", "labels"
    else:
        files = {"train": ["train"], "test": ["test"]}
        meta, names_key, labels_key = "meta", "fine_label_names", "fine_labels"
    names = _load_batch(folder / meta).get(names_key)
    if not isinstance(names, list) or not names:
        raise UserError(f"{folder / meta}: no {names_key} list")
    classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    splits = {}
    for split, batch_files in files.items():
        images, labels = [], []
        for name in batch_files:
            path = folder / name
            batch = _load_batch(path)
            data, targets = batch.get("data"), batch.get(labels_key)
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
                raise UserError(f"{path}: 'data' is not a uint8 array of shape (N, 3072)")
            if not isinstance(targets, (list, np.ndarray)) or len(targets) != len(data):
                raise UserError(f"{path}: '{labels_key}' is missing or does not have one label per image")
            images.append(torch.from_numpy(np.ascontiguousarray(data)).view(-1, 3, 32, 32))
            labels.append(torch.as_tensor(np.asarray(targets), dtype=torch.int64))
        label_tensor = torch.cat(labels)
        if label_tensor.numel() and not 0 <= int(label_tensor.min()) <= int(label_tensor.max()) < len(classes):
            raise UserError(f"{folder}: {split} labels outside 0..{len(classes) - 1}")
        splits[split] = (torch.cat(images), label_tensor)
    return splits, classes


# --- idx files (MNIST, Fashion-MNIST) --------------------------------------------------------------------
# Each also as <stem>.gz, which is how they are published.
IDX_STEMS = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _read_idx(path: Path, ndim: int) -> torch.Tensor:
    """One idx file (gzip or not) of unsigned bytes with ``ndim`` dimensions (LeCun's format)."""
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, zlib.error) as err:  # BadGzipFile is an OSError; a cut-off gzip is EOFError
        raise UserError(f"{path}: cannot read ({err})") from err
    header = 4 + 4 * ndim
    if len(data) < header or data[:2] != b"\0\0" or data[2] != 0x08 or data[3] != ndim:
        raise UserError(f"{path}: not an idx file of unsigned bytes with {ndim} dimension(s)")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    if len(data) - header != math.prod(dims):
        raise UserError(f"{path}: truncated or padded ({len(data) - header} bytes of data for shape {dims})")
    return torch.frombuffer(bytearray(data[header:]), dtype=torch.uint8).view(*dims)


def _idx_path(folder: Path, stem: str) -> Path:
    gz = folder / f"{stem}.gz"
    return gz if gz.is_file() else folder / stem


def idx_files(folder: Path) -> list[Path]:
    """The four files of an idx folder, train images and labels first."""
    return [_idx_path(folder, s) for s in IDX_STEMS]


def read_idx_split(folder: Path, split: str, num_classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images uint8 (N, 1, 28, 28) and labels int64 (N,) of the ``train`` or ``test`` (t10k) split."""
    prefix = "train" if split == "train" else "t10k"
    images = _read_idx(_idx_path(folder, f"{prefix}-images-idx3-ubyte"), 3).unsqueeze(1)
    label_path = _idx_path(folder, f"{prefix}-labels-idx1-ubyte")
    labels = _read_idx(label_path, 1).long()
    if len(labels) != len(images):
        raise UserError(f"{label_path}: {len(labels)} labels for {len(images)} images")
    if labels.numel() and int(labels.max()) >= num_classes:
        raise UserError(f"{label_path}: label {int(labels.max())} is outside 0..{num_classes - 1}")
    return images, labels


# --- ImageFolder trees -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class FolderIndex:
    """The images of one split folder (``train/``, ``test/``, ``val/``): class folders sorted by name (the
    label order, as torchvision's ImageFolder), files sorted within each class."""

    root: Path
    classes: list[str]
    files: list[Path]
    labels: list[int]
    empty_classes: list[str]  # class folders without images, kept so labels agree across splits

    def counts(self) -> list[int]:
        return torch.bincount(torch.tensor(self.labels, dtype=torch.int64), minlength=len(self.classes)).tolist()


def _cannot_list(err: OSError) -> None:
    # os.walk would leave an unreadable folder out silently: its images would be lost without a word.
    raise UserError(f"{err.filename}: cannot list the folder ({err.strerror})")


def walk_once(top: Path, seen: dict[str, Path]) -> Iterator[tuple[Path, list[str], list[tuple[Path, Path]]]]:
    """``os.walk(top, followlinks=True)`` that enters each real folder once, hidden folders left out.

    ``seen`` maps the real path of every folder entered so far to the path it was entered by (the caller
    puts ``top`` in; pass one dict to several calls to share it). Yields each folder, its file names (sorted)
    and, for each subfolder not entered because its real folder was entered already, ``(subfolder, first
    path)``: a link loop (``ln -s . loop``, which os.walk would follow 40 levels deep until the kernel's
    ELOOP) or a second link to one folder.
    """
    for dirpath, dirnames, filenames in os.walk(top, onerror=_cannot_list, followlinks=True):
        here = Path(dirpath)
        enter, repeats = [], []
        for name in sorted(d for d in dirnames if not d.startswith(".")):
            real = os.path.realpath(here / name)
            if real in seen:
                repeats.append((here / name, seen[real]))
            else:
                seen[real] = here / name
                enter.append(name)
        dirnames[:] = enter
        yield here, sorted(filenames), repeats


def _two_labels(path: Path, first: Path, root: Path, name: str) -> UserError:
    owner = "the other classes" if first == root else f"class {first.relative_to(root).parts[0]}"
    return UserError(
        f"{path} is the same folder as {first} (through a link), so its images would have two labels ({owner} "
        f"and class {name}); remove the link"
    )


def _class_files(root: Path, name: str, seen: dict[str, Path]) -> list[Path]:
    """The images under class folder ``root/name``, each real folder read once. A link back into the class
    (a loop) is skipped with a warning, since its images are listed once already; a folder that is also
    another class's (or the split folder itself) is an error, since its images would carry two labels."""
    top = root / name
    real = os.path.realpath(top)
    if real in seen:
        raise _two_labels(top, seen[real], root, name)
    seen[real] = top
    files = []
    for folder, filenames, repeats in walk_once(top, seen):
        for link, first in repeats:
            if first != top and top not in first.parents:
                raise _two_labels(link, first, root, name)
            log.warning("%s: skipped, the same folder as %s (a link loop): its images are listed once", link, first)
        files += [folder / f for f in filenames if _is_image(f)]
    return files


def _is_image(name: str) -> bool:
    return not name.startswith(".") and name.lower().endswith(IMG_EXTENSIONS)


def index_folder(root: Path, *, on_bad_image: str = "error", classes: list[str] | None = None) -> FolderIndex:
    """List ``root/<class>/**/<image>``, following links, each real folder once. An empty class folder is an
    error, or under ``on_bad_image="skip"`` a logged class with no images; a split with no images at all is
    always an error. ``classes``: the class list another split fixed (``root`` must have exactly these
    folders). A link loop inside a class is skipped with a warning (its images are already listed, from
    the real path; the folder may be read-only, so refusing would leave no way on); a folder reached from
    two classes, or a class folder linked to the split folder or above, is an error naming the link, since
    its images would be labelled twice."""
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    found = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not found:
        raise UserError(f"{root}: no class folders (expected {root}/<class>/<image>)")
    if classes is not None and found != classes:
        missing, extra = sorted(set(classes) - set(found)), sorted(set(found) - set(classes))
        raise UserError(f"{root}: class folders differ from the training split's (missing {missing}, extra {extra})")
    files: list[Path] = []
    labels: list[int] = []
    empty = []
    seen = {os.path.realpath(root): root}
    for label, name in enumerate(found):
        class_files = _class_files(root, name, seen)
        if not class_files:
            if on_bad_image != "skip":
                raise UserError(
                    f"{root / name}: empty class folder (no {'/'.join(IMG_EXTENSIONS)} files); add images, remove "
                    "the folder, or skip bad input (on_bad_image='skip', --skip-bad-images)"
                )
            empty.append(name)
        files += class_files
        labels += [label] * len(class_files)
    if not files:
        raise UserError(f"{root}: no images in any class folder (looked for {'/'.join(IMG_EXTENSIONS)} files)")
    if empty:
        log.warning("%s: skipped %d empty class folder(s): %s", root, len(empty), ", ".join(empty))
    return FolderIndex(root, found, files, labels, empty)


# --- synthetic -------------------------------------------------------------------------------------------
def synthetic_images(
    n: int, *, channels: int, size: int, num_classes: int, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` random uint8 images (N, C, size, size), balanced labels. Each class has its own smooth pattern
    under the noise, so a smoke run can learn something; the same ``seed`` gives the same images."""
    g = torch.Generator().manual_seed(seed)
    templates = F.interpolate(torch.rand(num_classes, channels, 4, 4, generator=g), size=(size, size), mode="bilinear")
    templates = templates * (0.6 * 255)
    labels = torch.randperm(n, generator=g) % num_classes
    images = torch.empty(n, channels, size, size, dtype=torch.uint8)
    for start in range(0, n, 4096):  # in chunks: no float copy of the whole set
        part = labels[start : start + 4096]
        noise = torch.randint(0, 103, (len(part), channels, size, size), generator=g, dtype=torch.uint8)  # 0.4 * 255
        images[start : start + 4096] = (templates[part] + noise).to(torch.uint8)
    return images, labels
