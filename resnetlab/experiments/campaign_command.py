"""``resnetlab experiment campaign``: the command's work (train a window, or read the status, or the gains) and
what it prints: each unit done or left, the current one's speed and ETA, the windows left."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import UserError
from .campaign import Campaign

__all__ = ["campaign_command", "format_gained", "format_status"]


def _duration(seconds: float) -> str:
    minutes = round(seconds / 60)
    return f"{minutes // 60} h {minutes % 60:02d} min" if minutes >= 60 else f"{minutes} min"


def format_status(status: dict[str, Any]) -> str:
    """What the campaign prints: each unit done or left (the current one with its speed over the last 10
    minutes and its ETA), machines mixed within a run, the runs it cannot carry, the windows left."""
    lines = []
    for row in status["units"]:
        done = "/".join(f"{d:,}" for d in row["done"])
        state = "done" if row["left"] == 0 else f"{done} iterations done, {row['left']:,} left"
        if row["unit"] != status.get("current") and row["left"] and row["seconds_left"] is not None:
            state += f" (~{_duration(row['seconds_left'])})"
        elif row["unit"] == status.get("current"):
            rate = row.get("images_per_s")
            speed = f"{rate:,.0f} images/s over the last 10 min" if rate else "no window in the last 10 min"
            eta = "" if row["seconds_left"] is None else f", ETA {_duration(row['seconds_left'])}"
            state += f"  <- current: {speed}{eta}"
        if len(row.get("machines", [])) > 1:
            state += f"  [trained on {len(row['machines'])} machines/precisions: {'; '.join(row['machines'])}]"
        lines.append(f"  {row['unit']:<34} {state}")
    for label, why in status["refused"]:
        lines.append(f"  {label:<34} not in the windows: {why}")
    if status["windows_left"] is None:
        lines.append("windows left: unknown until a window has measured the speed")
    elif status["windows_left"] == 0:
        lines.append("the plan is done")
    elif status.get("plan") == "cpu":
        lines.append(f"left: ~{_duration(status['seconds_left'])} of training at the measured speed")
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


def format_gained(gains: dict[str, int]) -> str:
    """``gained`` on one line: ``resnet20 seed 0 +3,873, plain20 seed 0 +120 iterations``."""
    if not gains:
        return "no iterations gained"
    return ", ".join(f"{label} +{n:,}" for label, n in gains.items()) + " iterations"


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
    plan: str = "auto",
    since: float | None = None,
) -> int:
    campaign = Campaign(
        runs, carry, weights, iterations=iterations, data_dir=data_dir, seeds=seeds, nets=nets, plan=plan
    )
    if since is not None:  # one line for scripts/cpu_window.sh stop
        print(format_gained(campaign.gained(since)))
        return 0
    if status_only:  # reads the run folder and the carry, writes nothing: a window may be training beside it
        print(f"the {campaign.plan.upper()} plan:")
        print(format_status(campaign.status()))
        return 0
    if budget <= 0:
        raise UserError(f"--budget must be a number of seconds > 0, got {budget:g}")
    status = campaign.run(budget)
    print(("stopped before the budget; " if status["stopped"] else "") + f"after {status['seconds']:.0f} s:")
    print(format_status(status))
    return 0
