"""The real data in $RESNETLAB_DATA (CI: ../shared/data): the CIFAR-10 JPEG copy and Fashion-MNIST.

Decoded once into the cache ($RESNETLAB_CACHE or ~/.cache/resnetlab), so a second run reads it back in
seconds; the first decode of the 60,000 CIFAR-10 JPEGs takes about 15 s on 2 cores. Skipped when
RESNETLAB_DATA is unset.
"""

from __future__ import annotations

import os

import pytest
import torch

from resnetlab.cli import main
from resnetlab.data import InMemoryLoader, load_dataset

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(not os.environ.get("RESNETLAB_DATA"), reason="RESNETLAB_DATA is not set"),
]
CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def test_cifar10_jpeg_copy():
    ds = load_dataset("cifar10", progress=False)
    assert ds.classes == CIFAR10
    assert ds.train.images.shape == (50_000, 3, 32, 32) and ds.test.images.shape == (10_000, 3, 32, 32)
    assert ds.train.counts(10) == [5000] * 10 and ds.test.counts(10) == [1000] * 10
    assert ds.train.skipped == ds.test.skipped == 0
    # CIFAR-10's per-channel means are about 125.3, 123.0, 113.9 (pixel units); the JPEG copy is close.
    assert torch.allclose(ds.mean.mean((1, 2)), torch.tensor([125.3, 123.0, 113.9]), atol=1.5)
    x, y = next(iter(InMemoryLoader(ds.train.images, ds.train.labels, batch_size=128, mean=ds.mean, train=True)))
    assert x.shape == (128, 3, 32, 32) and abs(x.mean().item()) < 0.05


def test_cifar10_45k_5k_split():
    ds = load_dataset("cifar10", val_size=5000, progress=False)
    assert (len(ds.train), len(ds.val)) == (45_000, 5000) and ds.val.counts(10) == [500] * 10


def test_fashion_mnist(capsys):
    assert main(["data", "fashion-mnist"]) == 0
    out = capsys.readouterr().out
    assert "splits: train 60,000, test 10,000" in out and "images: 28x28, 1 channel(s) (grayscale), 10 classes" in out
    ds = load_dataset("fashion-mnist", progress=False)
    assert ds.train.counts(10) == [6000] * 10 and ds.test.counts(10) == [1000] * 10
