"""Train a network of the paper with a recipe of the paper: ``train(config, out)``, one run, is the one loop
(``train_loop``) over one slot; ``train_packed`` (``packed.py``) is the same loop over K seeds.

``choose_stepper`` is the one place that decides how a run is stepped: the eager step below (``EagerStep``:
``train_step`` on the loader's batches, through DDP under torchrun) or the packed, fused one
(``packed.PackedStep``, here with K=1: in-memory data on one GPU, the whole step one CUDA graph). The
experiments ask it too, to know whether a network's seeds pack.

Call order of one run: choose the stepper -> ``train_loop.run_slots``: device -> torchrun's group -> lock the
run directory -> read the checkpoint to resume (if asked), or the weights to start from (``train.init``) ->
seed -> load data -> build the ``TrainState`` (model with ``train.freeze``'s stages frozen, optimizer over the
rest, schedule, loader) -> restore it, or load the init weights into it -> loop: step, log, evaluate,
checkpoint, stop -> final checkpoint and curve plot.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.nn.parallel import DistributedDataParallel

from .. import runtime
from ..config import RunConfig
from .loop import evaluate, train_step
from .packed import PackedStep, packing_refusal
from .slot import Slot, TrainingDiverged, build_state, write_checkpoint
from .train_loop import Deadline, Stepper, run_slots

__all__ = ["train", "choose_stepper", "EagerStep", "TrainingDiverged", "Deadline", "build_state"]


def choose_stepper(config: RunConfig, resume: str | None = None) -> type[Stepper]:
    """How one run of ``config`` is stepped: ``PackedStep`` (with K=1) where the fused step pays, i.e. in-memory
    data on one GPU with CUDA graphs allowed (``train.cuda_graph``), started fresh or resumed with
    ``--resume auto`` (a checkpoint path resumes eagerly); ``EagerStep`` otherwise. A network's seeds pack
    (``train_packed``) by default exactly where one of them would take ``PackedStep`` anyway."""
    device = runtime.resolve_device(config.train.device)
    fused = device.type == "cuda" and config.train.cuda_graph != "off" and resume in (None, "auto")
    return PackedStep if fused and packing_refusal(config) is None else EagerStep


def train(
    config: RunConfig,
    out: str | Path,
    resume: str | None = None,
    progress: bool | None = None,
    *,
    accept_resume_changes: bool = False,
    deadline: float | None = None,
) -> dict[str, Any]:
    """Run ``config`` into the run directory ``out``; returns the last evaluation record.

    ``resume``: None (a fresh run; refuses a directory that already holds a run), "auto" (continue from
    ``out``'s newest intact checkpoint if there is one) or a checkpoint path. A resume whose config differs
    in anything but length and frequencies (``FREE_ON_RESUME``) is refused unless ``accept_resume_changes``.
    ``deadline`` (``time.monotonic()`` seconds): stop, checkpointed, before then (``Deadline``).
    """
    stepper = choose_stepper(config, resume)
    (result,) = run_slots(
        [config], [out], stepper, resume, progress, accept_resume_changes=accept_resume_changes, deadline=deadline
    )
    return result


class EagerStep:
    """The loop's stepper for one slot (``train_loop.Stepper``): ``train_step`` on the loader's batches, through
    DDP when distributed. Streamed data, torchrun, fine-tuning and the CPU train with it."""

    packed = False

    def __init__(self, slots: list[Slot], device: torch.device, *, amp: bool, clock: Deadline) -> None:
        (self.slot,) = slots
        self.state, self.device, self.amp = self.slot.state, device, amp
        self.world = runtime.get_world_size()
        # `state.model` is what is saved; `inner` (compiled or not) evaluates; `trained` (DDP-wrapped when
        # distributed) trains. Evaluation bypasses DDP: its shards may hold different numbers of batches per rank.
        self.inner = torch.compile(self.state.model) if self.slot.config.train.compile else self.state.model
        self.trained = self.inner
        if self.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.trained = DistributedDataParallel(self.inner, device_ids=ids)
        self.trained.train()
        self.batches = self._batches()

    def _batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The training batches, epoch after epoch: the loader's next pass is the next epoch."""
        while True:
            yield from self.state.loader

    def describe(self) -> str:
        return ""

    def step(self, lrs: list[float], errors: bool) -> list[float] | None:
        s = self.state
        t0 = time.perf_counter()
        images, labels = next(self.batches)
        t1 = time.perf_counter()
        loss, mistakes = train_step(self.trained, s.optimizer, images, labels, lrs[0], amp=self.amp)
        s.window.add(loss, mistakes, len(labels))
        s.window.data_time += t1 - t0
        s.window.step_time += time.perf_counter() - t1
        if not errors:
            return None
        s.window.sync()  # the warm-up switch needs this step's global training error now
        return [float(runtime.all_reduce_sum(mistakes.double().clone()).item()) / (len(labels) * self.world)]

    def statistics(self, states: bool = False) -> None:
        self.state.window.sync()  # sums over ranks; the TrainState is the trained one already

    def evaluate(self, split: str) -> list[dict[str, float]]:
        runtime.broadcast_buffers(self.state.model)
        data = self.slot.data
        return [evaluate(self.inner, data.evals[split], self.device, num_classes=len(data.classes), amp=self.amp)]

    def restart(self) -> None:
        pass  # the windows are the loop's

    def write(self, periodic: bool, best: list[int]) -> None:
        slot = self.slot
        write_checkpoint(slot.run, slot.config, slot.data, slot.state.state_dict(), periodic=periodic, best=0 in best)
