"""Decoding image files to uint8 tensors, with the bad-input policy.

Every file is first opened lazily with PIL, which reads only the header: that is where a
decompression-bomb-sized image is refused, before any pixel is decoded (PIL warns above
``Image.MAX_IMAGE_PIXELS``, 89.5 million pixels, and raises above twice that; both refuse the file here).
Plain RGB or grayscale JPEG files are then decoded by torchvision.io (libjpeg-turbo straight to a
tensor: with the header check, 1.2x PIL's speed on CIFAR's 32x32 JPEGs and 1.5x on a 500x375 one, measured
here; torchvision 0.29 deprecates these decoders in favour of TorchCodec, so PIL does the work once they are
gone). PNG files go through PIL, never through torchvision's libpng decoder: that one kills the process
(SIGSEGV, exit 139) on any libpng error past the header, which no ``except`` can catch: a short IDAT ("Not
enough image data"), an IDAT that fails its CRC, a broken zlib stream, a bad filter byte (torchvision 0.29,
tested in ``tests/test_data_bad_inputs.py``). Making such a file safe for libpng means checking every chunk's
CRC, inflating the whole stream and checking each row's filter byte, which is most of a decode; PIL's own
decoder raises an ``OSError`` on the same files instead. Every other mode goes through PIL too and is
converted to the dataset's channels:

- L, 1, P, RGBA, LA, CMYK, YCbCr -> RGB with PIL's conversions; alpha is dropped (as torchvision's
  ImageFolder does), a palette with transparency goes through RGBA first;
- 16-bit (I;16, I;16B, I) -> 8 bits by keeping the high byte (as ``to_dtype(uint16 -> uint8, scale=True)``);
- any mode -> L for one-channel datasets (ITU-R 601-2 luma).

A truncated or corrupt file, an unreadable format, a float (F) image or an image of the wrong size is a
:class:`BadImage`; ``decode_files`` turns it into a UserError naming the file (``on_bad_image="error"``, the
default) or skips it and logs the count (``"skip"``).
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torchvision.transforms.v2 import functional as TF
from tqdm import tqdm

from ..errors import UserError

try:  # torchvision 0.29 deprecates its image decoders (for TorchCodec); PIL takes over once they are removed
    from torchvision.io import ImageReadMode, decode_image
except ImportError:  # pragma: no cover - a future torchvision
    decode_image = None  # type: ignore[assignment]

__all__ = ["BAD_IMAGE_POLICIES", "BadImage", "check_policy", "read_image", "decode_files"]

log = logging.getLogger("resnetlab.data")

BAD_IMAGE_POLICIES = ("error", "skip")
# What ``read_image`` returns for a given file, versioned: part of the decode cache's key for image files.
# 2: PNG through PIL (RGB PNG -> grayscale is now ITU-R 601-2 luma, as for every other format; libpng used
# Rec. 709's weights).
DECODER_VERSION = 2
SKIP_HINT = "fix or remove it, or skip bad images (on_bad_image='skip'; resnetlab data --skip-bad-images)"


class BadImage(Exception):
    """A file that cannot become an image of the dataset; ``reason`` says why in a few words."""

    def __init__(self, path: Path, reason: str):
        super().__init__(f"{path}: {reason}")
        self.path, self.reason = path, reason


def check_policy(on_bad_image: str) -> str:
    if on_bad_image not in BAD_IMAGE_POLICIES:
        raise UserError(f"on_bad_image must be one of {', '.join(BAD_IMAGE_POLICIES)}, got {on_bad_image!r}")
    return on_bad_image


def open_image(path: Path) -> Image.Image:
    """PIL's lazy open (the header only), with a decompression-bomb-sized or unreadable file a BadImage."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            return Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
            raise BadImage(path, f"decompression-bomb-sized image refused ({err})") from err
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise BadImage(path, f"not a readable image ({err})") from err


def _sixteen_bit(img: Image.Image) -> np.ndarray:
    # (H, W) uint8: the high byte of a 16-bit sample (I;16 PNGs open as I;16 or I depending on Pillow).
    return (np.clip(np.asarray(img, dtype=np.int64), 0, 65535) >> 8).astype(np.uint8)


def _with_pil(img: Image.Image, path: Path, channels: int) -> torch.Tensor:
    try:
        img.load()
        if img.mode.startswith("I"):
            gray = _sixteen_bit(img)
            array = gray[..., None].repeat(channels, axis=2)
        elif img.mode == "F":
            raise BadImage(path, "floating-point (F) images are not supported")
        else:
            if img.mode == "P":
                img = img.convert("RGBA")  # a palette's transparency survives only through RGBA
            target = "RGB" if channels == 3 else "L"
            array = np.asarray(img if img.mode == target else img.convert(target))  # same mode: no extra copy
            array = array if array.ndim == 3 else array[..., None]
    except BadImage:
        raise
    except (OSError, SyntaxError, ValueError, EOFError) as err:  # "image file is truncated", bad data...
        raise BadImage(path, f"truncated or corrupt ({err})") from err
    # (H, W, C) -> (C, H, W) in numpy: torch's uint8 permute-copy is 40x slower here (7 ms for 500x375).
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def read_image(path: Path, channels: int) -> torch.Tensor:
    """One image file as uint8 (channels, H, W); raises BadImage for a file that cannot be one."""
    with open_image(path) as img:
        # JPEG only: torchvision's PNG decoder crashes the process on a damaged image stream (see above).
        if decode_image is not None and img.format == "JPEG" and img.mode in ("RGB", "L"):
            mode = ImageReadMode.RGB if channels == 3 else ImageReadMode.GRAY
            # The bytes are read here, not by torchvision.io.read_file: it takes the path as a str it must
            # encode as UTF-8, so a valid file whose name is not UTF-8 (b"caf\xe9.jpg", a surrogate-escaped
            # str in Python) failed there and was reported corrupt.
            try:
                with open(path, "rb") as f:
                    data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
            except OSError as err:
                raise BadImage(path, f"unreadable ({err.strerror})") from err
            try:
                with warnings.catch_warnings():  # the deprecation notice, once per image otherwise
                    warnings.simplefilter("ignore", DeprecationWarning)
                    out = decode_image(data, mode=mode)
            except RuntimeError as err:
                raise BadImage(path, f"truncated or corrupt ({str(err).splitlines()[0]})") from err
            return out if out.dtype == torch.uint8 else TF.to_dtype(out, torch.uint8, scale=True)
        return _with_pil(img, path, channels)


def _fit(image: torch.Tensor, size: int) -> torch.Tensor:
    """Shorter side to ``size`` (antialiased), then the centre ``size`` x ``size`` crop."""
    return TF.center_crop(TF.resize(image, size, antialias=True), [size, size])


def decode_files(
    files: Sequence[Path],
    labels: Sequence[int],
    *,
    channels: int,
    size: int | None,
    resize: bool = False,
    on_bad_image: str = "error",
    progress: bool = True,
    desc: str = "decoding",
) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """Decode every file into one uint8 tensor (N, C, size, size) with int64 labels (N,).

    ``size`` is the side every image must have (None: every image must have the first image's height and
    width); ``resize=True`` instead brings each image to ``size`` (shorter side, centre crop). Returns the
    images, the labels of the images kept, and the (file, reason) pairs skipped.
    """
    check_policy(on_bad_image)
    out: torch.Tensor | None = None
    kept: list[int] = []
    skipped: list[tuple[str, str]] = []
    for path, label in zip(tqdm(files, desc=desc, unit="img", disable=not progress, leave=False), labels):
        try:
            image = read_image(path, channels)
            if resize:
                assert size is not None, "resize needs a size"
                image = _fit(image, size)
            expected = out.shape[-2:] if out is not None else ((size, size) if size else image.shape[-2:])
            if tuple(image.shape[-2:]) != tuple(expected):
                raise BadImage(
                    path,
                    f"is {image.shape[-1]}x{image.shape[-2]}, not {expected[1]}x{expected[0]} like the others "
                    "(load it with image_size=S to resize every image)",
                )
        except BadImage as bad:
            if on_bad_image == "error":
                raise UserError(f"{bad.path}: {bad.reason}; {SKIP_HINT}") from None
            skipped.append((str(bad.path), bad.reason))
            continue
        if out is None:
            out = torch.empty((len(files), channels, *image.shape[-2:]), dtype=torch.uint8)
        out[len(kept)] = image
        kept.append(label)
    if out is None:
        first = f" (first: {skipped[0][0]}: {skipped[0][1]})" if skipped else ""
        raise UserError(f"no readable images among {len(files)} files{first}")
    if skipped:
        log.warning("skipped %d bad image(s) of %d (first: %s: %s)", len(skipped), len(files), *skipped[0])
    images = out if len(kept) == len(out) else out[: len(kept)].clone()
    return images, torch.tensor(kept, dtype=torch.int64), skipped
