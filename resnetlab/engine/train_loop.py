"""The one training loop: over a list of run slots (one for a single run, K for packed seeds), each step taken
by a stepper, everything else (logs, evaluation records, model selection, checkpoints, stops) written once
here and applied per slot. detectron2's ``SimpleTrainer``/``AMPTrainer`` are the model, ``run_step`` swapped.

A stepper (``Stepper``) is one of two: the eager step (``trainer.EagerStep``: one network, through DDP when
distributed) and the packed, fused step (``packed.PackedStep``: K networks as one, graphed on CUDA). Call order
of one iteration::

    step(lrs, errors)        one SGD step of every slot (each its own lr); the step's training errors if asked
    statistics()             at a log: each slot's Window up to date (statistics(states=True) before a save:
                             its TrainState too)
    evaluate(split)          at an evaluation, per split: each slot's record; then restart(): the windows begin again
    write(periodic, best)    at a checkpoint, after the divergence guard: every slot's checkpoint (rank 0)
"""

from __future__ import annotations

import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch

from .. import runtime
from ..config import RunConfig
from ..data import ImageDataset
from ..errors import UserError
from .finetune import init_network, read_init
from .inputs import build_data, memory_dataset
from .progress import Progress
from .resume import ResumePoint, level, resume_point
from .rundir import RunDir
from .slot import Slot, build_state, check_finite, set_determinism, start_records
from .state import Window
from .tensorboard import TensorBoardMirror, tensorboard_wanted

__all__ = ["Deadline", "Loop", "Stepper", "run_slots"]


class Stepper(Protocol):
    """How the loop's slots take a step (see the module's docstring for the call order)."""

    packed: ClassVar[bool]  # K networks as one: records say so ("packed": K), seeds share one dataset

    def __init__(self, slots: list[Slot], device: torch.device, *, amp: bool, clock: Deadline) -> None: ...
    def describe(self) -> str: ...
    def step(self, lrs: list[float], errors: bool) -> list[float] | None: ...
    def statistics(self, states: bool = False) -> None: ...
    def evaluate(self, split: str) -> list[dict[str, float]]: ...
    def restart(self) -> None: ...
    def write(self, periodic: bool, best: list[int]) -> None: ...


class Deadline:
    """When a run must have stopped, checkpointed (``time.monotonic()`` seconds; None: no limit). The loop
    stops once the time left would not cover the next step, an evaluation and a checkpoint at their
    measured durations, with a margin: a budget is never overrun by a save."""

    def __init__(self, deadline: float | None, clock: Callable[[], float] = time.monotonic) -> None:
        self.deadline, self.clock = deadline, clock
        self.step_s, self.save_s = 0.0, 1.0
        self.step_floor = 0.0  # a step's device time, measured between two host syncs (the fused step's logs)
        self.queued = 0  # steps the host has launched and the device may not have run yet

    def step_done(self, seconds: float) -> None:
        self.step_s = max(seconds, 0.5 * self.step_s)  # an evaluation or a save inside the step counts too

    def saved(self, seconds: float) -> None:
        self.save_s = max(seconds, self.save_s)

    def out_of_time(self) -> bool:
        if self.deadline is None:
            return False
        step = max(self.step_s, self.step_floor)
        return self.clock() + (2 + self.queued) * step + 1.5 * self.save_s >= self.deadline


class Loop:
    """Step, log, evaluate, checkpoint and stop a list of slots that advance together (one iteration each)."""

    def __init__(
        self,
        slots: list[Slot],
        stepper: type[Stepper],
        device: torch.device,
        progress: bool | None,
        deadline: float | None,
    ) -> None:
        self.slots, self.device, self.main = slots, device, runtime.get_rank() == 0
        tc = slots[0].config.train
        self.precision = runtime.resolve_precision(tc.amp, device)  # auto: bf16 on a CPU with native bf16
        self.clock = Deadline(deadline)
        self.stepper = stepper(slots, device, amp=self.precision == "bf16", clock=self.clock)
        self.names = [f"seed {slot.seed}: " for slot in slots] if len(slots) > 1 else [""]
        self.bar = Progress(total=tc.iterations, initial=self.iteration, enabled=progress, main=self.main)
        self.signal: str | None = None
        self.lrs: list[float] = []  # each slot's lr in the last step

    @property
    def iteration(self) -> int:
        return self.slots[0].state.iteration

    def run(self) -> list[dict[str, Any]]:
        # The handlers only note a signal for the loop; once it returns, SIGTERM and SIGINT must end the process
        # again (a `timeout` around a test session or a campaign could not otherwise stop it).
        previous = self._install_stop_handlers()
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # None: installed outside Python, cannot be put back
                    signal.signal(sig, handler)

    def _run(self) -> list[dict[str, Any]]:
        tc = self.slots[0].config.train
        self.tick = time.perf_counter()
        while self.iteration < tc.iterations:
            started = time.perf_counter()
            self.step()
            it = self.iteration
            evaluating = it % tc.eval_every == 0 or it == tc.iterations
            if it % tc.log_every == 0 or evaluating:
                self.log()
            if evaluating:
                self.evaluate()
            if it % tc.checkpoint_every == 0 or it == tc.iterations:
                self.save(periodic=bool(tc.keep_every and it % tc.keep_every == 0))
            self.clock.step_done(time.perf_counter() - started)
            if (self._stop_requested() or self.clock.out_of_time()) and it < tc.iterations:
                return self.stopped()
        return self.finished()

    def step(self) -> None:
        """One SGD step of every slot at its schedule's lr (and the warm-up's switch, which needs its error)."""
        it = self.iteration
        self.lrs = [slot.state.schedule.lr_at(it) for slot in self.slots]
        warming = [k for k, slot in enumerate(self.slots) if slot.state.schedule.in_warmup]
        errors = self.stepper.step(self.lrs, errors=bool(warming))
        for slot in self.slots:
            slot.state.iteration += 1
        for k in warming:
            slot = self.slots[k]
            if slot.state.schedule.observe_train_error(it, errors[k]) and self.main:  # type: ignore[index]
                lr = slot.state.schedule.lr_at(it + 1)
                slot.run.log({"iteration": it + 1, "event": "warmup_done", "lr": lr})
                self.bar.write(
                    f"{self.names[k]}iteration {it + 1}: running training error below "
                    f"{slot.config.schedule.warmup_until_error:.0%}, lr back to {lr}"
                )

    def log(self) -> None:
        self.stepper.statistics()  # the one host sync of the interval
        if any(slot.state.window.nonfinite for slot in self.slots):
            self.save()  # raises TrainingDiverged without writing
        summaries = [slot.state.window.summary() for slot in self.slots]
        mean = {key: sum(s[key] for s in summaries) / len(summaries) for key in summaries[0]}
        self.bar.update_to(self.iteration, loss=mean["train_loss"], err=mean["train_error"], lr=self.lrs[0])
        if self.main:
            for slot, summary, lr in zip(self.slots, summaries, self.lrs):
                slot.run.log_progress(self.iteration, {**summary, "lr": lr})

    def evaluate(self) -> None:
        it, k = self.iteration, len(self.slots)
        results = {name: self.stepper.evaluate(name) for name in self.slots[0].data.evals}
        improved = []
        for i, (slot, lr) in enumerate(zip(self.slots, self.lrs)):
            s, window = slot.state, slot.state.window
            rate = window.images / max(window.data_time + window.step_time, 1e-9)
            record: dict[str, Any] = {
                "iteration": it,
                "epoch": round(it * slot.config.optim.batch_size / slot.data.num_train, 3),
                "lr": lr,
                **window.summary(),
                "images_per_s": rate,
                "data_wait_s": window.data_time,
                "wall_s": time.perf_counter() - self.tick,
                "precision": self.precision,
            }
            if self.stepper.packed:
                record |= {"images_per_s_all": k * rate, "packed": k}
            for name, per_slot in results.items():
                record.update({f"{name}_{key}": value for key, value in per_slot[i].items()})
            held_out = "val" if "val" in results else "test"
            s.schedule.observe_val_error(record[f"{held_out}_top1_error"])
            if "val" in results and record["val_top1_error"] < s.best_error:
                s.best_error = record["val_top1_error"]  # model selection on the validation split only
                improved.append(i)
            s.window = Window()
            slot.record = record
            if self.main:
                slot.run.log(record)
        self.stepper.restart()
        first = self.slots[0].record
        if k == 1:
            self.bar.write(
                f"iteration {it}: test error {first['test_top1_error']:.2%} "
                f"(top-5 {first['test_top5_error']:.2%}), train error {first['train_error']:.2%}, "
                f"loss {first['train_loss']:.3f}, lr {self.lrs[0]:g}, {first['images_per_s']:.0f} images/s"
            )
        else:
            errors = " ".join(f"{slot.record['test_top1_error']:.2%}" for slot in self.slots)
            rate = first["images_per_s_all"]
            self.bar.write(f"iteration {it}: test error per seed {errors}; {rate:.0f} images/s in all")
        if improved:  # every slot's last.pt, so that they stay at one iteration; best.pt for those improved
            self.save(best=improved)

    def save(self, periodic: bool = False, best: list[int] | None = None) -> None:
        """Every slot's last.pt (and periodic and best copies), never a diverged state (``check_finite``,
        every slot checked before the first is written)."""
        started = time.perf_counter()
        self.stepper.statistics(states=True)  # the windows as they stand (the steps since the last log too)
        for slot, name in zip(self.slots, self.names):
            check_finite(slot, name)
        if self.main:
            self.stepper.write(periodic, best or [])
        self.clock.saved(time.perf_counter() - started)

    def announce(self) -> None:
        first, k = self.slots[0], len(self.slots)
        tc, oc, data = first.config.train, first.config.optim, first.data
        if first.point is not None and self.iteration > 0:
            seeds = " ".join(str(slot.seed) for slot in self.slots)
            where = f"{first.run.path} at iteration {self.iteration} from {first.point.path}"
            self.bar.write(f"resuming {where if k == 1 else f'seeds {seeds} at iteration {self.iteration}'}")
        elif self.iteration == 0:
            world = runtime.get_world_size()
            procs = f" x {world} processes" if world > 1 else ""
            self.bar.write(
                f"training {first.config.model.name}{self.stepper.describe()} on {data.name} ({data.num_train} "
                f"images, {len(data.classes)} classes) for {tc.iterations} iterations of batch {oc.batch_size} on "
                f"{self.device}{procs}"
            )
            for note in first.notes:
                self.bar.write(note)
            if tc.freeze:
                frozen = sum(p.numel() for p in first.state.model.parameters() if not p.requires_grad)
                self.bar.write(f"frozen: {', '.join(tc.freeze)} ({frozen:,} parameters, BN statistics fixed)")
            if self.device.type == "cpu" and k > 1:
                self.bar.write(
                    "note: on the CPU packed seeds train slower than one after another (no kernel launches to "
                    "hide; docs/training.md); --seeds pays on a GPU"
                )

    def stopped(self) -> list[dict[str, Any]]:
        self.save()
        self.bar.close()
        if self.main:
            why = self.signal or ("the time budget" if self.clock.out_of_time() else "another rank")
            run = self.slots[0].run
            where = (
                f"saved {run.last}. Continue with: resnetlab train ... --out {run.path} --resume auto"
                if len(self.slots) == 1
                else f"saved {len(self.slots)} runs. Continue with the same command and --resume auto"
            )
            print(f"stopped by {why} at iteration {self.iteration}; {where}", file=sys.stderr)
        return [{"stopped": True, "iteration": self.iteration} for _ in self.slots]

    def finished(self) -> list[dict[str, Any]]:
        self.bar.close()
        if self.main:
            from .plot import plot_runs

            for slot in self.slots:
                plot_runs([slot.run.path], slot.run.curves)
                if slot.run.mirror is not None:
                    slot.run.mirror.image("curves", slot.run.curves, self.iteration)
                if "test_top1_error" not in slot.record:  # resumed after the last iteration: nothing ran here
                    slot.record = slot.run.last_evaluation() or slot.record
            finals = [slot.record.get("test_top1_error") for slot in self.slots]
            errors = " ".join("not recorded" if e is None else f"{e:.2%}" for e in finals)
            run = self.slots[0].run
            if len(self.slots) == 1:
                print(f"done: {run.path}; final test error {errors}; curves in {run.curves}")
            else:
                print(f"done: {len(self.slots)} runs; final test error per seed {errors}")
        return [slot.record for slot in self.slots]

    def _install_stop_handlers(self) -> dict[int, Any]:
        """Note SIGINT and SIGTERM in ``self.signal``; returns the handlers replaced, for ``run`` to restore."""

        def handler(signum: int, _frame: object) -> None:
            self.signal = signal.Signals(signum).name

        previous = {}
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler
                pass
        return previous

    def _stop_requested(self) -> bool:
        if not runtime.is_distributed():
            return self.signal is not None
        wanted = torch.tensor([1.0 if self.signal else 0.0], device=self.device)
        return bool(runtime.all_reduce_sum(wanted).item() > 0)


def run_slots(
    configs: list[RunConfig],
    outs: list[str | Path],
    stepper: type[Stepper],
    resume: str | None,
    progress: bool | None,
    *,
    accept_resume_changes: bool,
    deadline: float | None,
) -> list[dict[str, Any]]:
    """Train run ``configs[k]`` into the directory ``outs[k]``, all in one loop stepped by ``stepper``; each
    run's last evaluation record (or ``{"stopped": True, ...}``). Call order: device -> torchrun's group ->
    each run directory locked -> resume points read and brought level -> per run: init weights read, seeded,
    data, TrainState built and restored -> the stepper -> records started -> the loop -> locks released."""
    config = configs[0]
    device = runtime.resolve_device(config.train.device)
    runtime.init_distributed(device)  # a no-op without torchrun
    world = runtime.get_world_size()
    if config.optim.batch_size % world:
        raise UserError(f"the global batch {config.optim.batch_size} does not split evenly over {world} processes")
    mirror = tensorboard_wanted(config.train.tensorboard, *outs)  # every rank: a refusal of `on` stops them all
    runs = [RunDir(out) for out in outs]
    main = runtime.get_rank() == 0
    created = [_first_missing(run.path) for run in runs]  # what a refusal before training removes again
    acquired: list[RunDir] = []
    started = False
    try:
        for run in runs if main else []:
            run.acquire()  # one writer per run directory; refused at once if another process holds it
            acquired.append(run)
        points = [resume_point(run, resume, c, accept_resume_changes) for run, c in zip(runs, configs)]
        points = level(runs, configs, points, accept_resume_changes)
        shared = memory_dataset(config, device) if stepper.packed else None  # one copy on the device for all K
        slots = [_slot(c, run, point, device, shared) for c, run, point in zip(configs, runs, points)]
        loop = Loop(slots, stepper, device, progress, deadline)
        started = True
        if main:
            for slot in slots:
                slot.run.mirror = TensorBoardMirror(slot.run.tensorboard, slot.state.iteration) if mirror else None
                start_records(slot, device, world)
            loop.announce()
        results = loop.run()
    finally:
        for run in acquired:
            run.release()
        if not started:  # refused: no empty run folder is left behind
            for run, missing in zip(acquired, created):
                if missing is not None:
                    _remove_unused(run, missing)
    runtime.barrier()  # rank 0 plots and writes last: no rank tears the group down while another still uses it
    runtime.destroy()
    return results


def _slot(
    config: RunConfig, run: RunDir, point: ResumePoint | None, device: torch.device, shared: ImageDataset | None
) -> Slot:
    """One run's slot, as a single run builds it: the init weights read (a fresh fine-tune), seeded, then its
    data, network, optimizer and schedule, restored from ``point`` or loaded with the init weights."""
    mc = config.model
    init = read_init(config.train.init, mc.name, mc.options()) if config.train.init and point is None else None
    set_determinism(config.train.seed, config.train.deterministic)
    data = build_data(config, device, shared)
    state = build_state(config, data, device)
    notes = []
    if init is not None:  # weights only: the optimizer, schedule and iteration stay fresh
        notes = init_network(state.model, init, mc.name, mc.options(), data.classes, data.preprocessing.channels)
    if point is not None:
        if point.changes:  # the loader's position in another batch size or subset: the nearest one
            loader = point.state["loader"]
            position = min(int(loader["position"]), len(state.loader))
            point.state["loader"] = {**loader, "position": position, "seed": config.train.seed}
        state.load_state_dict(point.state)
    return Slot(config, run, data, state, point, init, notes)


def _first_missing(path: Path) -> Path | None:
    """The outermost folder of ``path`` (itself included) that does not exist yet; None if it exists."""
    path = path.absolute()
    if path.exists():
        return None
    while not path.parent.exists():
        path = path.parent
    return path


def _remove_unused(run: RunDir, top: Path) -> None:
    """Remove ``run``'s folder (and its parents up to ``top``) if it holds nothing but the lock and an empty
    checkpoints folder: what ``acquire`` made for a run that was then refused."""
    if any(run.checkpoints.iterdir()) or {p.name for p in run.path.iterdir()} - {".lock", "checkpoints"}:
        return
    (run.path / ".lock").unlink(missing_ok=True)  # files.lock_folder's file, released
    run.checkpoints.rmdir()
    folder = run.path.absolute()
    while True:
        try:
            folder.rmdir()
        except OSError:  # not empty: another run's folder lives there too
            return
        if folder == top:
            return
        folder = folder.parent
