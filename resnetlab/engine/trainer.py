"""Train a network of the paper with a recipe of the paper: build everything from a RunConfig, then loop.

Call order of one run (``train``):
  resolve device -> join torchrun's group -> seed -> load data (rank 0 first, to build the cache) ->
  build model/optimizer/schedule/loaders -> resume (if asked) -> loop: step, log, evaluate, checkpoint ->
  final checkpoint and curve plot.
This is the only module that reads a RunConfig; everything it calls takes explicit arguments.
"""

from __future__ import annotations

import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ..config import RunConfig, config_from_dict
from ..errors import UserError
from ..models import create_model
from ..models.norm import group_batchnorm
from . import comm
from .checkpoint import capture_rng_state, clean_state_dict, load_checkpoint, restore_rng_state, save_checkpoint
from .inputs import build_data
from .loop import evaluate, train_step
from .progress import Progress
from .rundir import RunDir, environment_record
from .schedule import LRSchedule

__all__ = ["train", "TrainingDiverged", "resolve_device", "build_model"]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "cuda" and comm.launched_by_torchrun():
        device = torch.device("cuda", comm.get_local_rank())
    return device


def build_model(config: RunConfig, num_classes: int, in_channels: int) -> nn.Module:
    try:
        return create_model(
            config.model.name, num_classes=num_classes, in_channels=in_channels, **config.model.options()
        )
    except (ValueError, TypeError) as err:
        raise UserError(str(err)) from None


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


@dataclass
class Window:
    """Running training statistics since the last evaluation (saved in checkpoints for an exact resume)."""

    loss_sum: float = 0.0
    mistakes: float = 0.0
    images: int = 0
    steps: int = 0
    data_time: float = 0.0
    step_time: float = 0.0
    nonfinite: bool = False
    pending: list[torch.Tensor] = field(default_factory=list)  # (loss, mistakes, batch) not yet synced

    def add(self, loss: torch.Tensor, mistakes: torch.Tensor, batch: int) -> None:
        self.pending.append(
            torch.stack(
                [loss.double(), mistakes.double(), torch.tensor(float(batch), dtype=torch.float64, device=loss.device)]
            )
        )

    def sync(self) -> None:
        """Fold the pending per-step tensors in (one device sync); sums over ranks as well."""
        if not self.pending:
            return
        stacked = torch.stack(self.pending)  # (steps, 3)
        self.pending = []
        if not torch.isfinite(stacked[:, 0]).all():
            self.nonfinite = True
        sums = comm.all_reduce_sum(stacked.sum(dim=0))
        loss_sum, mistakes, images = sums.tolist()
        world = comm.get_world_size()
        self.loss_sum += loss_sum / world  # each rank's loss is a mean over its share of the global batch
        self.mistakes += mistakes
        self.images += int(images)
        self.steps += len(stacked)

    def summary(self) -> dict[str, float]:
        return {
            "train_loss": self.loss_sum / max(self.steps, 1),
            "train_error": self.mistakes / max(self.images, 1),
        }

    def state(self) -> dict[str, float]:
        return {"loss_sum": self.loss_sum, "mistakes": self.mistakes, "images": self.images, "steps": self.steps}


def _install_stop_handlers() -> dict[str, Any]:
    flag: dict[str, Any] = {"signal": None}

    def handler(signum: int, _frame: object) -> None:
        flag["signal"] = signal.Signals(signum).name

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            signal.signal(sig, handler)
        except ValueError:  # not the main thread (e.g. inside a test runner thread): no handler
            pass
    return flag


def _stop_requested(flag: dict[str, Any], device: torch.device) -> bool:
    wanted = torch.tensor([1.0 if flag["signal"] else 0.0], device=device)
    return bool(comm.all_reduce_sum(wanted).item() > 0) if comm.is_distributed() else flag["signal"] is not None


def train(
    config: RunConfig, out: str | Path, resume: str | None = None, progress: bool | None = None
) -> dict[str, Any]:
    """Run ``config`` into the run directory ``out``; returns the last evaluation record.

    ``resume``: None (a fresh run; refuses a directory that already holds checkpoints), "auto" (continue
    from ``out``'s last checkpoint if there is one) or a checkpoint path.
    """
    device = resolve_device(config.train.device)
    comm.init_distributed(device)
    rank, world = comm.get_rank(), comm.get_world_size()
    main = rank == 0
    tc, oc = config.train, config.optim
    if oc.batch_size % world:
        raise UserError(f"the global batch {oc.batch_size} does not split evenly over {world} processes")
    run = RunDir(out)

    resume_path: Path | None = None
    if resume == "auto":
        resume_path = run.last if run.last.exists() else None
    elif resume:
        resume_path = Path(resume)
    elif run.last.exists():
        raise UserError(f"{run.path} already holds a run; continue it with --resume auto, or choose another --out")
    checkpoint = load_checkpoint(resume_path) if resume_path else None
    if checkpoint is not None:
        missing = sorted({"model", "optimizer", "schedule", "loader", "rng", "iteration", "config"} - set(checkpoint))
        if missing:
            raise UserError(f"{resume_path} is not a resnetlab training checkpoint (it lacks {', '.join(missing)})")
        saved = config_from_dict(checkpoint["config"])
        if saved.model != config.model or saved.data.dataset != config.data.dataset:
            raise UserError(
                f"{resume_path} was trained with model {saved.model.name} on {saved.data.dataset}, not this config's"
            )

    _set_determinism(tc.seed, tc.deterministic)
    data = build_data(config, device)
    model = build_model(config, len(data.classes), data.preprocessing["channels"])
    if config.model.sync_bn and world > 1:
        if device.type != "cuda":
            raise UserError("model.sync_bn needs CUDA (PyTorch's SyncBatchNorm has no CPU kernel)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    if config.model.bn_group:
        if (oc.batch_size // world) % config.model.bn_group:
            raise UserError(
                f"model.bn_group {config.model.bn_group} does not divide the per-process batch {oc.batch_size // world}"
            )
        model = group_batchnorm(model, config.model.bn_group)
    memory_format = torch.channels_last if tc.channels_last else torch.contiguous_format
    model = model.to(device, memory_format=memory_format)

    amp = tc.amp == "bf16" or (tc.amp == "auto" and device.type == "cuda")
    optimizer = torch.optim.SGD(
        model.parameters(), lr=oc.lr, momentum=oc.momentum, weight_decay=oc.weight_decay, nesterov=oc.nesterov
    )
    sc = config.schedule
    schedule = LRSchedule(
        oc.lr,
        kind=sc.kind,
        milestones=sc.milestones,
        gamma=sc.gamma,
        warmup_lr=sc.warmup_lr,
        warmup_until_error=sc.warmup_until_error,
        plateau_patience=sc.plateau_patience,
    )
    train_loader, eval_loaders = data.train, data.evals
    window = Window()
    iteration, best_error = 0, math.inf
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"], strict=True)
        optimizer.load_state_dict(checkpoint["optimizer"])
        schedule.load_state_dict(checkpoint["schedule"])
        train_loader.load_state_dict(checkpoint["loader"])
        restore_rng_state(checkpoint["rng"])
        iteration, best_error = int(checkpoint["iteration"]), float(checkpoint["best_error"])
        for key, value in checkpoint["window"].items():
            setattr(window, key, value)
        if main:
            run.truncate_metrics(iteration)
    if main:
        run.write_json(run.config, config.to_dict())
        run.write_json(run.env, environment_record(device, world) | {"data_source": data.source})

    # `model` is what is saved; `inner` (compiled or not) evaluates; `trained` (DDP-wrapped when distributed)
    # trains. Evaluation bypasses DDP: its shards may hold different numbers of batches per rank.
    inner = torch.compile(model) if tc.compile else model
    trained = inner
    if world > 1:
        trained = DistributedDataParallel(inner, device_ids=[device.index] if device.type == "cuda" else None)

    def state_dict() -> dict[str, Any]:
        return {
            "model": clean_state_dict(model.state_dict()),
            "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(),
            "scaler": {},
            "loader": train_loader.state_dict(),
            "rng": capture_rng_state(),
            "iteration": iteration,
            "best_error": best_error,
            "window": window.state(),
            "config": config.to_dict(),
            "classes": data.classes,
            "mean": data.mean.cpu(),
            "dataset": data.name,
            "preprocessing": data.preprocessing,
        }

    def save(*extra: Path) -> None:
        window.sync()
        if window.nonfinite:
            raise TrainingDiverged(
                f"the training loss became NaN or infinite before iteration {iteration}; stopped without saving, "
                f"the last good checkpoint is {run.last if run.last.exists() else 'none'}"
            )
        if main:
            state = state_dict()
            save_checkpoint(state, run.last)
            for path in extra:
                save_checkpoint(state, path)

    stop = _install_stop_handlers()
    bar = Progress(total=tc.iterations, initial=iteration, enabled=progress, main=main)
    last_record: dict[str, Any] = {}
    if main and iteration == 0:
        bar.write(
            f"training {config.model.name} on {data.name} ({data.num_train} images, {len(data.classes)} classes) "
            f"for {tc.iterations} iterations of batch {oc.batch_size} on {device}"
            + (f" x {world} processes" if world > 1 else "")
        )
    elif main:
        bar.write(f"resuming {run.path} at iteration {iteration} from {resume_path}")

    trained.train()
    batches = iter(train_loader)
    tick = time.perf_counter()
    while iteration < tc.iterations:
        t0 = time.perf_counter()
        try:
            images, labels = next(batches)
        except StopIteration:  # the end of an epoch: the loader's next pass is the next epoch
            batches = iter(train_loader)
            images, labels = next(batches)
        t1 = time.perf_counter()
        lr = schedule.lr_at(iteration)
        loss, mistakes = train_step(trained, optimizer, images, labels, lr, amp=amp)
        window.add(loss, mistakes, len(labels))
        iteration += 1
        window.data_time += t1 - t0
        window.step_time += time.perf_counter() - t1

        if schedule.in_warmup:
            window.sync()  # the warm-up switch needs this step's global training error now
            step_error = float(comm.all_reduce_sum(mistakes.double().clone()).item()) / (len(labels) * world)
            if schedule.observe_train_error(iteration - 1, step_error) and main:
                run.log({"iteration": iteration, "event": "warmup_done", "lr": schedule.lr_at(iteration)})
                bar.write(
                    f"iteration {iteration}: running training error below {sc.warmup_until_error:.0%}, lr back to {oc.lr}"
                )

        evaluating = iteration % tc.eval_every == 0 or iteration == tc.iterations
        if iteration % tc.log_every == 0 or evaluating:
            window.sync()
            if window.nonfinite:
                save()  # raises TrainingDiverged without writing
            bar.update_to(iteration, loss=window.summary()["train_loss"], err=window.summary()["train_error"], lr=lr)
        if evaluating:
            elapsed = time.perf_counter() - tick
            record: dict[str, Any] = {
                "iteration": iteration,
                "epoch": round(iteration * oc.batch_size / data.num_train, 3),
                "lr": lr,
                **window.summary(),
                "images_per_s": window.images / max(window.data_time + window.step_time, 1e-9),
                "data_wait_s": window.data_time,
                "wall_s": elapsed,
            }
            comm.broadcast_buffers(model)
            for name, loader in eval_loaders.items():
                result = evaluate(inner, loader, device, amp=amp)
                record.update({f"{name}_{k}": v for k, v in result.items()})
            held_out = "val" if "val" in eval_loaders else "test"
            schedule.observe_val_error(record[f"{held_out}_top1_error"])
            extra = []
            if "val" in eval_loaders and record["val_top1_error"] < best_error:
                best_error = record["val_top1_error"]  # model selection on the validation split only
                extra.append(run.best)
            window = Window()
            if main:
                run.log(record)
                bar.write(
                    f"iteration {iteration}: test error {record['test_top1_error']:.2%} (top-5 {record['test_top5_error']:.2%}), "
                    f"train error {record['train_error']:.2%}, loss {record['train_loss']:.3f}, lr {lr:g}, "
                    f"{record['images_per_s']:.0f} images/s"
                )
            last_record = record
            if extra:
                save(*extra)
        if iteration % tc.checkpoint_every == 0 or iteration == tc.iterations:
            save(*([run.periodic(iteration)] if tc.keep_every and iteration % tc.keep_every == 0 else []))
        if _stop_requested(stop, device) and iteration < tc.iterations:
            save()
            bar.close()
            if main:
                print(
                    f"stopped by {stop['signal'] or 'another rank'} at iteration {iteration}; saved {run.last}. "
                    f"Continue with: resnetlab train ... --out {run.path} --resume auto",
                    file=sys.stderr,
                )
            comm.destroy()
            return {"stopped": True, "iteration": iteration}
    bar.close()
    if main:
        from .plot import plot_runs

        plot_runs([run.path], run.curves)
        print(
            f"done: {run.path}; final test error {last_record.get('test_top1_error', float('nan')):.2%}; curves in {run.curves}"
        )
    comm.destroy()
    return last_record
