"""Helpers of the fault-injection suite (``test_faults.py``, ``test_bad_inputs.py``): run a command the way a
user meets it and check that a failure reads as one line; count every fault injected and every bad input tried.

``run_cli`` calls ``resnetlab.cli.main`` in this process (fast) and keeps what a user would see: the exit code
(argparse's ``SystemExit`` included), stdout, stderr, the warnings a terminal would print, and an uncaught
exception as the traceback it would print. ``error_line`` is the rule of issue 10: exit 2, one line on stderr
starting ``resnetlab CMD: error:``, no traceback.

When ``RESNETLAB_FAULT_LOG`` names a file, the ``faults`` fixture appends one JSON line to it per fault injected
and per bad input tried, with whether it was survived; ``scripts/fault_report.py`` counts them for the README.
"""

from __future__ import annotations

import json
import os
import re
import traceback
import warnings
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import torch

from resnetlab.cli import main

__all__ = ["Outcome", "run_cli", "error_line", "faults", "FaultLog", "LOG_ENV", "Evil", "flip_bit", "all_finite"]

LOG_ENV = "RESNETLAB_FAULT_LOG"
# A progress bar's line (tqdm's "12%|##  | 3/20", the trainer's "[2/20] loss ..."): output, not an error.
PROGRESS = re.compile(r"\d%\||^\[\d+/\d+\] ")
# Warnings Python does not show on a terminal by default; the others are lines on stderr.
_SILENT = (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning)


@dataclass
class Outcome:
    argv: list[str]
    code: int | str | None
    out: str
    err: str
    warnings: list[str] = field(default_factory=list)
    exception: str | None = None  # the traceback of an exception main() let through

    @property
    def stderr_lines(self) -> list[str]:
        """What a terminal shows on stderr: the printed lines, then each shown warning, then a traceback.
        argparse's usage block (``usage: ...`` and its indented continuation lines) is left out: argparse
        prints it before its own one-line error."""
        lines, in_usage = [], False
        for line in self.err.splitlines():
            if line.startswith("usage: "):
                in_usage = True
                continue
            if in_usage and line.startswith(" "):
                continue
            in_usage = False
            if line.strip():
                lines.append(line)
        return lines + self.warnings + (self.exception.splitlines() if self.exception else [])

    def describe(self) -> str:
        return f"argv {self.argv}\nexit {self.code}\nstderr:\n" + "\n".join(self.stderr_lines)


def run_cli(argv: Sequence[str], capsys: pytest.CaptureFixture[str]) -> Outcome:
    """``resnetlab ARGV`` in this process, with what it printed."""
    argv = [str(a) for a in argv]
    capsys.readouterr()  # drop what earlier steps printed
    exception = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("default")
        try:
            code: int | str | None = main(argv)
        except SystemExit as exit:
            code = exit.code
        except BaseException:  # noqa: BLE001 - a user would see this traceback: it is the finding
            code, exception = "uncaught exception", traceback.format_exc()
    shown = [f"{w.category.__name__}: {w.message}" for w in caught if not issubclass(w.category, _SILENT)]
    captured = capsys.readouterr()
    return Outcome(argv, code, captured.out, captured.err, shown, exception)


def error_line(outcome: Outcome, command: str, *, alone: bool = True) -> str:
    """The one error line of a refused command (asserting the rule of issue 10), which it returns.

    ``alone``: stderr holds nothing else but progress bars (a refusal before any work, or one while decoding a
    dataset). Otherwise (a failure mid-run, after the lines ``resnetlab train`` prints as it goes) the error is
    the last line and the only one that says ``error:``.
    """
    text = outcome.describe()
    assert outcome.exception is None, text
    assert "Traceback" not in outcome.err, text
    assert outcome.code == 2, text
    lines = outcome.stderr_lines
    if alone:
        lines = [line for line in lines if not PROGRESS.search(line)]
        assert len(lines) == 1, text
    else:
        assert lines and [line for line in lines if "error:" in line] == lines[-1:], text
    line = lines[-1]
    assert line.startswith(f"resnetlab {command}: error: "), text
    assert "nan%" not in outcome.out, text
    return line


class FaultLog:
    """The faults one test injected, each marked survived (and how) once the test has checked it."""

    def __init__(self, test: str) -> None:
        self.test = test
        self.entries: list[dict[str, Any]] = []

    def inject(self, kind: str, name: str, **detail: Any) -> dict[str, Any]:
        """Record a fault (``kind`` "fault") or a bad input (``kind`` "bad_input"), not yet survived."""
        entry = {"kind": kind, "name": name, "test": self.test, "survived": False, "outcome": None, **detail}
        self.entries.append(entry)
        return entry

    def survived(self, outcome: str = "handled", names: Sequence[str] | None = None) -> None:
        """Mark the faults not yet marked (only those named ``names``, if given) as survived: ``outcome`` is
        "bit-exact" (the run ended bit-identical to the uninterrupted one) or "handled" (refused as specified)."""
        for entry in self.entries:
            if not entry["survived"] and (names is None or entry["name"] in names):
                entry["survived"], entry["outcome"] = True, outcome

    def write(self) -> None:
        path = os.environ.get(LOG_ENV)
        if not path or not self.entries:
            return
        text = "".join(json.dumps(entry) + "\n" for entry in self.entries)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, text.encode())  # one append: lines of different tests never interleave
        finally:
            os.close(fd)


@pytest.fixture
def faults(request: pytest.FixtureRequest):
    """A ``FaultLog`` for this test, written to ``$RESNETLAB_FAULT_LOG`` when the test ends (pass or fail)."""
    log = FaultLog(request.node.nodeid)
    yield log
    log.write()


class Evil:
    """A pickle payload: unpickling it runs ``touch MARKER`` (``os.system`` through ``__reduce__``)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _data_regions(path: Path) -> list[tuple[int, int]]:
    """(start, end) byte ranges of tensor data in ``path``, largest first: a safetensors file's data block,
    or each ``data/`` record of a torch zip checkpoint (read from its local header)."""
    raw = path.read_bytes()
    header = int.from_bytes(raw[:8], "little")
    if raw[8:9] == b"{" and 8 + header < len(raw):
        return [(8 + header, len(raw))]
    regions = []
    with zipfile.ZipFile(path) as archive:
        for info in archive.infolist():
            if "/data/" in info.filename and info.file_size >= 64:
                local = raw[info.header_offset : info.header_offset + 30]
                start = info.header_offset + 30 + int.from_bytes(local[26:28], "little")
                start += int.from_bytes(local[28:30], "little")
                regions.append((start, start + info.file_size))
    return sorted(regions, key=lambda r: r[0] - r[1])


def _model_tensors(path: Path) -> dict[str, torch.Tensor] | None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - not a plain torch file: no model to compare
        return None
    return state.get("model") if isinstance(state, dict) else None


def flip_bit(path: Path) -> int:
    """Flip one bit of ``path`` in place, in the middle of a weight tensor: the exponent's top bit of a float32
    (little-endian, so the 4th byte), which makes the weight about 2**128 times larger or smaller. Silent damage
    that a zip or safetensors reader does not notice. For a checkpoint the flipped record is a network weight
    (not optimizer state), checked by reading the file back. Returns the byte offset."""
    path = Path(path)
    before = _model_tensors(path)
    original = path.read_bytes()
    for start, end in _data_regions(path):
        offset = start + ((end - start) // 2) // 4 * 4 + 3
        damaged = bytearray(original)
        damaged[offset] ^= 0x40
        path.write_bytes(bytes(damaged))
        after = _model_tensors(path)
        if before is None or after is None or any(not torch.equal(before[k], after[k]) for k in before):
            return offset
    raise AssertionError(f"{path}: found no network weight to damage")


def all_finite(value: Any) -> bool:
    """Every floating-point tensor in ``value`` (nested dicts, lists, tuples) is finite."""
    if isinstance(value, torch.Tensor):
        return not value.is_floating_point() or bool(torch.isfinite(value).all())
    if isinstance(value, dict):
        return all(all_finite(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return all(all_finite(v) for v in value)
    return True
