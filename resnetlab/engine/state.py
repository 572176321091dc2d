"""The state of a training run: everything that changes from one iteration to the next, and nothing else.

``TrainState.state_dict()`` is the training part of a checkpoint (``resnetlab.checkpoint.TRAINING_KEYS``
and the weights); ``load_state_dict`` puts a run back where it was, bit for bit on the CPU: the network,
the optimizer's momentum, the LR schedule (and its warm-up), the loader's position in the data order, every
RNG (python, numpy, torch, CUDA), the running statistics since the last evaluation, the iteration and the
best validation error.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import runtime
from ..checkpoint import clean_state_dict, nonfinite_tensors
from ..data import InMemoryLoader, StreamLoader
from .schedule import LRSchedule

__all__ = ["TrainState", "Window", "capture_rng_state", "restore_rng_state", "config_changes", "FREE_ON_RESUME"]


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
        sums = runtime.all_reduce_sum(stacked.sum(dim=0))
        loss_sum, mistakes, images = sums.tolist()
        world = runtime.get_world_size()
        self.loss_sum += loss_sum / world  # each rank's loss is a mean over its share of the global batch
        self.mistakes += mistakes
        self.images += int(images)
        self.steps += len(stacked)

    def set_sums(self, loss_sum: float, mistakes: float, images: float, steps: int) -> None:
        """Take the sums since the last evaluation as the device holds them (the fused step keeps the window's
        sums there and adds each step in float64; copied, not folded in, so that a resume that puts them back
        continues the same additions)."""
        if not math.isfinite(loss_sum):
            self.nonfinite = True
        self.loss_sum, self.mistakes, self.images, self.steps = loss_sum, mistakes, int(images), steps

    def summary(self) -> dict[str, float]:
        return {
            "train_loss": self.loss_sum / max(self.steps, 1),
            "train_error": self.mistakes / max(self.images, 1),
        }

    def state(self) -> dict[str, float]:
        # The times too: a window resumed mid-way reports its images over all of its time, not only the
        # time since the resume (which made images_per_s 3x too high in the first record after a resume).
        return {
            "loss_sum": self.loss_sum,
            "mistakes": self.mistakes,
            "images": self.images,
            "steps": self.steps,
            "data_time": self.data_time,
            "step_time": self.step_time,
        }

    def load_state(self, state: dict[str, float]) -> None:
        for key, value in state.items():
            setattr(self, key, value)


# What a resume may change without breaking exactness: how long and how often, not what is computed.
FREE_ON_RESUME = frozenset(
    {
        "preset",
        "description",
        "train.iterations",
        "train.eval_every",
        "train.checkpoint_every",
        "train.log_every",
        "train.keep_every",
        "train.device",
        "train.compile",
        "train.tensorboard",
        "train.cuda_graph",
        "train.packing",
        "data.num_workers",
        "data.data_dir",  # where the same dataset is found on this machine (env.json records the source)
    }
)


def _flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out |= _flatten(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``key: (saved, new)`` for every config field a resume would change that breaks exactness (the batch,
    the subset, the seed, the data, the schedule, ...); ``FREE_ON_RESUME`` fields are left out."""
    a, b = _flatten(saved), _flatten(new)
    return {k: (a.get(k), b.get(k)) for k in sorted(a | b) if k not in FREE_ON_RESUME and a.get(k) != b.get(k)}


@dataclass
class TrainState:
    """What a resume restores. ``model`` is the unwrapped network (no DDP, no torch.compile): what is saved."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    loader: InMemoryLoader | StreamLoader
    window: Window = field(default_factory=Window)
    iteration: int = 0
    best_error: float = math.inf  # the lowest validation error so far (model selection on val only)

    def state_dict(self) -> dict[str, Any]:
        return {
            "model": clean_state_dict(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "loader": self.loader.state_dict(),
            "rng": capture_rng_state(),
            "iteration": self.iteration,
            "best_error": self.best_error,
            "window": self.window.state(),
        }

    def nonfinite(self) -> list[str]:
        """The names of the parameters, buffers and optimizer tensors that hold a NaN or an infinity: a state
        that must never be saved (the step after the last finite loss can poison the weights)."""
        return nonfinite_tensors({"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict()["state"]})

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"], strict=True)
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.loader.load_state_dict(state["loader"])
        restore_rng_state(state["rng"])
        self.iteration, self.best_error = int(state["iteration"]), float(state["best_error"])
        self.window = Window()
        self.window.load_state(state["window"])


def capture_rng_state() -> dict[str, Any]:
    """Every RNG a training step may draw from, as tensors and numbers (no pickled objects)."""
    version, py_state, gauss = random.getstate()
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": version, "state": torch.tensor(py_state, dtype=torch.int64), "gauss": gauss},
        "numpy": {
            "name": np_name,
            "keys": torch.from_numpy(np_keys.astype(np.int64)),
            "pos": int(np_pos),
            "has_gauss": int(np_has_gauss),
            "gauss": float(np_gauss),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(int(v) for v in py["state"].tolist()), py["gauss"]))
    npy = state["numpy"]
    np.random.set_state(
        (npy["name"], npy["keys"].numpy().astype(np.uint32), npy["pos"], npy["has_gauss"], npy["gauss"])
    )
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
