"""An inference bundle: a network with what it takes to feed it (class names, preprocessing), read from a
run's checkpoint or from an exported safetensors file.

A training checkpoint (``runs/X/checkpoints/last.pt``, :mod:`resnetlab.engine.trainer`) records the
network's name and options in its config, the class names, the training set's per-pixel mean image and a
``preprocessing`` entry (scale, image size, channels, test view; ``std`` for imported per-channel
weights). The safetensors export holds the BN-folded weights as tensors, the mean as the tensor
``preprocessing.mean``, and the rest as JSON strings in the file's header (``FORMAT`` below), so it is
read without unpickling anything; a checkpoint is read with ``weights_only=True``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..config import config_from_dict
from ..engine.checkpoint import clean_state_dict, load_checkpoint
from ..errors import UserError
from ..evaluation.views import Preprocessing
from ..models import create_model
from .fold import prepare_inference, structure_for_folded

__all__ = ["FORMAT", "InferenceBundle", "read_bundle", "load_bundle", "bundle_metadata", "is_safetensors"]

FORMAT = "resnetlab.inference/1"  # the safetensors header's "format" entry
MEAN_KEY = "preprocessing.mean"


@dataclass
class InferenceBundle:
    """A network and what it expects: ``model`` takes ``preprocessing.normalizer()(pixels)`` and returns
    one score per name of ``classes``. ``data`` says where its evaluation data was (dataset, data_dir,
    val_split, on_bad_image), so ``resnetlab eval`` finds it without being told."""

    model: nn.Module
    classes: list[str]
    preprocessing: Preprocessing
    model_name: str
    model_options: dict[str, Any]
    data: dict[str, Any]
    source: Path
    folded: bool = False
    extra: dict[str, Any] = field(default_factory=dict)  # e.g. the iteration, where imported weights came from

    @property
    def dataset(self) -> str:
        return str(self.data.get("dataset", ""))


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and the header's ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _build(name: str, options: dict[str, Any], num_classes: int, channels: int) -> nn.Module:
    try:
        return create_model(name, num_classes=num_classes, in_channels=channels, **options)
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None


def _load_strict(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise UserError(f"{path}: its weights do not fit the network it names ({detail[:300]})") from None


def _from_checkpoint(path: Path) -> InferenceBundle:
    state = load_checkpoint(path)
    missing = [k for k in ("model", "config", "classes", "mean") if k not in state]
    if missing:
        hint = ""
        if any(isinstance(v, torch.Tensor) for v in state.values()):
            hint = (
                "; it looks like a bare state dict: for torchvision weights run "
                f"`resnetlab import-weights torchvision {path} --model resnetN --out FILE` first"
            )
        raise UserError(f"{path} is not a resnetlab checkpoint (no {', '.join(repr(k) for k in missing)}){hint}")
    try:
        config = config_from_dict(state["config"])
        dataset = str(state.get("dataset") or config.data.dataset)
        pre = Preprocessing.from_record(state.get("preprocessing"), state["mean"], dataset)
        classes = [str(c) for c in state["classes"]]
        weights = clean_state_dict(dict(state["model"]))
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as err:
        raise UserError(
            f"{path}: unreadable model, config, classes or preprocessing entry ({type(err).__name__}: {err})"
        ) from None
    options = config.model.options()
    model = _build(config.model.name, options, len(classes), pre.channels)
    _load_strict(model, weights, path)
    data = {
        "dataset": dataset,
        "data_dir": config.data.data_dir,
        "val_split": config.data.val_split,
        "on_bad_image": config.data.on_bad_image,
    }
    extra = {k: state[k] for k in ("iteration", "source") if k in state}
    return InferenceBundle(model.eval(), classes, pre, config.model.name, options, data, path, extra=extra)


def _json_entry(meta: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, json.JSONDecodeError):
        raise UserError(f"{path}: the safetensors header has no valid {key!r} entry") from None


def _from_safetensors(path: Path) -> InferenceBundle:
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                raise UserError(
                    f"{path} is a safetensors file but not a resnetlab export (format {meta.get('format')!r}, "
                    f"expected {FORMAT!r})"
                )
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise UserError(f"cannot read {path}: {str(err).splitlines()[0]}") from None
    net, classes = _json_entry(meta, "model", path), _json_entry(meta, "classes", path)
    data, record = _json_entry(meta, "data", path), _json_entry(meta, "preprocessing", path)
    if MEAN_KEY not in tensors:
        raise UserError(f"{path}: no {MEAN_KEY!r} tensor")
    try:
        pre = Preprocessing.from_record(record, tensors.pop(MEAN_KEY), data.get("dataset", ""))
        name, options, classes = str(net["name"]), dict(net.get("options", {})), [str(c) for c in classes]
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as err:
        raise UserError(
            f"{path}: unreadable model, classes or preprocessing entry ({type(err).__name__}: {err})"
        ) from None
    model = _build(name, options, len(classes), pre.channels)
    if net.get("bn_folded"):
        structure_for_folded(model)
    _load_strict(model, tensors, path)
    extra = _json_entry(meta, "extra", path) if "extra" in meta else {}
    return InferenceBundle(
        model.eval(), classes, pre, name, options, data, path, folded=bool(net.get("bn_folded")), extra=extra
    )


def read_bundle(path: str | Path) -> InferenceBundle:
    """The network as stored, in evaluation mode on the CPU: a checkpoint's eager network (with BN), or an
    export's (BN folded). A missing file, a pickle that would run code, another program's file: one-line
    UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass a checkpoint file such as {path / 'checkpoints' / 'last.pt'}")
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    return _from_safetensors(path) if is_safetensors(path) else _from_checkpoint(path)


def load_bundle(
    path: str | Path,
    *,
    device: torch.device | str = "cpu",
    fold_bn: bool = True,
    channels_last: bool = True,
    compile: bool = False,
) -> InferenceBundle:
    """:func:`read_bundle`, with the network prepared as ``eval`` and ``predict`` run it (BN folded,
    channels_last, on ``device``, optionally compiled; see :func:`.fold.prepare_inference`)."""
    bundle = read_bundle(path)
    bundle.model = prepare_inference(
        bundle.model, fold_bn=fold_bn, channels_last=channels_last, compile=compile, device=device
    )
    bundle.folded = bundle.folded or fold_bn
    return bundle


def bundle_metadata(bundle: InferenceBundle, *, folded: bool) -> dict[str, str]:
    """The safetensors header of an export: JSON strings (the header holds strings only)."""
    net = {
        "name": bundle.model_name,
        "options": bundle.model_options,
        "num_classes": len(bundle.classes),
        "in_channels": bundle.preprocessing.channels,
        "bn_folded": folded,
    }
    return {
        "format": FORMAT,
        "model": json.dumps(net),
        "classes": json.dumps(bundle.classes),
        "preprocessing": json.dumps(bundle.preprocessing.to_record()),
        "data": json.dumps(bundle.data),
        "extra": json.dumps({**bundle.extra, "exported_from": str(bundle.source)}, default=str),
    }
