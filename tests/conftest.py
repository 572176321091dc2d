"""Data fixtures: tiny datasets written in every on-disk format the data package reads, in tmp_path.

``data_env`` isolates a test from the machine: the cache goes to tmp_path, RESNETLAB_DATA is unset and the
system locations point at folders that do not exist.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

# train.amp=auto means float32 in every test, on every machine, in this process and the ones it starts: CI
# runs on CPUs with native bf16 and without, and the numeric tests' tolerances are float32's.
# tests/test_precision.py tests the bf16 choice itself.
os.environ["RESNETLAB_CPU_BF16"] = "off"


@pytest.fixture
def data_env(tmp_path, monkeypatch):
    """An isolated cache folder (returned); no RESNETLAB_DATA; no system-wide datasets."""
    from resnetlab.data import sources

    cache = tmp_path / "cache"
    monkeypatch.setenv("RESNETLAB_CACHE", str(cache))
    monkeypatch.delenv("RESNETLAB_DATA", raising=False)
    for name, spec in list(sources.SPECS.items()):
        if spec.system_dir is not None:
            absent = dataclasses.replace(spec, system_dir=tmp_path / "no-system" / name)
            monkeypatch.setitem(sources.SPECS, name, absent)
    return cache


def _images(n: int, channels: int, size: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def write_cifar_python(root: Path, dataset: str = "cifar10", per_batch: int = 6, n_test: int = 8) -> dict:
    """A ``cifar-10-batches-py`` (5 train batches) or ``cifar-100-python`` folder under ``root``, written
    as the official files are (pickled dicts, data uint8 (N, 3072) in CHW order); returns the arrays."""
    ten = dataset == "cifar10"
    folder = root / ("cifar-10-batches-py" if ten else "cifar-100-python")
    folder.mkdir(parents=True)
    classes = 10 if ten else 100
    names = [f"c{i:02d}" for i in range(classes)]
    labels_key = "labels" if ten else "fine_labels"
    files = [f"data_batch_{i}" for i in range(1, 6)] if ten else ["train"]
    n_train = per_batch * len(files)
    train = _images(n_train, 3, 32, seed=1)
    test = _images(n_test, 3, 32, seed=2)
    train_labels = [(7 * i) % classes for i in range(n_train)]
    test_labels = [(3 * i) % classes for i in range(n_test)]
    step = n_train // len(files)
    parts = [slice(i * step, (i + 1) * step) for i in range(len(files))]
    batches = {f: (train[part], train_labels[part]) for f, part in zip(files, parts)}
    batches["test_batch" if ten else "test"] = (test, test_labels)
    for name, (data, labels) in batches.items():
        batch = {"batch_label": name, "data": data.reshape(len(data), -1), labels_key: labels}
        (folder / name).write_bytes(pickle.dumps(batch, protocol=2))
    meta = {"label_names": names} if ten else {"fine_label_names": names, "coarse_label_names": ["x"] * 20}
    (folder / ("batches.meta" if ten else "meta")).write_bytes(pickle.dumps(meta, protocol=2))
    return {
        "folder": folder,
        "train": train,
        "train_labels": train_labels,
        "test": test,
        "test_labels": test_labels,
        "classes": names,
    }


def idx_bytes(array: np.ndarray) -> bytes:
    """LeCun's idx format: 0, 0, 0x08 (unsigned byte), ndim, big-endian dims, data."""
    return bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_idx(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> dict:
    """The four MNIST-family idx files (gzip by default) in ``folder``; returns the arrays."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": _images(n_train, 1, 28, seed=3)[:, 0],
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": _images(n_test, 1, 28, seed=4)[:, 0],
        "t10k-labels-idx1-ubyte": ((np.arange(n_test) * 3) % 10).astype(np.uint8),
    }
    for stem, array in arrays.items():
        data = idx_bytes(array)
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(data))
        else:
            (folder / stem).write_bytes(data)
    return {"folder": folder, **arrays}


def write_image_folder(
    root: Path,
    classes: tuple[str, ...] = ("cat", "dog", "frog"),
    counts: dict[str, int] | None = None,
    size: int = 32,
    eval_split: str = "test",
    mode: str = "RGB",
) -> dict:
    """``root/{train,<eval_split>}/<class>/NNNN.{png,jpg}``: even files PNG (lossless), odd files JPEG."""
    counts = counts or {"train": 4, eval_split: 2}
    written: dict[str, list[tuple[Path, np.ndarray, int]]] = {}
    rng = np.random.default_rng(5)
    for split, n in counts.items():
        written[split] = []
        for label, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                shape = (size, size, 3) if mode == "RGB" else (size, size)
                pixels = rng.integers(0, 256, shape, dtype=np.uint8)
                path = folder / f"{i:04d}.{'png' if i % 2 == 0 else 'jpg'}"
                Image.fromarray(pixels).save(path, quality=95)
                written[split].append((path, pixels, label))
    return {"root": root, "classes": list(classes), "files": written}


@pytest.fixture
def cifar_python():
    return write_cifar_python


@pytest.fixture
def idx_folder():
    return write_idx


@pytest.fixture
def image_folder():
    return write_image_folder
