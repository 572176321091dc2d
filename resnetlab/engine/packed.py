"""K seeds of one network trained together as one packed network (``resnetlab train --seeds 0 1 2 3 4``).

Each seed is an ordinary run in its own directory: the same config but ``train.seed``, its own
initialisation (drawn from its seed exactly as a single run draws it), data order and augmentation (its own
``InMemoryLoader``), lr schedule (the ResNet-110 warm-up watches its own training error), evaluations,
metrics.jsonl and checkpoints. A checkpoint holds the single network and its optimizer state: it loads,
evaluates, exports and resumes as a single run's (``--resume auto`` alone, or packed again with the others).

Resume is exact, records included: each seed's running training statistics (its ``Window``) are summed on
the device and saved as they stand there. The K checkpoints of one iteration are written one after another
under a marker (``checkpoints/.packed-write.tmp`` in every seed's directory, removed once all K are written);
a kill between them leaves the seeds at two iterations and the marker says so, and ``--resume auto`` brings
the pack back level at the older one (each seed that got ahead goes back to its previous checkpoint).

Per seed the loop keeps a ``TrainState`` around a single network (the "shadow": what is saved and restored);
the packed network (``PackedNetworks``) and the fused step (``FusedStep``) train all K at once, and the K
shadows are written from it at every checkpoint and read into it on resume.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch

from .. import runtime
from ..config import RunConfig, set_values
from ..errors import UserError
from ..evaluation.metrics import Tally
from ..files import LOCK_FILE, write_json
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

__all__ = ["train_packed", "seed_configs", "packing_refusal", "MAX_SEEDS"]

# The most networks one packed run trains. Each seed holds its own network, optimizer state, loader, data plan
# and a batch of activations, and the step's time grows with K: 100 tiny seeds took 7 GB and 84 s for two
# iterations on a CPU (issue 20). The paper's Table 6 has 5 seeds per network; 16 leaves room for more.
MAX_SEEDS = 16
PENDING = ".packed-write.tmp"  # in each seed's checkpoints/: the K checkpoints of an iteration are being written


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
    created = [_first_missing(run.path) for run in runs]  # what a refusal before training removes again
    acquired: list[RunDir] = []
    started = False
    try:
        for run in runs:
            run.acquire()
            acquired.append(run)
        points = [_resume_point(run, resume, c, accept_resume_changes) for run, c in zip(runs, configs)]
        points = _level(runs, configs, points, accept_resume_changes)
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
        started = True
        for run, c, data, state, point in zip(runs, configs, datas, states, points):
            run.mirror = TensorBoardMirror(run.tensorboard, state.iteration) if mirror else None
            _start_records(run, c, data, state, point, device, 1, None)
        loop.announce_packed(points)
        return loop.run_all()
    finally:
        for run in acquired:
            run.release()
        if not started:  # refused: no empty seed folder is left behind
            for run, missing in zip(acquired, created):
                if missing is not None:
                    _remove_unused(run, missing)


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
    (run.path / LOCK_FILE).unlink(missing_ok=True)
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


def _level(
    runs: list[RunDir], configs: list[RunConfig], points: list[ResumePoint | None], accept_changes: bool
) -> list[ResumePoint | None]:
    """The resume points of a pack, level. Seeds at different iterations resume together only when a kill cut
    short the K checkpoint writes of an iteration (every seed's ``PENDING`` marker names it and the
    iteration before it): each seed that got ahead goes back to its checkpoint of that earlier iteration
    (its previous.pt; or a fresh start when there was none), and its newer checkpoints go, as the pack will
    write them again. Otherwise (a seed trained on alone, a seed added) the pack is refused."""
    at = [0 if p is None else int(p.state["iteration"]) for p in points]
    if len(set(at)) <= 1:
        return points
    listed = ", ".join(f"{run.path.name}: {i}" for run, i in zip(runs, at))
    low, high = min(at), max(at)
    markers = [_read_pending(run) for run in runs]
    if set(at) != {low, high} or any(m != {"iteration": high, "from": low} for m in markers):
        raise UserError(f"packed runs must resume from one iteration, these are at {listed}; resume them singly")
    level: list[ResumePoint | None] = []
    for run, config, point, reached in zip(runs, configs, points, at):
        if reached == low:
            level.append(point)
            continue
        back = _checkpoint_at(run, config, low, accept_changes)
        if low and back is None:
            raise UserError(
                f"the checkpoints of iteration {high} were cut short ({listed}) and {run.checkpoints} holds no intact "
                f"checkpoint of iteration {low}; resume the seeds singly"
            )
        _roll_back(run, back, low)
        level.append(back)
    print(
        f"resnetlab train: warning: a stop cut short the checkpoints of iteration {high} ({listed}); every seed "
        f"resumes from iteration {low}",
        file=sys.stderr,
    )
    return level


def _read_pending(run: RunDir) -> dict[str, int] | None:
    try:
        return json.loads((run.checkpoints / PENDING).read_text())
    except (OSError, ValueError):
        return None


def _checkpoint_at(run: RunDir, config: RunConfig, iteration: int, accept_changes: bool) -> ResumePoint | None:
    """``run``'s newest intact checkpoint of ``iteration`` (None if it has none)."""
    for candidate in run.resume_candidates():
        try:
            point = _resume_point(run, str(candidate), config, accept_changes)
        except UserError:
            continue
        if point is not None and int(point.state["iteration"]) == iteration:
            return point
    return None


def _roll_back(run: RunDir, point: ResumePoint | None, iteration: int) -> None:
    """Make ``point``'s checkpoint ``run``'s last.pt (or none, for a fresh start) and remove the periodic
    copies after ``iteration``: the run directory then reads as the run at ``iteration``, and a later
    ``keep_previous`` keeps a checkpoint of this run, not one of the iterations the pack is about to redo."""
    for periodic in run.checkpoints.glob("iter_*.pt"):
        found = re.fullmatch(r"iter_(\d+)\.pt", periodic.name)
        if found and int(found.group(1)) > iteration:
            periodic.unlink()
    if point is None:
        run.last.unlink(missing_ok=True)
    elif point.path.resolve() != run.last.resolve():
        tmp = run.checkpoints / f".last.pt.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(point.path, tmp)
        except OSError:  # a file system without hard links: copy
            shutil.copyfile(point.path, tmp)
        os.replace(tmp, run.last)
        point.path = run.last


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
        # Each seed's window since the last evaluation goes on the device, where the fused step adds every step
        # to it: a resumed run continues the very float64 sums the uninterrupted one holds.
        windows = [[s.window.loss_sum, s.window.mistakes, float(s.window.images)] for s in states]
        self.fused.stats.copy_(torch.tensor(windows, dtype=torch.float64))
        self.unsynced = 0  # steps since the windows last took the device's sums
        self.saved_at = states[0].iteration  # the iteration of the seeds' last.pt
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
        self.unsynced += 1
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

    def _sync_windows(self) -> None:
        """Each seed's window takes the device's sums since the last evaluation (a host sync)."""
        sums = self.fused.stats.to("cpu", copy=True).tolist()  # a copy also on the CPU, where .cpu() would alias
        for state, (loss_sum, mistakes, images) in zip(self.states, sums):
            state.window.set_sums(loss_sum, mistakes, images, state.window.steps + self.unsynced)
        self.unsynced = 0

    def log(self, lr: float) -> None:
        self._sync_windows()  # the one host sync of the interval
        now = time.perf_counter()
        self.clock.step_floor = (now - self.log_tick) / max(self.steps_since_log, 1)
        self.clock.queued = 0
        for state in self.states:
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
        improved = []
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
                improved.append(k)
        self.fused.stats.zero_()  # the windows start again
        if improved:  # all K, so that the seeds' last.pt stay at one iteration
            self._save_all(periodic=False, best=improved)
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
        self._save_all(periodic=periodic, best=list(range(self.k)) if best else [])

    def _save_all(self, *, periodic: bool, best: list[int]) -> None:
        """Every seed's checkpoint (and best copy for the seeds in ``best``), never a non-finite one
        (``_Loop.save``'s guarantee, checked for all K before the first is written). The K writes happen under
        each seed's ``PENDING`` marker, so that a resume after a kill between them knows to bring the pack
        back level (``_level``)."""
        started = time.perf_counter()
        self._sync_windows()  # the steps since the last log too: the checkpoint holds the window as it stands
        self._shadows_from_packed()
        for k, state in enumerate(self.states):
            poisoned = state.nonfinite()
            if state.window.nonfinite or poisoned:
                what = "the training loss" if state.window.nonfinite else f"the weights ({poisoned[0]})"
                raise TrainingDiverged(
                    f"seed {self.configs[k].train.seed}: {what} became NaN or infinite before iteration "
                    f"{state.iteration}; stopped without saving, the last good checkpoints are in "
                    + ", ".join(str(r.checkpoints) for r in self.runs)
                )
        iteration = self.state.iteration
        pending = {"iteration": iteration, "from": self.saved_at}
        for run in self.runs:
            try:
                write_json(run.checkpoints / PENDING, pending, indent=None)
            except OSError as err:
                raise UserError(
                    f"cannot write {run.checkpoints / PENDING} ({err.strerror or err}); the last good checkpoints "
                    f"are those of iteration {self.saved_at}; free space, then continue with --resume auto"
                ) from None
        for k, (run, state) in enumerate(zip(self.runs, self.states)):
            training = state.state_dict()
            write_checkpoint(run, self.configs[k], self.datas[k], training, periodic=periodic, best=k in best)
        for run in self.runs:
            (run.checkpoints / PENDING).unlink(missing_ok=True)
        self.saved_at = iteration
        self.clock.saved(time.perf_counter() - started)

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
