"""The paper's per-image pipelines and test views, on torchvision.transforms.v2 where it has the operation.

- CIFAR (Sec. 4.2): per-pixel mean subtracted, 4 pixels of zero padding on each side, a random 32x32 crop,
  a random horizontal flip. The mean is subtracted *before* padding, so the padding is zero in the
  network's input (the mean colour in pixel terms), which is what "zero-pad the mean-subtracted image" means.
- ImageNet (Sec. 3.4): shorter side resized to a random size in [256, 480], a random 224x224 crop, a random
  horizontal flip, the per-pixel mean subtracted and Krizhevsky et al.'s PCA colour noise (std 0.1).

Units: images stay in pixel units 0..255 until the last step, ``(x - mean) * scale`` with
``scale=1/255`` by default. Caffe, which the paper used, fed 0..255 directly (``scale=1.0``); BN right after
the first convolution makes the network's function the same for either, only conv1's effective weight
decay differs. The in-memory fast path (:mod:`.fast`) does the CIFAR pipeline on whole batches with the
same arithmetic; these per-image versions serve the DataLoader path and the benchmark's baseline.

Test views of an ImageNet image (Sec. 3.4):

- centre crop: shorter side 256, the centre 224x224 (the validation curves of Fig. 4);
- 10-crop: the 4 corners and the centre 224x224 of the 256-resized image, and their horizontal flips
  (Tables 2-3, "for comparisons");
- multi-scale: the whole image with its shorter side at each of {224, 256, 384, 480, 640}, and its flip,
  fed to the fully-convolutional network; softmax scores averaged over all views (Table 4).

For a network that ends in global average pooling and one fully-connected layer, "fully convolutional"
(the fc applied at every position, the score maps averaged) equals the usual forward pass on the whole
image, since both steps are linear; so the multi-scale views are plain images of different sizes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from .fast import subtract_mean

__all__ = [
    "IMAGENET_EIGVAL",
    "IMAGENET_EIGVEC",
    "IMAGENET_CHANNEL_MEAN",
    "IMAGENET_CHANNEL_STD",
    "SubtractMean",
    "PCALighting",
    "cifar_train_transform",
    "cifar_test_transform",
    "imagenet_train_transform",
    "MULTISCALE_SIZES",
    "center_view",
    "ten_crop_views",
    "multiscale_views",
]

# The eigen-decomposition of ImageNet's RGB pixel covariance, pixels in [0, 1], as Facebook's
# fb.resnet.torch uses for AlexNet-style lighting noise ("computed from a random subset of ImageNet training
# images"). Columns of IMAGENET_EIGVEC are the eigenvectors, in the order of IMAGENET_EIGVAL.
IMAGENET_EIGVAL = torch.tensor([0.2175, 0.0188, 0.0045])
IMAGENET_EIGVEC = torch.tensor([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140], [-0.5836, -0.6948, 0.4203]])
# Per-channel statistics (pixel units 0..255) for normalization="per-channel", the common departure
# (PAPER.md Sec. 6): torchvision's ImageNet mean and std.
IMAGENET_CHANNEL_MEAN = torch.tensor([0.485, 0.456, 0.406]) * 255
IMAGENET_CHANNEL_STD = torch.tensor([0.229, 0.224, 0.225]) * 255


class SubtractMean(nn.Module):
    """``(x - mean) * scale``, or ``(x - mean) / std`` when ``std`` is given; x float (..., C, H, W) in 0..255.

    ``mean`` is a per-pixel mean image (C, H, W) (the paper) or a per-channel mean (C,). A view whose size
    differs from the mean image's (10-crop's 224 views use a 224 mean; multi-scale views have any size) gets
    the mean image's per-channel average: a per-pixel mean exists only at the size it was estimated at.
    """

    mean: torch.Tensor
    std: torch.Tensor | None

    def __init__(self, mean: torch.Tensor, std: torch.Tensor | None = None, scale: float = 1 / 255):
        super().__init__()
        self.register_buffer("mean", mean.float())
        self.register_buffer("std", None if std is None else std.float().view(-1, 1, 1))
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = self.mean
        if mean.dim() == 1:
            mean = mean.view(-1, 1, 1)
        elif mean.shape[-2:] != x.shape[-2:]:
            mean = mean.mean(dim=(1, 2), keepdim=True)
        if self.std is None:
            return subtract_mean(x, mean, self.scale)
        return (x.float() - mean) / self.std


class PCALighting(nn.Module):
    """AlexNet's colour augmentation (Krizhevsky et al. 2012, Sec. 4.1), Sec. 3.4's "standard colour
    augmentation": add ``eigvec @ (alpha * eigval)`` to every pixel, ``alpha ~ N(0, alphastd)`` per image.

    x: float (C, H, W) or (N, C, H, W) in pixel units (``pixel_range`` is 255 for 0..255; eigenvalues are
    for pixels in [0, 1], like ImageNet's). ``stats_from`` in :mod:`.stats` computes them from any data.
    """

    eigval: torch.Tensor
    eigvec: torch.Tensor

    def __init__(
        self,
        alphastd: float = 0.1,
        eigval: torch.Tensor = IMAGENET_EIGVAL,
        eigvec: torch.Tensor = IMAGENET_EIGVEC,
        pixel_range: float = 255.0,
    ):
        super().__init__()
        self.alphastd, self.pixel_range = alphastd, pixel_range
        self.register_buffer("eigval", eigval.float())
        self.register_buffer("eigvec", eigvec.float())

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if self.alphastd == 0:
            return x
        batch = x.shape[:-3]
        alpha = torch.randn((*batch, 3), generator=generator, device=x.device) * self.alphastd  # (..., 3)
        rgb = (alpha * self.eigval) @ self.eigvec.T * self.pixel_range  # (..., 3): sum_i alpha_i l_i p_i
        return x + rgb[..., None, None]


def cifar_train_transform(mean: torch.Tensor, *, pad: int = 4, scale: float = 1 / 255) -> v2.Compose:
    """Sec. 4.2's training augmentation for one image (uint8 tensor or PIL image in, float (C, H, W) out)."""
    size = mean.shape[-2:]
    return v2.Compose(
        [
            v2.ToImage(),
            v2.ToDtype(torch.float32),  # pixel units kept (no scaling) until SubtractMean
            SubtractMean(mean, scale=scale),
            v2.RandomCrop(list(size), padding=pad, fill=0),
            v2.RandomHorizontalFlip(),
        ]
    )


def cifar_test_transform(mean: torch.Tensor, *, scale: float = 1 / 255) -> v2.Compose:
    """Sec. 4.2's test view: the single original image, mean subtracted."""
    return v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32), SubtractMean(mean, scale=scale)])


def imagenet_train_transform(
    mean: torch.Tensor,
    *,
    std: torch.Tensor | None = None,
    scale_range: tuple[int, int] = (256, 480),
    crop: int = 224,
    lighting_std: float = 0.1,
    eigval: torch.Tensor = IMAGENET_EIGVAL,
    eigvec: torch.Tensor = IMAGENET_EIGVEC,
    scale: float = 1 / 255,
) -> v2.Compose:
    """Sec. 3.4's training augmentation for one image; float (3, crop, crop) out.

    ``mean``: the per-pixel mean image (3, 224, 224) (the paper; :func:`.stats.folder_statistics` estimates
    and caches it), or with ``std`` a per-channel mean/std, the named departure ("per-channel"; e.g.
    ``IMAGENET_CHANNEL_MEAN``/``IMAGENET_CHANNEL_STD``). ``lighting_std=0`` turns the colour noise off.
    """
    low, high = scale_range
    return v2.Compose(
        [
            v2.ToImage(),
            v2.RandomResize(low, high + 1, antialias=True),  # shorter side uniform in [low, high], aspect kept
            v2.RandomCrop(crop),
            v2.RandomHorizontalFlip(),
            v2.ToDtype(torch.float32),
            PCALighting(lighting_std, eigval, eigvec),
            SubtractMean(mean, std=std, scale=scale),
        ]
    )


# --- test views (Sec. 3.4) ----------------------------------------------------------------------------
MULTISCALE_SIZES = (224, 256, 384, 480, 640)


def center_view(mean: torch.Tensor, *, resize: int = 256, crop: int = 224, scale: float = 1 / 255) -> v2.Compose:
    """Image -> float (3, crop, crop): shorter side ``resize``, centre crop, mean subtracted."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, antialias=True),
            v2.CenterCrop(crop),
            v2.ToDtype(torch.float32),
            SubtractMean(mean, scale=scale),
        ]
    )


class _StackCrops(nn.Module):
    def forward(self, crops: Sequence[torch.Tensor]) -> torch.Tensor:
        return torch.stack([torch.as_tensor(c) for c in crops])


def ten_crop_views(mean: torch.Tensor, *, resize: int = 256, crop: int = 224, scale: float = 1 / 255) -> v2.Compose:
    """Image -> float (10, 3, crop, crop): torchvision's TenCrop order (4 corners and centre: top-left,
    top-right, bottom-left, bottom-right, centre; then the same of the flipped image)."""
    return v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(resize, antialias=True),
            v2.TenCrop(crop),
            _StackCrops(),
            v2.ToDtype(torch.float32),
            SubtractMean(mean, scale=scale),
        ]
    )


def multiscale_views(
    image: torch.Tensor,
    mean: torch.Tensor,
    *,
    sizes: Sequence[int] = MULTISCALE_SIZES,
    flip: bool = True,
    scale: float = 1 / 255,
) -> list[torch.Tensor]:
    """uint8 image (3, H, W) -> float views (3, h_s, w_s), shorter side ``s`` for each of ``sizes``, each
    followed by its flip when ``flip``. Sizes differ, so the views are a list, one forward pass each."""
    subtract = SubtractMean(mean, scale=scale)
    views = []
    for side in sizes:
        view = subtract(TF.resize(image, side, antialias=True).float())
        views += [view, view.flip(-1)] if flip else [view]
    return views
