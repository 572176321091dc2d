"""The README's fault-injection figures: runs tests/test_faults.py, tests/test_bad_inputs.py and the GPU window's
crafted packs (tests/test_gpu_window.py) and counts what they injected (one JSON line per fault and per bad
input, appended to $RESNETLAB_FAULT_LOG by the tests).

    python scripts/fault_report.py            # both files; extra arguments go to pytest, e.g. -k kill

Prints faults injected / survived (bit-exact or refused as specified) and bad inputs tried / handled, by kind,
and a line for the README. It checks nothing itself: it exits non-zero when pytest failed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FILES = [
    "tests/test_faults.py",
    "tests/test_bad_inputs.py",
    # the GPU window's landing: each crafted pack a bad input (the window's rehearsals are not faults)
    "tests/test_gpu_window.py::test_a_crafted_pack_is_refused_before_anything_is_touched",
]
LOG_ENV = "RESNETLAB_FAULT_LOG"  # tests/faultcheck.py appends to it


def run_pytest(log: Path, extra: list[str]) -> tuple[int, float]:
    env = {**os.environ, LOG_ENV: str(log)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    start = time.perf_counter()
    code = subprocess.call([sys.executable, "-m", "pytest", *FILES, "-q", "-p", "no:cacheprovider", *extra],
                           cwd=ROOT, env=env)  # fmt: skip
    return code, time.perf_counter() - start


def summarize(entries: list[dict]) -> str:
    faults = [e for e in entries if e["kind"] == "fault"]
    bad = [e for e in entries if e["kind"] == "bad_input"]
    survived = [e for e in faults if e["survived"]]
    bit_exact = [e for e in survived if e["outcome"] == "bit-exact"]
    handled = [e for e in bad if e["survived"]]
    lines = [
        f"faults injected:   {len(faults)}",
        f"  survived:        {len(survived)} ({len(bit_exact)} resumed bit-exact, "
        f"{len(survived) - len(bit_exact)} refused as specified)",
    ]
    tried, ok = Counter(e["name"] for e in faults), Counter(e["name"] for e in survived)
    lines += [f"    {name}: {ok[name]}/{n}" for name, n in sorted(tried.items())]
    kills = [e for e in faults if e["name"] == "kill -9"]
    if kills:
        where = Counter(e.get("where") for e in kills)
        lines.append("    kill -9 points: " + ", ".join(f"{w} {n}" for w, n in sorted(where.items())))
    lines += [f"bad inputs tried:  {len(bad)}", f"  handled:         {len(handled)} (exit 2, one line, no traceback)"]
    failed = sorted(e["name"] for e in bad if not e["survived"])
    if failed:
        lines.append("  not handled:     " + ", ".join(failed))
    lines.append(
        f"README: {len(survived)}/{len(faults)} injected faults survived ({len(bit_exact)} kill/resume faults "
        f"bit-exact); {len(handled)}/{len(bad)} bad inputs refused with one line."
    )
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        log = Path(tmp) / "faults.jsonl"
        code, seconds = run_pytest(log, argv)
        entries = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    print()
    print(summarize(entries))
    print(f"pytest exit {code} after {seconds:.0f} s")
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
