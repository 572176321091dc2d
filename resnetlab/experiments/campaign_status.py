"""What a campaign has done and has left, and how the command says it: per unit each run's iterations done and
left, the images/s of the windows that ended in the last 10 minutes, the ETA, the windows left
(``campaign_status``); the iterations each run gained since a time (``campaign_gains``)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Protocol

from ..config import RunConfig
from ..engine.rundir import RunDir, read_record
from .campaign_plan import Unit
from .windows import gained_since, recent_rate

__all__ = ["CampaignView", "campaign_gains", "campaign_status", "format_gained", "format_status"]


class CampaignView(Protocol):
    """What the status reads of a campaign (``campaign.Campaign``), named here: campaign.py imports this
    module, so this module does not import it back."""

    runs: Path
    iterations: int
    plan: str
    units: list[Unit]
    refused: list[tuple[Unit, str]]

    def name(self, net: str, seed: int) -> str: ...

    def config(self, net: str, seed: int) -> RunConfig: ...

    def done(self, name: str) -> int: ...

    def windows(self, name: str) -> list[dict[str, Any]]: ...


RECENT_S = 600.0  # the status's images/s: over the windows that ended in the last 10 minutes


def campaign_status(campaign: CampaignView, window_s: float = 480.0, now: float | None = None) -> dict[str, Any]:
    """Per unit: each run's iterations done (saved: ``done``) and left, the unit's images/s over the windows
    that ended in the last 10 minutes, the seconds left (at that speed for the current unit, the first
    unfinished one, when it has one; else at the speed its evaluations measured) and the machines that
    trained it; the seconds and GPU windows of ``window_s`` left."""
    now = time.time() if now is None else now
    speed = _seconds_per_iteration(campaign)
    rows, total_s, unknown, current = [], 0.0, False, None
    for unit in campaign.units:
        names = [campaign.name(unit.net, s) for s in unit.seeds]
        done = [campaign.done(n) for n in names]
        left = sum(campaign.iterations - d for d in done)
        windows = [w for n in names for w in campaign.windows(n)]
        batch = campaign.config(unit.net, unit.seeds[0]).optim.batch_size
        rate = recent_rate(windows, batch, now, RECENT_S)
        per_it = _estimate(speed, unit.net, len(unit.seeds))
        seconds = None if per_it is None else max(campaign.iterations - min(done), 0) * per_it
        if left and current is None:
            current = unit.label
            if rate:
                seconds = left * batch / rate
        if left and seconds is None:
            unknown = True
        total_s += seconds or 0.0
        machines = sorted({f"{w['machine']}, {w['precision']}" for w in windows})
        rows.append(
            {
                "unit": unit.label,
                "runs": names,
                "done": done,
                "left": left,
                "seconds_left": seconds,
                "images_per_s": rate,
                "machines": machines,
            }
        )
    windows_left = None if unknown else math.ceil(total_s / window_s)
    return {
        "plan": campaign.plan,
        "units": rows,
        "current": current,
        "refused": [(u.label, why) for u, why in campaign.refused],
        "seconds_left": None if unknown else total_s,
        "windows_left": windows_left,
        "window_s": window_s,
    }


def campaign_gains(campaign: CampaignView, since: float) -> dict[str, int]:
    """Iterations each run gained in the windows that ended after the Unix time ``since`` (its windows'
    records), for the runs that gained any, labelled ``net seed S``."""
    gains = {}
    for unit in campaign.units:
        for seed in unit.seeds:
            gain = gained_since(campaign.windows(campaign.name(unit.net, seed)), since)
            if gain:
                gains[f"{unit.net} seed {seed}"] = gain
    return gains


def _seconds_per_iteration(campaign: CampaignView) -> dict[tuple[str, int], float]:
    """Measured seconds per iteration by (network, networks packed), from the runs' evaluation records."""
    speed: dict[tuple[str, int], float] = {}
    for unit in campaign.units:
        for seed in unit.seeds:
            path = campaign.runs / campaign.name(unit.net, seed)
            if not RunDir(path).metrics.is_file():
                continue
            record = read_record(path)
            rates = [e for e in record.evals[1:] if e.get("images_per_s")]  # the first holds the start-up
            if rates:
                # The median of the last five: one record's rate can be off (a window that shared the CPU, or,
                # before checkpoints kept the times, the first record after a resume).
                recent = sorted(float(e["images_per_s"]) for e in rates[-5:])
                k = int(rates[-1].get("packed", 1))
                batch = int(record.config["optim"]["batch_size"])
                speed[(unit.net, k)] = batch / recent[len(recent) // 2]
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
