"""``resnetlab eval``: a checkpoint (or an exported safetensors file) on a dataset split with a test view.

Call order: resolve the device -> join torchrun's group (if launched by it) -> choose the runtime (torch,
or onnxruntime on the network's cached ONNX export: ``deploy.runtimes``) -> load the bundle (BN folded,
channels_last for torch) -> this rank's batches of views -> class scores averaged over each image's views -> counts
summed over ranks -> rank 0 prints and writes ``metrics-<split>-<view>.json`` and
``confusion-<split>-<view>.png``.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import torch
from torch import nn

from .. import runtime
from ..data.preprocessing import Preprocessing, check_view, views_per_image
from ..deploy.predict import NONFINITE_SCORES
from ..deploy.runtimes import choose_runtime, load_inference
from ..deploy.scoring import class_log_probs
from ..errors import UserError
from .batches import Batch, eval_data
from .metrics import EvalResult, Tally, format_result, plot_confusion

__all__ = ["evaluate_model", "evaluate_checkpoint", "eval_command", "default_out_dir"]


def _to(views: torch.Tensor | list[torch.Tensor], device: torch.device) -> torch.Tensor | list[torch.Tensor]:
    if isinstance(views, torch.Tensor):
        return views.to(device, non_blocking=True)
    return [v.to(device, non_blocking=True) for v in views]


def evaluate_model(
    network: nn.Module,
    batches: Iterable[Batch],
    pre: Preprocessing,
    classes: list[str],
    *,
    device: torch.device | str = "cpu",
    channels_last: bool = True,
    **info: str | int,
) -> EvalResult:
    """Evaluate ``network`` on this rank's ``batches`` of views; the counts are summed over every rank, so
    each rank must call this (a collective). ``info``: the result's model, dataset, split, view and
    views_per_image."""
    device = torch.device(device)
    normalize = pre.normalizer().to(device)
    tally = Tally(len(classes), device)
    start = time.perf_counter()
    with torch.inference_mode():
        for views, labels in batches:
            log_probs = class_log_probs(network, _to(views, device), normalize, channels_last=channels_last)
            tally.add(log_probs, labels.to(device))
        result = EvalResult.from_tally(tally, seconds=time.perf_counter() - start, classes=classes, **info)  # type: ignore[arg-type]
    if not math.isfinite(result.loss):  # NaN or infinite scores: every rank has the same sums, so all stop
        raise UserError(f"{info.get('model', 'the network')}: {NONFINITE_SCORES}")
    return result


def evaluate_checkpoint(
    path: str | Path,
    *,
    view: str | None = None,
    split: str = "test",
    data_dir: str | None = None,
    batch_size: int | None = None,
    workers: int | None = None,
    device: torch.device | str = "cpu",
    fold_bn: bool = True,
    channels_last: bool = True,
    compile: bool = False,
    runtime_name: str = "torch",
    fallback: bool = False,
) -> EvalResult:
    """Evaluate a run's checkpoint or an exported safetensors file on ``split`` with ``view`` (default: the
    view it records, ``single`` for CIFAR-style data, ``center`` for the ImageNet layout), the network run
    by ``runtime_name`` (``torch`` or ``onnxruntime``, see ``deploy.runtimes``; ``fallback``: torch where
    onnxruntime, the default, cannot have its export cached). Under torchrun every rank calls it with the
    same arguments and gets the same result."""
    if view is not None:
        check_view(view)
    if batch_size is not None and batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    if workers is not None and workers < 0:
        raise UserError(f"--workers must be 0 (decode in this process) or more, got {workers}")
    bundle = load_inference(
        path,
        runtime=runtime_name,
        device=device,
        fold_bn=fold_bn,
        channels_last=channels_last,
        compile=compile,
        fallback=fallback,
    )
    if runtime.is_main_process():
        for note in bundle.notes:  # a cache entry exported again, torch for want of a writable cache
            print(note, file=sys.stderr)
    channels_last = channels_last and bundle.runtime == "torch"  # onnxruntime takes NCHW as it is
    pre = bundle.preprocessing
    view = view or pre.view
    data = eval_data(
        pre, view, bundle.data, data_dir=data_dir, split=split, batch_size=batch_size, workers=workers, device=device
    )
    if data.classes != bundle.classes:
        if len(data.classes) != len(bundle.classes):
            raise UserError(
                f"{data.dataset} {split} has {len(data.classes)} classes; the network in {path} has "
                f"{len(bundle.classes)}"
            )
        if runtime.is_main_process():
            print(
                f"note: the class names of {data.dataset} ({data.classes[0]!r}, ...) differ from the network's "
                f"({bundle.classes[0]!r}, ...); labels are matched by index",
                file=sys.stderr,
            )
    return evaluate_model(
        bundle.model,
        data.batches,
        pre,
        bundle.classes,
        device=device,
        channels_last=channels_last,
        model=bundle.model_name,
        dataset=data.dataset,
        split=split,
        view=view,
        views_per_image=views_per_image(view),
    )


def default_out_dir(checkpoint: str | Path) -> Path:
    """Where eval writes by default: beside the checkpoint, ``<file name without suffix>-eval/``."""
    path = Path(checkpoint)
    return path.with_name(f"{path.stem}-eval")


def eval_command(
    checkpoint: str | Path,
    *,
    view: str | None = None,
    split: str = "test",
    data_dir: str | None = None,
    out: str | Path | None = None,
    as_json: bool = False,
    batch_size: int | None = None,
    workers: int | None = None,
    device: str = "auto",
    compile: bool = False,
    runtime_name: str | None = None,
) -> int:
    """The ``resnetlab eval`` command: evaluate, print (text or JSON), write the metrics and the confusion
    matrix. Under torchrun each rank evaluates its shard and rank 0 reports. ``runtime_name``: torch or
    onnxruntime (None: the default of ``deploy.runtimes.choose_runtime``)."""
    torch_device = runtime.resolve_device(device)
    chosen, note = choose_runtime(runtime_name, torch_device, compile=compile)
    runtime.init_distributed(torch_device)
    try:
        result = evaluate_checkpoint(
            checkpoint,
            view=view,
            split=split,
            data_dir=data_dir,
            batch_size=batch_size,
            workers=workers,
            device=torch_device,
            compile=compile,
            runtime_name=chosen,
            fallback=runtime_name is None,
        )
        if runtime.is_main_process():
            folder = Path(out) if out is not None else default_out_dir(checkpoint)
            stem = f"{result.split}-{result.view}"
            written: list[Path] = []
            notes = [note] if note else []
            try:
                written.append(result.write_json(folder / f"metrics-{stem}.json"))
                written.append(plot_confusion(result, folder / f"confusion-{stem}.png"))
            except OSError as err:
                if out is not None:  # the folder asked for
                    raise UserError(
                        f"cannot write into {folder} ({err.strerror}); choose another folder with --out"
                    ) from None
                # The default, beside the checkpoint, whose folder may be read-only (shared weights, a mounted
                # volume): the evaluation is still printed; only the files are missing, and the note says so.
                kept = f" (wrote {written[0]})" if written else ""
                notes.append(
                    f"note: cannot write into {folder} beside the checkpoint ({err.strerror}){kept}; "
                    "pass --out DIR to keep the metrics and the confusion matrix"
                )
            if as_json:
                print(
                    json.dumps({**result.to_json(with_confusion=False), "files": [str(p) for p in written]}, indent=1)
                )
            else:
                print(format_result(result))
                if written:
                    print("wrote " + ", ".join(map(str, written)))
            for line in notes:  # after the output: a refused command's stderr is its one error line
                print(line, file=sys.stderr)
    finally:
        runtime.destroy()
    return 0
