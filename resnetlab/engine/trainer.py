"""Train a network of the paper with a recipe of the paper: build everything from a RunConfig, then loop.

Call order of one run (``train``):
  resolve device -> join torchrun's group -> read the checkpoint to resume (if asked), or the weights to
  start from (``train.init``) -> seed -> load data (rank 0 first, to build the cache) -> build the
  ``TrainState`` (model with ``train.freeze``'s stages frozen, optimizer over the rest, schedule, loader) ->
  restore it, or load the init weights into it -> loop: step, log, evaluate, checkpoint, stop -> final
  checkpoint and curve plot.
This is the only module that reads a RunConfig; everything it calls takes explicit arguments.
"""

from __future__ import annotations

import json
import os
import random
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from .. import runtime
from ..checkpoint import build_network, network_state, read_training_checkpoint, require_finite, save_checkpoint
from ..config import RunConfig
from ..errors import UserError, user_message
from ..models.freeze import freeze_stages
from ..models.norm import group_batchnorm
from .finetune import InitWeights, init_network, read_init
from .inputs import TrainingData, build_data
from .loop import evaluate, train_step
from .progress import Progress
from .rundir import RunDir, environment_record
from .schedule import LRSchedule
from .state import TrainState, Window, config_changes
from .tensorboard import TensorBoardMirror, tensorboard_wanted

__all__ = ["train", "TrainingDiverged", "build_state"]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def _set_determinism(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    else:
        torch.backends.cudnn.benchmark = True


def build_state(config: RunConfig, data: TrainingData, device: torch.device) -> TrainState:
    """The network (with the config's BN variant and ``train.freeze``'s stages frozen, on ``device``), SGD over
    its trainable parameters, the LR schedule and the training loader."""
    mc, oc, sc = config.model, config.optim, config.schedule
    world = runtime.get_world_size()
    model = build_network(mc.name, mc.options(), len(data.classes), data.preprocessing.channels)
    if mc.sync_bn and world > 1:
        if device.type != "cuda":
            raise UserError("model.sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if mc.bn_group:
        # A batch of at most one group is normalised whole (one GPU holding all of it).
        if oc.batch_size // world > mc.bn_group and (oc.batch_size // world) % mc.bn_group:
            raise UserError(
                f"model.bn_group {mc.bn_group} does not divide the per-process batch {oc.batch_size // world}"
            )
        model = group_batchnorm(model, mc.bn_group)
    try:
        freeze_stages(model, config.train.freeze)  # after the BN conversions, which build new BN modules
    except ValueError as err:
        raise UserError(f"train.freeze: {err}") from None
    memory_format = torch.channels_last if config.train.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)
    trainable = [p for p in model.parameters() if p.requires_grad]  # frozen ones: no update, no weight decay
    optimizer = torch.optim.SGD(
        trainable, lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay, nesterov=oc.nesterov
    )
    schedule = LRSchedule(
        oc.lr,
        kind=sc.kind,
        milestones=sc.milestones,
        gamma=sc.gamma,
        warmup_lr=sc.warmup_lr,
        warmup_until_error=sc.warmup_until_error,
        plateau_patience=sc.plateau_patience,
    )
    return TrainState(model, optimizer, schedule, data.train)


@dataclass
class ResumePoint:
    """Where a run continues from: a checkpoint, its state, and the config changes the user accepted."""

    path: Path
    state: dict[str, Any]
    changes: dict[str, tuple[Any, Any]]
    skipped: list[str]  # damaged or unusable newer checkpoints passed over (resume auto)


def _read_resumable(path: Path) -> tuple[RunConfig, dict[str, Any]]:
    saved, state = read_training_checkpoint(path)
    require_finite({"model": state["model"], "optimizer": state["optimizer"]}, path)  # one saved before the guard
    return saved, state


def _resume_point(run: RunDir, resume: str | None, config: RunConfig, accept_changes: bool) -> ResumePoint | None:
    """The checkpoint to continue from (None for a fresh run), read and checked against ``config``.

    ``--resume auto`` takes the newest intact checkpoint of ``run`` (last, previous, periodic) and says which
    damaged ones it passed over; ``--resume PATH`` takes that file or refuses, and never writes into a
    directory that holds another run."""
    if resume is None:
        if run.holds_run():
            raise UserError(f"{run.path} already holds a run; continue it with --resume auto, or choose another --out")
        return None
    skipped: list[str] = []
    if resume == "auto":
        for candidate in run.resume_candidates():
            try:
                saved, state = _read_resumable(candidate)
            except UserError as err:
                skipped.append(user_message(err))
                continue
            path = candidate
            break
        else:
            if skipped:
                raise UserError(f"no intact checkpoint in {run.checkpoints}: " + "; ".join(skipped))
            return None
    else:
        path = Path(resume)
        if run.holds_run() and path.resolve().parent != run.checkpoints.resolve():
            raise UserError(
                f"{run.path} already holds another run; --resume {path} would replace its checkpoint and metrics. "
                f"Choose an empty --out, or resume that run into its own directory"
            )
        saved, state = _read_resumable(path)
    changes = config_changes(saved.to_dict(), config.to_dict())
    # Another network or dataset: its weights cannot go on, accepted or not; other frozen stages: the
    # optimizer's saved state holds other parameters.
    fixed = {k: v for k, v in changes.items() if k.startswith("model.") or k in ("data.dataset", "train.freeze")}
    if fixed:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in fixed.items())
        raise UserError(
            f"{path} is a checkpoint of another network, dataset or set of frozen stages ({listed}); "
            "choose another --out"
        )
    if changes and not accept_changes:
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in changes.items())
        raise UserError(
            f"resuming {path} with a changed config would not continue the same run ({listed}); "
            "pass --accept-resume-changes if that is meant"
        )
    return ResumePoint(path, state, changes, skipped)


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
    device = runtime.resolve_device(config.train.device)
    if device.type == "cuda" and config.train.cuda_graph != "off" and resume in (None, "auto"):
        from .packed import packing_refusal, train_packed

        processes = int(os.environ.get("WORLD_SIZE", "1")) if runtime.launched_by_torchrun() else 1
        if packing_refusal(config, processes) is None:  # the in-memory path on one GPU: the graphed step
            (result,) = train_packed(
                config, [config.train.seed], [out], resume, progress, accept_resume_changes=accept_resume_changes,
                deadline=deadline,
            )  # fmt: skip
            return result
    runtime.init_distributed(device)
    world = runtime.get_world_size()
    if config.optim.batch_size % world:
        raise UserError(f"the global batch {config.optim.batch_size} does not split evenly over {world} processes")
    mirror = tensorboard_wanted(config.train.tensorboard, out)  # every rank: a refusal of `on` stops them all
    run = RunDir(out)
    main = runtime.get_rank() == 0
    if main:
        run.acquire()  # one writer per run directory; refused at once if another process holds it
    try:
        point = _resume_point(run, resume, config, accept_resume_changes)
        mc = config.model
        init = read_init(config.train.init, mc.name, mc.options()) if config.train.init and point is None else None
        _set_determinism(config.train.seed, config.train.deterministic)
        data = build_data(config, device)
        state = build_state(config, data, device)
        notes = []
        if init is not None:  # weights only: the optimizer, schedule and iteration stay fresh
            channels = data.preprocessing.channels
            notes = init_network(state.model, init, mc.name, mc.options(), data.classes, channels)
        if point is not None:
            if point.changes:  # the loader's position in another batch size or subset: the nearest one
                loader = point.state["loader"]
                position = min(int(loader["position"]), len(state.loader))
                point.state["loader"] = {**loader, "position": position, "seed": config.train.seed}
            state.load_state_dict(point.state)
        loop = _Loop(config, run, data, state, device, progress, deadline)
        if main:
            run.mirror = TensorBoardMirror(run.tensorboard, state.iteration) if mirror else None
            _start_records(run, config, data, state, point, device, world, init)
            loop.announce(point.path if point else None, notes)
        result = loop.run()
    finally:
        run.release()
    runtime.barrier()  # rank 0 plots and writes last: no rank tears the group down while another still uses it
    runtime.destroy()
    return result


def _start_records(
    run: RunDir,
    config: RunConfig,
    data: TrainingData,
    state: TrainState,
    point: ResumePoint | None,
    device: torch.device,
    world: int,
    init: InitWeights | None,
) -> None:
    """Rank 0, holding the lock: clear what a killed process left, and write the run's config and env (with
    the init file's path and sha256; a resume, which does not read it again, keeps the recorded ones)."""
    run.remove_orphans()
    run.truncate_metrics(state.iteration)  # records after the checkpoint (or all, on a fresh start) go
    for reason in point.skipped if point else []:
        print(f"resnetlab train: warning: skipped a checkpoint: {reason}", file=sys.stderr)
    if point is not None and point.changes:
        changes = {k: [old, new] for k, (old, new) in point.changes.items()}
        run.log({"iteration": state.iteration, "event": "resume_changes", "changes": changes})
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in point.changes.items())
        print(f"resnetlab train: resuming with changes (not an exact continuation): {listed}", file=sys.stderr)
    env = environment_record(device, world) | runtime.precision_record(config.train.amp, device)
    env["data_source"] = data.source
    if init is not None:
        env["init"] = init.describe()
    elif point is not None and config.train.init and run.env.is_file():
        try:
            env["init"] = json.loads(run.env.read_text()).get("init")
        except (OSError, ValueError, AttributeError):
            env["init"] = None  # an unreadable old record: the config still names the file
    run.write_json(run.config, config.to_dict())
    run.write_json(run.env, env)


def write_checkpoint(
    run: RunDir, config: RunConfig, data: TrainingData, training: dict[str, Any], *, periodic: bool, best: bool
) -> None:
    """Write ``training`` (a ``TrainState.state_dict()``) with the network's record as ``run``'s last.pt, the
    last.pt before it kept as previous.pt, and as its periodic or best copy if asked. A write that fails (a
    full disk, a file system gone read-only) is a one-line error; last.pt is then intact."""
    weights = training.pop("model")
    checkpoint = network_state(config, data.classes, data.preprocessing, weights, dataset=data.name) | training
    extra = ([run.periodic(int(training["iteration"]))] if periodic else []) + ([run.best] if best else [])
    written = run.previous
    try:
        run.keep_previous()
        for written in (run.last, *extra):
            save_checkpoint(checkpoint, written)
    except (OSError, RuntimeError) as err:
        cause = err if isinstance(err, OSError) else err.__context__  # torch's zip writer wraps the OSError
        if not isinstance(cause, OSError):
            raise
        raise UserError(
            f"cannot write checkpoint {written} ({cause.strerror or cause}); the last good checkpoint is "
            f"{run.last if run.last.exists() else 'none'}; free space, then continue with --resume auto"
        ) from None


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


class _Loop:
    """One run's loop over a ``TrainState``: step, log, evaluate, checkpoint, stop."""

    def __init__(
        self,
        config: RunConfig,
        run: RunDir,
        data: TrainingData,
        state: TrainState,
        device: torch.device,
        progress: bool | None,
        deadline: float | None = None,
    ) -> None:
        self.config, self.run_dir, self.data, self.state, self.device = config, run, data, state, device
        self.world = runtime.get_world_size()
        self.main = runtime.get_rank() == 0
        tc = config.train
        self.precision = runtime.resolve_precision(tc.amp, device)  # auto: bf16 on a CPU with native bf16
        self.amp = self.precision == "bf16"
        # `state.model` is what is saved; `inner` (compiled or not) evaluates; `trained` (DDP-wrapped when
        # distributed) trains. Evaluation bypasses DDP: its shards may hold different numbers of batches per rank.
        self.inner = torch.compile(state.model) if tc.compile else state.model
        self.trained = self.inner
        if self.world > 1:
            ids = [device.index] if device.type == "cuda" else None
            self.trained = DistributedDataParallel(self.inner, device_ids=ids)
        self.bar = Progress(total=tc.iterations, initial=state.iteration, enabled=progress, main=self.main)
        self.signal: str | None = None
        self.last_record: dict[str, Any] = {}
        self.clock = Deadline(deadline)

    def run(self) -> dict[str, Any]:
        # The handlers only note a signal for the loop; once it returns, SIGTERM and SIGINT must end the process
        # again (a `timeout` around a test session or a campaign could not otherwise stop it).
        previous = self._install_stop_handlers()
        try:
            return self._run()
        finally:
            for sig, handler in previous.items():
                if handler is not None:  # None: installed outside Python, cannot be put back
                    signal.signal(sig, handler)

    def _run(self) -> dict[str, Any]:
        s, tc = self.state, self.config.train
        self.trained.train()
        batches = self._batches()
        self.tick = time.perf_counter()
        while s.iteration < tc.iterations:
            started = time.perf_counter()
            lr = self.step(batches)
            evaluating = s.iteration % tc.eval_every == 0 or s.iteration == tc.iterations
            if s.iteration % tc.log_every == 0 or evaluating:
                self.log(lr)
            if evaluating:
                self.evaluate(lr)
            if s.iteration % tc.checkpoint_every == 0 or s.iteration == tc.iterations:
                self.save(periodic=bool(tc.keep_every and s.iteration % tc.keep_every == 0))
            self.clock.step_done(time.perf_counter() - started)
            if (self._stop_requested() or self.clock.out_of_time()) and s.iteration < tc.iterations:
                return self.stopped()
        return self.finished()

    def _batches(self):
        """The training batches, epoch after epoch: the loader's next pass is the next epoch."""
        while True:
            yield from self.state.loader

    def step(self, batches) -> float:
        """One SGD step at the schedule's lr (and the warm-up's switch, which needs this step's error)."""
        s = self.state
        t0 = time.perf_counter()
        images, labels = next(batches)
        t1 = time.perf_counter()
        lr = s.schedule.lr_at(s.iteration)
        loss, mistakes = train_step(self.trained, s.optimizer, images, labels, lr, amp=self.amp)
        s.window.add(loss, mistakes, len(labels))
        s.iteration += 1
        s.window.data_time += t1 - t0
        s.window.step_time += time.perf_counter() - t1
        if s.schedule.in_warmup:
            s.window.sync()  # the warm-up switch needs this step's global training error now
            step_error = float(runtime.all_reduce_sum(mistakes.double().clone()).item()) / (len(labels) * self.world)
            if s.schedule.observe_train_error(s.iteration - 1, step_error) and self.main:
                self.run_dir.log(
                    {"iteration": s.iteration, "event": "warmup_done", "lr": s.schedule.lr_at(s.iteration)}
                )
                self.bar.write(
                    f"iteration {s.iteration}: running training error below "
                    f"{self.config.schedule.warmup_until_error:.0%}, lr back to {self.config.optim.lr}"
                )
        return lr

    def log(self, lr: float) -> None:
        window = self.state.window
        window.sync()
        if window.nonfinite:
            self.save()  # raises TrainingDiverged without writing
        summary = window.summary()
        self.bar.update_to(self.state.iteration, loss=summary["train_loss"], err=summary["train_error"], lr=lr)
        if self.main:
            self.run_dir.log_progress(self.state.iteration, {**summary, "lr": lr})

    def evaluate(self, lr: float) -> None:
        s, window = self.state, self.state.window
        record: dict[str, Any] = {
            "iteration": s.iteration,
            "epoch": round(s.iteration * self.config.optim.batch_size / self.data.num_train, 3),
            "lr": lr,
            **window.summary(),
            "images_per_s": window.images / max(window.data_time + window.step_time, 1e-9),
            "data_wait_s": window.data_time,
            "wall_s": time.perf_counter() - self.tick,
            "precision": self.precision,
        }
        runtime.broadcast_buffers(s.model)
        classes = len(self.data.classes)
        for name, loader in self.data.evals.items():
            result = evaluate(self.inner, loader, self.device, num_classes=classes, amp=self.amp)
            record.update({f"{name}_{k}": v for k, v in result.items()})
        held_out = "val" if "val" in self.data.evals else "test"
        s.schedule.observe_val_error(record[f"{held_out}_top1_error"])
        best = "val" in self.data.evals and record["val_top1_error"] < s.best_error
        if best:
            s.best_error = record["val_top1_error"]  # model selection on the validation split only
        s.window = Window()
        if self.main:
            self.run_dir.log(record)
            self.bar.write(
                f"iteration {s.iteration}: test error {record['test_top1_error']:.2%} "
                f"(top-5 {record['test_top5_error']:.2%}), train error {record['train_error']:.2%}, "
                f"loss {record['train_loss']:.3f}, lr {lr:g}, {record['images_per_s']:.0f} images/s"
            )
        self.last_record = record
        if best:
            self.save(best=True)

    def save(self, periodic: bool = False, best: bool = False) -> None:
        """Write last.pt (and the periodic or best copy) from rank 0, the last.pt before it kept as previous.pt. Never a
        state whose loss went non-finite or whose weights or optimizer state hold a NaN or an infinity (the
        step after the last finite loss can poison them), so that the last checkpoint is always a good one."""
        s, run = self.state, self.run_dir
        s.window.sync()
        poisoned = s.nonfinite()  # every rank checks its own copy, so every rank stops together
        if s.window.nonfinite or poisoned:
            what = "the training loss" if s.window.nonfinite else f"the weights ({poisoned[0]})"
            raise TrainingDiverged(
                f"{what} became NaN or infinite before iteration {s.iteration}; stopped without saving, "
                f"the last good checkpoint is {run.last if run.last.exists() else 'none'}"
            )
        if not self.main:
            return
        started = time.perf_counter()
        write_checkpoint(run, self.config, self.data, s.state_dict(), periodic=periodic, best=best)
        self.clock.saved(time.perf_counter() - started)

    def announce(self, resume_path: Path | None, notes: list[str]) -> None:
        data, s, oc = self.data, self.state, self.config.optim
        if resume_path is not None and s.iteration > 0:
            self.bar.write(f"resuming {self.run_dir.path} at iteration {s.iteration} from {resume_path}")
        elif s.iteration == 0:
            procs = f" x {self.world} processes" if self.world > 1 else ""
            self.bar.write(
                f"training {self.config.model.name} on {data.name} ({data.num_train} images, {len(data.classes)} "
                f"classes) for {self.config.train.iterations} iterations of batch {oc.batch_size} on "
                f"{self.device}{procs}"
            )
            for note in notes:
                self.bar.write(note)
            if self.config.train.freeze:
                frozen = sum(p.numel() for p in s.model.parameters() if not p.requires_grad)
                self.bar.write(
                    f"frozen: {', '.join(self.config.train.freeze)} ({frozen:,} parameters, BN statistics fixed)"
                )

    def stopped(self) -> dict[str, Any]:
        self.save()
        self.bar.close()
        if self.main:
            why = self.signal or ("the time budget" if self.clock.out_of_time() else "another rank")
            print(f"stopped by {why} at iteration {self.state.iteration}; {self.saved_where()}", file=sys.stderr)
        return {"stopped": True, "iteration": self.state.iteration}

    def saved_where(self) -> str:
        return f"saved {self.run_dir.last}. Continue with: resnetlab train ... --out {self.run_dir.path} --resume auto"

    def finished(self) -> dict[str, Any]:
        self.bar.close()
        if self.main:
            from .plot import plot_runs

            run = self.run_dir
            plot_runs([run.path], run.curves)
            if run.mirror is not None:
                run.mirror.image("curves", run.curves, self.state.iteration)
            if "test_top1_error" not in self.last_record:  # resumed after the last iteration: nothing ran here
                self.last_record = run.last_evaluation() or self.last_record
            final = self.last_record.get("test_top1_error")
            error = "not recorded" if final is None else f"{final:.2%}"
            print(f"done: {run.path}; final test error {error}; curves in {run.curves}")
        return self.last_record

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
