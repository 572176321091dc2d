"""``resnetlab import-weights torchvision``: torchvision's published ImageNet ResNets as resnetlab checkpoints.

torchvision's ``resnet18`` .. ``resnet152`` are the paper's option-B networks with the bottleneck stride on
the 3x3 ("v1.5", PAPER.md Sec. 6), and resnetlab's ``stride_in_1x1=False`` networks have exactly their
state-dict keys and shapes. A local ``.pth`` state dict (``torch.load(weights_only=True)``; nothing is
downloaded, no network access is attempted) becomes a checkpoint that ``eval``, ``predict`` and ``export``
read, recording what the weights expect, which is not the paper's preprocessing:

- per-channel mean/std normalisation, torchvision's ``mean=(0.485, 0.456, 0.406)``,
  ``std=(0.229, 0.224, 0.225)`` on pixels in [0, 1] (stored in pixel units 0..255);
- the centre view: shorter side 256 (``IMAGENET1K_V1``; ``--resize 232`` for ``IMAGENET1K_V2``), centre
  224x224, bilinear with antialiasing, as ``ResNet50_Weights.IMAGENET1K_V1.transforms()``;
- ImageNet's 1000 class names in torchvision's order (``weights.meta["categories"]``, shipped with
  torchvision), which is the sorted-WordNet-id order of an ImageNet ``val/`` folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ..checkpoint import (
    NetworkRecord,
    build_network,
    clean_state_dict,
    load_checkpoint,
    network_from_state,
    network_state,
    require_finite,
    save_checkpoint,
)
from ..config import DataConfig, ModelConfig, RunConfig
from ..data.preprocessing import Preprocessing
from ..data.transforms import IMAGENET_CHANNEL_MEAN, IMAGENET_CHANNEL_STD
from ..errors import UserError
from ..files import sha256_file

__all__ = [
    "TORCHVISION_MODELS",
    "imagenet_classes",
    "torchvision_checkpoint",
    "read_torchvision",
    "import_torchvision",
    "check_state_keys",
]

TORCHVISION_MODELS = ("resnet18", "resnet34", "resnet50", "resnet101", "resnet152")


def imagenet_classes() -> list[str]:
    """ImageNet-1k's class names in label order, from torchvision's weight metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _state_dict(raw: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .pth file: a bare state dict, or one under "state_dict"/"model" (DDP prefixes removed)."""
    for key in ("state_dict", "model"):
        if isinstance(raw.get(key), dict):
            raw = raw[key]
    state = {k: v for k, v in raw.items() if isinstance(v, torch.Tensor)}
    if not state:
        raise UserError(f"{path} holds no tensors; expected a torchvision ResNet state dict (.pth)")
    return clean_state_dict(state)


def check_state_keys(state: dict[str, torch.Tensor], expected: dict[str, torch.Tensor], path: Path, what: str) -> None:
    """Exactly the expected keys with the expected shapes, or a one-line error saying that ``path`` is not
    ``what`` (e.g. "a torchvision resnet50 state dict") and what differs."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:

        def show(keys: list[str]) -> str:
            return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")

        parts = ([f"{len(missing)} missing ({show(missing)})"] if missing else []) + (
            [f"{len(unexpected)} unexpected ({show(unexpected)})"] if unexpected else []
        )
        raise UserError(f"{path} is not {what}: keys {'; '.join(parts)}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise UserError(
                f"{path} is not {what}: {key} is {tuple(state[key].shape)} there, {tuple(tensor.shape)} expected"
            )


def torchvision_checkpoint(path: str | Path, model: str, *, resize: int = 256) -> dict[str, Any]:
    """torchvision ``model`` weights in the local file ``path`` as a resnetlab checkpoint's dict (option B,
    ``stride_in_1x1=False``), with ImageNet's class names and torchvision's preprocessing; nothing written."""
    path = Path(path)
    if model not in TORCHVISION_MODELS:
        raise UserError(f"torchvision publishes {', '.join(TORCHVISION_MODELS)}; got --model {model}")
    state = _state_dict(load_checkpoint(path), path)
    options = {"shortcut": "B", "stride_in_1x1": False}
    network = build_network(model, options, num_classes=1000, in_channels=3)
    check_state_keys(state, network.state_dict(), path, f"a torchvision {model} state dict")
    require_finite(state, path)  # before anything is written: NaN weights would predict "nan%"
    network.load_state_dict(state, strict=True)

    mean, std = IMAGENET_CHANNEL_MEAN.clone(), IMAGENET_CHANNEL_STD.clone()  # (3,) each, pixel units
    pre = Preprocessing(mean=mean, image_size=(224, 224), channels=3, view="center", std=std, resize=resize)
    config = RunConfig(
        description=f"torchvision {model} weights imported from {path.name} (v1.5: stride on the 3x3)",
        model=ModelConfig(name=model, shortcut=options["shortcut"], stride_in_1x1=False),
        data=DataConfig(dataset="imagefolder"),
    )
    return network_state(
        config,
        imagenet_classes(),
        pre,
        {k: v.clone() for k, v in network.state_dict().items()},
        dataset="imagefolder",
        source={"format": "torchvision", "file": str(path), "sha256": sha256_file(path)},
    )


def read_torchvision(path: str | Path, model: str) -> NetworkRecord:
    """torchvision ``model`` weights in ``path`` as the record a checkpoint of them would hold (for --init and
    torch.hub, which need the network, not a file)."""
    return network_from_state(torchvision_checkpoint(path, model), Path(path))


def import_torchvision(path: str | Path, model: str, out: str | Path, *, resize: int = 256) -> Path:
    """Turn torchvision ``model`` weights in the local file ``path`` into a resnetlab checkpoint at ``out``."""
    checkpoint = torchvision_checkpoint(path, model, resize=resize)
    out = Path(out)
    try:
        return save_checkpoint(checkpoint, out)
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror or err})") from None
