"""The shell scripts under scripts/: runnable from a checkout, and scripts/cpu_window.sh's start, stop and
status on a tiny plan (a real background window of a few seconds)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "cpu_window.sh"


def test_every_shell_script_is_executable_in_git_and_here():
    listed = subprocess.run(["git", "ls-files", "-s", "scripts"], cwd=ROOT, capture_output=True, text=True)
    if listed.returncode != 0 or not listed.stdout:
        pytest.skip("not a git checkout")
    modes = {line.split("\t")[1]: line.split()[0] for line in listed.stdout.splitlines()}
    shells = sorted(path for path in modes if path.endswith(".sh"))
    assert "scripts/cpu_window.sh" in shells
    assert {path: modes[path] for path in shells} == {path: "100755" for path in shells}
    assert all(os.access(ROOT / path, os.X_OK) for path in shells)


def _wait_for(condition, seconds: float, what: str) -> None:
    end = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < end, f"waited {seconds:.0f} s for {what}"
        time.sleep(0.2)


def _checkpoint_iteration(path: Path) -> int:
    from resnetlab.experiments.cifar import checkpoint_iteration

    return checkpoint_iteration(path) or 0


@pytest.mark.skipif(shutil.which("setsid") is None or shutil.which("flock") is None, reason="needs util-linux")
def test_cpu_window_start_refuse_stop_status_and_resume(tmp_path):
    from conftest import write_cifar_python

    write_cifar_python(tmp_path / "data", per_batch=26, n_test=20)
    env = os.environ | {
        "PY": sys.executable,
        "RESNETLAB_DATA": str(tmp_path / "data"),
        "RESNETLAB_CACHE": str(tmp_path / "cache"),
        "CPU_WINDOW_STATE": str(tmp_path / "state"),
        "CPU_WINDOW_RUNS": str(tmp_path / "runs"),
        "CPU_WINDOW_CARRY": str(tmp_path / "carry"),
        "CPU_WINDOW_WEIGHTS": str(tmp_path / "weights"),
        "CPU_WINDOW_ARGS": "--iterations 640 --nets resnet20 --table6-seeds 1",  # evaluated and saved every 10
        "CPU_WINDOW_SECONDS": "300",
        "OMP_NUM_THREADS": "1",  # a test beside others: one core
    }
    name = "cifar10-resnet20-it640-seed0"
    run, carried = tmp_path / "runs" / name, tmp_path / "carry" / "checkpoints" / f"{name}.pt"

    def window(verb: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(SCRIPT), verb], env=env, capture_output=True, text=True, timeout=150)

    def trains_past(iteration: int) -> bool:  # an evaluation past ``iteration`` (the file starts empty)
        lines = (run / "metrics.jsonl").read_text().splitlines() if (run / "metrics.jsonl").is_file() else []
        return bool(lines) and json.loads(lines[-1]).get("iteration", 0) > iteration

    try:
        started = window("start")
        assert started.returncode == 0, started.stdout + started.stderr
        assert "training (a) resnet20 seed 0" in started.stdout and "window.log" in started.stdout
        again = window("start")
        assert again.returncode == 1 and "already running" in again.stderr
        _wait_for(lambda: trains_past(0), 90, "the first evaluation")
        group = Path(f"/proc/{(tmp_path / 'state' / 'pid').read_text().strip()}/autogroup")
        if group.is_file():  # the kernel's autogroups: the window's session yields to the others too
            assert group.read_text().split()[-1] == "19", group.read_text()
        stopped = window("stop")
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        first = _checkpoint_iteration(carried)
        assert first >= 10
        assert f"gained since its start: resnet20 seed 0 +{first:,} iterations" in stopped.stdout
        assert "commit campaign/ and weights/" in stopped.stdout
        assert not (tmp_path / "state" / "pid").exists()
        status = window("status")
        assert "not running" in status.stdout and f"{first:,} iterations done" in status.stdout

        resumed = window("start")  # the next window resumes from the carry
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        _wait_for(lambda: trains_past(first), 90, "an evaluation after the resume")
        stopped = window("stop")
        second = _checkpoint_iteration(carried)
        assert second > first and f"+{second - first:,} iterations" in stopped.stdout
        lines = (tmp_path / "carry" / "records" / name / "windows.jsonl").read_text().splitlines()
        ranges = [(json.loads(line)["from_iteration"], json.loads(line)["to_iteration"]) for line in lines]
        assert ranges == [(0, first), (first, second)]  # resumed where the carry was, no iteration twice
    finally:
        window("stop")  # never leave a window running after the test
