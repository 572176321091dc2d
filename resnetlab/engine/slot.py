"""One run of the training loop (a slot): its config, run directory, data and ``TrainState``, built from the
config and written back into the run directory.

A loop trains a list of slots: one for a single run, K for packed seeds. Everything here is written once
and applied per slot: how its ``TrainState`` is built, what its run directory records at the start, the
guard that never saves a diverged state, and how its checkpoint is written.
"""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import runtime
from ..checkpoint import build_network, network_state, save_checkpoint
from ..config import RunConfig
from ..errors import UserError
from ..models.freeze import freeze_stages
from ..models.norm import group_batchnorm
from .finetune import InitWeights
from .inputs import TrainingData
from .resume import ResumePoint
from .rundir import RunDir, environment_record
from .schedule import LRSchedule
from .state import TrainState

__all__ = [
    "Slot",
    "TrainingDiverged",
    "build_state",
    "check_finite",
    "set_determinism",
    "start_records",
    "write_checkpoint",
]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


@dataclass
class Slot:
    """One run of the loop. ``record``: its last evaluation record (what training returns for it)."""

    config: RunConfig
    run: RunDir
    data: TrainingData
    state: TrainState
    point: ResumePoint | None = None  # the checkpoint it resumed from
    init: InitWeights | None = None  # the weights it started from (train.init)
    notes: list[str] = field(default_factory=list)  # what loading them changed, for the first lines
    record: dict[str, Any] = field(default_factory=dict)

    @property
    def seed(self) -> int:
        return self.config.train.seed


def set_determinism(seed: int, deterministic: bool) -> None:
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


def start_records(slot: Slot, device: torch.device, world: int) -> None:
    """Rank 0, holding the lock: clear what a killed process left, and write the run's config and env (with
    the init file's path and sha256; a resume, which does not read it again, keeps the recorded ones)."""
    run, config, point = slot.run, slot.config, slot.point
    run.remove_orphans()
    run.truncate_metrics(slot.state.iteration)  # records after the checkpoint (or all, on a fresh start) go
    for reason in point.skipped if point else []:
        print(f"resnetlab train: warning: skipped a checkpoint: {reason}", file=sys.stderr)
    if point is not None and point.changes:
        changes = {k: [old, new] for k, (old, new) in point.changes.items()}
        run.log({"iteration": slot.state.iteration, "event": "resume_changes", "changes": changes})
        listed = ", ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in point.changes.items())
        print(f"resnetlab train: resuming with changes (not an exact continuation): {listed}", file=sys.stderr)
    env = environment_record(device, world) | runtime.precision_record(config.train.amp, device)
    env["data_source"] = slot.data.source
    if slot.init is not None:
        env["init"] = slot.init.describe()
    elif point is not None and config.train.init and run.env.is_file():
        try:
            env["init"] = json.loads(run.env.read_text()).get("init")
        except (OSError, ValueError, AttributeError):
            env["init"] = None  # an unreadable old record: the config still names the file
    run.write_json(run.config, config.to_dict())
    run.write_json(run.env, env)


def check_finite(slot: Slot, name: str = "") -> None:
    """Refuse to save a state whose loss went non-finite or whose weights or optimizer state hold a NaN or an
    infinity (the step after the last finite loss can poison them), so that the last checkpoint is always a
    good one. Every rank checks its own copy, so every rank stops together. ``name``: the run, among several."""
    state, run = slot.state, slot.run
    poisoned = state.nonfinite()
    if state.window.nonfinite or poisoned:
        what = "the training loss" if state.window.nonfinite else f"the weights ({poisoned[0]})"
        raise TrainingDiverged(
            f"{name}{what} became NaN or infinite before iteration {state.iteration}; stopped without saving, "
            f"the last good checkpoint is {run.last if run.last.exists() else 'none'}"
        )


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
