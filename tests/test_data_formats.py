"""Reading every on-disk format into memory, and the cache of decoded tensors."""

from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.data import datasets, load_dataset, pixel_mean, synthetic_dataset, train_val_split
from resnetlab.errors import UserError


def test_cifar10_python_batches(data_env, tmp_path, cifar_python):
    made = cifar_python(tmp_path)
    ds = load_dataset("cifar10", tmp_path, progress=False)
    assert ds.source.format == "cifar-python"
    assert ds.train.images.shape == (30, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    assert ds.test.images.shape == (8, 3, 32, 32) and ds.train.labels.dtype == torch.int64
    # The batches' rows are the official CHW layout: 1024 red values, 1024 green, 1024 blue.
    assert torch.equal(ds.train.images, torch.from_numpy(made["train"]))
    assert ds.train.labels.tolist() == made["train_labels"] and ds.test.labels.tolist() == made["test_labels"]
    assert ds.classes == made["classes"] and ds.channels == 3 and ds.image_size == (32, 32)


def test_cifar100_uses_the_fine_labels(data_env, tmp_path, cifar_python):
    made = cifar_python(tmp_path, dataset="cifar100", per_batch=12)
    ds = load_dataset("cifar100", tmp_path, progress=False)
    assert len(ds.classes) == 100 and ds.train.labels.tolist() == made["train_labels"]


def test_a_crafted_pickle_cannot_run_code(data_env, tmp_path, cifar_python):
    made = cifar_python(tmp_path)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    (made["folder"] / "data_batch_3").write_bytes(pickle.dumps({"data": Evil()}, protocol=2))
    with pytest.raises(UserError, match=r"data_batch_3: not a readable CIFAR python batch .*system is not part of"):
        load_dataset("cifar10", tmp_path, progress=False)
    assert not marker.exists()


@pytest.mark.parametrize("gz", [True, False])
def test_idx_files(data_env, tmp_path, idx_folder, gz):
    made = idx_folder(tmp_path / "fashion-mnist", gz=gz)
    ds = load_dataset("fashion-mnist", tmp_path, progress=False)
    assert ds.train.images.shape == (30, 1, 28, 28) and ds.test.images.shape == (10, 1, 28, 28)
    assert torch.equal(ds.train.images[:, 0], torch.from_numpy(made["train-images-idx3-ubyte"]))
    assert ds.test.labels.tolist() == made["t10k-labels-idx1-ubyte"].tolist()
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot" and ds.channels == 1


def test_image_folder_of_png_and_jpeg(data_env, tmp_path, image_folder):
    names = ("frog", "cat", "dog", "bird", "deer", "horse", "ship", "truck", "airplane", "automobile")
    made = image_folder(tmp_path / "cifar10-jpeg", classes=names)
    ds = load_dataset("cifar10", tmp_path, progress=False)
    assert ds.classes == sorted(names)  # class folders sorted by name = CIFAR-10's label order
    assert ds.train.images.shape == (40, 3, 32, 32) and ds.test.images.shape == (20, 3, 32, 32)
    assert ds.train.counts(10) == [4] * 10 and ds.test.counts(10) == [2] * 10
    # Index order: classes in label order, files sorted by name within each class.
    expected = sorted(made["files"]["train"], key=lambda f: (sorted(names).index(names[f[2]]), f[0].name))
    for i, (path, pixels, label) in enumerate(expected):
        assert ds.classes[ds.train.labels[i]] == names[label]
        image = ds.train.images[i].permute(1, 2, 0).numpy().astype(int)
        if path.suffix == ".png":
            assert np.array_equal(image, pixels)  # lossless
        else:
            with Image.open(path) as im:
                assert np.abs(image - np.asarray(im.convert("RGB"), dtype=int)).max() <= 2  # libjpeg's rounding


def test_grayscale_image_folder_becomes_rgb(data_env, tmp_path, image_folder):
    image_folder(tmp_path, classes=tuple(f"k{i}" for i in range(10)), mode="L")
    ds = load_dataset("cifar10", tmp_path, progress=False)
    assert ds.train.images.shape[1] == 3
    assert torch.equal(ds.train.images[:, 0], ds.train.images[:, 1])


def test_imagefolder_needs_one_size_or_image_size(data_env, tmp_path, image_folder, idx_folder):
    image_folder(tmp_path / "a", counts={"train": 2, "val": 1}, eval_split="val", size=40)
    ds = load_dataset("imagefolder", tmp_path / "a", progress=False)
    assert ds.image_size == (40, 40) and len(ds.test) == 3
    ds = load_dataset("imagefolder", tmp_path / "a", image_size=24, progress=False)
    assert ds.train.images.shape == (6, 3, 24, 24)
    with pytest.raises(UserError, match="image_size applies to image files"):
        load_dataset("fashion-mnist", idx_folder(tmp_path / "f")["folder"], image_size=24)


def test_synthetic_is_deterministic_and_balanced():
    a = synthetic_dataset(num_train=100, num_test=20, image_size=8, channels=1, num_classes=5, seed=3)
    b = synthetic_dataset(num_train=100, num_test=20, image_size=8, channels=1, num_classes=5, seed=3)
    assert torch.equal(a.train.images, b.train.images) and a.train.images.shape == (100, 1, 8, 8)
    assert a.train.counts(5) == [20] * 5 and not torch.equal(a.train.images, a.test.images[:20].repeat(5, 1, 1, 1))


def test_mean_image_is_the_exact_per_pixel_mean(data_env, tmp_path, cifar_python):
    made = cifar_python(tmp_path)
    ds = load_dataset("cifar10", tmp_path, progress=False)
    expected = torch.from_numpy(made["train"]).double().mean(0).float()
    assert ds.mean.shape == (3, 32, 32) and ds.mean.dtype == torch.float32
    assert torch.allclose(ds.mean, expected, atol=1e-4)
    big = torch.randint(0, 256, (5000, 1, 4, 4), dtype=torch.uint8)  # several chunks of 2048
    assert torch.allclose(pixel_mean(big), big.double().mean(0).float(), atol=1e-4)


def test_cache_is_read_back_and_invalidated_when_the_source_changes(data_env, tmp_path, image_folder, monkeypatch):
    image_folder(tmp_path, classes=tuple(f"k{i}" for i in range(10)))
    first = load_dataset("cifar10", tmp_path, progress=False)
    assert all(p.is_file() and p.is_relative_to(data_env) for p in first.cache_files)
    calls = []
    real = datasets._decode_source
    monkeypatch.setattr(datasets, "_decode_source", lambda *a: calls.append(1) or real(*a))
    again = load_dataset("cifar10", tmp_path, progress=False)
    assert calls == [] and torch.equal(again.train.images, first.train.images) and again.classes == first.classes
    assert torch.equal(again.mean, first.mean)

    changed = tmp_path / "train" / "k3" / "0000.png"
    stat = changed.stat()
    os.utime(changed, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: a new key
    load_dataset("cifar10", tmp_path, progress=False)
    assert calls == [1]
    (tmp_path / "train" / "k3" / "0000.png").rename(tmp_path / "train" / "k3" / "0099.png")  # renamed: a new key
    third = load_dataset("cifar10", tmp_path, progress=False)
    assert calls == [1, 1]
    files = sorted(p.name for p in third.cache_files[0].parent.iterdir())
    assert len(files) == 2  # the stale entries were removed when their replacements were written


def test_a_corrupt_cache_file_is_rebuilt(data_env, tmp_path, idx_folder):
    idx_folder(tmp_path)
    ds = load_dataset("mnist", tmp_path, progress=False)
    ds.cache_files[0].write_bytes(b"garbage")
    again = load_dataset("mnist", tmp_path, progress=False)
    assert torch.equal(again.train.images, ds.train.images)


def test_val_split_small_analogue(data_env, tmp_path, cifar_python):
    cifar_python(tmp_path, per_batch=20)  # 100 training images, 10 per class
    ds = load_dataset("cifar10", tmp_path, val_size=10, progress=False)
    assert (len(ds.train), len(ds.val)) == (90, 10) and ds.val.counts(10) == [1] * 10
    full = load_dataset("cifar10", tmp_path, progress=False)
    assert torch.allclose(ds.mean, pixel_mean(ds.train.images)) and not torch.allclose(ds.mean, full.mean)
    again = load_dataset("cifar10", tmp_path, val_size=10, progress=False)
    assert torch.equal(again.val.images, ds.val.images)


def test_45k_5k_split_is_deterministic_disjoint_and_stratified():
    labels = torch.arange(50_000) % 10  # CIFAR-10's training labels: 5,000 per class
    train, val = train_val_split(labels, 5000, seed=0)
    assert (len(train), len(val)) == (45_000, 5000)
    assert torch.bincount(labels[val]).tolist() == [500] * 10
    assert not set(train.tolist()) & set(val.tolist()) and len(set(train.tolist()) | set(val.tolist())) == 50_000
    train2, val2 = train_val_split(labels, 5000, seed=0)
    assert torch.equal(val, val2) and torch.equal(train, train2)
    assert not torch.equal(val, train_val_split(labels, 5000, seed=1)[1])
    uneven = torch.tensor([0] * 7 + [1] * 2 + [2] * 1)
    assert len(train_val_split(uneven, 3)[1]) == 3
    with pytest.raises(UserError, match="val_size must be between 1 and 9"):
        train_val_split(uneven, 10)
