"""K seeds of one network trained together as one packed network (``resnetlab train --seeds 0 1 2 3 4``).

Each seed is an ordinary run in its own directory: the same config but ``train.seed``, its own
initialisation (drawn from its seed exactly as a single run draws it), data order and augmentation (its own
``InMemoryLoader``), lr schedule (the ResNet-110 warm-up watches its own training error), evaluations,
metrics.jsonl and checkpoints. A checkpoint holds the single network and its optimizer state: it loads,
evaluates, exports and resumes as a single run's (``--resume auto`` alone, or packed again with the others).

The seeds are the K slots of the one loop (``train_loop``); ``PackedStep`` is its stepper for them. Per slot
the loop keeps a ``TrainState`` around a single network (the "shadow": what is saved and restored); the
packed network (``PackedNetworks``) and the fused step (``FusedStep``) train all K at once, and the K shadows
are written from it before every checkpoint and read into it at the start.

Resume is exact, records included: each seed's running training statistics (its ``Window``) are summed on
the device and saved as they stand there. The K checkpoints of one iteration are written under a marker
(``resume.mark_pending``), so that a kill between them is brought back level on resume (``resume.level``).
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

import torch

from .. import runtime
from ..config import RunConfig, set_values
from ..errors import UserError
from ..models.packed import PackedNetworks
from .fused import FusedStep
from .inputs import uses_memory_loader
from .loop import evaluate
from .resume import clear_pending, mark_pending
from .slot import Slot, write_checkpoint
from .train_loop import Deadline, run_slots

__all__ = ["train_packed", "seed_configs", "packing_refusal", "PackedStep", "MAX_SEEDS"]

# The most networks one packed run trains. Each seed holds its own network, optimizer state, loader, data plan
# and a batch of activations, and the step's time grows with K: 100 tiny seeds took 7 GB and 84 s for two
# iterations on a CPU (issue 20). The paper's Table 6 has 5 seeds per network; 16 leaves room for more.
MAX_SEEDS = 16


def seed_configs(config: RunConfig, seeds: list[int]) -> list[RunConfig]:
    """``config`` once per seed, ``train.seed`` set; refuses a seed torch cannot take and more than
    ``MAX_SEEDS`` seeds."""
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    out_of_range = [seed for seed in seeds if not 0 <= seed < 2**63]
    if out_of_range:
        raise UserError(f"--seeds: {out_of_range[0]} is not a seed (0 to 2**63 - 1)")
    if len(seeds) > MAX_SEEDS:
        raise UserError(
            f"--seeds packs at most {MAX_SEEDS} networks into one, got {len(seeds)}: each seed holds its own "
            f"network, optimizer, data plan and batch of activations (memory and step time grow with every seed); "
            f"train them in groups of at most {MAX_SEEDS} (each group its own --seeds command, same --out)"
        )
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds names a seed twice: {' '.join(map(str, seeds))}")
    return [set_values(copy.deepcopy(config), {"train.seed": seed}) for seed in seeds]


def packing_refusal(config: RunConfig) -> str | None:
    """Why ``config`` cannot train packed (None if it can): the fused step is the in-memory path of one
    process, training every parameter from its own initialisation."""
    if runtime.launched_processes() > 1:
        return "packed seeds train in one process (not under torchrun)"
    if not uses_memory_loader(config):
        return "packed seeds need the in-memory loader (data.loader=memory; not streamed image files)"
    if config.train.freeze or config.train.init:
        return "packed seeds train from scratch (no train.init or train.freeze)"
    if config.model.sync_bn:
        return "packed seeds train in one process (model.sync_bn needs several)"
    if config.train.compile:
        return "packed seeds replay a CUDA graph instead of torch.compile (leave train.compile off)"
    return None


def train_packed(
    config: RunConfig,
    seeds: list[int],
    outs: list[str | Path],
    resume: str | None = None,
    progress: bool | None = None,
    *,
    accept_resume_changes: bool = False,
    deadline: float | None = None,
) -> list[dict[str, Any]]:
    """Train ``config`` once per seed in ``seeds``, all packed into one network, run ``seeds[k]`` into the
    directory ``outs[k]``; returns each run's last evaluation record (or ``{"stopped": True, ...}``).

    ``resume``: None (fresh runs), "auto" (each directory's newest intact checkpoint; they must all be at
    the same iteration, or all fresh); a checkpoint path is refused (one file resumes one run: use
    ``resnetlab train --resume PATH`` without --seeds). ``deadline``: as ``train``'s.
    """
    if len(seeds) != len(outs):
        raise ValueError(f"{len(seeds)} seeds need {len(seeds)} run directories, got {len(outs)}")
    configs = seed_configs(config, seeds)
    if len({Path(o).resolve() for o in outs}) != len(outs):
        raise UserError("each seed needs its own run directory")
    if resume not in (None, "auto"):
        raise UserError("--seeds resumes with --resume auto (each seed from its own run directory)")
    refusal = packing_refusal(config)
    if refusal:
        raise UserError(refusal)
    return run_slots(
        configs, outs, PackedStep, resume, progress, accept_resume_changes=accept_resume_changes, deadline=deadline
    )


class PackedStep:
    """The loop's stepper for K slots of one network (``train_loop.Stepper``): their networks packed into one
    and trained by ``FusedStep`` (graphed on CUDA), each slot's running statistics summed on the device."""

    packed = True

    def __init__(self, slots: list[Slot], device: torch.device, *, amp: bool, clock: Deadline) -> None:
        tc, oc = slots[0].config.train, slots[0].config.optim
        if tc.cuda_graph == "on" and device.type != "cuda":
            raise UserError("train.cuda_graph=on needs a CUDA device")
        self.slots, self.states, self.device, self.amp, self.clock = slots, [s.state for s in slots], device, amp, clock
        self.k = len(slots)
        template = self.states[0].model
        layout = tc.packing if tc.packing != "auto" else "grouped" if device.type == "cuda" else "branches"
        self.network = PackedNetworks(template, self.k, layout, tc.channels_last).to(device)
        if tc.channels_last:
            self.network = self.network.to(memory_format=torch.channels_last)
        self.network.load_members([s.model.state_dict() for s in self.states])
        self.single_count = len(list(template.parameters()))
        self.fused = FusedStep(
            self.network,
            [s.loader for s in self.states],  # type: ignore[misc]
            momentum=oc.momentum,
            weight_decay=oc.weight_decay,
            nesterov=oc.nesterov,
            amp=amp,
            graph=device.type == "cuda" and tc.cuda_graph != "off",
            device=device,
        )
        self._buffers_from_shadows()
        # Each seed's window since the last evaluation goes on the device, where the fused step adds every step
        # to it: a resumed run continues the very float64 sums the uninterrupted one holds.
        windows = [[s.window.loss_sum, s.window.mistakes, float(s.window.images)] for s in self.states]
        self.fused.stats.copy_(torch.tensor(windows, dtype=torch.float64))
        self.unsynced = 0  # steps since the windows last took the device's sums
        self.saved_at = self.states[0].iteration  # the iteration of the seeds' last.pt
        self.steps_since_log, self.log_tick = 0, time.perf_counter()

    def describe(self) -> str:
        seeds = " ".join(str(slot.seed) for slot in self.slots)
        how = "graphed" if self.fused.use_graph else "eager"
        return (f" x {self.k} seeds ({seeds})" if self.k > 1 else "") + f" packed ({self.network.layout}, {how})"

    # -- packed <-> the K single networks (the shadows that are saved) ---------------------------------

    def _slots(self):
        """(packed momentum buffer, owner, index of the parameter in the single network) for every parameter."""
        for i, ((_, owner), buffer) in enumerate(zip(self.fused.params, self.fused.buffers)):
            yield buffer, owner, i % self.single_count

    def _buffers_from_shadows(self) -> None:
        shadow_params = [list(s.model.parameters()) for s in self.states]
        for buffer, owner, j in self._slots():
            for k, part in self.network.split_parameter(buffer, owner):
                saved = self.states[k].optimizer.state.get(shadow_params[k][j], {}).get("momentum_buffer")
                part.copy_(torch.zeros_like(part) if saved is None else saved)

    def _shadows_from_packed(self) -> None:
        for state, member in zip(self.states, self.network.members()):
            state.model.load_state_dict(member, strict=True)
        shadow_params = [list(s.model.parameters()) for s in self.states]
        for buffer, owner, j in self._slots():
            for k, part in self.network.split_parameter(buffer, owner):
                self.states[k].optimizer.state[shadow_params[k][j]]["momentum_buffer"] = part.detach().clone()

    # -- the stepper ------------------------------------------------------------------------------------

    def step(self, lrs: list[float], errors: bool) -> list[float] | None:
        if self.steps_since_log == 0:
            # the interval's clock starts at its first step: evaluations and saves since the last log (after
            # its host sync) are not training time, so images_per_s counts training steps only
            self.log_tick = time.perf_counter()
        self.fused.set_lr(lrs)
        self.fused()
        self.steps_since_log += 1
        self.unsynced += 1
        self.clock.queued = self.steps_since_log  # launched since the last sync: the device may still owe them
        if not errors:
            return None
        return [mistakes / self.fused.batch_size for mistakes in self.fused.last_mistakes()]  # a host sync

    def statistics(self, states: bool = False) -> None:
        """Each slot's window takes the device's sums since the last evaluation and the time of the steps since
        the last sync (one host sync); with ``states``, each TrainState its network and momentum too."""
        sums = self.fused.stats.to("cpu", copy=True).tolist()  # a copy also on the CPU, where .cpu() would alias
        for state, (loss_sum, mistakes, images) in zip(self.states, sums):
            state.window.set_sums(loss_sum, mistakes, images, state.window.steps + self.unsynced)
        self.unsynced = 0
        if self.steps_since_log:
            now = time.perf_counter()
            self.clock.step_floor = (now - self.log_tick) / self.steps_since_log
            for state in self.states:
                state.window.step_time += now - self.log_tick
            self.steps_since_log, self.log_tick = 0, now
        self.clock.queued = 0
        if states:
            self._shadows_from_packed()

    def evaluate(self, split: str) -> list[dict[str, float]]:
        return self._evaluate_split(split)  # apart under its name before issue 21, which tests/test_packed.py slows

    def _evaluate_split(self, name: str) -> list[dict[str, float]]:
        """Every network on the split ``name`` at once: its images normalised with each network's mean."""
        splits = [slot.data.evals[name].on_device() for slot in self.slots]  # type: ignore[attr-defined]
        means = torch.stack([split.mean for split in splits])[:, None]  # (K, 1, C, H, W)
        first, b = splits[0], splits[0].batch_size
        batches = (
            (first.augment.normalize(first.images[i : i + b][None], means), first.labels[i : i + b])  # (K, B, ...)
            for i in range(0, len(first.labels), b)
        )
        classes = len(self.slots[0].data.classes)
        return evaluate(self.network, batches, self.device, num_classes=classes, amp=self.amp, networks=self.k)

    def restart(self) -> None:
        self.fused.stats.zero_()  # the windows start again

    def write(self, periodic: bool, best: list[int]) -> None:
        """Every seed's checkpoint (and best copy for the seeds in ``best``), the K of one iteration under each
        seed's marker, so that a resume after a kill between them brings the pack back level."""
        runs, iteration = [slot.run for slot in self.slots], self.states[0].iteration
        mark_pending(runs, iteration, self.saved_at)
        for k, slot in enumerate(self.slots):
            write_checkpoint(
                slot.run, slot.config, slot.data, slot.state.state_dict(), periodic=periodic, best=k in best
            )
        clear_pending(runs)
        self.saved_at = iteration


_PackedLoop = PackedStep  # its name before issue 21 made one loop (tests patch its split evaluation under it)
