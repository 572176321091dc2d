"""``resnetlab export``: a checkpoint as a deployable file, BatchNorm folded into the convolutions.

Formats:

- ``safetensors``: the folded weights, the mean image as the tensor ``preprocessing.mean``, and the
  network's name, options, class names and preprocessing as JSON in the header (:mod:`.bundle`), with a
  SHA-256 of all of it (``sha256``, ``checkpoint.export_checksum``) that every reader checks.
  ``resnetlab eval`` and ``predict`` read it like a checkpoint; reading it unpickles nothing.
- ``pt2``: torch.export's ``ExportedProgram`` of the folded network (``torch.export.export``, batch,
  height and width dynamic; ``torch.export.save``), the record as the archive's extra file
  ``resnetlab.json``. Read with ``torch.export.load(path).module()``; the format torch now recommends. **A
  pt2 file is code**: ``torch.export.load`` unpickles its weights with ``weights_only`` off, so a crafted
  file runs what it likes when loaded. Load one only from a trusted source; a network from anywhere else
  comes as the ``safetensors`` export, which nothing can run. resnetlab itself loads a pt2 file only here,
  reading back the file it has just written, from the bytes it checked against their SHA-256.
- ``torchscript``: the folded network traced (``torch.jit.trace``; any batch and image size), with the
  same record as the extra file ``resnetlab.json`` (the mean as a nested list). For older consumers only:
  torch deprecates TorchScript (``torch.jit.load`` warns from torch 2.14) in favour of ``pt2``.
- ``onnx``: the folded network through torch's ``torch.export``-based exporter, batch, height and width
  dynamic, input ``images``, output ``logits``, the record in the model's ``metadata_props``. Needs the
  optional packages ``onnx`` and ``onnxscript`` (``pip install 'resnetlab[onnx]'``, which also brings
  ``onnxruntime`` to run and check it).

Every export is checked before the command returns: the exported file is read back and run on random
inputs, at the native size and at another size, beside the checkpoint's eager network (BN not folded);
the outputs must agree within 1e-4 of their scale: ``max |a - b| <= 1e-4 * max(1, max |b|)``. (Folding
changes float32 rounding, not the function; through ResNet-50's 53 layers that is a few 1e-5 on logits of
order 1, and it grows with the logits' size.)
Files are written to a temporary name and renamed, so a failed export leaves no partial file.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import io
import json
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..checkpoint import CHECKSUM_KEY, MEAN_KEY, check_archive, export_checksum
from ..errors import UserError
from ..files import atomic_path, sha256_file
from .bundle import InferenceBundle, read_bundle
from .fold import fold_batchnorm

__all__ = [
    "FORMATS",
    "RECORD_FILE",
    "TOLERANCE",
    "ExportReport",
    "outputs_match",
    "write_onnx",
    "export_bundle",
    "export_model",
    "export_command",
]

FORMATS = ("safetensors", "pt2", "onnx", "torchscript")
RECORD_FILE = "resnetlab.json"  # the record's name inside a pt2 or TorchScript archive
TOLERANCE = 1e-4
ONNX_HINT = "pip install 'resnetlab[onnx]' (onnx, onnxscript, onnxruntime)"


def outputs_match(a: torch.Tensor, b: torch.Tensor, tolerance: float = TOLERANCE) -> bool:
    """``a`` agrees with the reference ``b`` within ``tolerance`` of the output scale (at least 1)."""
    return a.shape == b.shape and (a - b).abs().max().item() <= tolerance * max(1.0, b.abs().max().item())


@dataclass
class ExportReport:
    """What was written and how closely its outputs follow the eager network's."""

    path: Path
    format: str
    bytes: int
    max_abs_diff: float | None  # None when the check could not run (onnxruntime missing)
    within_tolerance: bool
    inputs: list[tuple[int, ...]]
    note: str = ""


def _header(bundle: InferenceBundle) -> dict[str, str]:
    """The export's record: the checkpoint's, BN folded, and which file it was exported from."""
    extra = {**bundle.extra, "exported_from": str(bundle.source)}
    return replace(bundle.record, extra=extra).header(folded=True)


def _record(bundle: InferenceBundle) -> dict[str, Any]:
    """The safetensors header as one JSON object, with the mean as a nested list (torchscript, onnx)."""
    meta = _header(bundle)
    return {
        "format": meta.pop("format"),
        **{k: json.loads(v) for k, v in meta.items()},
        MEAN_KEY: bundle.preprocessing.mean.tolist(),
    }


def _write_safetensors(bundle: InferenceBundle, folded: nn.Module, tmp: Path) -> None:
    tensors = {k: v.detach().contiguous() for k, v in folded.state_dict().items()}
    tensors[MEAN_KEY] = bundle.preprocessing.mean.float().contiguous()
    meta = _header(bundle)
    meta[CHECKSUM_KEY] = export_checksum(tensors, meta)  # checked by every reader (NetworkRecord.from_header)
    save_file(tensors, str(tmp), metadata=meta)


def _example(bundle: InferenceBundle, batch: int = 2, grow: int = 0) -> torch.Tensor:
    h, w = bundle.preprocessing.image_size
    g = torch.Generator().manual_seed(batch * 1000 + grow)
    return torch.randn(batch, bundle.preprocessing.channels, h + grow, w + grow // 2, generator=g)


def _write_torchscript(bundle: InferenceBundle, folded: nn.Module, tmp: Path) -> None:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # recent torch deprecates TorchScript; it was asked for by name
        traced = torch.jit.trace(folded, _example(bundle))
        torch.jit.save(traced, str(tmp), _extra_files={RECORD_FILE: json.dumps(_record(bundle))})


def _dynamic_nhw() -> dict[int, Any]:
    """Batch, height and width dynamic: any batch, and the multi-scale views' other image sizes."""
    return {0: torch.export.Dim.DYNAMIC, 2: torch.export.Dim.DYNAMIC, 3: torch.export.Dim.DYNAMIC}


def _write_pt2(bundle: InferenceBundle, folded: nn.Module, tmp: Path) -> None:
    program = torch.export.export(folded, (_example(bundle),), dynamic_shapes=(_dynamic_nhw(),))
    buffer = io.BytesIO()  # a path not ending in .pt2 (the temporary name) makes torch log a warning
    torch.export.save(program, buffer, extra_files={RECORD_FILE: json.dumps(_record(bundle))})
    tmp.write_bytes(buffer.getvalue())


def _write_onnx(bundle: InferenceBundle, folded: nn.Module, tmp: Path) -> None:
    write_onnx(folded, _example(bundle), tmp, _record(bundle))


def write_onnx(model: nn.Module, example: torch.Tensor, path: Path, record: dict[str, Any] | None = None) -> None:
    """``model`` (folded, in evaluation mode) as ONNX at ``path``: input ``images`` (N, C, H, W) with N, H,
    W dynamic, output ``logits``, ``record``'s entries in ``metadata_props``. ``example``: one input."""
    try:
        onnx = importlib.import_module("onnx")
        importlib.import_module("onnxscript")  # torch's exporter needs it
    except ImportError as err:
        raise UserError(f"ONNX export needs the optional package {err.name}: {ONNX_HINT}") from None
    if "dynamo" not in inspect.signature(torch.onnx.export).parameters:
        raise UserError(f"ONNX export needs torch >= 2.5 (this is {torch.__version__})")
    torch.onnx.export(
        model,
        (example,),
        str(path),
        dynamo=True,
        external_data=False,
        verbose=False,
        input_names=["images"],
        output_names=["logits"],
        dynamic_shapes=(_dynamic_nhw(),),
    )
    proto = onnx.load(str(path))
    for key, value in (record or {}).items():
        proto.metadata_props.add(key=key, value=value if isinstance(value, str) else json.dumps(value))
    onnx.save(proto, str(path))


def _written_bytes(path: Path, sha256: str) -> io.BytesIO:
    """The bytes of ``path``, which this process has just written with SHA-256 ``sha256``: TorchScript and
    pt2 files are code (pickles that torch loads with weights_only off), so what is loaded is exactly what
    was written, never a file swapped in since."""
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != sha256:
        raise UserError(f"{path} changed after it was written (another process?); export it again")
    return io.BytesIO(data)


def _runner(fmt: str, path: Path, sha256: str) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, str]:
    """A function running the exported file (written with SHA-256 ``sha256``), or None (and why) when it
    cannot run here."""
    if fmt == "safetensors":
        model = read_bundle(path).model
        return model, ""
    if fmt == "torchscript":
        check_archive(path)  # a zip like a checkpoint: torch.jit.load does not check its CRCs either
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(_written_bytes(path, sha256)).eval(), ""
    if fmt == "pt2":
        # Code (see the module docstring): loaded only as the file just written, from the bytes hashed.
        return torch.export.load(_written_bytes(path, sha256)).module(), ""
    try:
        import onnxruntime
    except ImportError:
        return None, f"not run: onnxruntime is not installed ({ONNX_HINT})"
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return (lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])), ""


WRITERS = {
    "safetensors": _write_safetensors,
    "pt2": _write_pt2,
    "onnx": _write_onnx,
    "torchscript": _write_torchscript,
}


def export_model(checkpoint: str | Path, fmt: str, out: str | Path) -> ExportReport:
    """Write ``checkpoint``'s network, BN folded, as ``fmt`` to ``out``, then read the file back and compare
    its outputs with the eager network's on random inputs at two sizes."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; formats: {', '.join(FORMATS)}")
    return export_bundle(read_bundle(checkpoint), fmt, out)


def export_bundle(bundle: InferenceBundle, fmt: str, out: str | Path) -> ExportReport:
    """:func:`export_model` of a bundle already read (:func:`.read_bundle`: its eager network, on the CPU)."""
    out = Path(out)
    eager = bundle.model.eval()
    folded = fold_batchnorm(eager)  # an export of an export has no BN left: an unchanged copy
    try:
        with atomic_path(out) as tmp:
            WRITERS[fmt](bundle, folded, tmp)
            written = sha256_file(tmp)
    except OSError as err:
        raise UserError(f"cannot write {out} ({err.strerror or err})") from None
    run, note = _runner(fmt, out, written)
    inputs = [_example(bundle, 2), _example(bundle, 1, grow=bundle.preprocessing.crop // 2)]
    diff, ok = None, True
    if run is not None:
        with torch.inference_mode():
            pairs = [(run(x).float(), eager(x).float()) for x in inputs]
        diff = max((a - b).abs().max().item() for a, b in pairs)
        ok = all(outputs_match(a, b) for a, b in pairs)
    return ExportReport(out, fmt, out.stat().st_size, diff, ok, [tuple(x.shape) for x in inputs], note)


def export_command(checkpoint: str | Path, fmt: str, out: str | Path) -> int:
    """The ``resnetlab export`` command: export, check, report on one line; exit 1 if the check fails."""
    report = export_model(checkpoint, fmt, out)
    shapes = " and ".join("x".join(map(str, s)) for s in report.inputs)
    if report.max_abs_diff is None:
        check = f"outputs {report.note}"
    else:
        check = f"outputs vs the eager network: max |difference| {report.max_abs_diff:.2g} on random {shapes} inputs"
    print(f"wrote {report.path} ({report.format}, BN folded, {report.bytes / 1e6:.1f} MB); {check}")
    if not report.within_tolerance:
        print(
            f"resnetlab export: error: {report.path}'s outputs differ from the checkpoint's by more than "
            f"{TOLERANCE:g} x max(1, |output|)",
            file=sys.stderr,
        )
        return 1
    return 0
