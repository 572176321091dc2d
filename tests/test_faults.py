"""Fault injection (issue 10): kill -9 at any moment, a full disk, two writers, torn records, bit flips, NaN,
malicious pickles, resumes into the wrong place or with changes. Each fault is survived bit-exactly or refused
with one line (exit 2), and leaves nothing damaged behind.

Everything runs on the tiny Fashion-MNIST-shaped set of ``test_train`` (cifar_resnet8, 256 images, batch 32,
deterministic: a resumed run is bit-identical to an uninterrupted one on the CPU). Kills, locks and the tmpfs
need real processes; the rest calls ``resnetlab.cli.main`` in this process. Every fault injected is counted in
``$RESNETLAB_FAULT_LOG`` (``faultcheck.faults``) for ``scripts/fault_report.py``.
"""

from __future__ import annotations

import errno
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

import resnetlab.engine.trainer as trainer
from resnetlab.checkpoint import load_checkpoint, read_training_checkpoint, save_checkpoint
from resnetlab.config import apply_overrides
from resnetlab.engine import train
from resnetlab.engine.packed import train_packed
from resnetlab.presets import get_preset

from faultcheck import Evil, Outcome, all_finite, error_line, faults, flip_bit, run_cli  # noqa: F401 (a fixture)
from test_train import _fail_at, assert_same_weights, metrics, write_idx
from test_train import tiny_sets as train_tiny_sets

ROOT = Path(__file__).resolve().parents[1]
PRESET = "fashion-mnist-resnet20"
SEED = int(os.environ.get("RESNETLAB_FAULT_SEED", "10"))  # the kill points; any seed must pass


def tiny_sets(data: Path, *extra: str) -> list[str]:
    """test_train's tiny run as ``--set`` values (20 iterations, evaluations every 5, checkpoints every 4, lr
    drops at 10 and 15), on the CPU; ``extra`` ones win."""
    return train_tiny_sets(data, "train.device=cpu", *extra)


def train_argv(data: Path, out: Path, *extra: str) -> list[str]:
    """``resnetlab train`` of the tiny run into ``out``, with ``extra`` --set values."""
    sets = [arg for value in tiny_sets(data, *extra) for arg in ("--set", value)]
    return ["train", "--preset", PRESET, "--out", str(out), *sets]


def child_env() -> dict[str, str]:
    """This process's environment (RESNETLAB_CACHE included), importing this checkout's resnetlab."""
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def finite_numbers(value) -> bool:
    """Every number in a JSON value is finite."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, dict):
        return all(finite_numbers(v) for v in value.values())
    if isinstance(value, list):
        return all(finite_numbers(v) for v in value)
    return True


@dataclass
class Lab:
    data: Path
    reference: Path  # the uninterrupted tiny run
    partial: Path  # the tiny run (with a kept copy every 4) crashed in its 11th step: last.pt at 8, metrics to 10
    image: Path  # a 28x28 grayscale PNG for predict


def power_cut() -> None:
    raise RuntimeError("power cut")


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    mp = pytest.MonkeyPatch()
    mp.setenv("RESNETLAB_CACHE", str(root / "cache"))  # shared by every run here, in and out of this process
    try:
        data = write_idx(root / "fashion-mnist")
        train(apply_overrides(get_preset(PRESET), tiny_sets(data)), root / "reference", progress=False)
        with pytest.MonkeyPatch.context() as crash:
            _fail_at(crash, 11, power_cut)
            with pytest.raises(RuntimeError, match="power cut"):
                config = apply_overrides(get_preset(PRESET), tiny_sets(data, "train.keep_every=4"))
                train(config, root / "partial", progress=False)
        image = root / "shirt.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8)).save(image)
        yield Lab(data, root / "reference", root / "partial", image)
    finally:
        mp.undo()


def copy_partial(lab: Lab, to: Path) -> Path:
    return Path(shutil.copytree(lab.partial, to))


def partial_argv(lab: Lab, out: Path, *extra: str) -> list[str]:
    """Continue the partial run in ``out`` (--resume auto), with ``extra`` --set values."""
    return [*train_argv(lab.data, out, "train.keep_every=4", *extra), "--resume", "auto"]


def reached(run: Path) -> int:
    """The iteration of ``run``'s last checkpoint (0 without one); the checkpoint must read back whole."""
    last = run / "checkpoints" / "last.pt"
    return read_training_checkpoint(last)[1]["iteration"] if last.exists() else 0


def assert_bit_exact(lab: Lab, run: Path) -> None:
    """Final weights, loader, schedule and window state, and metrics.jsonl (timings aside), as the reference's."""
    assert_same_weights(lab.reference, run)
    assert metrics(run) == metrics(lab.reference)


# --- kill -9 ------------------------------------------------------------------------------------------------

# Runs `resnetlab ARGV` and SIGKILLs itself at the moment FAULT_PLAN names ({"where": ..., "n": ...}, the n-th
# such call since this process started): half-way through writing a checkpoint, just before or just after its
# rename, or half-way through a metrics line. Only the timing is arranged; the kill is a real SIGKILL.
CHILD = r"""
import io, json, os, signal, sys

plan = json.loads(os.environ.get("FAULT_PLAN") or "{}")
where, calls = plan.get("where"), {"n": 0}


def due():
    calls["n"] += 1
    return calls["n"] == plan.get("n", 1)


def die():
    os.kill(os.getpid(), signal.SIGKILL)


if where == "save-partial":
    import torch

    real_save = torch.save

    def save(obj, f, *args, **kwargs):
        if not due():
            return real_save(obj, f, *args, **kwargs)
        buffer = io.BytesIO()
        real_save(obj, buffer, *args, **kwargs)
        half = buffer.getvalue()[: buffer.tell() // 2]
        if hasattr(f, "write"):
            f.write(half)
            f.flush()
        else:
            with open(f, "wb") as g:
                g.write(half)
        die()

    torch.save = save
elif where in ("before-rename", "after-rename"):
    real = {name: getattr(os, name) for name in ("replace", "rename")}

    def moving(name):
        def move(src, dst, *args, **kwargs):
            if str(dst).endswith(".pt") and due():
                if where == "after-rename":
                    real[name](src, dst, *args, **kwargs)
                die()
            return real[name](src, dst, *args, **kwargs)

        return move

    for name in real:
        setattr(os, name, moving(name))
elif where == "metrics-torn":
    from resnetlab.engine.rundir import RunDir

    real_log = RunDir.log

    def log(self, record, *args, **kwargs):
        if due():
            line = json.dumps(record)
            with open(self.metrics, "a") as f:
                f.write(line[: len(line) // 2])
                f.flush()
            die()
        return real_log(self, record, *args, **kwargs)

    RunDir.log = log

from resnetlab.cli import main

sys.exit(main(sys.argv[1:]))
"""


def kill_plan(seed: int) -> list[dict]:
    """Six kills at seeded points: two from outside at a random moment within about a step of a checkpoint
    (mid-step or mid-write, whichever comes), four at chosen moments (three inside a checkpoint write). Each
    child gets at most a few iterations further, so all six land before the run's 20 iterations are done."""
    rng = random.Random(seed)
    return [
        {"where": "save-partial", "n": rng.randint(1, 2)},
        {"where": "external", "delay": rng.uniform(0.0, 0.05)},
        {"where": "before-rename", "n": rng.randint(1, 2)},
        {"where": "metrics-torn", "n": 1},
        {"where": "external", "delay": rng.uniform(0.0, 0.05)},
        {"where": "after-rename", "n": rng.randint(1, 2)},
    ]


def run_child(argv: list[str], plan: dict, run: Path, log: Path) -> int:
    """``resnetlab ARGV`` in a child process, killed (-9) as ``plan`` says; its exit status (-9 if killed)."""
    last = run / "checkpoints" / "last.pt"
    env = {**child_env(), "FAULT_PLAN": json.dumps(plan)}
    with open(log, "w") as err:
        child = subprocess.Popen([sys.executable, "-c", CHILD, *argv], env=env, stdout=subprocess.DEVNULL, stderr=err)
        if plan.get("where") == "external":
            seen = last.stat().st_mtime_ns if last.exists() else None
            deadline = time.monotonic() + 120
            while child.poll() is None and time.monotonic() < deadline:
                if last.exists() and last.stat().st_mtime_ns != seen:  # this process is training: kill it soon
                    time.sleep(plan["delay"])
                    child.send_signal(signal.SIGKILL)
                    break
                time.sleep(0.005)
        try:
            return child.wait(timeout=180)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
            raise


def test_kill_9_at_any_moment_then_resume_auto_is_bit_exact(lab, tmp_path, faults):
    """The issue's first promise: kill -9 anywhere (mid-step, mid-checkpoint, mid-metrics line), then
    `--resume auto` until done, gives the uninterrupted run bit for bit; orphan temporary files go."""
    run = tmp_path / "run"
    checkpoints = run / "checkpoints"
    argv = train_argv(lab.data, run, "train.checkpoint_every=1")  # a checkpoint write at every iteration
    kills, orphans_left = 0, set()
    for attempt, plan in enumerate([*kill_plan(SEED), {}, {}]):
        before = reached(run)
        orphans = set(checkpoints.glob(".*.tmp")) if checkpoints.exists() else set()
        log = tmp_path / f"child-{attempt}.err"
        code = run_child(argv + (["--resume", "auto"] if attempt else []), plan, run, log)
        orphans_left |= {p.name for p in orphans if p.exists()}  # a run started here since: it must remove them
        if code == 0:
            break
        assert code == -signal.SIGKILL, f"{plan}: exit {code}\n{log.read_text()[-3000:]}"
        kills += 1
        mid_write = sorted(p.name for p in checkpoints.glob(".*.tmp")) if checkpoints.exists() else []
        faults.inject("fault", "kill -9", where=plan.get("where"), at_iteration=before, orphans=mid_write)
        if plan.get("where") == "save-partial":
            assert mid_write, "the kill was meant to land half-way through a checkpoint write"
            faults.inject("fault", "orphan temporary file", files=mid_write)
        reached(run)  # never a torn last.pt, whenever the kill came
    else:
        pytest.fail("the run did not finish")
    assert kills >= 5
    assert_bit_exact(lab, run)
    faults.survived("bit-exact", names=["kill -9"])
    assert not orphans_left, f"orphan temporary files not removed by the next run: {sorted(orphans_left)}"
    assert not list(checkpoints.glob(".*.tmp"))
    faults.survived("handled", names=["orphan temporary file"])


def test_orphan_temporary_files_go_when_the_next_run_starts(lab, tmp_path, capsys, faults):
    run = copy_partial(lab, tmp_path / "run")
    orphan = run / "checkpoints" / ".last.pt.k1ll3d.tmp"
    orphan.write_bytes(b"PK\x03\x04" + bytes(1000))  # what a kill -9 mid-write leaves
    faults.inject("fault", "orphan temporary file")
    outcome = run_cli(partial_argv(lab, run, "train.iterations=9"), capsys)
    assert outcome.code == 0, outcome.describe()
    assert not orphan.exists()
    faults.survived()


def test_kill_9_of_packed_seeds_then_resume_auto_is_bit_exact(lab, tmp_path, faults):
    """Issue 20: kill -9 a packed run (``train --seeds 3 4``) mid-step, mid-write, and between the two seeds'
    checkpoint writes (which leaves them at different iterations, the first time with one seed not yet
    saved at all); `--resume auto` until done brings the pack back level each time and gives the uninterrupted
    packed run bit for bit, records included (checkpoints every 3 and logs every 2: most saves fall between
    two logs, where the running training statistics used to be saved short)."""
    sets = [s for s in tiny_sets(lab.data, "train.checkpoint_every=3") if not s.startswith("train.seed=")]
    reference = [tmp_path / "reference" / f"seed{s}" for s in (3, 4)]
    train_packed(apply_overrides(get_preset(PRESET), sets), [3, 4], reference, progress=False)
    out = tmp_path / "run"
    runs = [out / "seed3", out / "seed4"]
    flags = [arg for value in sets for arg in ("--set", value)]
    argv = ["train", "--preset", PRESET, "--out", str(out), *flags, "--seeds", "3", "4"]
    plans = [
        {"where": "after-rename", "n": 1},  # seed 3's first checkpoint written, seed 4's not: back to 0
        {"where": "before-rename", "n": 5},  # at 6: seed 3 written, seed 4's last.pt about to be kept
        {"where": "external", "delay": random.Random(SEED).uniform(0.0, 0.05)},
        {"where": "save-partial", "n": 2},  # seed 4's checkpoint half written
        {"where": "metrics-torn", "n": 1},
        {"where": "after-rename", "n": 3},  # seed 3 written, seed 4's previous.pt kept
    ]
    kills, uneven = 0, 0
    for attempt, plan in enumerate([*plans, {}, {}]):
        log = tmp_path / f"child-{attempt}.err"
        code = run_child(argv + (["--resume", "auto"] if attempt else []), plan, runs[0], log)
        if code == 0:
            break
        assert code == -signal.SIGKILL, f"{plan}: exit {code}\n{log.read_text()[-3000:]}"
        kills += 1
        at = [reached(run) for run in runs]
        uneven += len(set(at)) > 1
        faults.inject("fault", "kill -9 (packed seeds)", where=plan.get("where"), at_iterations=at)
    else:
        pytest.fail("the packed run did not finish")
    assert kills == len(plans) and uneven >= 3, (kills, uneven)
    for a, b in zip(reference, runs):
        assert_same_weights(a, b)
        assert metrics(a) == metrics(b)
        assert not list((b / "checkpoints").glob(".*.tmp"))
    faults.survived("bit-exact")


# --- one writer per run directory ----------------------------------------------------------------------------


def test_a_second_writer_is_refused_and_a_killed_owner_leaves_no_lock(lab, tmp_path, faults):
    run = tmp_path / "run"
    long = ("train.iterations=100000", "train.eval_every=100000", "train.checkpoint_every=1")
    with open(tmp_path / "owner.err", "w") as err:
        owner = subprocess.Popen(
            [sys.executable, "-m", "resnetlab", *train_argv(lab.data, run, *long)],
            env=child_env(),
            stdout=subprocess.DEVNULL,
            stderr=err,
        )
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoints" / "last.pt").exists() and owner.poll() is None:
            assert time.monotonic() < deadline, "the first run wrote no checkpoint in 2 minutes"
            time.sleep(0.05)
        assert owner.poll() is None, (tmp_path / "owner.err").read_text()[-3000:]
        for resume in ([], ["--resume", "auto"]):
            faults.inject("fault", "second writer", argv=" ".join(resume))
            argv = [*train_argv(lab.data, run, *long), *resume]
            second = subprocess.run(
                [sys.executable, "-m", "resnetlab", *argv], env=child_env(), capture_output=True, text=True, timeout=60
            )
            line = error_line(Outcome(argv, second.returncode, second.stdout, second.stderr), "train")
            assert "in use" in line
            assert owner.poll() is None  # the owner goes on undisturbed
        faults.survived(names=["second writer"])
    finally:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
    faults.inject("fault", "kill -9 of the lock owner, then resume")
    stopped = reached(run)
    argv = [*train_argv(lab.data, run, *long, f"train.iterations={stopped + 2}"), "--resume", "auto"]
    resumed = subprocess.run(
        [sys.executable, "-m", "resnetlab", *argv], env=child_env(), capture_output=True, text=True, timeout=180
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert reached(run) == stopped + 2
    faults.survived()


# --- full disk -------------------------------------------------------------------------------------------------


def test_full_disk_during_a_checkpoint_write_keeps_the_previous_one(lab, tmp_path, capsys, monkeypatch, faults):
    """The partial run goes on from iteration 8; the disk is full when it writes iteration 12's checkpoint
    (torch.save fails with ENOSPC, having written some of it)."""
    run = copy_partial(lab, tmp_path / "run")

    def full_disk(obj, f, *args, **kwargs):
        if hasattr(f, "write"):
            f.write(b"PK\x03\x04" + bytes(4096))  # some of it went out before the disk filled
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    faults.inject("fault", "full disk (ENOSPC from torch.save)")
    with monkeypatch.context() as m:
        m.setattr(torch, "save", full_disk)
        outcome = run_cli(partial_argv(lab, run), capsys)
    line = error_line(outcome, "train", alone=False)
    assert "No space left" in line or "cannot write" in line, line
    assert reached(run) == 8  # the previous checkpoint, intact
    resumed = run_cli(partial_argv(lab, run), capsys)
    assert resumed.code == 0, resumed.describe()
    assert_bit_exact(lab, run)
    faults.survived("bit-exact")


# Mounts a small tmpfs (in a mount namespace of its own, so nothing outside sees it), trains into it until the
# disk is full, then copies what is left out of it. Exit 77: the tmpfs could not be mounted.
TMPFS = r"""
small=$1 copy=$2
shift 2
mount -t tmpfs -o size=3m resnetlab-full-disk "$small" 2>"$copy.mount" || exit 77
"$@" >"$copy.out" 2>"$copy.err"
echo $? >"$copy.rc"
cp -a "$small/run" "$copy"
"""


def test_full_disk_on_a_real_tmpfs(lab, tmp_path, capsys, faults):
    """A real ENOSPC: a 3 MiB tmpfs holds a few 0.6 MB checkpoints; every iteration keeps one more."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("no unshare(1) to mount a tmpfs in a private mount namespace")
    small, copy = tmp_path / "small", tmp_path / "copy"
    small.mkdir()
    argv = train_argv(lab.data, small / "run", "train.checkpoint_every=1", "train.keep_every=1")
    namespace = [unshare, "-m"] if os.geteuid() == 0 else [unshare, "-r", "-m"]
    command = [*namespace, "bash", "-c", TMPFS, "bash", str(small), str(copy), sys.executable, "-m", "resnetlab"]
    done = subprocess.run([*command, *argv], env=child_env(), capture_output=True, text=True, timeout=300)
    if not Path(f"{copy}.rc").exists():
        why = Path(f"{copy}.mount").read_text().strip() if Path(f"{copy}.mount").exists() else done.stderr.strip()
        pytest.skip(f"cannot mount a tmpfs here: {why or f'exit {done.returncode}'}")
    faults.inject("fault", "full disk (a real 3 MiB tmpfs)")
    code = int(Path(f"{copy}.rc").read_text())
    outcome = Outcome(argv, code, Path(f"{copy}.out").read_text(), Path(f"{copy}.err").read_text())
    line = error_line(outcome, "train", alone=False)
    assert "No space left" in line or "cannot write" in line, line
    _, state = read_training_checkpoint(copy / "checkpoints" / "last.pt")  # the last one written survived
    assert 1 <= state["iteration"] < 20
    resumed = run_cli([*train_argv(lab.data, copy, "train.checkpoint_every=1"), "--resume", "auto"], capsys)
    assert resumed.code == 0, resumed.describe()
    assert_bit_exact(lab, copy)
    faults.survived("bit-exact")


# --- torn records, bit flips ----------------------------------------------------------------------------------


def test_a_torn_metrics_line_is_a_warning_for_plot_and_resume(lab, tmp_path, capsys, faults):
    run = copy_partial(lab, tmp_path / "run")
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 11, "train_loss": 2.4, "te')  # power lost mid-line
    faults.inject("fault", "torn metrics line")
    plot = run_cli(["plot", run, "--out", tmp_path / "curves.png"], capsys)
    assert plot.code == 0 and plot.exception is None, plot.describe()
    assert "torn" in plot.describe() and (tmp_path / "curves.png").stat().st_size > 0
    resumed = run_cli(partial_argv(lab, run), capsys)
    assert resumed.code == 0, resumed.describe()
    assert_bit_exact(lab, run)  # no torn line left (every line parses), none duplicated
    faults.survived("bit-exact")


@pytest.fixture
def damaged_copy(lab, tmp_path):
    """The reference's checkpoints folder, copied (with whatever sits beside last.pt), last.pt bit-flipped."""
    folder = Path(shutil.copytree(lab.reference / "checkpoints", tmp_path / "checkpoints"))
    flip_bit(folder / "last.pt")
    return folder / "last.pt"


def _use(command: str, checkpoint: Path, lab: Lab, tmp_path: Path) -> list:
    return {
        "eval": ["eval", "--checkpoint", checkpoint, "--json", "--out", tmp_path / "eval"],
        "predict": ["predict", "--checkpoint", checkpoint, lab.image, "--json"],
        "export": [
            "export",
            "--checkpoint",
            checkpoint,
            "--format",
            "safetensors",
            "--out",
            tmp_path / "x.safetensors",
        ],
    }[command]


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_a_bit_flipped_checkpoint_is_refused(lab, tmp_path, capsys, damaged_copy, command, faults):
    faults.inject("fault", "bit flip in a checkpoint", command=command)
    line = error_line(run_cli(_use(command, damaged_copy, lab, tmp_path), capsys), command)
    assert damaged_copy.name in line
    assert not (tmp_path / "x.safetensors").exists()
    faults.survived()


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_a_bit_flipped_export_is_refused(lab, tmp_path, capsys, command, faults):
    export = tmp_path / "exported" / "model.safetensors"
    made = run_cli(["export", "--checkpoint", lab.reference / "checkpoints/last.pt", "--format", "safetensors",
                    "--out", export], capsys)  # fmt: skip
    assert made.code == 0, made.describe()
    flip_bit(export)
    faults.inject("fault", "bit flip in an export", command=command)
    line = error_line(run_cli(_use(command, export, lab, tmp_path), capsys), command)
    assert export.name in line
    faults.survived()


@pytest.mark.parametrize("fallback", ["previous", "iter"])
def test_resume_auto_falls_back_from_a_damaged_last_checkpoint(lab, tmp_path, capsys, fallback, faults):
    """last.pt bit-flipped: the resume takes the newest intact checkpoint (previous.pt, kept by every save, or
    an iter_*.pt copy), says so, and still ends bit-identical."""
    run = copy_partial(lab, tmp_path / "run")
    checkpoints = run / "checkpoints"
    if fallback == "previous":
        assert (checkpoints / "previous.pt").is_file(), "each save keeps the checkpoint before it as previous.pt"
        for kept in checkpoints.glob("iter_*.pt"):
            kept.unlink()
    else:
        (checkpoints / "previous.pt").unlink(missing_ok=True)
    flip_bit(checkpoints / "last.pt")
    faults.inject("fault", "bit flip in last.pt before --resume auto", fallback=fallback)
    outcome = run_cli(partial_argv(lab, run), capsys)
    assert outcome.code == 0, outcome.describe()
    said = "\n".join(outcome.stderr_lines)
    assert ("previous.pt" if fallback == "previous" else "iter_0000008.pt") in said, said
    assert_bit_exact(lab, run)
    faults.survived("bit-exact")


# --- divergence and NaN -----------------------------------------------------------------------------------------


def test_divergence_stops_at_a_finite_checkpoint_that_predict_and_eval_can_use(lab, tmp_path, capsys, faults):
    """The checkpoint the error names holds finite tensors. Its network may still overflow float32 in a
    forward pass (weights after a step at lr 1e6); then predict and eval refuse with one line: either way no
    NaN is ever printed with exit 0."""
    run = tmp_path / "run"
    argv = train_argv(lab.data, run, "optim.lr=1e6", "train.checkpoint_every=1", "train.log_every=1")
    faults.inject("fault", "divergence (lr 1e6)")
    line = error_line(run_cli(argv, capsys), "train", alone=False)
    named = [Path(p) for p in re.findall(r"(/\S+?\.pt)\b", line)]
    assert named and named[0].is_file(), f"the line names no checkpoint file: {line}"
    state = load_checkpoint(named[0])
    assert all_finite(state["model"]) and all_finite(state["optimizer"]), f"{named[0]} holds NaN or inf"
    predicted = run_cli(["predict", "--checkpoint", named[0], lab.image, "--json"], capsys)
    if predicted.code == 0:
        assert finite_numbers(json.loads(predicted.out))
    else:
        assert "NaN or infinite" in error_line(predicted, "predict")
    evaluated = run_cli(["eval", "--checkpoint", named[0], "--json", "--out", tmp_path / "eval"], capsys)
    if evaluated.code == 0:
        assert finite_numbers(json.loads(evaluated.out))
    else:
        assert "NaN or infinite" in error_line(evaluated, "eval")
    faults.survived()


def test_a_non_finite_buffer_is_never_checkpointed(lab, tmp_path, capsys, monkeypatch, faults):
    """The partial run goes on from iteration 8; a BN running variance turns NaN in its first step while the
    loss stays finite (training normalises with batch statistics): iteration 12's checkpoint must not be written."""
    run = copy_partial(lab, tmp_path / "run")
    real = trainer.train_step

    def poisoned(model, *args, **kwargs):
        out = real(model, *args, **kwargs)
        bn = next(m for m in model.modules() if isinstance(m, nn.BatchNorm2d))
        bn.running_var.fill_(float("nan"))
        return out

    monkeypatch.setattr(trainer, "train_step", poisoned)
    faults.inject("fault", "NaN in a BatchNorm buffer")
    error_line(run_cli(partial_argv(lab, run), capsys), "train", alone=False)
    for path in (run / "checkpoints").glob("*.pt"):
        assert all_finite(load_checkpoint(path)["model"]), f"{path} holds NaN"
    assert reached(run) == 8
    faults.survived()


@pytest.mark.parametrize("poison", ["nan", "inf"])
def test_non_finite_weights_are_refused_by_import_weights(tmp_path, capsys, poison, faults):
    import torchvision

    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer2.0.conv1.weight"][0, 0, 0, 0] = float(poison)
    weights = tmp_path / "resnet18.pth"
    torch.save(state, weights)
    out = tmp_path / "out" / "imported.pt"
    faults.inject("fault", f"{poison} in imported weights")
    line = error_line(run_cli(["import-weights", "torchvision", weights, "--model", "resnet18", "--out", out], capsys),
                      "import-weights")  # fmt: skip
    assert weights.name in line
    assert not out.parent.exists() or not list(out.parent.iterdir()), "nothing is written"
    faults.survived()


def _write_poisoned(state: dict, path: Path) -> Path:
    """``state`` as a checkpoint file: through resnetlab's writer, or torch.save if that writer refuses
    non-finite weights itself."""
    try:
        return save_checkpoint(state, path)
    except Exception:  # noqa: BLE001 - a writer that checks for NaN: write the damage around it
        torch.save(state, path)
        return path


@pytest.mark.parametrize("poison", ["nan weight", "inf running_var"])
@pytest.mark.parametrize("command", ["predict", "eval"])
def test_a_checkpoint_with_non_finite_weights_is_refused(lab, tmp_path, capsys, command, poison, faults):
    state = load_checkpoint(lab.reference / "checkpoints" / "last.pt")
    key = next(k for k in state["model"] if k.endswith("conv2.weight" if poison == "nan weight" else "running_var"))
    tensor = state["model"][key]
    tensor[(0,) * tensor.dim()] = float(poison.split()[0])
    path = _write_poisoned(state, tmp_path / "poisoned" / "last.pt")
    faults.inject("fault", "non-finite weights in a checkpoint", command=command, poison=poison)
    error_line(run_cli(_use(command, path, lab, tmp_path), capsys), command)
    faults.survived()


# --- malicious pickles --------------------------------------------------------------------------------------


def test_the_malicious_pickle_is_live(tmp_path):
    """The control: unpickled without weights_only, the payload runs (so the refusals below mean something)."""
    path, marker = tmp_path / "evil.pt", tmp_path / "ran"
    torch.save({"model": Evil(marker)}, path)
    torch.load(path, weights_only=False)
    assert marker.exists()


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy-pickle"])
@pytest.mark.parametrize("command", ["eval", "predict", "export", "import-weights", "train --resume"])
def test_a_malicious_pickle_is_refused_and_never_runs(lab, tmp_path, capsys, command, legacy, faults):
    marker, path = tmp_path / "pwned", tmp_path / "evil.pt"
    payload = {"conv1.weight": Evil(marker)} if command == "import-weights" else {"model": Evil(marker)}
    torch.save(payload, path, _use_new_zipfile_serialization=not legacy)
    argv = {
        "import-weights": ["import-weights", "torchvision", path, "--model", "resnet18", "--out", tmp_path / "x.pt"],
        "train --resume": [*train_argv(lab.data, tmp_path / "run"), "--resume", path],
    }.get(command) or _use(command, path, lab, tmp_path)
    faults.inject("fault", "malicious pickle", command=command, legacy=legacy)
    error_line(run_cli(argv, capsys), command.split()[0])
    assert not marker.exists(), "the pickle's code ran"
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.safetensors").exists()
    faults.survived()


# --- resumes into the wrong place, or with changes ----------------------------------------------------------


def test_resume_into_another_run_is_refused_and_changes_nothing(lab, tmp_path, capsys, faults):
    other = tmp_path / "other"
    train(apply_overrides(get_preset(PRESET), tiny_sets(lab.data, "train.seed=4", "train.iterations=4")), other)
    capsys.readouterr()
    mine = copy_partial(lab, tmp_path / "mine")
    before, before_mine = snapshot(other), snapshot(mine)
    argv = [*train_argv(lab.data, other, "train.keep_every=4"), "--resume", mine / "checkpoints" / "last.pt"]
    faults.inject("fault", "--resume PATH into another run's directory")
    error_line(run_cli(argv, capsys), "train")
    assert snapshot(other) == before, "the other run's directory changed"
    assert snapshot(mine) == before_mine
    faults.survived()


BREAKING = [
    ("optim.batch_size", "64"),
    ("data.train_subset", "128"),
    ("train.seed", "4"),
    ("optim.lr", "0.05"),
    ("schedule.milestones", "12,16"),
    ("data.dataset", "mnist"),
]


@pytest.mark.parametrize("key, value", BREAKING, ids=[key for key, _ in BREAKING])
def test_a_resume_that_breaks_exactness_is_refused_with_the_differences(lab, tmp_path, capsys, key, value, faults):
    run = copy_partial(lab, tmp_path / "run")
    before = snapshot(run)
    faults.inject("fault", "resume with a changed setting", key=key)
    line = error_line(run_cli(partial_argv(lab, run, f"{key}={value}", "train.iterations=9"), capsys), "train")
    assert re.search(rf"{re.escape(key)}: \S.* -> \S", line), line
    assert "train.iterations" not in line  # an allowed change is not a difference
    assert snapshot(run) == before
    faults.survived()


def test_accept_resume_changes_goes_on_and_records_them(lab, tmp_path, capsys, faults):
    run = copy_partial(lab, tmp_path / "run")
    faults.inject("fault", "resume with a changed setting, accepted")
    argv = [*partial_argv(lab, run, "optim.lr=0.05", "train.iterations=9"), "--accept-resume-changes"]
    outcome = run_cli(argv, capsys)
    assert outcome.code == 0, outcome.describe()
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    (event,) = [r for r in records if r.get("event") == "resume_changes"]
    assert event["iteration"] == 8 and "optim.lr" in event["changes"], event
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 9
    faults.survived()


def test_changes_that_keep_exactness_need_no_flag(lab, tmp_path, capsys):
    run = copy_partial(lab, tmp_path / "run")
    argv = partial_argv(
        lab,
        run,
        "train.iterations=11",
        "train.eval_every=3",
        "train.checkpoint_every=2",
        "train.log_every=1",
        "train.keep_every=5",
        "train.device=auto",
    )
    outcome = run_cli(argv, capsys)
    assert outcome.code == 0, outcome.describe()
    assert load_checkpoint(run / "checkpoints" / "last.pt")["iteration"] == 11


# --- the ONNX cache of eval and predict (issue 20, items 9 and 10) -------------------------------------------

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("onnx", "onnxscript", "onnxruntime")),
    reason="the optional extra resnetlab[onnx] is not installed",
)


@dataclass
class Cache:
    """Three networks on one ImageNet-layout folder and a cache holding each one's ONNX export (made once):
    ``ours`` is the one evaluated, ``other`` another of the same shape, ``two`` one with two classes."""

    data: Path
    ours: Path
    other: Path
    two: Path
    cache: Path


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory):
    from resnetlab.deploy import load_inference

    from test_eval import make_checkpoint, write_val_folder

    root = tmp_path_factory.mktemp("onnx-cache")
    data = write_val_folder(root / "imagenet")
    nets = [
        make_checkpoint(root / "ours.pt", data_dir=data, seed=11),
        make_checkpoint(root / "other.pt", data_dir=data, seed=12),
        make_checkpoint(root / "two.pt", data_dir=data, seed=13, classes=["cat", "dog"]),
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("RESNETLAB_CACHE", str(root / "cache"))
        for net in nets:
            load_inference(net, runtime="onnxruntime")
    return Cache(data, *nets, root / "cache")


def _entry(checkpoint: Path) -> Path:
    from resnetlab.deploy import onnx_cache_path, read_bundle

    return onnx_cache_path(read_bundle(checkpoint))


def _flip_in_largest_initializer(path: Path, bit: int) -> None:
    """Flip ``bit`` (0: the lowest mantissa bit; 30: the exponent's top bit) of the float32 in the middle of
    the largest weight of the ONNX file ``path``: the file still parses, the network computes another
    function (an exponent flip: NaN or infinite scores)."""
    import onnx

    raw = path.read_bytes()
    weight = max(onnx.load_from_string(raw).graph.initializer, key=lambda t: len(t.raw_data)).raw_data
    start = raw.find(weight)
    assert start > 0 and len(weight) >= 64
    offset = start + len(weight) // 2 // 4 * 4 + bit // 8  # little-endian float32
    damaged = bytearray(raw)
    damaged[offset] ^= 1 << (bit % 8)
    path.write_bytes(bytes(damaged))


def _tamper(case: str, c: Cache) -> None:
    ours, other, two = _entry(c.ours), _entry(c.other), _entry(c.two)
    if case == "another-networks-export":
        shutil.copyfile(other, ours)
    elif case == "another-networks-export-and-sidecar":
        shutil.copyfile(other, ours)
        shutil.copyfile(other.with_suffix(".json"), ours.with_suffix(".json"))
    elif case == "a-two-class-networks-export":
        shutil.copyfile(two, ours)
        shutil.copyfile(two.with_suffix(".json"), ours.with_suffix(".json"))
    elif case == "a-symlink-to-another-export":
        ours.unlink()
        ours.symlink_to(other)
    elif case == "a-mantissa-bit-flip":
        _flip_in_largest_initializer(ours, 0)
    elif case == "an-exponent-bit-flip":
        _flip_in_largest_initializer(ours, 30)
    elif case == "no-sidecar":
        ours.with_suffix(".json").unlink()
    elif case == "a-garbage-sidecar":
        ours.with_suffix(".json").write_text("{not json")
    else:
        raise ValueError(case)


TAMPERING = [
    "another-networks-export",
    "another-networks-export-and-sidecar",
    "a-two-class-networks-export",
    "a-symlink-to-another-export",
    "a-mantissa-bit-flip",
    "an-exponent-bit-flip",
    "no-sidecar",
    "a-garbage-sidecar",
]


@needs_onnx
@pytest.mark.parametrize("case", TAMPERING)
def test_a_tampered_onnx_cache_entry_is_exported_again(onnx_cache, tmp_path, capsys, monkeypatch, case, faults):
    """The cached export is trusted by nothing but its own SHA-256 (kept in its sidecar with the network's
    digest): replaced, linked or bit-flipped, it is exported again with a one-line note, and eval and predict
    give the torch runtime's answers. Before: another network's accuracy and classes (89.67% for 83.67%), a
    link followed, a mantissa flip passed, a two-class export a traceback, an exponent flip blamed on the
    intact checkpoint ("a run that diverged?")."""
    from resnetlab.deploy import runtimes

    cache = Path(shutil.copytree(onnx_cache.cache, tmp_path / "cache", symlinks=True))
    monkeypatch.setenv("RESNETLAB_CACHE", str(cache))
    other_bytes = _entry(onnx_cache.other).read_bytes()
    _tamper(case, onnx_cache)
    faults.inject("fault", f"onnx cache: {case}")
    image = next((onnx_cache.data / "val" / "cat").glob("*.png"))
    by_torch = run_cli(["predict", "--checkpoint", onnx_cache.ours, image, "--json", "--runtime", "torch"], capsys)
    before = runtimes.EXPORTS
    by_ort = run_cli(["predict", "--checkpoint", onnx_cache.ours, image, "--json"], capsys)
    assert by_ort.code == 0 and by_ort.exception is None, by_ort.describe()
    (note,) = by_ort.stderr_lines
    assert note.startswith("note: exported") and "again" in note, note
    assert runtimes.EXPORTS == before + 1
    (a,), (b,) = json.loads(by_ort.out), json.loads(by_torch.out)
    assert [r["class"] for r in a["top"]] == [r["class"] for r in b["top"]]
    assert [r["probability"] for r in a["top"]] == pytest.approx([r["probability"] for r in b["top"]], abs=1e-4)
    ours = _entry(onnx_cache.ours)
    assert not ours.is_symlink() and _entry(onnx_cache.other).read_bytes() == other_bytes  # the link's target kept
    evals = {}
    for runtime in ("torch", "onnxruntime"):
        argv = ["eval", "--checkpoint", onnx_cache.ours, "--json", "--workers", "0", "--runtime", runtime]
        outcome = run_cli([*argv, "--out", tmp_path / runtime], capsys)
        assert outcome.code == 0 and outcome.stderr_lines == [], outcome.describe()  # verified: no note
        evals[runtime] = json.loads(outcome.out)
    assert evals["onnxruntime"]["top1_error"] == evals["torch"]["top1_error"]
    assert runtimes.EXPORTS == before + 1  # the new entry was used as it is
    faults.survived()


def _unwritable_cache(tmp_path: Path, how: str) -> Path:
    if how == "not-creatable":
        blocker = tmp_path / "a-file"
        blocker.write_text("x")
        return blocker / "cache"  # mkdir fails (NotADirectoryError) for every user, root included
    cache = tmp_path / "read-only-cache"
    (cache / "onnx").mkdir(parents=True)
    for folder in (cache / "onnx", cache):
        folder.chmod(0o555)
    if os.access(cache / "onnx", os.W_OK):
        pytest.skip("this user (root) may write into a read-only directory")
    return cache


@needs_onnx
@pytest.mark.parametrize("how", ["not-creatable", "read-only"])
def test_an_unwritable_onnx_cache_falls_back_to_torch(onnx_cache, tmp_path, capsys, monkeypatch, how, faults):
    """The default runtime needs an export the cache cannot take: torch runs the network, with a one-line note
    after the output (before: predict failed). Asked for by name, onnxruntime is a one-line error naming the
    cache and RESNETLAB_CACHE."""
    monkeypatch.setenv("RESNETLAB_CACHE", str(_unwritable_cache(tmp_path, how)))
    faults.inject("fault", f"onnx cache {how}")
    image = next((onnx_cache.data / "val" / "cat").glob("*.jpg"))
    outcome = run_cli(["predict", "--checkpoint", onnx_cache.ours, image, "--json"], capsys)
    assert outcome.code == 0 and json.loads(outcome.out)[0]["top"], outcome.describe()
    (note,) = outcome.stderr_lines
    assert note.startswith("note: running with torch") and "RESNETLAB_CACHE" in note, note
    argv = ["eval", "--checkpoint", onnx_cache.ours, "--workers", "0", "--out", tmp_path / "e"]
    outcome = run_cli(argv, capsys)
    assert outcome.code == 0 and "top-1" in outcome.out.lower(), outcome.describe()
    assert [line for line in outcome.stderr_lines if line.startswith("note: running with torch")], outcome.describe()
    refused = run_cli(["predict", "--checkpoint", onnx_cache.ours, image, "--runtime", "onnxruntime"], capsys)
    assert "RESNETLAB_CACHE" in error_line(refused, "predict")
    faults.survived()


@needs_onnx
def test_a_read_only_cache_with_a_valid_entry_is_used(onnx_cache, tmp_path, capsys, monkeypatch):
    from resnetlab.deploy import runtimes

    cache = Path(shutil.copytree(onnx_cache.cache, tmp_path / "cache"))
    for folder in (cache / "onnx", cache):
        folder.chmod(0o555)
    monkeypatch.setenv("RESNETLAB_CACHE", str(cache))
    before = runtimes.EXPORTS
    image = next((onnx_cache.data / "val" / "cat").glob("*.jpg"))
    outcome = run_cli(["predict", "--checkpoint", onnx_cache.ours, image, "--runtime", "onnxruntime"], capsys)
    assert outcome.code == 0 and outcome.stderr_lines == [] and runtimes.EXPORTS == before, outcome.describe()


@pytest.mark.parametrize("how", ["blocked", "read-only"])
def test_eval_beside_a_read_only_checkpoint_still_evaluates(onnx_cache, tmp_path, capsys, how, faults):
    """eval's default --out is beside the checkpoint (``last-eval/`` for ``last.pt``); a folder that cannot be
    written there no longer refuses the evaluation: it is printed, and a note says the files were not written
    and how to keep them. (``blocked``: a file in the way of the folder, which stops root too.)"""
    folder = tmp_path / "shared"
    folder.mkdir()
    checkpoint = Path(shutil.copy(onnx_cache.ours, folder / "last.pt"))
    if how == "blocked":
        (folder / "last-eval").write_text("in the way")
    else:
        folder.chmod(0o555)
        if os.access(folder, os.W_OK):
            pytest.skip("this user (root) may write into a read-only directory")
    faults.inject("fault", f"eval beside a checkpoint: {how}")
    for extra in ([], ["--json"]):
        outcome = run_cli(["eval", "--checkpoint", checkpoint, "--workers", "0", "--runtime", "torch", *extra], capsys)
        assert outcome.code == 0, outcome.describe()
        (note,) = outcome.stderr_lines
        assert "last-eval" in note and "--out" in note, note
    assert json.loads(outcome.out)["files"] == [] and "top1_error" in json.loads(outcome.out)
    given = run_cli(["eval", "--checkpoint", checkpoint, "--workers", "0", "--runtime", "torch", "--out",
                     folder / "last-eval" / "x"], capsys)  # fmt: skip
    if how == "blocked":  # a folder asked for by name that cannot be written: still the one-line error
        assert "--out" in error_line(given, "eval")
    faults.survived()


def test_resuming_a_finished_run_reports_its_final_error(lab, tmp_path, capsys):
    """--resume auto on a run that has already done its iterations evaluates nothing; it reported "final test
    error nan%" with exit 0. It reports the run's recorded final error."""
    run = Path(shutil.copytree(lab.reference, tmp_path / "run"))
    outcome = run_cli([*train_argv(lab.data, run), "--resume", "auto"], capsys)
    assert outcome.code == 0, outcome.describe()
    final = [r for r in metrics(lab.reference) if "test_top1_error" in r][-1]["test_top1_error"]
    assert "nan%" not in outcome.out and f"final test error {final:.2%}" in outcome.out, outcome.out


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs tensorboard")
def test_a_run_folder_whose_name_is_not_utf8(lab, tmp_path, capsys, monkeypatch, faults):
    """tensorboard encodes its paths as UTF-8: before, such an --out was a 33-line traceback. ``auto`` trains
    without the mirror and says so in one line; ``on`` is refused in one line before anything is written; the
    curves are still drawn (the folder's name shown with U+FFFD) and ``done:`` prints the name's own bytes even
    where stdout is strict UTF-8."""
    import io

    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict"))
    run = Path(os.fsdecode(os.fsencode(tmp_path) + b"/caf\xe9"))
    faults.inject("bad_input", "train --out not UTF-8")
    outcome = run_cli([*train_argv(lab.data, run, "train.iterations=2"), "--set", "train.tensorboard=auto"], capsys)
    assert outcome.code == 0 and outcome.exception is None, outcome.describe()
    notes = [line for line in outcome.stderr_lines if line.startswith("note:")]
    assert len(notes) == 1 and "UTF-8" in notes[0] and "TensorBoard" in notes[0], outcome.describe()
    assert (run / "metrics.jsonl").is_file() and (run / "curves.png").is_file() and not (run / "tensorboard").exists()
    other = Path(os.fsdecode(os.fsencode(tmp_path) + b"/th\xe9"))
    line = error_line(run_cli([*train_argv(lab.data, other), "--set", "train.tensorboard=on"], capsys), "train")
    assert "UTF-8" in line and "train.tensorboard=off" in line and not other.exists()
    faults.survived()
