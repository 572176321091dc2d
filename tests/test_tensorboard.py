"""The TensorBoard mirror (issue 14, item 3), read back with TensorBoard's own reader: it equals metrics.jsonl,
a resume draws no step twice, ``off`` writes nothing, ``on`` without tensorboard is one line."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from resnetlab.engine import train
from resnetlab.engine.tensorboard import tag, tensorboard_wanted
from resnetlab.errors import UserError

from test_train import _fail_at, data_dir, tiny_config  # noqa: F401  (data_dir: a fixture)

# The tests that read event files back need tensorboard; `off` and `on`-without-it run everywhere.
needs_tensorboard = pytest.mark.skipif(importlib.util.find_spec("tensorboard") is None, reason="needs tensorboard")
SHORT = ("train.iterations=10",)  # evaluations at 5 and 10, progress every 2, checkpoints at 4 and 8


def board(run: Path):
    """Every point of the run's event files (size_guidance 0: no sampling), orphans purged as TensorBoard does."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def evaluations(run: Path) -> list[dict]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if "test_top1_error" in r]


def assert_mirrors(run: Path, acc) -> None:
    """Every number of every evaluation record is the scalar of its tag at its iteration, and nothing else is."""
    evals = evaluations(run)
    keys = {k for r in evals for k, v in r.items() if k != "iteration" and isinstance(v, int | float)}
    assert {"train/loss", "train/error", "test/top1_error", "test/top5_error", "run/lr", "run/images_per_s"} <= {
        tag(k) for k in keys
    }
    for key in keys:
        points = acc.Scalars(tag(key))
        assert [p.step for p in points] == [r["iteration"] for r in evals], key
        assert [p.value for p in points] == pytest.approx([r[key] for r in evals], rel=1e-6), key  # float32


@needs_tensorboard
def test_scalars_mirror_metrics_jsonl(tmp_path, data_dir):
    run = tmp_path / "run"
    train(tiny_config(data_dir, *SHORT), run, progress=False)
    acc = board(run)
    assert_mirrors(run, acc)
    progress = acc.Scalars("progress/train_loss")
    assert [p.step for p in progress] == [2, 4, 5, 6, 8, 10]  # every log_every step, and each evaluation's
    at_eval = {p.step: p.value for p in progress}
    assert [at_eval[r["iteration"]] for r in evaluations(run)] == pytest.approx(
        [r["train_loss"] for r in evaluations(run)], rel=1e-6
    )  # the same window as the evaluation record's
    assert [p.step for p in acc.Images("curves")] == [10]


@needs_tensorboard
def test_a_resume_draws_no_step_twice(tmp_path, data_dir, monkeypatch):
    run = tmp_path / "run"

    def crash():
        raise RuntimeError("power cut")

    _fail_at(monkeypatch, 7, crash)  # iterations 1..6 done: checkpoint at 4; evaluation at 5, progress at 6
    with pytest.raises(RuntimeError, match="power cut"):
        train(tiny_config(data_dir, *SHORT), run, progress=False)
    assert [p.step for p in board(run).Scalars("progress/train_loss")] == [2, 4, 5, 6]
    monkeypatch.undo()
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    train(tiny_config(data_dir, *SHORT), run, resume="auto", progress=False)
    acc = board(run)
    assert len(list((run / "tensorboard").glob("events.out.tfevents.*"))) == 2  # one file per process
    for name in acc.Tags()["scalars"]:
        steps = [p.step for p in acc.Scalars(name)]
        assert steps == sorted(set(steps)), name  # 5 and 6 were written twice; the first ones are purged
    assert_mirrors(run, acc)
    assert [p.step for p in acc.Scalars("progress/train_loss")] == [2, 4, 5, 6, 8, 10]


def test_off_writes_nothing(tmp_path, data_dir):
    run = tmp_path / "run"
    train(tiny_config(data_dir, "train.iterations=2", "train.tensorboard=off"), run, progress=False)
    assert (run / "metrics.jsonl").is_file() and not (run / "tensorboard").exists()


def test_on_without_tensorboard_is_a_one_line_error(tmp_path, data_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # `import` now raises ImportError
    assert tensorboard_wanted("auto") is False  # auto goes on without the mirror
    with pytest.raises(UserError) as err:
        train(tiny_config(data_dir, "train.iterations=2", "train.tensorboard=on"), tmp_path / "run", progress=False)
    assert "pip install 'resnetlab[tensorboard]'" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything is written
