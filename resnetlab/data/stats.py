"""Statistics of training images: the per-pixel mean image (Sec. 3.4, 4.2), per-channel mean and std, and
the eigen-decomposition of the RGB pixel covariance that PCA lighting uses ("computable from the data").

In-memory datasets have them in one pass over the uint8 tensor; an ImageNet-layout folder is streamed
(shorter side 256, centre 224 crop, the size the mean image is subtracted at) and the result cached.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from tqdm import tqdm

from .cache import cache_root, file_key, fingerprint, load_tensors, save_tensors
from .loaders import FileDataset, make_loader
from .readers import FolderIndex

__all__ = ["ImageStats", "StatsAccumulator", "tensor_statistics", "folder_statistics"]


@dataclass(frozen=True)
class ImageStats:
    """Pixel statistics of a set of images, in pixel units 0..255 except the covariance's eigenvalues,
    which are for pixels in [0, 1] like ``IMAGENET_EIGVAL``."""

    mean_image: torch.Tensor  # (C, H, W)
    channel_mean: torch.Tensor  # (C,)
    channel_std: torch.Tensor  # (C,)
    eigval: torch.Tensor  # (C,), descending
    eigvec: torch.Tensor  # (C, C), column i belongs to eigval[i]
    count: int  # images

    def to_tensors(self) -> dict[str, torch.Tensor]:
        return {k: getattr(self, k) for k in ("mean_image", "channel_mean", "channel_std", "eigval", "eigvec")}


class StatsAccumulator:
    """Running sums in float64 over batches of images (N, C, H, W) in 0..255, all of one size."""

    def __init__(self) -> None:
        self.count = 0
        self.pixels = 0
        self.image_sum: torch.Tensor | None = None  # (C, H, W)
        self.moment1: torch.Tensor | None = None  # (C,) sum of x over pixels, x in [0, 1]
        self.moment2: torch.Tensor | None = None  # (C, C) sum of x x^T over pixels

    def add(self, images: torch.Tensor) -> None:
        x = images.double()
        flat = x.transpose(0, 1).reshape(x.shape[1], -1) / 255  # (C, N*H*W)
        if self.image_sum is None or self.moment1 is None or self.moment2 is None:
            self.image_sum, self.moment1, self.moment2 = x.sum(0), flat.sum(1), flat @ flat.T
        else:
            self.image_sum += x.sum(0)
            self.moment1 += flat.sum(1)
            self.moment2 += flat @ flat.T
        self.count += x.shape[0]
        self.pixels += flat.shape[1]

    def result(self) -> ImageStats:
        if self.image_sum is None or self.moment1 is None or self.moment2 is None:
            raise ValueError("no images were added")
        mu = self.moment1 / self.pixels
        cov = self.moment2 / self.pixels - torch.outer(mu, mu)
        eigval, eigvec = torch.linalg.eigh(cov)  # ascending
        return ImageStats(
            mean_image=(self.image_sum / self.count).float(),
            channel_mean=(mu * 255).float(),
            channel_std=(cov.diagonal().clamp_min(0).sqrt() * 255).float(),
            eigval=eigval.flip(0).float(),
            eigvec=eigvec.flip(1).float(),
            count=self.count,
        )


def tensor_statistics(images: torch.Tensor, chunk: int = 1024) -> ImageStats:
    """Statistics of uint8 images (N, C, H, W) held in memory, in chunks (no float copy of the whole set)."""
    acc = StatsAccumulator()
    for part in images.split(chunk):
        acc.add(part)
    return acc.result()


def folder_statistics(
    index: FolderIndex,
    *,
    resize: int = 256,
    crop: int = 224,
    max_images: int | None = 10_000,
    seed: int = 0,
    workers: int = 0,
    progress: bool = True,
) -> ImageStats:
    """Statistics of (a seeded sample of ``max_images`` of) an ImageNet-layout split at ``crop`` x ``crop``
    after resizing the shorter side to ``resize``, cached under the index's fingerprint. Bad images are
    skipped (a statistic does not need every image; the training run still applies its own policy)."""
    picks = list(range(len(index.files)))
    if max_images is not None and max_images < len(picks):
        g = torch.Generator().manual_seed(seed)
        picks = sorted(torch.randperm(len(picks), generator=g)[:max_images].tolist())
    key = fingerprint(file_key([index.files[i] for i in picks], index.root), resize=resize, crop=crop)
    where = hashlib.sha256(os.fsencode(index.root.resolve())).hexdigest()[:8]  # the name's bytes: any name
    path = cache_root() / "stats" / f"folder-{where}-{resize}-{crop}-{key[:16]}.safetensors"
    if (hit := load_tensors(path)) is not None:
        tensors, meta = hit
        return ImageStats(**tensors, count=int(meta["count"]))

    sub = FolderIndex(index.root, index.classes, [index.files[i] for i in picks], [index.labels[i] for i in picks], [])
    view = v2.Compose([v2.Resize(resize, antialias=True), v2.CenterCrop(crop)])
    dataset = FileDataset(sub, view, on_bad_image="skip")
    loader = make_loader(dataset, batch_size=64, train=False, workers=workers, distributed=False)
    acc = StatsAccumulator()
    for images, _ in tqdm(loader, desc=f"{index.root}: image statistics", disable=not progress, leave=False):
        acc.add(images)
    stats = acc.result()
    save_tensors(path, stats.to_tensors(), {"count": stats.count, "root": str(index.root)})
    return stats
