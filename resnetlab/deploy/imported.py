"""``resnetlab import-weights SOURCE FILE --model NAME --out FILE``: published weights as resnetlab checkpoints.

Two sources: ``torchvision`` (its ImageNet ResNets, ``torchvision_weights.py``) and ``akamaster``
(akamaster/pytorch_resnet_cifar10's CIFAR-10 ResNets, ``akamaster.py``). Each reads a local file with
``weights_only`` (nothing is downloaded), checks every key and shape, and writes a checkpoint that records
the network, its classes and the preprocessing the weights expect.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .akamaster import AKAMASTER_MODELS, import_akamaster
from .torchvision_weights import TORCHVISION_MODELS, import_torchvision

__all__ = ["IMPORT_SOURCES", "import_command"]

IMPORT_SOURCES = {"torchvision": TORCHVISION_MODELS, "akamaster": AKAMASTER_MODELS}


def import_command(source: str, path: str | Path, model: str, out: str | Path, *, resize: int | None = None) -> int:
    """The ``resnetlab import-weights`` command; ``resize`` is torchvision's centre view's shorter side."""
    if source not in IMPORT_SOURCES:
        raise UserError(f"unknown weight source {source!r}; supported: {', '.join(IMPORT_SOURCES)}")
    if model not in IMPORT_SOURCES[source]:
        raise UserError(f"{source} publishes {', '.join(IMPORT_SOURCES[source])}; got --model {model}")
    if source == "akamaster":
        if resize is not None:
            raise UserError("--resize is torchvision's centre view; akamaster's CIFAR networks take 32x32 images")
        written = import_akamaster(path, model, out)
        print(
            f"wrote {written}: akamaster {model} (option A, channels reordered to resnetlab's), 10 CIFAR-10 "
            f"classes, per-channel mean/std; try `resnetlab eval --checkpoint {written} --data-dir DIR`"
        )
        return 0
    resize = 256 if resize is None else resize
    written = import_torchvision(path, model, out, resize=resize)
    print(
        f"wrote {written}: torchvision {model} (option B, stride on the 3x3), 1000 ImageNet classes, "
        f"centre view {resize} -> 224, per-channel mean/std; try `resnetlab predict --checkpoint {written} IMAGE`"
    )
    return 0
