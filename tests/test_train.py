"""The training engine end to end on a tiny idx dataset: exact resume, stops, divergence, bad input."""

from __future__ import annotations

import gzip
import json
import os
import signal
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import resnetlab.engine.trainer as trainer
from resnetlab.checkpoint import load_checkpoint
from resnetlab.config import apply_overrides
from resnetlab.engine import train
from resnetlab.engine.rundir import read_record
from resnetlab.errors import UserError
from resnetlab.presets import get_preset

TIMING = {"images_per_s", "images_per_s_all", "data_wait_s", "wall_s"}


def write_idx(folder: Path, n_train: int = 256, n_test: int = 101, seed: int = 0) -> Path:
    """A Fashion-MNIST-shaped idx dataset whose class is visible in the image (a bright row per class)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = rng.integers(0, 10, n).astype(np.uint8)
        images = rng.integers(0, 100, (n, 28, 28)).astype(np.uint8)
        images[np.arange(n), 2 + 2 * labels, :] = 255
        with gzip.open(folder / f"{prefix}-images-idx3-ubyte.gz", "wb") as f:
            f.write(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        with gzip.open(folder / f"{prefix}-labels-idx1-ubyte.gz", "wb") as f:
            f.write(struct.pack(">II", 2049, n) + labels.tobytes())
    return folder


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    return write_idx(tmp_path / "fashion-mnist")


def tiny_sets(data_dir: Path, *extra: str) -> list[str]:
    """The tiny run as ``--set`` values; ``extra`` ones win. 256 images / batch 32 = 8 steps per epoch;
    checkpoints every 4, so iteration 6 is mid-epoch and between checkpoints."""
    return [
        f"data.data_dir={data_dir}",
        "model.name=cifar_resnet8",
        "optim.batch_size=32",
        "optim.lr=0.1",  # pinned: the preset's own schedule is the quick start's and may change
        "train.iterations=20",
        "train.eval_every=5",
        "train.checkpoint_every=4",
        "train.log_every=2",
        "schedule.milestones=10,15",
        "train.deterministic=true",
        "train.seed=3",
        "data.augment=true",
        *extra,
    ]


def tiny_config(data_dir: Path, *extra: str):
    return apply_overrides(get_preset("fashion-mnist-resnet20"), tiny_sets(data_dir, *extra))


def metrics(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMING} for r in records]


def assert_same_weights(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a / "checkpoints/last.pt"), load_checkpoint(b / "checkpoints/last.pt")
    assert sa["iteration"] == sb["iteration"] == 20
    for key in sa["model"]:
        assert torch.equal(sa["model"][key], sb["model"][key]), key
    for key in ("loader", "schedule", "window"):
        assert sa[key] == sb[key], key


def _fail_at(monkeypatch, call: int, action) -> None:
    real = trainer.train_step
    count = {"n": 0}

    def step(*args, **kwargs):
        count["n"] += 1
        if count["n"] == call:
            action()
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", step)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One uninterrupted run, shared by the resume tests."""
    root = tmp_path_factory.mktemp("reference")
    os.environ["RESNETLAB_CACHE"] = str(root / "cache")
    try:
        data = write_idx(root / "fashion-mnist")
        train(tiny_config(data), root / "run", progress=False)
    finally:
        del os.environ["RESNETLAB_CACHE"]
    return root / "run", data


def test_run_directory_records(reference):
    run, _ = reference
    config = json.loads((run / "config.json").read_text())
    env = json.loads((run / "env.json").read_text())
    assert config["model"]["name"] == "cifar_resnet8" and config["train"]["iterations"] == 20
    assert env["torch"] == torch.__version__ and env["device"] == "cpu"
    evals = [r for r in metrics(run) if "test_top1_error" in r]
    assert [r["iteration"] for r in evals] == [5, 10, 15, 20]
    assert {"train_loss", "train_error", "test_top5_error", "lr", "epoch"} <= set(evals[0])
    assert all(r["test_images"] == 101 for r in evals)
    assert [r["lr"] for r in evals] == pytest.approx([0.1, 0.1, 0.01, 0.001])
    assert (run / "curves.png").stat().st_size > 0
    state = load_checkpoint(run / "checkpoints/last.pt")
    # Fashion-MNIST's class names, in label order (torchvision's FashionMNIST.classes)
    assert state["classes"] == [
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ]
    assert set(state["rng"]) >= {"python", "numpy", "torch"}


def test_sigint_mid_epoch_then_resume_is_bit_exact(reference, tmp_path, monkeypatch):
    ref_run, data = reference
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"
    _fail_at(monkeypatch, 7, lambda: signal.raise_signal(signal.SIGINT))  # during the 7th step: mid-epoch
    result = train(tiny_config(data), run, progress=False)
    assert result == {"stopped": True, "iteration": 7}
    saved = load_checkpoint(run / "checkpoints/last.pt")
    assert saved["loader"]["position"] == 7
    # the window since iteration 5 keeps its time with its images: images_per_s after the resume is over both
    assert saved["window"]["images"] == 2 * 32 and saved["window"]["step_time"] > 0
    monkeypatch.undo()
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    train(tiny_config(data), run, resume="auto", progress=False)
    assert_same_weights(ref_run, run)
    assert metrics(run) == metrics(ref_run)


def test_the_trainer_puts_back_the_signal_handlers_it_found(tmp_path, data_dir):
    """The trainer notes SIGINT and SIGTERM only while it trains: once train() or train_packed() returns
    (finished or stopped), the handlers it found are back, so that `timeout` ends a process that trained
    (scripts/gpu_campaign.sh's CUDA tests under `timeout --signal=TERM`)."""
    from resnetlab.engine.packed import train_packed

    def mine(signum, frame):
        raise KeyboardInterrupt

    stops = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.signal(sig, mine) for sig in stops}
    try:
        train(tiny_config(data_dir, "train.iterations=4"), tmp_path / "single", progress=False)
        assert [signal.getsignal(sig) for sig in stops] == [mine, mine]
        outs = [tmp_path / "seed1", tmp_path / "seed2"]
        train_packed(tiny_config(data_dir, "train.iterations=4"), [1, 2], outs, progress=False)
        assert [signal.getsignal(sig) for sig in stops] == [mine, mine]
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def test_crash_between_checkpoints_resumes_from_the_last_one(reference, tmp_path, monkeypatch):
    ref_run, data = reference
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"

    def crash():
        raise RuntimeError("power cut")

    _fail_at(monkeypatch, 11, crash)  # iterations 1..10 done, last checkpoint at 8, metrics logged up to 10
    with pytest.raises(RuntimeError, match="power cut"):
        train(tiny_config(data), run, progress=False)
    assert load_checkpoint(run / "checkpoints/last.pt")["iteration"] == 8
    monkeypatch.undo()
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    with pytest.raises(UserError, match="--resume auto"):
        train(tiny_config(data), run, progress=False)  # never overwrites a run by accident
    train(tiny_config(data), run, resume="auto", progress=False)
    assert_same_weights(ref_run, run)
    assert metrics(run) == metrics(ref_run)  # the records after iteration 8 were rewritten, not duplicated


def test_a_torn_last_metrics_line_is_dropped_then_rewritten_on_resume(reference, tmp_path, monkeypatch):
    """Power lost mid-write leaves half a JSON line: plot and resume warn and go on (issue 10, item 6)."""
    ref_run, data = reference
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    run = tmp_path / "run"

    def crash():
        raise RuntimeError("power cut")

    _fail_at(monkeypatch, 11, crash)
    with pytest.raises(RuntimeError, match="power cut"):
        train(tiny_config(data), run, progress=False)
    with (run / "metrics.jsonl").open("a") as f:
        f.write('{"iteration": 10, "train_loss": 0.5, "tes')  # torn: no end, no newline
    with pytest.warns(UserWarning, match="torn last line"):
        assert [r["iteration"] for r in read_record(run).evals] == [5, 10]
    monkeypatch.undo()
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    with pytest.warns(UserWarning, match="torn last line"):
        train(tiny_config(data), run, resume="auto", progress=False)
    assert metrics(run) == metrics(ref_run)  # the torn line is gone, nothing duplicated


def test_a_damaged_metrics_line_before_the_last_is_a_one_line_error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"iteration": 1}\nnot json\n{"iteration": 2}\n')
    with pytest.raises(UserError, match="line 2 is not JSON"):
        read_record(run)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, data_dir, monkeypatch):
    run = tmp_path / "run"
    real = trainer.train_step
    count = {"n": 0}

    def poisoned(model, optimizer, images, labels, lr, **kw):
        count["n"] += 1
        return real(model, optimizer, images * (float("nan") if count["n"] >= 6 else 1.0), labels, lr, **kw)

    monkeypatch.setattr(trainer, "train_step", poisoned)
    with pytest.raises(trainer.TrainingDiverged, match="NaN or infinite"):
        train(tiny_config(data_dir), run, progress=False)
    state = load_checkpoint(run / "checkpoints/last.pt")
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_validation_split_selects_best_checkpoint(tmp_path, data_dir):
    run = tmp_path / "run"
    train(tiny_config(data_dir, "data.val_split=56", "train.iterations=10"), run, progress=False)
    evals = [r for r in metrics(run) if "val_top1_error" in r]
    assert evals and all(r["val_images"] == 56 and r["test_images"] == 101 for r in evals)
    best = load_checkpoint(run / "checkpoints/best.pt")
    assert best["best_error"] == min(r["val_top1_error"] for r in evals)


def test_checkpoint_loader_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(UserError, match="refusing to load"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


def test_resume_from_a_file_that_is_not_a_training_checkpoint(tmp_path, data_dir):
    weights = tmp_path / "weights.pt"
    torch.save({"fc.weight": torch.zeros(2, 2)}, weights)
    with pytest.raises(UserError, match="not a resnetlab training checkpoint"):
        train(tiny_config(data_dir), tmp_path / "run", resume=str(weights), progress=False)
    with pytest.raises(UserError, match="no checkpoint at"):
        train(tiny_config(data_dir), tmp_path / "run", resume=str(tmp_path / "missing.pt"), progress=False)


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "resnetlab", *args], capture_output=True, text=True, env={**os.environ, **(env or {})}
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (["--preset", "cifar10-resnet2"], "unknown preset"),
        (["--preset", "cifar10-resnet20", "--set", "train.iteration=3"], "unknown --set key"),
        (["--preset", "cifar10-resnet20", "--set", "train.iterations=many"], "takes an integer"),
        (["--preset", "cifar10-resnet20", "--iterations", "ten"], "invalid int value"),
        (["--preset", "cifar10-resnet20", "--data-dir", "/nonexistent/folder"], "/nonexistent/folder"),
    ],
)
def test_train_cli_errors_are_one_line(tmp_path, args, message):
    proc = _cli("train", *args, "--out", str(tmp_path / "run"), env={"RESNETLAB_CACHE": str(tmp_path / "cache")})
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]


def test_train_cli_runs_and_plots(tmp_path, data_dir):
    out = tmp_path / "run"
    proc = _cli(
        "train",
        "--preset",
        "fashion-mnist-resnet20",
        "--data-dir",
        str(data_dir),
        "--out",
        str(out),
        "--iterations",
        "6",
        "--eval-every",
        "3",
        "--batch-size",
        "32",
        "--set",
        "model.name=cifar_resnet8",
        env={"RESNETLAB_CACHE": str(tmp_path / "cache")},
    )
    assert proc.returncode == 0, proc.stderr
    assert "final test error" in proc.stdout
    assert (out / "curves.png").exists()
    plot = _cli("plot", str(out), str(out), "--out", str(tmp_path / "both.png"))
    assert plot.returncode == 0 and (tmp_path / "both.png").stat().st_size > 0
    bad = _cli("plot", str(tmp_path / "nothing"))
    assert bad.returncode == 2 and "not a run directory" in bad.stderr


def test_a_run_cut_short_by_older_code_resumes(tmp_path, data_dir):
    """tests/data/run_635b0b9: this tiny run (amp off, no TensorBoard) stopped by a SIGINT at iteration 7 under
    commit 635b0b9, before issue 21 made one loop of the single and packed ones. It resumes with today's code
    and ends where an uninterrupted run of today's code ends: the same data order and schedule exactly, the
    same records (but for keys added since), and the same weights (to float rounding: its first 7 steps ran on the machine that wrote it)."""
    import shutil

    run, ref = tmp_path / "old", tmp_path / "ref"
    shutil.copytree(Path(__file__).parent / "data" / "run_635b0b9", run)
    config = tiny_config(data_dir, "train.amp=off", "train.tensorboard=off")
    assert load_checkpoint(run / "checkpoints/last.pt")["iteration"] == 7
    train(config, run, resume="auto", progress=False)
    train(config, ref, progress=False)
    old, new = load_checkpoint(run / "checkpoints/last.pt"), load_checkpoint(ref / "checkpoints/last.pt")
    assert old["iteration"] == new["iteration"] == 20
    assert old["loader"] == new["loader"] and old["schedule"] == new["schedule"]
    for key, value in new["model"].items():
        torch.testing.assert_close(old["model"][key], value, rtol=1e-4, atol=1e-5, msg=key)
    assert [r["iteration"] for r in metrics(run)] == [r["iteration"] for r in metrics(ref)]
    for a, b in zip(metrics(run), metrics(ref)):  # the old records lack what later code added ("precision")
        assert a.keys() <= b.keys()
        for key, value in a.items():
            assert value == (pytest.approx(b[key], rel=1e-4, abs=1e-5) if isinstance(value, float) else b[key]), key
