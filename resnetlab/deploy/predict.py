"""``resnetlab predict``: the top classes of image files, with probabilities, by a checkpoint's network.

Each file is decoded as the data package decodes a dataset (``read_image``: JPEG, PNG and the other
formats PIL reads; converted to the network's channels, e.g. grayscale for a Fashion-MNIST network), brought
to the network's input by its own test view (``single``: the native size, shorter side then centre crop;
``center``: Sec. 3.4's 256 -> 224 at the native scale) and normalised with the checkpoint's mean (and std).
``--views 10crop`` or ``multiscale`` averages the probabilities over the paper's other test views.
``--runtime`` picks what runs the network (:mod:`.runtimes`: onnxruntime on the CPU where installed, else
torch); the views, the scoring and the output are the same for both.

An unreadable file is reported on stderr, one line naming it, and the others are still classified; the
command then exits 2, as every command does for a damaged input file.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from .. import runtime
from ..data.decode import BadImage, read_image
from ..data.preprocessing import check_view, view_transform
from ..errors import UserError
from .bundle import InferenceBundle
from .runtimes import choose_runtime, load_inference
from .scoring import class_log_probs

__all__ = ["Prediction", "predict_images", "predict_command", "NONFINITE_SCORES"]

NONFINITE_SCORES = (
    "the network's scores are NaN or infinite (its weights overflow float32: a run that diverged?); "
    "no prediction is made from them"
)


@dataclass
class Prediction:
    """The top classes of one image (``error`` set instead when the file could not be read)."""

    image: str
    top: list[dict[str, float | int | str]] = field(default_factory=list)  # {"class", "index", "probability"}
    error: str | None = None


def predict_images(
    bundle: InferenceBundle,
    images: Sequence[str | Path],
    *,
    top: int = 5,
    view: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
) -> list[Prediction]:
    """The ``top`` classes of each image file by ``bundle``'s network (prepared by :func:`.load_bundle`),
    in the given order; a file that cannot be read gets a Prediction with ``error`` and no classes."""
    pre = bundle.preprocessing
    view = view or pre.view
    check_view(view)
    transform = view_transform(view, pre)
    normalize = pre.normalizer().to(device)
    k = max(1, min(top, len(bundle.classes)))
    results = [Prediction(str(path)) for path in images]
    pending: list[tuple[int, torch.Tensor | list[torch.Tensor]]] = []

    def flush() -> None:
        if not pending:
            return
        first = pending[0][1]
        if isinstance(first, torch.Tensor):  # same-shape views: one batch (B, V, C, H, W)
            batches = [torch.stack([v for _, v in pending])]  # type: ignore[misc]
        else:  # multi-scale: each image's views have their own sizes
            batches = [[t.unsqueeze(0) for t in v] for _, v in pending]  # type: ignore[union-attr]
        channels_last = bundle.runtime == "torch"  # onnxruntime takes NCHW: no reorder there and back
        log_probs = torch.cat(
            [class_log_probs(bundle.model, _on(b, device), normalize, channels_last=channels_last) for b in batches]
        )
        if not bool(log_probs.isfinite().all()):  # finite weights can still overflow float32 on the way
            raise UserError(f"{bundle.source}: {NONFINITE_SCORES}")
        probs, index = log_probs.exp().topk(k, dim=1)
        for (i, _), p_row, i_row in zip(pending, probs.tolist(), index.tolist()):
            results[i].top = [{"class": bundle.classes[c], "index": c, "probability": p} for p, c in zip(p_row, i_row)]
        pending.clear()

    with torch.inference_mode():
        for i, path in enumerate(images):
            try:
                pixels = read_image(Path(path), pre.channels)  # uint8 (C, H, W)
            except BadImage as bad:
                results[i].error = bad.reason
                continue
            pending.append((i, transform(pixels)))
            if len(pending) == batch_size:
                flush()
        flush()
    return results


def _on(views: torch.Tensor | list[torch.Tensor], device: torch.device | str) -> torch.Tensor | list[torch.Tensor]:
    return views.to(device) if isinstance(views, torch.Tensor) else [v.to(device) for v in views]


def predict_command(
    checkpoint: str | Path,
    images: Sequence[str],
    *,
    top: int = 5,
    view: str | None = None,
    as_json: bool = False,
    device: str = "auto",
    compile: bool = False,
    runtime_name: str | None = None,
) -> int:
    """The ``resnetlab predict`` command: one block (or one JSON list) of top classes per image; a line on
    stderr for each unreadable file; exit 2 if any failed (the others are still classified). ``runtime_name``: torch or onnxruntime (None: the
    default of :func:`.choose_runtime`)."""
    torch_device = runtime.resolve_device(device)
    if top < 1:
        raise UserError(f"--top must be at least 1, got {top}")
    chosen, note = choose_runtime(runtime_name, torch_device, compile=compile)
    bundle = load_inference(checkpoint, runtime=chosen, device=torch_device, compile=compile, fallback=not runtime_name)
    results = predict_images(bundle, images, top=top, view=view, device=torch_device)
    for r in results:
        if r.error is not None:
            print(f"resnetlab predict: error: {r.image}: {r.error}", file=sys.stderr)
    if as_json:
        print(json.dumps([{k: v for k, v in asdict(r).items() if v is not None} for r in results], indent=1))
    else:
        for r in results:
            if r.error is None:
                print(r.image)
                for row in r.top:
                    print(f"  {row['probability']:7.2%}  {row['class']}")
    for line in [*bundle.notes, note]:  # after the output: a refused command's stderr is its one error line
        if line:
            print(line, file=sys.stderr)
    return 2 if any(r.error is not None for r in results) else 0  # a damaged input file, as everywhere
