"""TensorBoard's view of a run: a mirror of metrics.jsonl (and of the progress bar) as event files.

metrics.jsonl stays the record; the mirror only copies what is logged there, as TensorBoard scalars under
``RUN_DIR/tensorboard/``, so that ``tensorboard --logdir runs/`` draws every run's curves as it trains:

  evaluation record ``train_loss``, ``test_top1_error``, ``val_loss``, ...  ->  ``train/loss``, ``test/top1_error``,
  ``val/loss``; ``lr``, ``epoch``, ``images_per_s``, ``data_wait_s``, ``wall_s``  ->  ``run/lr``, ...
  the progress bar's numbers at every ``log_every`` step (not in metrics.jsonl)  ->  ``progress/train_loss``, ...
  events (``warmup_done``, ``resume_changes``)  ->  the text ``events``; the final curves.png  ->  the image ``curves``

A resumed run opens its writer with ``purge_step`` just after the checkpoint's iteration: TensorBoard's
readers then drop the points a killed process wrote after that checkpoint, as the resume drops its records
from metrics.jsonl, so no step is drawn twice. Only rank 0 opens a mirror. tensorboard is optional
(``pip install 'resnetlab[tensorboard]'``); ``train.tensorboard`` says whether to use it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from .. import runtime
from ..errors import UserError

__all__ = ["TensorBoardMirror", "tensorboard_wanted", "tag"]

SPLITS = ("train", "test", "val")


def tensorboard_wanted(mode: str, *runs: str | Path) -> bool:
    """Whether to mirror a run into TensorBoard: ``on`` (refused in one line without tensorboard), ``off``,
    or ``auto`` (when tensorboard can be imported).

    ``runs``: the run directories. tensorboard encodes every path as UTF-8, so a folder whose name is not
    (Latin-1 bytes, surrogate-escaped in Python) was a 33-line traceback once training started: ``on`` refuses
    it in one line before anything is written; ``auto`` goes on without the mirror and says so (rank 0)."""
    if mode == "off":
        return False
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (raises ImportError without tensorboard)
    except ImportError:
        if mode == "on":
            raise UserError(
                "train.tensorboard=on needs the tensorboard package: pip install 'resnetlab[tensorboard]' "
                "(or --set train.tensorboard=auto|off)"
            ) from None
        return False
    for run in runs:
        try:
            str(run).encode("utf-8")
        except UnicodeEncodeError:
            why = f"tensorboard writes only UTF-8 paths, and {ascii(str(run))} is not one"
            if mode == "on":
                raise UserError(
                    f"train.tensorboard=on: {why}; choose another --out or --set train.tensorboard=off"
                ) from None
            if runtime.is_main_process():
                print(f"note: no TensorBoard mirror: {why} (metrics.jsonl is the record)", file=sys.stderr)
            return False
    return True


def tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key: ``test_top1_error`` -> ``test/top1_error``, ``lr`` -> ``run/lr``."""
    split, _, rest = key.partition("_")
    return f"{split}/{rest}" if split in SPLITS and rest else f"run/{key}"


class TensorBoardMirror:
    """A ``SummaryWriter`` into ``path`` for a run that starts (or resumes) at ``iteration``. Every write is
    flushed: a killed run's mirror then holds what its metrics.jsonl holds."""

    def __init__(self, path: Path, iteration: int) -> None:
        from torch.utils.tensorboard import SummaryWriter

        # Readers drop the points at steps >= purge_step that earlier files hold: those after the checkpoint.
        self.writer = SummaryWriter(str(path), purge_step=iteration + 1)

    def record(self, record: dict[str, Any]) -> None:
        """A metrics.jsonl record: an evaluation's numbers as scalars, an event as a line of text."""
        step = int(record["iteration"])
        if "event" in record:
            self.writer.add_text("events", json.dumps(record), step)
        else:
            for key, value in record.items():
                if key != "iteration" and isinstance(value, int | float) and not isinstance(value, bool):
                    self.writer.add_scalar(tag(key), value, step)
        self.writer.flush()

    def progress(self, iteration: int, values: dict[str, float]) -> None:
        """The progress bar's numbers at a ``log_every`` step (running since the last evaluation)."""
        for key, value in values.items():
            self.writer.add_scalar(f"progress/{key}", value, iteration)
        self.writer.flush()

    def image(self, name: str, png: Path, iteration: int) -> None:
        """A PNG the run drew (curves.png), at ``iteration``."""
        import numpy as np
        from PIL import Image

        with Image.open(png) as picture:
            pixels = np.asarray(picture.convert("RGB"))  # (H, W, 3) uint8
        self.writer.add_image(name, pixels, iteration, dataformats="HWC")
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
