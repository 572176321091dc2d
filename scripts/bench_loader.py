"""Loader benchmark: images/s of the in-memory fast path against torchvision's DataLoader with per-image
transforms, on the same data and the same augmentation (Sec. 4.2), beside ResNet-20's training throughput.

The goal (issue 3) is a fast path at least 10x the training throughput, so loading is never the
bottleneck. Usage (numbers of this machine are in docs/data.md):

    python scripts/bench_loader.py                                # cifar10 if found, else synthetic data
    python scripts/bench_loader.py --dataset cifar10 --data-dir ../shared/data --device cuda --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from resnetlab import create_model
from resnetlab.data import ImageDataset, InMemoryLoader, cifar_train_transform, load_dataset, synthetic_dataset
from resnetlab.errors import UserError


class PerImage(Dataset):
    """What torchvision.datasets.CIFAR10 does per item: one image (a PIL image, as CIFAR10 returns it, or a
    uint8 tensor) through the per-image transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform, pil: bool):
        self.hwc = images.permute(0, 2, 3, 1).numpy() if pil else None  # (N, H, W, C) for Image.fromarray
        self.images, self.labels, self.transform, self.pil = images, labels, transform, pil

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        image = (
            Image.fromarray(self.hwc[i].squeeze(-1) if self.hwc.shape[-1] == 1 else self.hwc[i])
            if self.pil
            else self.images[i]
        )
        return self.transform(image), int(self.labels[i])


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def fast_path(ds: ImageDataset, batch_size: int, device: torch.device, batches: int) -> float:
    loader = InMemoryLoader(
        ds.train.images, ds.train.labels, batch_size=batch_size, mean=ds.mean, train=True, device=device
    )
    next(iter(loader))  # warm-up (and the one-time copy to the device is already done in __init__)
    done, start = 0, time.perf_counter()
    while done < batches:
        for _ in loader:
            done += 1
            if done == batches:
                break
    _sync(device)
    return batches * batch_size / (time.perf_counter() - start)


def dataloader_path(
    ds: ImageDataset, batch_size: int, device: torch.device, batches: int, workers: int, pil: bool
) -> float:
    dataset = PerImage(ds.train.images, ds.train.labels, cifar_train_transform(ds.mean), pil)
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        pin_memory=device.type == "cuda",
        persistent_workers=workers > 0,
    )
    next(iter(loader))  # warm-up: worker start-up is not counted (the workers persist)
    done, start = 0, time.perf_counter()
    while done < batches:
        for x, _ in loader:
            x = x.to(device, non_blocking=True)
            done += 1
            if done == batches:
                break
    _sync(device)
    return batches * batch_size / (time.perf_counter() - start)


def resnet20_training(ds: ImageDataset, batch_size: int, device: torch.device, steps: int) -> float:
    """Sec. 4.2's recipe for one step: SGD momentum 0.9, weight decay 1e-4, lr 0.1, batch 128."""
    torch.manual_seed(0)
    model = create_model("resnet20", in_channels=ds.channels, num_classes=len(ds.classes)).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    loader = InMemoryLoader(
        ds.train.images, ds.train.labels, batch_size=batch_size, mean=ds.mean, train=True, device=device
    )
    it = iter(loader)

    def step() -> None:
        x, y = next(it)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(2):  # warm-up
        step()
    _sync(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    _sync(device)
    return steps * batch_size / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dataset", default=None, help="cifar10 (default when found), fashion-mnist, synthetic, ...")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--batches", type=int, default=200, help="batches timed per loader")
    p.add_argument("--train-steps", type=int, default=20, help="ResNet-20 steps timed")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="DataLoader worker processes")
    p.add_argument("--json", action="store_true")
    args = p.parse_args()

    device = torch.device(args.device)
    if args.dataset in (None, "cifar10"):
        try:
            ds = load_dataset("cifar10", args.data_dir, download=False)
        except UserError as err:
            if args.dataset:
                raise SystemExit(f"bench_loader: error: {err}") from None
            ds = synthetic_dataset()
    elif args.dataset == "synthetic":
        ds = synthetic_dataset()
    else:
        ds = load_dataset(args.dataset, args.data_dir, download=False)

    slow_batches = max(10, args.batches // 5)  # the per-image loaders are slow; fewer batches give the same rate
    rates = {
        "fast path (InMemoryLoader)": fast_path(ds, args.batch_size, device, args.batches),
        f"DataLoader, PIL image per item, {args.workers} workers": dataloader_path(
            ds, args.batch_size, device, slow_batches, args.workers, pil=True
        ),
        f"DataLoader, tensor per item, {args.workers} workers": dataloader_path(
            ds, args.batch_size, device, slow_batches, args.workers, pil=False
        ),
        "ResNet-20 training (forward, backward, SGD step)": resnet20_training(
            ds, args.batch_size, device, args.train_steps
        ),
    }
    train_rate = rates["ResNet-20 training (forward, backward, SGD step)"]
    fast_rate = rates["fast path (InMemoryLoader)"]
    info = {
        "dataset": ds.name,
        "images": len(ds.train),
        "image": list(ds.train.images.shape[1:]),
        "batch_size": args.batch_size,
        "device": str(device),
        "torch_threads": torch.get_num_threads(),
        "cpu": platform.processor() or platform.machine(),
        "cpus": os.cpu_count(),
        "gpu": torch.cuda.get_device_name() if device.type == "cuda" else None,
        "torch": torch.__version__,
        "images_per_s": {k: round(v) for k, v in rates.items()},
        "fast_path_over_training": round(fast_rate / train_rate, 1),
    }
    if args.json:
        print(json.dumps(info, indent=2))
        return
    print(
        f"{ds.name}: {len(ds.train):,} training images {tuple(ds.train.images.shape[1:])}, batch {args.batch_size}, "
        f"device {device}{' (' + info['gpu'] + ')' if info['gpu'] else ''}, {os.cpu_count()} CPUs, "
        f"torch {torch.__version__}"
    )
    width = max(map(len, rates))
    for name, rate in rates.items():
        print(f"  {name:<{width}}  {rate:>10,.0f} images/s")
    print(
        f"fast path / ResNet-20 training: {fast_rate / train_rate:.0f}x (goal: at least 10x); "
        f"fast path / best DataLoader: {fast_rate / max(list(rates.values())[1:3]):.0f}x"
    )


if __name__ == "__main__":
    main()
