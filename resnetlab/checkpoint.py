"""What a resnetlab checkpoint holds, written and read in one place.

Two kinds of file carry a network, and both describe it with one ``NetworkRecord``: the network's name and
options, its class names, its ``Preprocessing`` (``resnetlab.data.preprocessing``), where its data was, and
its weights.

- A **checkpoint** (``.pt``) is a plain dict of tensors, numbers and strings, read with
  ``torch.load(weights_only=True)`` so that a pickle that would run code is refused. Its network part
  (``NETWORK_KEYS``) is written by ``network_state``, for a training run and for imported torchvision weights
  alike; a **training checkpoint** adds what a bit-exact resume needs (``TRAINING_KEYS``: the optimizer, the
  LR schedule, the loader position, the RNG states, the iteration, the best validation error, the running
  window), which the engine's ``TrainState`` writes and reads.
- An **export** (``.safetensors``, ``resnetlab export``) holds the (BN-folded) weights as tensors, the mean
  as the tensor ``MEAN_KEY``, and the rest of the record as JSON strings in the header (``FORMAT``).

``read_network``, ``read_training_checkpoint`` and ``read_iteration`` (a resume's iteration, its tensors left in
the file) are the only readers of a resnetlab ``.pt``; each checks its keys and turns every malformed entry
into a one-line ``UserError``. ``build_network`` is the one place a recorded name and options become a
module, ``load_weights`` the one strict load.

Nothing damaged is used: ``load_checkpoint`` checks every zip entry's CRC-32 before unpickling (torch.load
does not; ``check_archive``, also run on a TorchScript export), an export carries a SHA-256 of its header and
tensors (``CHECKSUM_KEY``, ``export_checksum``) checked on reading, and a network read for inference must
hold finite numbers only (``require_finite``; ``nonfinite_tensors`` for any nested state, a resume's too).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import warnings
import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import RunConfig, config_from_dict
from .data.preprocessing import Preprocessing
from .errors import UserError
from .files import atomic_write
from .models import create_model

__all__ = [
    "CHECKSUM_KEY",
    "FORMAT",
    "MEAN_KEY",
    "NETWORK_KEYS",
    "TRAINING_KEYS",
    "NetworkRecord",
    "build_network",
    "check_archive",
    "clean_state_dict",
    "export_checksum",
    "load_checkpoint",
    "load_weights",
    "model_from_checkpoint",
    "network_from_state",
    "network_state",
    "nonfinite_tensors",
    "read_iteration",
    "read_network",
    "read_training_checkpoint",
    "require_finite",
    "save_checkpoint",
]

FORMAT = "resnetlab.inference/1"  # an export's safetensors header "format" entry
MEAN_KEY = "preprocessing.mean"  # an export's mean tensor
CHECKSUM_KEY = "sha256"  # an export's header entry: export_checksum of the rest (absent before it existed)
NETWORK_KEYS = ("model", "config", "classes", "mean")  # and, optional: preprocessing, dataset, iteration, source
TRAINING_KEYS = ("optimizer", "schedule", "loader", "rng", "iteration", "best_error", "window")


def save_checkpoint(state: dict[str, Any], path: str | Path) -> Path:
    """Write ``state`` to ``path`` atomically (``files.atomic_write``): a crash or a kill at any moment
    leaves the old file or the new one, never a torn one."""
    return atomic_write(path, lambda f: torch.save(state, f))


def check_archive(path: Path) -> None:
    """Refuse a zip archive (what ``torch.save`` and ``torch.jit.save`` write) with an entry that fails its
    CRC-32: torch reads a flipped bit as a different weight without a word. Reads the whole file once
    (ResNet-50's 102 MB from the page cache: 25-45 ms, torch.load itself 70-110 ms); a file that is no zip
    archive at all (a legacy torch file) is left to torch's own reader."""
    if not zipfile.is_zipfile(path):
        return
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()  # the first entry whose bytes fail its CRC-32 or whose header is wrong
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, zlib.error) as err:
        raise UserError(f"{path} is damaged: its zip archive cannot be read ({err}); use another copy") from None
    if bad is not None:
        raise UserError(
            f"{path} is damaged: its entry {bad} fails its CRC-32 check (the file changed after it was "
            "written: a bad disk or copy); use another copy"
        )


def _foreign_file(path: Path) -> str | None:
    """What ``path`` is when it is one of the files ``resnetlab export`` writes that are not checkpoints (a
    TorchScript or pt2 archive, an ONNX model), from its zip entry names or its first bytes; None otherwise.
    Asked before ``torch.load``, which calls a TorchScript archive a TorchScript archive only with a warning
    and a hint to load it with ``weights_only=False`` (which runs code), and a pt2 archive "corrupted"."""
    if zipfile.is_zipfile(path):
        try:
            with zipfile.ZipFile(path) as archive:
                names = {name.rsplit("/", 1)[-1] for name in archive.namelist()}
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError):
            return None  # left to check_archive's one line
        if "constants.pkl" in names:
            return "a TorchScript archive (resnetlab export --format torchscript)"
        if "archive_format" in names or "model.json" in names:
            return "a pt2 archive (resnetlab export --format pt2, torch.export)"
        return None
    with open(path, "rb") as f:
        head = f.read(64)
    # An ONNX ModelProto starts with field 1 (ir_version, a varint): 0x08, then a small version number.
    if path.suffix == ".onnx" or (head[:1] == b"\x08" and 0 < head[1] < 64 and b"\x12" in head[2:4]):
        return "an ONNX model (resnetlab export --format onnx)"
    return None


def _refuse_empty(path: Path) -> None:
    if path.stat().st_size == 0:
        raise UserError(f"{path} is empty (0 bytes): a copy or a save that was cut short?")


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, mapped: bool = False
) -> dict[str, Any]:
    """The raw dict of a ``.pt`` file, read with ``weights_only=True`` after ``check_archive``; a one-line
    UserError for anything else. ``mapped``: the tensors of a zip archive stay in the file (``mmap``), read
    only where touched, for a reader that wants the small entries."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path} is a folder; pass a checkpoint file such as {path / 'checkpoints' / 'last.pt'}")
    if not path.is_file():
        raise UserError(f"no checkpoint at {path}")
    _refuse_empty(path)
    if (kind := _foreign_file(path)) is not None:
        raise UserError(f"{path} is {kind}, not a checkpoint; pass the checkpoint it was exported from")
    check_archive(path)
    try:
        with warnings.catch_warnings():  # torch's warnings about what the file is: the error says it in one line
            warnings.simplefilter("ignore", UserWarning)
            mmap = mapped and zipfile.is_zipfile(path)  # a legacy (non-zip) torch file cannot be mapped
            state = torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as err:
        raise UserError(
            f"refusing to load {path}: it is not a plain checkpoint of tensors and numbers ({_torch_reason(err)})"
        ) from None
    except Exception as err:  # torch.load on bytes that are not a checkpoint raises anything (KeyError, ...)
        raise UserError(f"cannot read checkpoint {path}: {_torch_reason(err)}") from None
    if not isinstance(state, dict):
        raise UserError(f"{path} is not a resnetlab checkpoint (found a {type(state).__name__}, not a dict)")
    return state


def _torch_reason(err: Exception) -> str:
    """The first line of torch.load's error without its advice: torch suggests ``weights_only=False``, which
    runs whatever code the file holds, and calls any archive it cannot find its pickle in "corrupted"."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    first = lines[0]
    for advice in (" In PyTorch 2.6", " Re-running `torch.load`", " This is an internal miniz error"):
        first = first.split(advice, 1)[0]
    if first == "Weights only load failed.":  # what was refused is on a later line
        detail = [line for line in lines[1:] if not line.startswith(("Check the documentation", "Please file"))]
        first = f"{first} {detail[0]}" if detail else first
    return first


def nonfinite_tensors(state: Any, prefix: str = "") -> list[str]:
    """The dotted names (``model.fc.bias``, ``optimizer.state.0.momentum_buffer``) of the floating-point
    tensors in ``state`` (a tensor, or dicts and lists of them, anything else ignored) holding a NaN or an
    infinity, in the order of ``state``."""
    if isinstance(state, torch.Tensor):
        if not (state.is_floating_point() or state.is_complex()) or bool(state.sum().isfinite()):
            # A finite sum means every element is finite (a NaN or an infinity would make it non-finite); on
            # the CPU one sum is ~20x faster than isfinite().all() (ResNet-50: 15 ms against 300 ms).
            return []
        return [] if bool(torch.isfinite(state).all()) else [prefix]  # the sum may only have overflowed
    if isinstance(state, Mapping):
        items: Any = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return []
    return [
        name for key, value in items for name in nonfinite_tensors(value, f"{prefix}.{key}" if prefix else str(key))
    ]


def require_finite(state: Any, path: Path) -> None:
    """A one-line UserError naming ``path`` and the first non-finite tensor of ``state``: a network with a
    NaN or an infinity in a weight or a statistic gives ``nan`` scores, never an answer."""
    bad = nonfinite_tensors(state)
    if bad:
        more = f" and {len(bad) - 1} more tensor{'s' if len(bad) > 2 else ''}" if len(bad) > 1 else ""
        raise UserError(
            f"{path}: non-finite values (NaN or infinity) in {bad[0]}{more}; its scores would be NaN (a run "
            "that diverged? take an earlier checkpoint)"
        )


def export_checksum(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, str]) -> str:
    """An export's ``CHECKSUM_KEY`` entry: SHA-256 over its header entries but this one (key, value) and its
    tensors (name, dtype, shape, raw bytes), each in sorted order, each field prefixed by its length.
    safetensors keeps no checksum of its own, so a flipped bit would otherwise pass as a weight."""
    digest = hashlib.sha256()

    def put(data: bytes) -> None:
        digest.update(len(data).to_bytes(8, "little"))
        digest.update(data)

    for key in sorted(k for k in meta if k != CHECKSUM_KEY):
        put(key.encode())
        put(meta[key].encode())
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        put(name.encode())
        put(f"{tensor.dtype} {tuple(tensor.shape)}".encode())
        raw = tensor.reshape(-1).view(torch.uint8).numpy()  # the bytes safetensors stores (little-endian)
        digest.update(len(raw).to_bytes(8, "little"))
        digest.update(raw)
    return digest.hexdigest()


def clean_state_dict(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``module.`` (DDP) and ``_orig_mod.`` (torch.compile) prefixes from a model state dict."""
    out = {}
    for key, value in state_dict.items():
        for prefix in ("module.", "_orig_mod."):
            while key.startswith(prefix):
                key = key[len(prefix) :]
        out[key] = value
    return out


def build_network(name: str, options: dict[str, Any], num_classes: int, in_channels: int) -> nn.Module:
    """``create_model`` with a recorded (or configured) name and options; a bad one is a one-line UserError."""
    try:
        return create_model(name, num_classes=num_classes, in_channels=in_channels, **options)
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None


def load_weights(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> nn.Module:
    """``load_state_dict(strict=True)``; weights that do not fit are a one-line UserError naming ``path``."""
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        detail = " ".join(line.strip() for line in str(err).splitlines()[1:3])
        raise UserError(f"{path}: its weights do not fit the network it names ({detail[:300]})") from None
    return model


@dataclass
class NetworkRecord:
    """A network and what it takes to feed it, as a checkpoint or an export records it.

    ``data`` says where its evaluation data was (dataset, data_dir, val_split, on_bad_image), so that
    ``resnetlab eval`` finds it without being told; ``extra`` carries the iteration and where imported
    weights came from."""

    name: str
    options: dict[str, Any]
    classes: list[str]
    preprocessing: Preprocessing
    data: dict[str, Any]
    weights: dict[str, torch.Tensor] = field(repr=False)
    folded: bool = False  # BN folded into the convolutions (an export)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def dataset(self) -> str:
        return str(self.data.get("dataset", ""))

    def build(self, path: Path, prepare: Any = None) -> nn.Module:
        """The network with its weights loaded strictly, in eval mode. ``prepare(model)`` runs between
        building and loading (an export's folded structure)."""
        model = build_network(self.name, self.options, len(self.classes), self.preprocessing.channels)
        if prepare is not None:
            prepare(model)
        return load_weights(model, self.weights, path).eval()

    def header(self, *, folded: bool) -> dict[str, str]:
        """An export's safetensors header: JSON strings (a safetensors header holds strings only)."""
        net = {
            "name": self.name,
            "options": self.options,
            "num_classes": len(self.classes),
            "in_channels": self.preprocessing.channels,
            "bn_folded": folded,
        }
        return {
            "format": FORMAT,
            "model": json.dumps(net),
            "classes": json.dumps(self.classes),
            "preprocessing": json.dumps(self.preprocessing.to_record()),
            "data": json.dumps(self.data),
            "extra": json.dumps(self.extra, default=str),
        }

    @classmethod
    def from_header(cls, meta: dict[str, str], tensors: dict[str, torch.Tensor], path: Path) -> NetworkRecord:
        """Read an export: its header and its tensors (the mean among them), checked against the header's
        checksum (an export written before the checksum existed has none and is read as it is) and for
        non-finite values."""
        if meta.get("format") != FORMAT:
            raise UserError(
                f"{path} is a safetensors file but not a resnetlab export (format {meta.get('format')!r}, "
                f"expected {FORMAT!r})"
            )
        if CHECKSUM_KEY in meta and export_checksum(tensors, meta) != meta[CHECKSUM_KEY]:
            raise UserError(
                f"{path} is damaged: its contents do not match the {CHECKSUM_KEY} checksum in its header (the "
                "file changed after it was written: a bad disk or copy); export it again or use another copy"
            )
        net, classes = _json_entry(meta, "model", path), _json_entry(meta, "classes", path)
        data, record = _json_entry(meta, "data", path), _json_entry(meta, "preprocessing", path)
        extra = _json_entry(meta, "extra", path) if "extra" in meta else {}
        tensors = dict(tensors)
        if MEAN_KEY not in tensors:
            raise UserError(f"{path}: no {MEAN_KEY!r} tensor")
        mean = tensors.pop(MEAN_KEY)
        with _entries(path, "model, classes or preprocessing"):
            record = cls(
                name=str(net["name"]),
                options=dict(net.get("options", {})),
                classes=[str(c) for c in classes],
                preprocessing=Preprocessing.from_record(record, mean, data.get("dataset", "")),
                data=dict(data),
                weights=tensors,
                folded=bool(net.get("bn_folded")),
                extra=dict(extra),
            )
        return _finite(record, path)


def network_state(
    config: RunConfig, classes: list[str], preprocessing: Preprocessing, weights: dict[str, torch.Tensor], **extra: Any
) -> dict[str, Any]:
    """The network part of a checkpoint (``NETWORK_KEYS`` and the optional entries); ``extra``: ``dataset``
    (the dataset's own name), ``iteration``, ``source``."""
    return {
        "model": clean_state_dict(weights),
        "config": config.to_dict(),
        "classes": list(classes),
        "mean": preprocessing.mean.detach().cpu(),
        "preprocessing": preprocessing.to_record(),
        **extra,
    }


class _entries:
    """Turns a malformed entry (a wrong type, a missing field) into one line naming the file."""

    def __init__(self, path: Path, what: str) -> None:
        self.path, self.what = path, what

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type | None, err: BaseException | None, _tb: object) -> bool:
        if kind is not None and issubclass(kind, (AttributeError, KeyError, TypeError, ValueError, IndexError)):
            raise UserError(f"{self.path}: unreadable {self.what} entry ({kind.__name__}: {err})") from None
        return False


def _json_entry(meta: dict[str, str], key: str, path: Path) -> Any:
    try:
        return json.loads(meta[key])
    except (KeyError, json.JSONDecodeError):
        raise UserError(f"{path}: the safetensors header has no valid {key!r} entry") from None


def _finite(record: NetworkRecord, path: Path) -> NetworkRecord:
    """``record``, after ``require_finite`` on its weights, mean and std (all that inference computes with)."""
    pre = record.preprocessing
    require_finite({**record.weights, MEAN_KEY: pre.mean, "preprocessing.std": pre.std}, path)
    return record


def _require(state: dict[str, Any], keys: tuple[str, ...], path: Path, what: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        hint = ""
        if any(isinstance(v, torch.Tensor) for v in state.values()):
            hint = (
                "; it looks like a bare state dict: for torchvision weights run "
                f"`resnetlab import-weights torchvision {path} --model resnetN --out FILE` first"
            )
        raise UserError(f"{path} is not a {what} (it lacks {', '.join(repr(k) for k in missing)}){hint}")


def _network_from_state(state: dict[str, Any], path: Path) -> tuple[RunConfig, NetworkRecord]:
    _require(state, NETWORK_KEYS, path, "resnetlab checkpoint")
    with _entries(path, "model, config, classes or preprocessing"):
        config = config_from_dict(state["config"])
        dataset = str(state.get("dataset") or config.data.dataset)
        record = NetworkRecord(
            name=config.model.name,
            options=config.model.options(),
            classes=[str(c) for c in state["classes"]],
            preprocessing=Preprocessing.from_record(state.get("preprocessing"), state["mean"], dataset),
            data={
                "dataset": dataset,
                "data_dir": config.data.data_dir,
                "val_split": config.data.val_split,
                "on_bad_image": config.data.on_bad_image,
            },
            weights=clean_state_dict(dict(state["model"])),
            extra={k: state[k] for k in ("iteration", "source") if k in state},
        )
    return config, record


def network_from_state(state: dict[str, Any], path: Path) -> NetworkRecord:
    """The network a checkpoint's dict records (``path`` names it in errors), for inference: its weights
    finite (``require_finite``)."""
    return _finite(_network_from_state(state, path)[1], path)


def read_network(path: str | Path) -> NetworkRecord:
    """The network a checkpoint (a training run's, or imported weights) records, for inference."""
    path = Path(path)
    return network_from_state(load_checkpoint(path), path)


def read_training_checkpoint(path: str | Path) -> tuple[RunConfig, dict[str, Any]]:
    """A training checkpoint's config and its whole state, checked to hold everything a resume needs."""
    path = Path(path)
    state = load_checkpoint(path)
    _require(state, NETWORK_KEYS + TRAINING_KEYS, path, "resnetlab training checkpoint")
    config, _ = _network_from_state(state, path)
    return config, state


def read_iteration(path: str | Path) -> int:
    """The iteration a training checkpoint was saved at. Its archive's CRC-32s and its keys are checked as
    ``read_training_checkpoint`` checks them; its tensors stay mapped in the file, never read into memory."""
    path = Path(path)
    state = load_checkpoint(path, mapped=True)
    _require(state, NETWORK_KEYS + TRAINING_KEYS, path, "resnetlab training checkpoint")
    with _entries(path, "iteration"):
        return int(state["iteration"])


def model_from_checkpoint(path: str | Path) -> tuple[nn.Module, NetworkRecord]:
    """The network of a checkpoint, weights loaded strictly, in eval mode on the CPU, with its record."""
    path = Path(path)
    record = read_network(path)
    return record.build(path), record
