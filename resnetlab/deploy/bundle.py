"""An inference bundle: a network built from a checkpoint or an exported safetensors file, with what it
takes to feed it (class names, preprocessing). What each file holds is :mod:`resnetlab.checkpoint`'s
``NetworkRecord``; this module builds the network from it and prepares it for inference.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from ..checkpoint import FORMAT, NetworkRecord, read_network
from ..data.preprocessing import Preprocessing
from ..errors import UserError
from .fold import prepare_inference, structure_for_folded

__all__ = ["InferenceBundle", "read_bundle", "load_bundle", "is_safetensors"]


@dataclass
class InferenceBundle:
    """A network and what it expects: ``model`` takes ``preprocessing.normalizer()(pixels)`` and returns
    one score per name of ``classes``; ``record`` is what its file holds, ``source`` the file; ``runtime``
    what runs ``model`` (``torch``, or ``onnxruntime``: see :mod:`.runtimes`); ``notes``: one-line notes
    for the user from preparing it (an ONNX cache entry exported again, a fallback to torch), which the
    commands print after their output."""

    model: nn.Module
    record: NetworkRecord
    source: Path
    folded: bool = False
    runtime: str = "torch"
    notes: list[str] = field(default_factory=list)

    @property
    def classes(self) -> list[str]:
        return self.record.classes

    @property
    def preprocessing(self) -> Preprocessing:
        return self.record.preprocessing

    @property
    def model_name(self) -> str:
        return self.record.name

    @property
    def model_options(self) -> dict[str, Any]:
        return self.record.options

    @property
    def data(self) -> dict[str, Any]:
        return self.record.data

    @property
    def dataset(self) -> str:
        return self.record.dataset

    @property
    def extra(self) -> dict[str, Any]:
        return self.record.extra


def is_safetensors(path: Path) -> bool:
    """A safetensors file starts with its header's length (8 bytes, little-endian) and the header's ``{``."""
    with open(path, "rb") as f:
        head = f.read(9)
    return len(head) == 9 and head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < 100_000_000


def _read_export(path: Path) -> NetworkRecord:
    """An export's record, checked by ``NetworkRecord.from_header``; an empty file, a header length past
    the file's end and the like are one line naming the file."""
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes): a copy or an export that was cut short?")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                return NetworkRecord.from_header(meta, {}, path)  # refused there, naming the format it found
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except SafetensorError as err:
        raise UserError(
            f"cannot read {path}: {str(err).splitlines()[0]} (damaged, or not a safetensors file)"
        ) from None
    return NetworkRecord.from_header(meta, tensors, path)


def read_bundle(path: str | Path) -> InferenceBundle:
    """The network as stored, in evaluation mode on the CPU: a checkpoint's eager network (with BN), or an
    export's (BN folded). A missing file, a pickle that would run code, another program's file: one-line
    UserError."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass a checkpoint file such as {path / 'checkpoints' / 'last.pt'}")
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    if path.suffix == ".safetensors" or is_safetensors(path):  # by name too: a damaged one fails is_safetensors
        record = _read_export(path)
        model = record.build(path, prepare=structure_for_folded if record.folded else None)
    else:
        record = read_network(path)
        model = record.build(path)
    return InferenceBundle(model, record, path, folded=record.folded)


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
