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

The cache: ``<resnetlab cache>/onnx/<sha256 of the checkpoint file>-<resnetlab version>.onnx`` (the cache
folder is ``$RESNETLAB_CACHE`` or ``~/.cache/resnetlab``, :func:`resnetlab.data.cache_root`). Keyed by
content, not by path: the same weights copied elsewhere reuse the entry, a checkpoint overwritten in place
(``last.pt`` during training) gets a new one, and a new resnetlab (another exporter) exports afresh. It is
kept there rather than beside the checkpoint because a checkpoint's folder may be read-only (shared
weights, a mounted volume) and a run directory is a record that should hold only what the run wrote. An
entry is written atomically and checked against the eager network as ``resnetlab export`` checks its files
(two input sizes, within 1e-4 of the outputs' scale); an entry onnxruntime cannot read is exported again.
"""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..data.cache import cache_root
from ..errors import UserError
from ..files import sha256_file
from .bundle import InferenceBundle, load_bundle, read_bundle
from .export import ONNX_HINT, TOLERANCE, export_bundle

__all__ = [
    "RUNTIMES",
    "OnnxRuntimeNetwork",
    "choose_runtime",
    "onnx_cache_path",
    "cached_onnx",
    "load_inference",
]

RUNTIMES = ("torch", "onnxruntime")
EXPORTS = 0  # ONNX exports made into the cache by this process (the tests check reuse with it)


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

    def __init__(self, path: str | Path, *, threads: int | None = None) -> None:
        super().__init__()
        ort = _onnxruntime()
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1  # one network, run op after op: nothing for a second pool to do
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.path = Path(path)
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input_name = self.session.get_inputs()[0].name

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


def onnx_cache_path(checkpoint: str | Path) -> Path:
    """Where the ONNX export of ``checkpoint`` is cached: by its content's SHA-256 and resnetlab's version."""
    return cache_root() / "onnx" / f"{sha256_file(checkpoint)}-resnetlab{__version__}.onnx"


def cached_onnx(bundle: InferenceBundle) -> Path:
    """The cached ONNX export of ``bundle`` (read by :func:`.read_bundle`: its eager network), exported and
    checked first when there is none."""
    global EXPORTS
    path = onnx_cache_path(bundle.source)
    if path.is_file():
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create {path.parent} ({err.strerror}); set RESNETLAB_CACHE") from None
    report = export_bundle(bundle, "onnx", path)
    EXPORTS += 1
    # A network whose finite weights overflow float32 gives NaN or inf on both sides: nothing to compare;
    # its scores are refused where they are used (predict and eval), as with torch.
    if not report.within_tolerance and report.max_abs_diff is not None and math.isfinite(report.max_abs_diff):
        path.unlink(missing_ok=True)
        raise UserError(
            f"the ONNX export of {bundle.source} differs from the network by {report.max_abs_diff:.2g} "
            f"(more than {TOLERANCE:g} of the outputs' scale); use --runtime torch"
        )
    return path


def load_inference(
    path: str | Path,
    *,
    runtime: str = "torch",
    device: torch.device | str = "cpu",
    fold_bn: bool = True,
    channels_last: bool = True,
    compile: bool = False,
) -> InferenceBundle:
    """The bundle ``eval`` and ``predict`` run: :func:`.load_bundle` for ``torch``; for ``onnxruntime``
    (chosen by :func:`choose_runtime`), the checkpoint's cached ONNX export run by :class:`OnnxRuntimeNetwork`
    as ``bundle.model``, ``bundle.runtime = "onnxruntime"``."""
    if runtime == "torch":
        return load_bundle(path, device=device, fold_bn=fold_bn, channels_last=channels_last, compile=compile)
    choose_runtime("onnxruntime", torch.device(device), compile=compile)  # refuses a GPU, --compile, no extra
    bundle = read_bundle(path)
    onnx_path = cached_onnx(bundle)
    threads = torch.get_num_threads()
    try:
        network = OnnxRuntimeNetwork(onnx_path, threads=threads)
    except Exception as err:  # a damaged cache entry (onnxruntime raises its own error types): export again
        print(f"note: re-exporting {onnx_path} ({str(err).splitlines()[0][:120]})", file=sys.stderr)
        onnx_path.unlink(missing_ok=True)
        network = OnnxRuntimeNetwork(cached_onnx(bundle), threads=threads)
    bundle.model, bundle.folded, bundle.runtime = network, True, "onnxruntime"
    return bundle
