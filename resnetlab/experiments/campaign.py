"""The paper's CIFAR-10 section at the full 64k schedule, worked through in short GPU windows.

``resnetlab experiment campaign --budget SECONDS --runs DIR`` trains, in this order (the issue's (a)-(d)):
(a) seed 0 of plain-20/32/44/56 and ResNet-20/32/44/56 (Fig. 6 left and middle, Table 6); (b) ResNet-110
seed 0; (c) seeds 1-4 of ResNet-20 to 110 (Table 6's mean +- std), each network's seeds packed into one
(``train_packed``); (d) plain-110 and ResNet-1202 seed 0. Every run is an ordinary experiment run
(``ROOT/cifar10-<net>-it<N>-seed<S>``), so ``table6``, ``degradation --no-train`` and ``responses`` read them.

A window stops, every run checkpointed, before ``--budget`` is spent (``Deadline``). Between windows the
carry folder (``campaign/`` in the repository) holds each run's records (config, env, metrics) and, for a run
not finished, its last checkpoint (replaced each window, deleted once the run finishes); at the start of a
window they are put back under ``--runs`` and the cut-short runs resume exactly. A finished seed-0 network is
exported (safetensors, BN folded) into ``weights/`` with its final test error in ``weights/index.json``.

A window's machine takes and gives back at most 64 MiB, so the networks packed together are as many seeds
as keep the carried checkpoints under ``CARRY_LIMIT``; a network whose single checkpoint is larger (ResNet-1202: 19.4M
parameters, 155 MB with its momentum) cannot be carried and is left out of the windows, said so.
"""

from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..engine.rundir import RunRecord, read_record
from ..errors import UserError
from ..files import atomic_path, sha256_file, write_json
from ..models import count_parameters, create_model
from .cifar import PAPER_ITERATIONS, checkpoint_iteration, ensure_runs, experiment_config, run_name

__all__ = [
    "CARRY_LIMIT",
    "Unit",
    "paper_plan",
    "Campaign",
    "campaign_command",
]

# Bytes of unfinished checkpoints one window may hand to the next. A window's machine receives at most 64 MiB
# (the repository, with the shipped weights (about 32 MB once the plan is done), and the 19 MB CIFAR-10
# archive) and gives back at most 64 MiB: 16 MiB leaves room for both.
CARRY_LIMIT = 16 * 2**20
RECORD_FILES = ("config.json", "env.json", "metrics.jsonl")
STARTUP_S = 45.0  # what a unit costs before its first step (data, networks, graph capture): not worth less
SYNC_S = 20.0  # kept back for carrying the runs and exporting finished networks at the end of a window
PLAIN = ["plain20", "plain32", "plain44", "plain56"]
RESNETS = ["resnet20", "resnet32", "resnet44", "resnet56"]


@dataclass(frozen=True)
class Unit:
    """Seeds of one network trained together (packed), in the plan's part (a)-(d)."""

    part: str
    net: str
    seeds: tuple[int, ...]

    @property
    def label(self) -> str:
        seeds = ",".join(map(str, self.seeds))
        return f"({self.part}) {self.net} seed{'s' if len(self.seeds) > 1 else ''} {seeds}"


def checkpoint_bytes(net: str) -> int:
    """A training checkpoint of ``net``: weights and momentum in float32, plus the record (about 64 KiB)."""
    return 8 * count_parameters(create_model(net)) + 64 * 1024


def paper_plan(
    seeds: int = 5, nets: list[str] | None = None, carry_limit: int = CARRY_LIMIT
) -> tuple[list[Unit], list[tuple[Unit, str]]]:
    """The campaign's units in order, and the ones it cannot run across windows (with why).

    ``seeds``: seeds per network of Table 6 (the paper: 5; part (c) trains seeds 1..seeds-1). ``nets``: only
    these networks (a tiny plan for tests). A network's seeds in (c) are packed in groups whose carried
    checkpoints fit ``carry_limit``."""
    wanted = [
        ("a", net, (0,)) for net in PLAIN + RESNETS
    ] + [("b", "resnet110", (0,))] + [
        ("c", net, tuple(range(1, seeds))) for net in RESNETS + ["resnet110"]
    ] + [("d", "plain110", (0,)), ("d", "resnet1202", (0,))]  # fmt: skip
    units, refused = [], []
    for part, net, group in wanted:
        if (nets is not None and net not in nets) or not group:
            continue
        size = checkpoint_bytes(net)
        per_unit = carry_limit // size
        if per_unit < 1:
            refused.append(
                (
                    Unit(part, net, group),
                    f"its checkpoint ({size / 1e6:.0f} MB with momentum) is more than a window can carry to the "
                    f"next ({carry_limit / 2**20:.0f} MiB); it needs one uninterrupted run of its own",
                )
            )
            continue
        parts = -(-len(group) // per_unit)  # as few units as fit, of balanced sizes
        for i in range(parts):
            units.append(Unit(part, net, group[i * len(group) // parts : (i + 1) * len(group) // parts]))
    return units, refused


class Campaign:
    """The plan's runs under ``runs``, carried between windows in ``carry``, seed-0 weights in ``weights``."""

    def __init__(
        self,
        runs: Path,
        carry: Path,
        weights: Path,
        *,
        iterations: int = PAPER_ITERATIONS,
        data_dir: str | None = None,
        seeds: int = 5,
        nets: list[str] | None = None,
        carry_limit: int = CARRY_LIMIT,
        eval_points: int = 64,
    ) -> None:
        self.runs, self.carry, self.weights = Path(runs), Path(carry), Path(weights)
        self.iterations, self.data_dir, self.eval_points = iterations, data_dir, eval_points
        self.units, self.refused = paper_plan(seeds, nets, carry_limit)
        if not self.units:
            raise UserError("the campaign's plan is empty (--nets names none of its networks?)")

    def config(self, net: str, seed: int):
        return experiment_config(net, self.iterations, seed, self.data_dir, self.eval_points)

    def name(self, net: str, seed: int) -> str:
        return run_name(f"cifar10-{net}", self.iterations, seed)

    def names(self) -> list[str]:
        return [self.name(u.net, s) for u in self.units for s in u.seeds]

    # -- carrying: the repository's campaign/ folder <-> the run directories ---------------------------

    def _carried_checkpoint(self, name: str) -> Path:
        return self.carry / "checkpoints" / f"{name}.pt"

    def restore(self) -> list[str]:
        """Put the carried records and checkpoints under ``runs`` where they are newer than what is there;
        returns the runs restored."""
        restored = []
        for name in self.names():
            records = self.carry / "records" / name
            if not (records / "metrics.jsonl").is_file():
                continue
            target = self.runs / name
            carried = self._carried_checkpoint(name)
            carried_at, here_at = checkpoint_iteration(carried) or 0, checkpoint_iteration(target) or 0
            if _reached(records) <= _reached(target) and carried_at <= here_at:
                continue  # this machine's own copy is as far
            target.mkdir(parents=True, exist_ok=True)
            for file in RECORD_FILES:
                if (records / file).is_file():
                    shutil.copy2(records / file, target / file)
            if carried.is_file():
                (target / "checkpoints").mkdir(exist_ok=True)
                shutil.copy2(carried, target / "checkpoints" / "last.pt")
            restored.append(name)
        return restored

    def sync(self) -> None:
        """Write every run's records into ``carry``; the last checkpoint of each unfinished run beside them (a
        finished run's is deleted); each finished seed-0 network exported into ``weights``."""
        for name in self.names():
            source = self.runs / name
            if not (source / "metrics.jsonl").is_file():
                continue
            records = self.carry / "records" / name
            records.mkdir(parents=True, exist_ok=True)
            for file in RECORD_FILES:
                if (source / file).is_file():
                    _copy(source / file, records / file)
            carried, last = self._carried_checkpoint(name), source / "checkpoints" / "last.pt"
            if finished(source):
                carried.unlink(missing_ok=True)
            elif last.is_file():
                carried.parent.mkdir(parents=True, exist_ok=True)
                _copy(last, carried)
        for unit in self.units:
            if 0 in unit.seeds:
                self._export(unit.net)

    def _export(self, net: str) -> None:
        from ..deploy.export import export_model

        source = self.runs / self.name(net, 0)
        out = self.weights / f"cifar10-{net}.safetensors"
        if not finished(source) or not (source / "checkpoints" / "last.pt").is_file():
            return
        index_path = self.weights / "index.json"
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        record = read_record(source)
        if out.is_file() and index.get(net, {}).get("run") == source.name:
            return
        self.weights.mkdir(parents=True, exist_ok=True)
        report = export_model(source / "checkpoints" / "last.pt", "safetensors", out)
        if not report.within_tolerance:
            raise UserError(f"the export of {source} differs from its checkpoint by {report.max_abs_diff:.2g}")
        env = record.env
        index[net] = {
            "file": out.name,
            "sha256": sha256_file(out),
            "test_top1_error": record.final["test_top1_error"],
            "iterations": record.iterations,
            "seed": 0,
            "run": source.name,
            "trained_on": env.get("gpu") or env.get("device"),
            "git_commit": env.get("git_commit"),
            "note": "the final iteration's test error (nothing selected on the test set), BN folded",
        }
        write_json(index_path, dict(sorted(index.items())))

    # -- the work ------------------------------------------------------------------------------------

    def run(self, budget: float, progress: bool | None = None) -> dict[str, Any]:
        """Work through the plan until it is done or ``budget`` seconds are nearly spent; carry the state."""
        started = time.monotonic()
        deadline = started + budget - min(SYNC_S, 0.1 * budget)  # the carrying and exports at the end
        startup = min(STARTUP_S, budget / 4)
        restored = self.restore()
        if restored:
            print(f"restored {len(restored)} runs from {self.carry}")
        before = _folder_bytes(self.carry) + _folder_bytes(self.weights)
        stopped = False
        try:
            for unit in self.units:
                todo = [s for s in unit.seeds if not finished(self.runs / self.name(unit.net, s))]
                if not todo:
                    continue
                if deadline - time.monotonic() < startup:
                    stopped = True
                    break
                print(f"campaign: {unit.label}, {deadline - time.monotonic():.0f} s left")
                configs = [self.config(unit.net, s) for s in todo]
                paths = [self.runs / self.name(unit.net, s) for s in todo]
                if not ensure_runs(configs, paths, progress=progress, deadline=deadline):
                    stopped = True
                    break
                self.sync()  # each finished unit carried at once: a window killed later loses none of it
        finally:
            self.sync()
        after = _folder_bytes(self.carry) + _folder_bytes(self.weights)
        status = self.status()
        status.update(
            stopped=stopped, seconds=time.monotonic() - started, grew_bytes=after - before, carried_bytes=after
        )
        return status

    def status(self, window_s: float = 480.0) -> dict[str, Any]:
        """Per unit: iterations done and left; and the seconds and windows left at the measured speed."""
        speed = self._seconds_per_iteration()
        rows, total_s, unknown = [], 0.0, False
        for unit in self.units:
            done = [_reached(self.runs / self.name(unit.net, s)) for s in unit.seeds]
            left = sum(self.iterations - d for d in done)
            per_it = _estimate(speed, unit.net, len(unit.seeds))
            seconds = None if per_it is None else max(self.iterations - min(done), 0) * per_it
            if left and seconds is None:
                unknown = True
            total_s += seconds or 0.0
            rows.append({"unit": unit.label, "done": done, "left": left, "seconds_left": seconds})
        windows = None if unknown else math.ceil(total_s / window_s)
        return {
            "units": rows,
            "refused": [(u.label, why) for u, why in self.refused],
            "seconds_left": None if unknown else total_s,
            "windows_left": windows,
            "window_s": window_s,
        }

    def _seconds_per_iteration(self) -> dict[tuple[str, int], float]:
        """Measured seconds per iteration by (network, networks packed), from the runs' evaluation records."""
        speed: dict[tuple[str, int], float] = {}
        for unit in self.units:
            for seed in unit.seeds:
                path = self.runs / self.name(unit.net, seed)
                if not (path / "metrics.jsonl").is_file():
                    continue
                record = read_record(path)
                rates = [e for e in record.evals[1:] if e.get("images_per_s")]  # the first holds the start-up
                if rates:
                    last = rates[-1]
                    k = int(last.get("packed", 1))
                    batch = int(record.config["optim"]["batch_size"])
                    speed[(unit.net, k)] = batch / float(last["images_per_s"])
        return speed


def _depth(net: str) -> int:
    return int("".join(ch for ch in net if ch.isdigit()))


def _estimate(speed: dict[tuple[str, int], float], net: str, k: int) -> float | None:
    """Seconds per iteration of ``k`` packed ``net``s: measured, or scaled from the nearest measurement by
    depth and by networks packed (both roughly linear once the GPU is busy)."""
    if (net, k) in speed:
        return speed[(net, k)]
    if not speed:
        return None
    (other, other_k), seconds = min(speed.items(), key=lambda kv: abs(_depth(kv[0][0]) - _depth(net)))
    return seconds * _depth(net) / _depth(other) * k / other_k


def _record(path: Path) -> RunRecord | None:
    if not (path / "metrics.jsonl").is_file() or not (path / "config.json").is_file():
        return None
    return read_record(path)


def finished(path: Path) -> bool:
    """Whether the run directory (or records folder) ``path`` holds a finished run's records."""
    record = _record(path)
    return record is not None and record.finished


def _reached(path: Path) -> int:
    record = _record(path)
    return 0 if record is None else min(record.reached, record.iterations)


def _copy(source: Path, target: Path) -> None:
    """``source`` copied onto ``target`` atomically: a window cut off mid-copy leaves the old file whole."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0


def format_status(status: dict[str, Any]) -> str:
    """What the campaign prints: each unit done or left, the runs it cannot carry, the windows left."""
    lines = []
    for row in status["units"]:
        done = "/".join(f"{d:,}" for d in row["done"])
        state = "done" if row["left"] == 0 else f"{done} iterations done, {row['left']:,} left"
        eta = "" if row["left"] == 0 or row["seconds_left"] is None else f" (~{row['seconds_left'] / 60:.0f} min)"
        lines.append(f"  {row['unit']:<34} {state}{eta}")
    for label, why in status["refused"]:
        lines.append(f"  {label:<34} not in the windows: {why}")
    if status["windows_left"] is None:
        lines.append("windows left: unknown until a window has measured the speed")
    elif status["windows_left"] == 0:
        lines.append("the plan is done")
    else:
        lines.append(
            f"left: ~{status['seconds_left'] / 60:.0f} min of GPU time, {status['windows_left']} windows of "
            f"{status['window_s'] / 60:.0f} min at the measured speed"
        )
    if "carried_bytes" in status:
        lines.append(
            f"carried between windows (campaign/ and weights/): {status['carried_bytes'] / 1e6:.1f} MB, "
            f"{status['grew_bytes'] / 1e6:+.1f} MB this window"
        )
    return "\n".join(lines)


def campaign_command(
    budget: float,
    runs: Path,
    carry: Path,
    weights: Path,
    *,
    iterations: int,
    data_dir: str | None,
    seeds: int,
    nets: list[str] | None,
    status_only: bool,
) -> int:
    campaign = Campaign(runs, carry, weights, iterations=iterations, data_dir=data_dir, seeds=seeds, nets=nets)
    if status_only:
        campaign.restore()
        print(format_status(campaign.status()))
        return 0
    if budget <= 0:
        raise UserError(f"--budget must be a number of seconds > 0, got {budget:g}")
    status = campaign.run(budget)
    print(("stopped before the budget; " if status["stopped"] else "") + f"after {status['seconds']:.0f} s:")
    print(format_status(status))
    return 0
