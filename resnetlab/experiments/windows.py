"""What each window of the campaign did to a run: ``windows.jsonl`` in the run directory, one line a window.

A run of the full schedule may train in several windows on different machines (CPU windows of a working
session, then GPU windows). Its ``env.json`` names only the last one (the trainer rewrites it at each start),
and where the precision (bf16 on a CPU with native bf16, float32 with TF32 convolutions on a GPU) or the
kernels differ between machines, the run is no longer the output of one machine. So the campaign appends,
after each unit it trained in a window, one line per run it advanced:

    {"started": "2026-12-05T12:30:00.000+00:00", "ended": "...", "seconds": 581.4, "runs": 1,
     "from_iteration": 227, "to_iteration": 4100, "machine": "AMD EPYC 7B13 (2 threads)", "device": "cpu",
     "precision": "bf16", "tf32": null, "git_commit": "...", "git_dirty": false, "torch": "2.x"}

``seconds`` is the unit's wall time in the window (its start-up included), shared by its ``runs`` (packed
seeds train together; on the CPU a unit's seeds train one after another), and the iteration range is the
checkpoints' (what was saved and carried). The file travels with the other records in ``campaign/``. A
window killed without warning writes no line: what it trained after its last carry is lost, and the next
window's range starts where the carried checkpoint does.
"""

from __future__ import annotations

import json
import platform
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..engine.rundir import RunDir
from ..files import read_jsonl

__all__ = [
    "append_window",
    "cpu_name",
    "gained_since",
    "read_windows",
    "recent_rate",
    "window_record",
    "window_summary",
]


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="milliseconds")


def _unix(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def cpu_name() -> str:
    """The CPU's model name (``/proc/cpuinfo`` on Linux), or what ``platform`` knows of it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def window_record(
    env: dict[str, Any], started: float, seconds: float, first: int, last: int, runs: int
) -> dict[str, Any]:
    """One run's line for a window that took it from checkpoint iteration ``first`` to ``last``; ``env`` is the
    env.json its trainer wrote in this window, ``started`` a Unix time."""
    threads = env.get("torch_threads")
    machine = env.get("gpu") or f"{cpu_name()}" + (f" ({threads} threads)" if threads else "")
    return {
        "started": _iso(started),
        "ended": _iso(started + seconds),
        "seconds": round(seconds, 1),
        "runs": runs,
        "from_iteration": first,
        "to_iteration": last,
        "machine": machine,
        "device": env.get("device"),
        "precision": env.get("precision"),
        "tf32": env.get("tf32_convolutions"),  # float32 on a GPU multiplies in TF32 where this is true; None: CPU
        "git_commit": env.get("git_commit"),
        "git_dirty": env.get("git_dirty"),
        "torch": env.get("torch"),
    }


def append_window(run: Path, record: dict[str, Any]) -> None:
    with RunDir(run).windows.open("a") as f:
        f.write(json.dumps(record) + "\n")


def read_windows(*folders: Path) -> list[dict[str, Any]]:
    """The window lines of one run from each folder holding a copy of its records (the run directory, the
    carried records), each window once, oldest first."""
    seen: dict[tuple[str, int], dict[str, Any]] = {}
    for folder in folders:
        path = RunDir(folder).windows
        if path.is_file():
            for record in read_jsonl(path):
                seen[(record["started"], int(record["from_iteration"]))] = record
    return sorted(seen.values(), key=lambda r: (_unix(r["started"]), r["from_iteration"]))


def window_summary(windows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Consecutive windows on the same machine, precision and commit as one iteration range each: how a run
    was trained, short enough for weights/index.json. More than one entry: not one machine's run."""
    summary: list[dict[str, Any]] = []
    for w in windows:
        key = {"machine": w["machine"], "precision": w["precision"], "git_commit": w["git_commit"]}
        if summary and {k: summary[-1][k] for k in key} == key and summary[-1]["iterations"][1] == w["from_iteration"]:
            summary[-1]["iterations"][1] = w["to_iteration"]
        else:
            summary.append(key | {"iterations": [w["from_iteration"], w["to_iteration"]]})
    return summary


def gained_since(windows: list[dict[str, Any]], since: float) -> int:
    """Iterations a run gained in the windows that ended at or after the Unix time ``since``."""
    return sum(int(w["to_iteration"]) - int(w["from_iteration"]) for w in windows if _unix(w["ended"]) >= since)


def recent_rate(windows: list[dict[str, Any]], batch: int, now: float, horizon: float) -> float | None:
    """Images/s of the windows (of one unit's runs) that ended in the last ``horizon`` seconds before ``now``:
    the images they trained over their wall time (each window's time counted once, however many runs shared
    it); None without such a window."""
    recent = [w for w in windows if now - horizon <= _unix(w["ended"]) <= now]
    if not recent:
        return None
    images = sum((int(w["to_iteration"]) - int(w["from_iteration"])) * batch for w in recent)
    seconds = sum({w["started"]: float(w["seconds"]) for w in recent}.values())
    return images / seconds if seconds > 0 else None
