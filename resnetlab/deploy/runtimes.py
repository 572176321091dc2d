"""Which runtime ``eval`` and ``predict`` run the network with: torch, or onnxruntime on resnetlab's own ONNX
export.

``torch``: the network as :func:`.load_bundle` prepares it (BN folded, channels_last, optionally compiled).
``onnxruntime``: the same folded network exported to ONNX by :func:`.export_bundle` (input ``images``, N,
H and W dynamic, so the multi-scale views' other sizes run through it too), kept in a cache, and run by an
``onnxruntime.InferenceSession`` (CPU, graph optimisation level "all", intra-op threads = torch's thread
count) behind the torch network's interface: :class:`OnnxRuntimeNetwork` takes the normalised (N, C, H, W)
float tensor and returns the logits, so scoring (:func:`.class_log_probs`), the views, eval's ``Tally`` and
predict's output are the same code for both.

The default (``runtime=None``) is onnxruntime on the CPU where it is installed (the optional extra
``pip install 'resnetlab[onnx]'``), else torch with a one-line note (printed by the commands after their
output, so that a refused command's stderr stays its one error line); on a GPU, or with ``--compile``, it
is torch. Measured with ``scripts/bench_inference.py`` (docs/inference.md): onnxruntime on the folded export
is faster than resnetlab's torch path at batch 1 and at batch 32 on the CPU, outputs within rounding.

The cache: ``<resnetlab cache>/onnx/<network digest>-resnetlab<version>.onnx`` and beside it
``<same>.json`` (the cache folder is ``$RESNETLAB_CACHE`` or ``~/.cache/resnetlab``,
:func:`resnetlab.data.cache_root`). The digest is :func:`network_digest`: SHA-256 over the network as it was
read (the record's entries and every tensor, ``checkpoint.export_checksum``), so it is keyed by content, not
by path: the same weights copied elsewhere reuse the entry, a checkpoint overwritten in place (``last.pt``
during training) gets a new one, even when it is overwritten between being read and being hashed, and a new
resnetlab (another exporter) exports afresh. It is kept there rather than beside the checkpoint because a
checkpoint's folder may be read-only (shared weights, a mounted volume) and a run directory is a record that
should hold only what the run wrote.

The file name is not trusted: the ``.json`` sidecar holds the export's own SHA-256 with the network digest
and the class count it was exported for, and an entry is used only when it is two plain files (a symbolic
link is refused, not followed), the sidecar names this network, and the export's bytes hash to the sidecar's
SHA-256. Those same bytes (read once) are what onnxruntime runs, so nothing can change between the check and
the use. Any mismatch (another network's export copied over it, a flipped bit, a link, a missing or
damaged sidecar, a session that cannot be made) exports again, with a one-line note. An export is made in a
private temporary folder in the cache, checked against the eager network as ``resnetlab export`` checks its
files (two input sizes, within 1e-4 of the outputs' scale), hashed, then renamed into place, the sidecar
written after it (atomically): a crash leaves a mismatch, which the next use exports again.

A cache that cannot be written (read-only, or not creatable) still serves its valid entries; where an entry
is missing or damaged the default runtime falls back to torch with a one-line note, and an explicit
``--runtime onnxruntime`` is a one-line error that says to set ``RESNETLAB_CACHE``.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import math
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..checkpoint import MEAN_KEY, export_checksum
from ..data.cache import cache_root
from ..errors import UserError
from ..files import write_json
from .bundle import InferenceBundle, load_bundle, read_bundle
from .export import ONNX_HINT, TOLERANCE, export_bundle
from .fold import prepare_inference

__all__ = [
    "RUNTIMES",
    "CacheUnwritable",
    "OnnxRuntimeNetwork",
    "choose_runtime",
    "network_digest",
    "onnx_cache_path",
    "cached_onnx",
    "load_inference",
]

RUNTIMES = ("torch", "onnxruntime")
EXPORTS = 0  # ONNX exports made into the cache by this process (the tests check reuse with it)
CACHE_FORMAT = "resnetlab.onnx-cache/1"  # the sidecar's "format" entry


class CacheUnwritable(UserError):
    """The ONNX cache cannot take an export (read-only, not creatable): the default runtime falls back to
    torch on it; for an explicit ``--runtime onnxruntime`` it is the command's one-line error."""


def _onnxruntime() -> Any:
    """The onnxruntime module, or a one-line UserError naming the extra that brings it."""
    try:
        return importlib.import_module("onnxruntime")
    except ImportError:
        raise UserError(f"--runtime onnxruntime needs the optional package onnxruntime: {ONNX_HINT}") from None


def _can_export_onnx() -> str | None:
    """None where this process can run (and, if need be, export) ONNX; else the first missing package."""
    for package in ("onnxruntime", "onnx", "onnxscript"):
        try:
            importlib.import_module(package)
        except ImportError:
            return package
    return None


class OnnxRuntimeNetwork(nn.Module):
    """An ONNX network run by onnxruntime, called like the torch network: (N, C, H, W) float32 -> logits.

    ``threads``: onnxruntime's intra-op threads, default torch's (``torch.get_num_threads()``), so both
    runtimes use the same cores. The session lives on the CPU; inputs on another device are refused by
    :func:`choose_runtime` before one is made.
    """

    def __init__(self, model: str | Path | bytes, *, threads: int | None = None, path: str | Path | None = None):
        """``model``: an ONNX file, or its bytes (then ``path`` names where they came from)."""
        super().__init__()
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1  # one network, run op after op: nothing for a second pool to do
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path if path is not None else model)  # type: ignore[arg-type]
        source = model if isinstance(model, bytes) else str(model)
        self.session = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

    @property
    def num_classes(self) -> int | None:
        """The logits' width as the model declares it (None where it is dynamic)."""
        width = self.session.get_outputs()[0].shape[-1]
        return width if isinstance(width, int) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.detach().to("cpu", torch.float32).contiguous()  # NCHW, as the ONNX input is declared
        return torch.from_numpy(self.session.run(None, {self.input_name: pixels.numpy()})[0])  # (N, classes)


def choose_runtime(runtime: str | None, device: torch.device, *, compile: bool = False) -> tuple[str, str | None]:
    """The runtime to use and, where the default could not be onnxruntime for want of the extra, a note.

    ``None`` (the default): onnxruntime on the CPU without ``compile`` where it is installed, else torch.
    An explicit ``onnxruntime`` with a GPU, with ``compile`` or without the package: a one-line error.
    """
    if runtime is not None and runtime not in RUNTIMES:
        raise UserError(f"unknown runtime {runtime!r}; runtimes: {', '.join(RUNTIMES)}")
    if runtime == "torch":
        return "torch", None
    if runtime == "onnxruntime":
        if torch.device(device).type != "cpu":
            raise UserError(f"--runtime onnxruntime runs on the CPU here; use --device cpu (not {device})")
        if compile:
            raise UserError("--compile is torch's; it does not go with --runtime onnxruntime")
        missing = _can_export_onnx()
        if missing is not None:
            raise UserError(f"--runtime onnxruntime needs the optional package {missing}: {ONNX_HINT}")
        return "onnxruntime", None
    if torch.device(device).type != "cpu" or compile:
        return "torch", None
    missing = _can_export_onnx()
    if missing is not None:
        return "torch", f"note: running with torch: {missing} is not installed ({ONNX_HINT} for the faster runtime)"
    return "onnxruntime", None


def network_digest(bundle: InferenceBundle) -> str:
    """SHA-256 of the network as :func:`.read_bundle` read it: its record's entries and tensors (weights,
    mean), by ``checkpoint.export_checksum``. What an ONNX cache entry is keyed by and tied to."""
    record = bundle.record
    tensors = {**record.weights, MEAN_KEY: record.preprocessing.mean}
    return export_checksum(tensors, record.header(folded=record.folded))


def onnx_cache_path(bundle: InferenceBundle, digest: str | None = None) -> Path:
    """Where the ONNX export of ``bundle``'s network is cached (its sidecar: the same name, ``.json``)."""
    try:
        root = cache_root()
    except UserError as err:  # the cache folder cannot be created
        raise CacheUnwritable(str(err)) from None
    return root / "onnx" / f"{digest or network_digest(bundle)}-resnetlab{__version__}.onnx"


def _read_regular(path: Path) -> bytes:
    """The bytes of ``path``, refusing a symbolic link (``O_NOFOLLOW``) or anything but a plain file."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(f"{path.name} is not a plain file")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read()
    finally:
        os.close(fd)


def _verified_entry(path: Path, digest: str, classes: int) -> tuple[bytes | None, str | None]:
    """The cached export's bytes when the entry is what its sidecar says, else None and why (None and None:
    there is no entry)."""
    sidecar = path.with_suffix(".json")
    try:
        if not os.path.lexists(path) and not os.path.lexists(sidecar):
            return None, None
        for file in (path, sidecar):
            if stat.S_ISLNK(os.lstat(file).st_mode):
                return None, f"{file.name} is a symbolic link"
        meta = json.loads(_read_regular(sidecar))
        data = _read_regular(path)
    except FileNotFoundError as err:
        return None, f"{Path(err.filename or '').name or 'a file'} is missing"
    except (OSError, ValueError) as err:
        return None, f"unreadable ({str(err).splitlines()[0][:120]})"
    if not isinstance(meta, dict) or meta.get("format") != CACHE_FORMAT:
        return None, "its sidecar is not resnetlab's"
    if meta.get("network_sha256") != digest:
        return None, "it was exported from another network"
    if meta.get("classes") != classes:
        return None, f"it has {meta.get('classes')} classes, the network {classes}"
    if hashlib.sha256(data).hexdigest() != meta.get("onnx_sha256"):
        return None, "its bytes do not match their sha256 (changed after it was written)"
    return data, None


def _export_entry(bundle: InferenceBundle, path: Path, digest: str) -> bytes:
    """Export ``bundle`` to ``path`` (checked against the eager network), write its sidecar, return the
    bytes that were checked and hashed."""
    global EXPORTS
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        work = tempfile.TemporaryDirectory(prefix=".export-", dir=path.parent)  # private (0700), same file system
    except OSError as err:
        raise CacheUnwritable(f"cannot write into the ONNX cache {path.parent} ({err.strerror or err})") from None
    with work as folder:
        staged = Path(folder) / path.name
        report = export_bundle(bundle, "onnx", staged)
        EXPORTS += 1
        # A network whose finite weights overflow float32 gives NaN or inf on both sides: nothing to compare;
        # its scores are refused where they are used (predict and eval), as with torch.
        if not report.within_tolerance and report.max_abs_diff is not None and math.isfinite(report.max_abs_diff):
            raise UserError(
                f"the ONNX export of {bundle.source} differs from the network by {report.max_abs_diff:.2g} "
                f"(more than {TOLERANCE:g} of the outputs' scale); use --runtime torch"
            )
        data = _read_regular(staged)
        try:
            os.replace(staged, path)  # a link in its place is replaced, never followed
            write_json(
                path.with_suffix(".json"),
                {
                    "format": CACHE_FORMAT,
                    "onnx_sha256": hashlib.sha256(data).hexdigest(),
                    "network_sha256": digest,
                    "classes": len(bundle.classes),
                    "source": str(bundle.source),
                    "resnetlab": __version__,
                },
            )
        except OSError as err:
            raise CacheUnwritable(f"cannot write into the ONNX cache {path.parent} ({err.strerror or err})") from None
    return data


def cached_onnx(bundle: InferenceBundle, *, threads: int | None = None) -> OnnxRuntimeNetwork:
    """``bundle``'s network (read by :func:`.read_bundle`: the eager one) as an onnxruntime session on its
    cached ONNX export, verified first (:func:`_verified_entry`); exported (again) and checked when there is
    no entry or it does not verify, with a note in ``bundle.notes`` for the latter. Raises
    :class:`CacheUnwritable` when an export is needed and the cache cannot take it."""
    digest = network_digest(bundle)
    path = onnx_cache_path(bundle, digest)
    classes = len(bundle.classes)
    data, why = _verified_entry(path, digest, classes)
    if data is not None:
        try:
            network = OnnxRuntimeNetwork(data, threads=threads, path=path)
            if network.num_classes in (None, classes):
                return network
            why = f"its logits have {network.num_classes} classes, the network {classes}"
        except Exception as err:  # onnxruntime raises its own error types; another onnxruntime, say
            why = f"onnxruntime cannot load it ({str(err).splitlines()[0][:120]})"
    data = _export_entry(bundle, path, digest)
    if why is not None:
        bundle.notes.append(
            f"note: exported {path.name} into the ONNX cache again: the cached one was not usable ({why})"
        )
    return OnnxRuntimeNetwork(data, threads=threads, path=path)


def load_inference(
    path: str | Path,
    *,
    runtime: str = "torch",
    device: torch.device | str = "cpu",
    fold_bn: bool = True,
    channels_last: bool = True,
    compile: bool = False,
    fallback: bool = False,
) -> InferenceBundle:
    """The bundle ``eval`` and ``predict`` run: :func:`.load_bundle` for ``torch``; for ``onnxruntime``
    (chosen by :func:`choose_runtime`), the network's cached ONNX export run by :class:`OnnxRuntimeNetwork`
    as ``bundle.model``, ``bundle.runtime = "onnxruntime"``. ``fallback`` (onnxruntime was the default, not
    asked for): where the cache cannot take a needed export, torch runs the network instead, with a note."""
    if runtime == "torch":
        return load_bundle(path, device=device, fold_bn=fold_bn, channels_last=channels_last, compile=compile)
    choose_runtime("onnxruntime", torch.device(device), compile=compile)  # refuses a GPU, --compile, no extra
    bundle = read_bundle(path)
    try:
        network = cached_onnx(bundle, threads=torch.get_num_threads())
    except CacheUnwritable as err:
        if not fallback:
            raise UserError(f"{err}; set RESNETLAB_CACHE to a writable folder, or use --runtime torch") from None
        bundle.model = prepare_inference(  # as load_bundle prepares it, from the network already read
            bundle.model, fold_bn=fold_bn, channels_last=channels_last, compile=compile, device=device
        )
        bundle.folded = bundle.folded or fold_bn
        bundle.notes.append(
            f"note: running with torch: {err} (set RESNETLAB_CACHE to a writable folder for onnxruntime)"
        )
        return bundle
    bundle.model, bundle.folded, bundle.runtime = network, True, "onnxruntime"
    return bundle
