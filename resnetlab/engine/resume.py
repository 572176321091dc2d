"""Where runs continue from: each run's checkpoint to resume, checked against its config, and the runs of one
loop brought level.

The K checkpoints of one iteration of a loop over K runs (packed seeds) are written one after another under
a marker (``checkpoints/.packed-write.tmp`` in every run's directory: ``mark_pending`` before the first,
``clear_pending`` after the last). A kill between them leaves the runs at two iterations and the marker says
so; ``level`` then brings them back to the older one (each run that got ahead goes back to its previous
checkpoint). Any other difference is refused: the runs are not one pack.
"""

from __future__ import annotations

import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint import read_training_checkpoint, require_finite
from ..config import RunConfig
from ..errors import UserError, user_message
from ..files import write_json
from .rundir import RunDir
from .state import config_changes

__all__ = ["ResumePoint", "resume_point", "level", "mark_pending", "clear_pending", "PENDING"]

PENDING = ".packed-write.tmp"  # in each run's checkpoints/: the K checkpoints of an iteration are being written


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


def resume_point(run: RunDir, resume: str | None, config: RunConfig, accept_changes: bool) -> ResumePoint | None:
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


def mark_pending(runs: list[RunDir], iteration: int, saved: int) -> None:
    """Say in every run's directory that the checkpoints of ``iteration`` are being written over those of
    ``saved`` (``level`` reads it after a kill)."""
    for run in runs:
        try:
            write_json(run.checkpoints / PENDING, {"iteration": iteration, "from": saved}, indent=None)
        except OSError as err:
            raise UserError(
                f"cannot write {run.checkpoints / PENDING} ({err.strerror or err}); the last good checkpoints "
                f"are those of iteration {saved}; free space, then continue with --resume auto"
            ) from None


def clear_pending(runs: list[RunDir]) -> None:
    for run in runs:
        (run.checkpoints / PENDING).unlink(missing_ok=True)


def level(
    runs: list[RunDir], configs: list[RunConfig], points: list[ResumePoint | None], accept_changes: bool
) -> list[ResumePoint | None]:
    """The resume points of runs that train in one loop, level. Runs at different iterations resume together
    only when a kill cut short the K checkpoint writes of an iteration (every run's ``PENDING`` marker names it
    and the iteration before it): each run that got ahead goes back to its checkpoint of that earlier
    iteration (its previous.pt; or a fresh start when there was none), and its newer checkpoints go, as the
    loop will write them again. Otherwise (a seed trained on alone, a seed added) they are refused."""
    at = [0 if p is None else int(p.state["iteration"]) for p in points]
    if len(set(at)) <= 1:
        return points
    listed = ", ".join(f"{run.path.name}: {i}" for run, i in zip(runs, at))
    low, high = min(at), max(at)
    markers = [_read_pending(run) for run in runs]
    if set(at) != {low, high} or any(m != {"iteration": high, "from": low} for m in markers):
        raise UserError(f"packed runs must resume from one iteration, these are at {listed}; resume them singly")
    levelled: list[ResumePoint | None] = []
    for run, config, point, reached in zip(runs, configs, points, at):
        if reached == low:
            levelled.append(point)
            continue
        back = _checkpoint_at(run, config, low, accept_changes)
        if low and back is None:
            raise UserError(
                f"the checkpoints of iteration {high} were cut short ({listed}) and {run.checkpoints} holds no intact "
                f"checkpoint of iteration {low}; resume the seeds singly"
            )
        _roll_back(run, back, low)
        levelled.append(back)
    print(
        f"resnetlab train: warning: a stop cut short the checkpoints of iteration {high} ({listed}); every seed "
        f"resumes from iteration {low}",
        file=sys.stderr,
    )
    return levelled


def _read_pending(run: RunDir) -> dict[str, int] | None:
    try:
        return json.loads((run.checkpoints / PENDING).read_text())
    except (OSError, ValueError):
        return None


def _checkpoint_at(run: RunDir, config: RunConfig, iteration: int, accept_changes: bool) -> ResumePoint | None:
    """``run``'s newest intact checkpoint of ``iteration`` (None if it has none)."""
    for candidate in run.resume_candidates():
        try:
            point = resume_point(run, str(candidate), config, accept_changes)
        except UserError:
            continue
        if point is not None and int(point.state["iteration"]) == iteration:
            return point
    return None


def _roll_back(run: RunDir, point: ResumePoint | None, iteration: int) -> None:
    """Make ``point``'s checkpoint ``run``'s last.pt (or none, for a fresh start) and remove the periodic
    copies after ``iteration``: the run directory then reads as the run at ``iteration``, and a later
    ``keep_previous`` keeps a checkpoint of this run, not one of the iterations the loop is about to redo."""
    for periodic in run.checkpoints.glob("iter_*.pt"):
        found = re.fullmatch(r"iter_(\d+)\.pt", periodic.name)
        if found and int(found.group(1)) > iteration:
            periodic.unlink()
    if point is None:
        run.last.unlink(missing_ok=True)
    elif point.path.resolve() != run.last.resolve():
        run.make_last(point.path)
        point.path = run.last
