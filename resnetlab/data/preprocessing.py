"""How a network wants its input (``Preprocessing``, one type for training, evaluation, prediction and
export) and the paper's test views that bring an image to it.

Views (PAPER.md Sec. 3, the paper's Sec. 3.4 and 4.2), at the network's native size ``S`` (224 on ImageNet):

- ``single``: the image as it is (CIFAR's test view, Sec. 4.2); an image of another size is brought to
  ``S`` (shorter side, then the centre crop), as a user's photo must be.
- ``center``: shorter side 256, the centre 224x224 (the validation error of Fig. 4).
- ``10crop``: the 4 corners and the centre 224x224 of the 256-resized image, and their flips (Tables 2-3).
- ``multiscale``: the whole image with its shorter side at each of {224, 256, 384, 480, 640}, and its flip,
  through the fully-convolutional network (Table 4).

At another native size every side scales by ``S / 224`` (a 32x32 network: 37, 32 and {32, 37, 55, 69, 91});
at 224 these are the paper's numbers exactly. The views themselves are :mod:`resnetlab.data.transforms`'
(``center_view``, ``ten_crop_views``, ``multiscale_views``), run here without normalisation so that the
checkpoint's own normalisation (per-pixel mean, or a per-channel mean/std for imported weights) follows.

How the scores of one image's views are averaged is :mod:`resnetlab.deploy.scoring`'s.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torchvision.transforms.v2 import functional as TF

from ..errors import UserError
from .transforms import MULTISCALE_SIZES, SubtractMean, center_view, multiscale_views, ten_crop_views

__all__ = ["VIEWS", "Preprocessing", "view_transform", "views_per_image", "check_view"]

VIEWS = ("single", "center", "10crop", "multiscale")
PAPER_SIDE, PAPER_RESIZE = 224, 256  # Sec. 3.4: crops of 224 from the image resized to 256


@dataclass(frozen=True)
class Preprocessing:
    """How a network wants its input, as a checkpoint records it: ``(pixels - mean) * scale``, or
    ``(pixels - mean) / std`` when ``std`` is given (torchvision's weights), at ``image_size``.

    ``mean`` is in pixel units 0..255: a per-pixel mean image (C, H, W) (the paper) or a per-channel mean
    (C,). ``view`` is the test view it was validated with: ``single`` (CIFAR, MNIST) or ``center`` (the
    ImageNet layout). ``resize`` is the centre view's shorter side (None: ``S * 256 / 224``).
    """

    mean: torch.Tensor
    image_size: tuple[int, int]
    channels: int
    view: str = "single"
    scale: float = 1 / 255
    std: torch.Tensor | None = None
    resize: int | None = None

    def __post_init__(self) -> None:
        if self.view not in ("single", "center"):
            raise UserError(f"preprocessing view must be 'single' or 'center', got {self.view!r}")
        if self.mean.dim() not in (1, 3) or self.mean.shape[0] != self.channels:
            raise UserError(f"mean of shape {tuple(self.mean.shape)} does not fit {self.channels}-channel images")
        if self.std is not None and tuple(self.std.shape) != (self.channels,):
            raise UserError(f"std must have one value per channel ({self.channels}), got {tuple(self.std.shape)}")

    @property
    def crop(self) -> int:
        """The side ``S`` of the square centre and corner crops."""
        return min(self.image_size)

    @property
    def resize_side(self) -> int:
        return self.resize or round(self.crop * PAPER_RESIZE / PAPER_SIDE)

    @property
    def multiscale_sides(self) -> tuple[int, ...]:
        return tuple(round(side * self.crop / PAPER_SIDE) for side in MULTISCALE_SIZES)

    def normalizer(self) -> SubtractMean:
        """The module that turns float pixel views (..., C, H, W) into the network's input."""
        return SubtractMean(self.mean, std=self.std, scale=self.scale)

    def to_record(self) -> dict[str, Any]:
        """The JSON-able record of a checkpoint's ``preprocessing`` entry (the mean is stored beside it)."""
        record: dict[str, Any] = {
            "scale": self.scale,
            "image_size": list(self.image_size),
            "channels": self.channels,
            "view": self.view,
        }
        if self.std is not None:
            record["std"] = [float(s) for s in self.std]
        if self.resize is not None:
            record["resize"] = self.resize
        return record

    @classmethod
    def from_record(cls, record: dict[str, Any] | None, mean: torch.Tensor, dataset: str) -> Preprocessing:
        """Read a checkpoint's record. Checkpoints written before the record existed (or without ``std``)
        are read as training wrote them: scale 1/255, the mean image's size and channels, the ImageNet
        layout's centre view for ``imagefolder`` and the single view otherwise."""
        record = record or {}
        mean = mean.float()
        size = record.get("image_size") or (list(mean.shape[-2:]) if mean.dim() == 3 else [PAPER_SIDE, PAPER_SIDE])
        std = record.get("std")
        return cls(
            mean=mean,
            image_size=(int(size[0]), int(size[1])),
            channels=int(record.get("channels", mean.shape[0])),
            view=record.get("view", "center" if dataset == "imagefolder" else "single"),
            scale=float(record.get("scale", 1 / 255)),
            std=None if std is None else torch.tensor(std, dtype=torch.float32),
            resize=record.get("resize"),
        )


def check_view(view: str) -> str:
    """``view`` if it is one of ``VIEWS``, else a one-line UserError listing them."""
    if view not in VIEWS:
        raise UserError(f"unknown view {view!r}; views: {', '.join(VIEWS)}")
    return view


def views_per_image(view: str) -> int:
    return {"single": 1, "center": 1, "10crop": 10, "multiscale": 2 * len(MULTISCALE_SIZES)}[view]


def _single(image: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    if tuple(image.shape[-2:]) != size:
        image = TF.center_crop(TF.resize(image, min(size), antialias=True), list(size))
    return image.float().unsqueeze(0)  # (1, C, H, W)


def view_transform(view: str, pre: Preprocessing) -> Callable[[torch.Tensor], torch.Tensor | list[torch.Tensor]]:
    """uint8 image (C, H, W) -> float pixel views (0..255, not yet normalised): a tensor (V, C, h, w) for
    ``single``/``center``/``10crop`` (V = 1, 1, 10), a list of V = 10 tensors (C, h_s, w_s) for
    ``multiscale`` (sizes differ). ``pre.normalizer()`` turns them into the network's input."""
    check_view(view)
    zero = torch.zeros(pre.channels)  # the data package's views with no mean subtracted: pixels stay 0..255
    if view == "single":
        return lambda image: _single(image, pre.image_size)
    if view == "center":
        center = center_view(zero, resize=pre.resize_side, crop=pre.crop, scale=1.0)
        return lambda image: center(image).unsqueeze(0)  # (1, C, S, S)
    if view == "10crop":
        return ten_crop_views(zero, resize=pre.resize_side, crop=pre.crop, scale=1.0)  # (10, C, S, S)
    sides = pre.multiscale_sides
    return lambda image: multiscale_views(image, zero, sizes=sides, flip=True, scale=1.0)
