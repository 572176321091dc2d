"""K seeds of one network trained together as one packed network (``resnetlab train --seeds 0 1 2 3 4``).

Each seed is an ordinary run in its own directory: the same config but ``train.seed``, its own
initialisation (drawn from its seed exactly as a single run draws it), data order and augmentation (its own
``InMemoryLoader``), lr schedule (the ResNet-110 warm-up watches its own training error), evaluations,
metrics.jsonl and checkpoints. A checkpoint holds the single network and its optimizer state: it loads,
evaluates, exports and resumes as a single run's (``--resume auto`` alone, or packed again with the others).

Per seed the loop keeps a ``TrainState`` around a single network (the "shadow": what is saved and restored);
the packed network (``PackedNetworks``) and the fused step (``FusedStep``) train all K at once, and the K
shadows are written from it at every checkpoint and read into it on resume.
"""

from __future__ import annotations

import copy
import os
import time
from pathlib import Path
from typing import Any

import torch

from .. import runtime
from ..config import RunConfig, set_values
from ..errors import UserError
from ..evaluation.metrics import Tally
from ..models.packed import PackedNetworks
from .fused import FusedStep
from .inputs import TrainingData, build_data, memory_dataset, uses_memory_loader
from .loop import autocast, tally_record
from .progress import Progress
from .rundir import RunDir
from .state import TrainState, Window
from .tensorboard import TensorBoardMirror, tensorboard_wanted
from .trainer import (
    Deadline,
    ResumePoint,
    TrainingDiverged,
    _Loop,
    _resume_point,
    _set_determinism,
    _start_records,
    build_state,
    write_checkpoint,
)

__all__ = ["train_packed", "seed_configs", "packing_refusal"]


def seed_configs(config: RunConfig, seeds: list[int]) -> list[RunConfig]:
    """``config`` once per seed, ``train.seed`` set."""
    if not seeds:
        raise UserError("--seeds needs at least one seed")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"--seeds names a seed twice: {' '.join(map(str, seeds))}")
    return [set_values(copy.deepcopy(config), {"train.seed": seed}) for seed in seeds]


def packing_refusal(config: RunConfig, world: int) -> str | None:
    """Why ``config`` cannot train packed (None if it can): the fused step is the in-memory path of one
    process, training every parameter from its own initialisation."""
    if world > 1:
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
    device = runtime.resolve_device(config.train.device)
    processes = int(os.environ.get("WORLD_SIZE", "1")) if runtime.launched_by_torchrun() else 1
    refusal = packing_refusal(config, processes)
    if refusal:
        raise UserError(refusal)
    mirror = tensorboard_wanted(config.train.tensorboard, *outs)
    runs = [RunDir(out) for out in outs]
    acquired: list[RunDir] = []
    try:
        for run in runs:
            run.acquire()
            acquired.append(run)
        points = [_resume_point(run, resume, c, accept_resume_changes) for run, c in zip(runs, configs)]
        reached = {0 if p is None else int(p.state["iteration"]) for p in points}
        if len(reached) > 1:
            listed = ", ".join(
                f"{run.path}: {0 if p is None else p.state['iteration']}" for run, p in zip(runs, points)
            )
            raise UserError(f"packed runs must resume from one iteration, these are at {listed}; resume them singly")
        dataset = memory_dataset(config, device)
        datas, states = [], []
        for c, point in zip(configs, points):
            _set_determinism(c.train.seed, c.train.deterministic)  # as a single run: seed, then build
            data = build_data(c, device, dataset)
            state = build_state(c, data, device)
            if point is not None:
                state.load_state_dict(point.state)
            datas.append(data)
            states.append(state)
        loop = _PackedLoop(configs, runs, datas, states, device, progress, deadline)
        for run, c, data, state, point in zip(runs, configs, datas, states, points):
            run.mirror = TensorBoardMirror(run.tensorboard, state.iteration) if mirror else None
            _start_records(run, c, data, state, point, device, 1, None)
        loop.announce_packed(points)
        return loop.run_all()
    finally:
        for run in acquired:
            run.release()


class _PackedLoop(_Loop):
    """``_Loop``'s schedule of steps, logs, evaluations, checkpoints and stops, over K packed runs."""

    def __init__(
        self,
        configs: list[RunConfig],
        runs: list[RunDir],
        datas: list[TrainingData],
        states: list[TrainState],
        device: torch.device,
        progress: bool | None,
        deadline: float | None,
    ) -> None:
        config, tc = configs[0], configs[0].train
        self.configs, self.runs, self.datas, self.states = configs, runs, datas, states
        self.config, self.run_dir, self.data, self.state, self.device = config, runs[0], datas[0], states[0], device
        self.world, self.main = 1, True
        self.precision = runtime.resolve_precision(tc.amp, device)
        self.amp = self.precision == "bf16"
        self.k = len(states)
        graph = device.type == "cuda" and tc.cuda_graph != "off"
        if tc.cuda_graph == "on" and device.type != "cuda":
            raise UserError("train.cuda_graph=on needs a CUDA device")
        template = states[0].model
        layout = tc.packing if tc.packing != "auto" else "grouped" if device.type == "cuda" else "branches"
        self.packed = PackedNetworks(template, self.k, layout, tc.channels_last).to(device)
        if tc.channels_last:
            self.packed = self.packed.to(memory_format=torch.channels_last)
        self.packed.load_members([s.model.state_dict() for s in states])
        self.single_count = len(list(template.parameters()))
        self.fused = FusedStep(
            self.packed,
            [s.loader for s in states],  # type: ignore[misc]
            momentum=config.optim.momentum,
            weight_decay=config.optim.weight_decay,
            nesterov=config.optim.nesterov,
            amp=self.amp,
            graph=graph,
            device=device,
        )
        self._buffers_from_shadows()
        self.bar = Progress(total=tc.iterations, initial=states[0].iteration, enabled=progress, main=True)
        self.signal: str | None = None
        self.last_records: list[dict[str, Any]] = [{} for _ in states]
        self.last_record = {}
        self.clock = Deadline(deadline)
        self.steps_since_log, self.log_tick = 0, time.perf_counter()
        self.trained = self.inner = self.packed

    # -- packed <-> the K single networks (the shadows that are saved) ---------------------------------

    def _slots(self):
        """(packed momentum buffer, owner, index of the parameter in the single network) for every parameter."""
        for i, ((_, owner), buffer) in enumerate(zip(self.fused.params, self.fused.buffers)):
            yield buffer, owner, i % self.single_count

    def _buffers_from_shadows(self) -> None:
        shadow_params = [list(s.model.parameters()) for s in self.states]
        for buffer, owner, j in self._slots():
            for k, part in self.packed.split_parameter(buffer, owner):
                saved = self.states[k].optimizer.state.get(shadow_params[k][j], {}).get("momentum_buffer")
                part.copy_(torch.zeros_like(part) if saved is None else saved)

    def _shadows_from_packed(self) -> None:
        for state, member in zip(self.states, self.packed.members()):
            state.model.load_state_dict(member, strict=True)
        shadow_params = [list(s.model.parameters()) for s in self.states]
        for buffer, owner, j in self._slots():
            for k, part in self.packed.split_parameter(buffer, owner):
                self.states[k].optimizer.state[shadow_params[k][j]]["momentum_buffer"] = part.detach().clone()
        for state in self.states:
            state.iteration = self.state.iteration

    # -- the loop's parts -------------------------------------------------------------------------------

    def run_all(self) -> list[dict[str, Any]]:
        self.log_tick = time.perf_counter()
        result = self.run()
        return [result] * self.k if result.get("stopped") else self.last_records

    def _batches(self):
        return None  # the fused step gathers its own batches

    def step(self, batches: None) -> float:
        s = self.state
        lrs = [state.schedule.lr_at(s.iteration) for state in self.states]
        if self.steps_since_log == 0:
            # the interval's clock starts at its first step: evaluations and saves since the last log (after
            # its host sync) are not training time, so images_per_s counts training steps only
            self.log_tick = time.perf_counter()
        self.fused.set_lr(lrs)
        self.fused()
        s.iteration += 1
        self.steps_since_log += 1
        self.clock.queued = self.steps_since_log  # launched since the last sync: the device may still owe them
        warming = [k for k, state in enumerate(self.states) if state.schedule.in_warmup]
        if warming:
            mistakes = self.fused.last_mistakes()  # the warm-up switch needs this step's training error now
            for k in warming:
                state = self.states[k]
                if state.schedule.observe_train_error(s.iteration - 1, mistakes[k] / self.fused.batch_size):
                    lr = state.schedule.lr_at(s.iteration)
                    self.runs[k].log({"iteration": s.iteration, "event": "warmup_done", "lr": lr})
                    self.bar.write(f"seed {self.configs[k].train.seed}, iteration {s.iteration}: warm-up done, lr {lr}")
        return lrs[0]

    def log(self, lr: float) -> None:
        stats = self.fused.take_stats()  # the one host sync of the interval
        now = time.perf_counter()
        self.clock.step_floor = (now - self.log_tick) / max(self.steps_since_log, 1)
        self.clock.queued = 0
        for k, state in enumerate(self.states):
            loss_sum, mistakes, images = stats[k].tolist()
            state.window.add_sums(loss_sum, mistakes, images, self.steps_since_log)
            state.window.step_time += now - self.log_tick
        self.steps_since_log, self.log_tick = 0, now
        if any(state.window.nonfinite for state in self.states):
            self.save()  # raises TrainingDiverged without writing
        summaries = [state.window.summary() for state in self.states]
        mean = {key: sum(s[key] for s in summaries) / self.k for key in summaries[0]}
        self.bar.update_to(self.state.iteration, loss=mean["train_loss"], err=mean["train_error"], lr=lr)
        for run, state, summary in zip(self.runs, self.states, summaries):
            run.log_progress(state.iteration, {**summary, "lr": state.schedule.lr_at(state.iteration - 1)})

    def evaluate(self, lr: float) -> None:
        it = self.state.iteration
        results = {name: self._evaluate_split(name) for name in self.datas[0].evals}
        for k, (run, state, data) in enumerate(zip(self.runs, self.states, self.datas)):
            window, lr_k = state.window, state.schedule.lr_at(it - 1)
            record: dict[str, Any] = {
                "iteration": it,
                "epoch": round(it * self.configs[k].optim.batch_size / data.num_train, 3),
                "lr": lr_k,
                **window.summary(),
                "images_per_s": window.images / max(window.step_time, 1e-9),
                "images_per_s_all": self.k * window.images / max(window.step_time, 1e-9),
                "data_wait_s": 0.0,
                "wall_s": time.perf_counter() - self.tick,
                "precision": self.precision,
                "packed": self.k,
            }
            for name, per_network in results.items():
                record.update({f"{name}_{key}": value for key, value in per_network[k].items()})
            held_out = "val" if "val" in results else "test"
            state.schedule.observe_val_error(record[f"{held_out}_top1_error"])
            best = "val" in results and record["val_top1_error"] < state.best_error
            if best:
                state.best_error = record["val_top1_error"]
            state.window = Window()
            run.log(record)
            self.last_records[k] = record
            if best:
                self._save_one(k, periodic=False, best=True)
        errors = " ".join(f"{r['test_top1_error']:.2%}" for r in self.last_records)
        rate = self.last_records[0]["images_per_s_all"]
        self.bar.write(f"iteration {it}: test error per seed {errors}; {rate:.0f} images/s in all")
        self.last_record = self.last_records[0]

    @torch.no_grad()
    def _evaluate_split(self, name: str) -> list[dict[str, float]]:
        """Every network on the split ``name`` at once: its images normalised with each network's mean."""
        loaders = [data.evals[name] for data in self.datas]
        means = torch.stack([loader.augment.mean for loader in loaders])[:, None]  # (K, 1, C, H, W)
        classes = len(self.data.classes)
        tallies = [Tally(classes, self.device, confusion=False) for _ in range(self.k)]
        first = loaders[0]
        self.packed.eval()
        for start in range(0, len(first.labels), first.batch_size):
            images = first.images[start : start + first.batch_size].float()
            labels = first.labels[start : start + first.batch_size]
            x = (images[None] - means) * first.augment.scale  # (K, B, C, H, W)
            with autocast(self.device, self.amp):
                logits = self.packed(x).float()  # (K, B, classes)
            for tally, out in zip(tallies, logits):
                tally.add(out.log_softmax(dim=1), labels)
        self.packed.train()
        return [tally_record(tally) for tally in tallies]

    def save(self, periodic: bool = False, best: bool = False) -> None:
        started = time.perf_counter()
        self._shadows_from_packed()
        for k in range(self.k):
            self._save_one(k, periodic=periodic, best=best, copied=True)
        self.clock.saved(time.perf_counter() - started)

    def _save_one(self, k: int, *, periodic: bool, best: bool, copied: bool = False) -> None:
        """Seed k's checkpoint, never a non-finite one (``_Loop.save``'s guarantee, per seed)."""
        if not copied:
            self._shadows_from_packed()
        state, run = self.states[k], self.runs[k]
        poisoned = state.nonfinite()
        if state.window.nonfinite or poisoned:
            what = "the training loss" if state.window.nonfinite else f"the weights ({poisoned[0]})"
            raise TrainingDiverged(
                f"seed {self.configs[k].train.seed}: {what} became NaN or infinite before iteration "
                f"{state.iteration}; stopped without saving, the last good checkpoints are in "
                + ", ".join(str(r.checkpoints) for r in self.runs)
            )
        write_checkpoint(run, self.configs[k], self.datas[k], state.state_dict(), periodic=periodic, best=best)

    def announce_packed(self, points: list[ResumePoint | None]) -> None:
        tc, data = self.config.train, self.data
        seeds = " ".join(str(c.train.seed) for c in self.configs)
        if self.state.iteration > 0:
            self.bar.write(f"resuming seeds {seeds} at iteration {self.state.iteration}")
        else:
            how = "graphed" if self.fused.use_graph else "eager"
            self.bar.write(
                f"training {self.config.model.name} x {self.k} seeds ({seeds}) packed ({self.packed.layout}, {how}) on "
                f"{data.name} ({data.num_train} images) for {tc.iterations} iterations of batch "
                f"{self.config.optim.batch_size} each on {self.device}"
            )
            if self.device.type == "cpu" and self.k > 1:
                self.bar.write(
                    "note: on the CPU packed seeds train slower than one after another (no kernel launches to "
                    "hide; docs/training.md); --seeds pays on a GPU"
                )

    def saved_where(self) -> str:
        return f"saved {len(self.runs)} runs. Continue with the same command and --resume auto"

    def finished(self) -> dict[str, Any]:
        from .plot import plot_runs

        self.bar.close()
        for run in self.runs:
            plot_runs([run.path], run.curves)
            if run.mirror is not None:
                run.mirror.image("curves", run.curves, self.state.iteration)
        for k, run in enumerate(self.runs):  # resumed after the last iteration: nothing was evaluated here
            if "test_top1_error" not in self.last_records[k]:
                self.last_records[k] = run.last_evaluation() or self.last_records[k]
        self.last_record = self.last_records[0]
        finals = " ".join(
            f"{r['test_top1_error']:.2%}" if "test_top1_error" in r else "not recorded" for r in self.last_records
        )
        print(f"done: {len(self.runs)} runs; final test error per seed {finals}")
        return self.last_record

    def _stop_requested(self) -> bool:
        return self.signal is not None
