"""Fine-tuning: a run that starts from another network's weights (``train.init``), with stages frozen
(``train.freeze``, see ``resnetlab.models.freeze``).

The paper fine-tunes only for detection (Sec. 4.3 and its appendix); for classification on one's own images
this is the usual transfer recipe, not the paper's. An init is a weight initialisation only: the optimizer,
the LR schedule and the iteration start fresh (``--resume`` continues a run instead). Three files are read:

- a resnetlab **checkpoint** (a training run's, or imported weights), through ``checkpoint.read_network``;
- torchvision's **.pth** state dict, through ``deploy.torchvision_weights`` (which checks every key and
  shape); torchvision's ResNets are option B with the bottleneck stride on the 3x3 (v1.5), so the run's
  network must be that one (``model.stride_in_1x1=false`` for ResNet-50/101/152; the ``finetune-resnet50``
  preset sets it), or the init is refused rather than loaded into a network that computes something else;
- a resnetlab **export** (``.safetensors``) is refused: an export has its BN folded into the convolutions
  (``W * gamma / sigma``, ``beta - mu * gamma / sigma``), and gamma, sigma and mu cannot be taken apart again.
  Unfolding into BN with identity statistics (mean 0, variance 1) is exact in evaluation mode only; in training
  mode BN normalises with the batch's statistics, which would divide out the folded scale and start the
  fine-tune from another function, and a frozen stage would keep statistics that describe nothing. The error
  names the checkpoint the export was made from.

The network of the file must be the run's: the same name, the same shortcut and stride options and the same
input channels, or a one-line error lists what differs (the first differing keys). Only the fc may differ, in
its number of classes: it is then replaced by the run's own freshly initialised fc, and a line says so.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..checkpoint import NETWORK_KEYS, NetworkRecord, load_checkpoint, load_weights, read_network
from ..deploy.bundle import is_safetensors, read_bundle
from ..deploy.torchvision_weights import TORCHVISION_MODELS, read_torchvision
from ..errors import UserError
from ..files import sha256_file
from ..models import model_info

__all__ = ["InitWeights", "read_init", "init_network"]

# Options that change what a network computes (zero_init_residual only changes its initialisation).
_INIT_ONLY = ("zero_init_residual", "num_classes", "in_channels")


@dataclass
class InitWeights:
    """The weights a fine-tune starts from, and where they came from (for the run's env.json)."""

    path: Path
    sha256: str
    format: str  # "resnetlab checkpoint" | "torchvision"
    record: NetworkRecord

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path.resolve()),
            "sha256": self.sha256,
            "format": self.format,
            "network": self.record.name,
            "classes": len(self.record.classes),
            "dataset": self.record.dataset,
        }


def _function_options(name: str, options: dict[str, Any]) -> dict[str, Any]:
    """``name``'s options with its defaults filled in, less those that do not change what it computes (and
    the stride's place, which a basic block does not have)."""
    try:
        info = model_info(name)
    except ValueError as err:
        raise UserError(str(err)) from None
    resolved = {**info.options, **options}
    drop = _INIT_ONLY + (("stride_in_1x1",) if info.block == "basic" else ())
    return {k: str(getattr(v, "value", v)).upper() for k, v in resolved.items() if k not in drop}


def _torchvision(path: Path, name: str, options: dict[str, Any]) -> NetworkRecord:
    """torchvision's state dict, checked key by key and shape by shape by the importer, as a record."""
    if name not in TORCHVISION_MODELS:
        raise UserError(
            f"--init {path} is a bare state dict, read as torchvision weights, which exist for "
            f"{', '.join(TORCHVISION_MODELS)}; this run trains {name}"
        )
    wanted = _function_options(name, {"shortcut": "B", "stride_in_1x1": False})
    have = _function_options(name, options)
    if have != wanted:
        fix = " ".join(f"--set model.{k}={v.lower()}" for k, v in wanted.items() if have.get(k) != v)
        raise UserError(
            f"--init {path}: torchvision's {name} is option B with the stride on the 3x3 (v1.5); this run's {name} "
            f"has {', '.join(f'{k}={v}' for k, v in have.items())}, whose weights have the same shapes but compute "
            f"something else: {fix}"
        )
    return read_torchvision(path, name)


def read_init(path: str | Path, name: str, options: dict[str, Any]) -> InitWeights:
    """The weights of ``path`` (a checkpoint, torchvision's .pth; an export is refused), for a run that
    trains ``name`` with ``options``; a one-line UserError for a file that is not one of them."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"--init {path} is a folder; pass a checkpoint file such as {path / 'checkpoints' / 'last.pt'}")
    if not path.is_file():
        raise UserError(f"--init: no file at {path}")
    if path.suffix == ".safetensors" or is_safetensors(path):
        record = read_bundle(path).record
        if record.folded:
            source = record.extra.get("exported_from")
            hint = f" ({source})" if source else ""
            raise UserError(
                f"--init {path} is an export with BN folded into the convolutions: BN's scale and statistics "
                f"cannot be recovered to train with; fine-tune from the checkpoint it was exported from{hint}"
            )
        return InitWeights(path, sha256_file(path), "resnetlab export", record)
    state = load_checkpoint(path)
    if all(key in state for key in NETWORK_KEYS):
        return InitWeights(path, sha256_file(path), "resnetlab checkpoint", read_network(path))
    if not any(isinstance(v, torch.Tensor) for v in state.values()) and not any(
        isinstance(state.get(k), dict) for k in ("state_dict", "model")
    ):
        raise UserError(f"--init {path} holds no network: neither a resnetlab checkpoint nor a torchvision state dict")
    return InitWeights(path, sha256_file(path), "torchvision", _torchvision(path, name, options))


def _show(keys: list[str]) -> str:
    return ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")


def _differences(theirs: dict[str, torch.Tensor], ours: dict[str, torch.Tensor]) -> str:
    """The first keys in which two state dicts differ (missing, unexpected, shape), fc left out."""
    theirs = {k: v for k, v in theirs.items() if not k.startswith("fc.")}
    ours = {k: v for k, v in ours.items() if not k.startswith("fc.")}
    missing = [k for k in ours if k not in theirs]
    unexpected = [k for k in theirs if k not in ours]
    shapes = [
        f"{k} {tuple(theirs[k].shape)} there, {tuple(ours[k].shape)} here"
        for k in ours
        if k in theirs and theirs[k].shape != ours[k].shape
    ]
    parts = [f"{len(missing)} missing ({_show(missing)})"] if missing else []
    parts += [f"{len(unexpected)} unexpected ({_show(unexpected)})"] if unexpected else []
    if shapes:
        parts.append(
            "shapes differ: " + "; ".join(shapes[:2]) + (f" and {len(shapes) - 2} more" if len(shapes) > 2 else "")
        )
    return "; ".join(parts)


def init_network(
    model: nn.Module, init: InitWeights, name: str, options: dict[str, Any], classes: list[str], channels: int
) -> list[str]:
    """Load ``init``'s weights into ``model`` (the run's ``name`` with ``options``, for ``classes`` and
    ``channels``-channel images), replacing the fc when the number of classes differs; returns the lines to
    print. Anything else that differs is a one-line UserError naming the first differing keys."""
    record, path = init.record, init.path
    ours = model.state_dict()
    keys = _differences(record.weights, ours)
    if record.name != name or keys:
        what = [
            f"{record.name} weights; this run trains {name}" if record.name != name else f"{name} weights that differ"
        ]
        if record.preprocessing.channels != channels:
            what.append(
                f"the file's network takes {record.preprocessing.channels}-channel images, this run's {channels}-channel ones"
            )
        raise UserError(f"--init {path} holds {'; '.join(what)}: {keys or 'the same keys and shapes, another network'}")
    theirs, mine = _function_options(record.name, record.options), _function_options(name, options)
    if theirs != mine:
        diff = ", ".join(
            f"{k}: {theirs.get(k)} there, {mine.get(k)} here" for k in mine if theirs.get(k) != mine.get(k)
        )
        raise UserError(f"--init {path} holds a {name} with other options ({diff}); --set model.KEY=VALUE to match")
    weights = dict(record.weights)
    old, new = len(record.classes), len(classes)
    if old != new:
        weights |= {k: v for k, v in ours.items() if k.startswith("fc.")}  # the run's own fresh fc
        fc = f"fc {old} -> {new} classes: replaced"
    elif record.classes != list(classes):
        fc = f"fc kept: {new} classes matched by position although their names differ ({record.classes[0]!r} vs {classes[0]!r}, ...)"
    else:
        fc = f"fc kept ({new} classes)"
    load_weights(model, weights, path)
    return [f"initialised from {path} ({init.format} of {record.name}, sha256 {init.sha256[:12]}); {fc}"]
