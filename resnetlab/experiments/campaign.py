"""The paper's CIFAR-10 section at the full 64k schedule, worked through in short windows (GPU or CPU).

``resnetlab experiment campaign --budget SECONDS --runs DIR`` trains the plan's runs (``campaign_plan.py``:
the GPU plan in the paper's order, seeds packed; the CPU plan soonest-done first, one run at a time). Every
run is an ordinary experiment run (``ROOT/cifar10-<net>-it<N>-seed<S>``), so ``table6``, ``degradation
--no-train`` and ``responses`` read them, whichever plan or machine trained them; ``windows.jsonl`` beside
their records says which machine, precision and commit trained which iterations (``windows.py``).

A window stops, every run checkpointed, before ``--budget`` is spent (``Deadline``). Between windows the
carry folder (``campaign/`` in the repository) holds each run's records (config, env, metrics) and, for a run
not finished, its last checkpoint (replaced each window, deleted once the run finishes); at the start of a
window they are put back under ``--runs`` and the cut-short runs resume exactly. A finished seed-0 network is
exported (safetensors, BN folded) into ``weights/`` with its final test error in ``weights/index.json``.
What is done and left is ``campaign_status.py``'s.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import time
from pathlib import Path
from typing import IO, Any

from ..config import RunConfig, parse_overrides, set_values
from ..engine.rundir import RunDir, RunRecord, read_record
from ..engine.state import FREE_ON_RESUME
from ..errors import UserError
from ..files import FolderInUse, atomic_path, lock_folder, sha256_file, write_json
from .campaign_plan import CARRY_LIMIT, TABLE6_SEEDS, paper_plan, resolve_plan
from .campaign_status import campaign_gains, campaign_status
from .cifar import PAPER_ITERATIONS, checkpoint_iteration, ensure_runs, experiment_config, run_name
from .windows import append_window, read_windows, window_record, window_summary

__all__ = ["Campaign", "campaign_settings", "finished"]

STARTUP_S = 45.0  # what a unit costs before its first step (data, networks, graph capture): not worth less
SYNC_S = 20.0  # kept back for carrying the runs and exporting finished networks at the end of a window
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
# Fields of a run's config the campaign sets itself (experiment_config), and the option that sets them.
OWN_KEYS = {
    "train.iterations": "--iterations",
    "train.seed": "--table6-seeds",
    "train.eval_every": "every 1/64 of the run",
    "train.checkpoint_every": "every 1/64 of the run",
    "data.data_dir": "--data-dir",
}
SETTABLE = sorted(k for k in FREE_ON_RESUME if "." in k and k not in OWN_KEYS)


def campaign_settings(overrides: list[str]) -> dict[str, Any]:
    """``--set section.key=value`` for every run a campaign trains, typed (``config.parse_overrides``: an
    unknown key or a bad value is a one-line error). Only what a resume may change freely (``FREE_ON_RESUME``:
    how a run is computed on this machine, e.g. ``train.cuda_graph=off``, not what it computes) and the campaign
    does not set itself. A recipe field is refused: runs cut short would not resume with it (the trainer
    refuses a changed recipe), finished runs would be reused without it, and ``weights/`` would ship runs of
    two recipes under the paper's name."""
    values = parse_overrides(overrides)
    for key in values:
        if key in OWN_KEYS:
            raise UserError(f"--set {key}: the campaign sets it itself ({OWN_KEYS[key]})")
        if key not in SETTABLE:
            raise UserError(
                f"--set {key}: the campaign trains the paper's recipe, so its --set takes only what a run may change "
                f"when it resumes: {', '.join(SETTABLE)}"
            )
    return values


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
        seeds: int = TABLE6_SEEDS,
        nets: list[str] | None = None,
        carry_limit: int = CARRY_LIMIT,
        eval_points: int = 64,
        plan: str = "gpu",
        overrides: list[str] | None = None,
    ) -> None:
        self.runs, self.carry, self.weights = Path(runs), Path(carry), Path(weights)
        self.settings = campaign_settings(overrides or [])  # recorded in each window's line (windows.jsonl)
        self.iterations, self.data_dir, self.eval_points = iterations, data_dir, eval_points
        self.plan = resolve_plan(plan)
        self.units, self.refused = paper_plan(seeds, nets, carry_limit, self.plan)
        self.signal: str | None = None  # SIGTERM or SIGINT received between two units' training
        if not self.units:
            raise UserError("the campaign's plan is empty (--nets names none of its networks?)")

    def config(self, net: str, seed: int) -> RunConfig:
        return set_values(experiment_config(net, self.iterations, seed, self.data_dir, self.eval_points), self.settings)

    def name(self, net: str, seed: int) -> str:
        return run_name(f"cifar10-{net}", self.iterations, seed)

    def names(self) -> list[str]:
        return [self.name(u.net, s) for u in self.units for s in u.seeds]

    # -- carrying: the repository's campaign/ folder <-> the run directories ---------------------------

    def _carried_records(self, name: str) -> Path:
        """Run ``name``'s record files in the carry, laid out as in its run directory (``RunDir``)."""
        return self.carry / "records" / name

    def _carried_checkpoint(self, name: str) -> Path:
        return self.carry / "checkpoints" / f"{name}.pt"

    def done(self, name: str) -> int:
        """The iterations of run ``name`` that are saved: the furthest of its last evaluation and its checkpoint,
        in the run directory or carried. A window stops between evaluations (every 1,000 iterations of 64k),
        so the checkpoint is usually ahead of the records."""
        here, records = self.runs / name, self._carried_records(name)
        reached = max(_reached(here), _reached(records))
        saved = max(checkpoint_iteration(here) or 0, checkpoint_iteration(self._carried_checkpoint(name)) or 0)
        return min(max(reached, saved), self.iterations)

    def windows(self, name: str) -> list[dict[str, Any]]:
        """The window records of run ``name`` (``windows.py``), from the run directory and the carry."""
        return read_windows(self.runs / name, self._carried_records(name))

    def restore(self) -> list[str]:
        """Put the carried records and checkpoints under ``runs`` where they are newer than what is there;
        returns the runs restored."""
        newer = []
        for name in self.names():
            records = self._carried_records(name)
            if not RunDir(records).metrics.is_file():
                continue
            target = self.runs / name
            carried = self._carried_checkpoint(name)
            carried_at, here_at = checkpoint_iteration(carried) or 0, checkpoint_iteration(target) or 0
            if _reached(records) <= _reached(target) and carried_at <= here_at:
                continue  # this machine's own copy is as far (and the next carry replaces the carried one)
            _refuse_cut_records(records, carried, carried_at)
            newer.append((name, records, target, carried))
        restored = []
        for name, records, target, carried in newer:  # every carried record checked before any is put back
            run = RunDir(target)
            run.path.mkdir(parents=True, exist_ok=True)
            for source, copy in zip(RunDir(records).record_files, run.record_files):
                if source.is_file():
                    shutil.copy2(source, copy)
            if carried.is_file():
                run.checkpoints.mkdir(exist_ok=True)
                shutil.copy2(carried, run.last)
            restored.append(name)
        return restored

    def sync(self) -> None:
        """Write every run's records into ``carry``; the last checkpoint of each unfinished run beside them (a
        finished run's is deleted); each finished seed-0 network exported into ``weights``."""
        for name in self.names():
            source = RunDir(self.runs / name)
            if not source.metrics.is_file():
                continue
            records = RunDir(self._carried_records(name))
            records.path.mkdir(parents=True, exist_ok=True)
            for file, copy in zip(source.record_files, records.record_files):
                if file.is_file():
                    _copy(file, copy)
            carried, last = self._carried_checkpoint(name), source.last
            if finished(source.path):
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
        last = RunDir(source).last
        if not finished(source) or not last.is_file():
            return
        index_path = self.weights / "index.json"
        index = json.loads(index_path.read_text()) if index_path.is_file() else {}
        record = read_record(source)
        if out.is_file() and index.get(net, {}).get("run") == source.name:
            return
        self.weights.mkdir(parents=True, exist_ok=True)
        report = export_model(last, "safetensors", out)
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
            "windows": window_summary(self.windows(source.name)),  # more than one: machines or commits mixed
            "note": "the final iteration's test error (nothing selected on the test set), BN folded",
        }
        write_json(index_path, dict(sorted(index.items())))

    # -- the work ------------------------------------------------------------------------------------

    def run(self, budget: float, progress: bool | None = None) -> dict[str, Any]:
        """Work through the plan until it is done or ``budget`` seconds are nearly spent; carry the state.

        SIGTERM or SIGINT stops the window like its budget: during training the trainer finishes the step and
        saves; between units the campaign starts no other. Either way the runs are carried."""
        if not (math.isfinite(budget) and budget > 0):
            raise UserError(f"--budget must be a number of seconds > 0, got {budget:g}")
        started = time.monotonic()
        lock = self._take_folders()  # before anything is read or trained
        try:
            restored = self.restore()
            if restored:
                print(f"restored {len(restored)} runs from {self.carry}")
            return self._window(started, budget, progress)
        finally:
            lock.close()

    def _take_folders(self) -> IO[str]:
        """The folders checked before anything trains (a file given as ``--carry`` was a traceback once the
        window had trained), and the carry locked for this window, as each run directory is locked
        (``files.lock_folder``): a second campaign carrying into the same folder would write its copies of the
        runs over the first one's (a finished run's records replaced by a shorter copy's)."""
        for flag, folder in (("--runs", self.runs), ("--weights", self.weights), ("--carry", self.carry)):
            if folder.exists() and not folder.is_dir():
                raise UserError(f"{flag} {folder} is a file, not a folder")
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise UserError(f"{flag} {folder}: cannot make the folder ({err.strerror or err})") from None
            if not os.access(folder, os.W_OK):
                raise UserError(f"{flag} {folder} is not writable")
        try:
            return lock_folder(self.carry, "resnetlab experiment campaign")
        except FolderInUse as err:
            raise UserError(
                f"--carry {self.carry} is in use by {err.holder}; one campaign at a time carries into a folder: "
                "wait for that window to end, or give this one another --carry"
            ) from None
        except OSError as err:
            raise UserError(f"--carry {self.carry}: cannot lock it ({err.strerror or err})") from None

    def _window(self, started: float, budget: float, progress: bool | None) -> dict[str, Any]:
        deadline = started + budget - min(SYNC_S, 0.1 * budget)  # the carrying and exports at the end
        startup = min(STARTUP_S, budget / 4)
        previous = self._catch_stop_signals()
        before = _folder_bytes(self.carry) + _folder_bytes(self.weights)
        stopped = False
        try:
            for unit in self.units:
                todo = [s for s in unit.seeds if not finished(self.runs / self.name(unit.net, s))]
                if not todo:
                    continue
                if self.signal or deadline - time.monotonic() < startup:
                    stopped = True
                    break
                print(f"campaign: {unit.label}, {deadline - time.monotonic():.0f} s left")
                if not self._train(unit.net, todo, deadline, progress):
                    stopped = True
                    break
                self.sync()  # each finished unit carried at once: a window killed later loses none of it
        finally:
            self.sync()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        after = _folder_bytes(self.carry) + _folder_bytes(self.weights)
        status = self.status()
        status.update(
            stopped=stopped, seconds=time.monotonic() - started, grew_bytes=after - before, carried_bytes=after
        )
        return status

    def _train(self, net: str, seeds: list[int], deadline: float, progress: bool | None) -> bool:
        """``ensure_runs`` for these seeds of ``net``, then a window line for each run it advanced (the trainer
        has just written the run's env.json: this machine, precision and commit). False if it was stopped."""
        configs = [self.config(net, s) for s in seeds]
        paths = [self.runs / self.name(net, s) for s in seeds]
        first = [checkpoint_iteration(p) or 0 for p in paths]
        wall, t0 = time.time(), time.monotonic()
        try:
            return ensure_runs(configs, paths, progress=progress, deadline=deadline)
        finally:
            self._catch_stop_signals()  # the trainer put its own handler in the campaign's place
            seconds = time.monotonic() - t0
            for path, start in zip(paths, first):
                last = checkpoint_iteration(path) or 0
                run = RunDir(path)
                if last > start and run.env.is_file():
                    record = window_record(run.read_env(), wall, seconds, start, last, runs=len(paths))
                    append_window(path, record | ({"set": self.settings} if self.settings else {}))

    def _catch_stop_signals(self) -> dict[int, Any]:
        """Note SIGTERM and SIGINT in ``self.signal`` instead of dying (a kill mid-carry would leave the carry
        half written); returns the handlers replaced. Outside the main thread (a test runner's) nothing."""

        def handler(signum: int, _frame: object) -> None:
            self.signal = signal.Signals(signum).name

        previous = {}
        for sig in STOP_SIGNALS:
            try:
                previous[sig] = signal.signal(sig, handler)
            except ValueError:
                pass
        return previous

    def status(self, window_s: float = 480.0, now: float | None = None) -> dict[str, Any]:
        """What is done and left, per unit (``campaign_status``)."""
        return campaign_status(self, window_s, now)

    def gained(self, since: float) -> dict[str, int]:
        """Iterations each run gained in the windows that ended after ``since`` (``campaign_gains``)."""
        return campaign_gains(self, since)


def _record(path: Path) -> RunRecord | None:
    return read_record(path) if RunDir(path).has_record() else None


def finished(path: Path) -> bool:
    """Whether the run directory (or records folder) ``path`` holds a finished run's records."""
    record = _record(path)
    return record is not None and record.finished


def _reached(path: Path) -> int:
    record = _record(path)
    return 0 if record is None else min(record.reached, record.iterations)


def _refuse_cut_records(records: Path, carried: Path, carried_at: int) -> None:
    """A carried ``metrics.jsonl`` cut short (the campaign writes the carry atomically, so something else cut
    it) is refused: a torn last line, or evaluations that stop before the carried checkpoint's iteration. The
    trainer would resume from the checkpoint keeping what the file holds, and the evaluations lost between
    would be a gap for good; no checkpoint holds them, so nothing here can repair them."""
    run = RunDir(records)
    metrics = run.metrics
    lines = [line for line in metrics.read_text(errors="replace").splitlines() if line.strip()]
    try:
        parsed = [json.loads(line) for line in lines]
    except json.JSONDecodeError:
        parsed, why = None, "a torn line"
    if parsed is not None:
        evals = [int(r["iteration"]) for r in parsed if "test_top1_error" in r]
        every = int(run.read_config()["train"]["eval_every"]) if run.config.is_file() else 0
        expected = carried_at - carried_at % every if every else 0  # the last evaluation the checkpoint passed
        if max(evals, default=0) >= expected:
            return
        why = f"its evaluations stop at iteration {max(evals, default=0)}, the carried checkpoint is at {carried_at}"
    again = f"delete {records} and {carried} to train the run again" if carried.is_file() else f"delete {records}"
    raise UserError(
        f"{metrics} is cut short ({why}): resumed, its lost evaluations would stay a gap. Put back an intact "
        f"copy (git checkout -- {metrics}), or {again}"
    )


def _copy(source: Path, target: Path) -> None:
    """``source`` copied onto ``target`` atomically: a window cut off mid-copy leaves the old file whole."""
    with atomic_path(target) as tmp:
        shutil.copyfile(source, tmp)


def _folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 0
