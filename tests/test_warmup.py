"""The ResNet-110 warm-up (Sec. 4.2) through the trainer: lr 0.01 until the running training error is below
the threshold, then the base lr; the switch is decided on the global (all-rank) training error."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import resnetlab.data.datasets as datasets
import resnetlab.engine.trainer as trainer
from resnetlab.checkpoint import load_checkpoint
from resnetlab.config import apply_overrides
from resnetlab.engine import train
from resnetlab.presets import get_preset

WINDOW = 20  # LRSchedule's default warm-up window: the running error is the mean of the last 20 steps
OVERRIDES = [
    "data.dataset=synthetic",
    "data.augment=false",
    "model.name=cifar_resnet8",
    "optim.batch_size=16",
    "train.eval_every=10",
    "train.log_every=10",
    "train.deterministic=true",
    "train.seed=0",
]
# 256 random 8x8 images instead of the CIFAR-sized 50k/10k default: the run then takes about a second.
TINY_SYNTHETIC = {"num_train": 256, "num_test": 32, "image_size": 8}


def first_switch(errors: list[float], threshold: float, window: int = WINDOW) -> int | None:
    """The number of steps done when the running error of the last ``window`` steps first falls below
    ``threshold``: the warm-up's last step (the next one runs at the base lr). None if it never does."""
    for done in range(window, len(errors) + 1):
        if sum(errors[done - window : done]) / window < threshold:
            return done
    return None


def test_first_switch_needs_a_full_window():
    assert first_switch([0.0] * 19, 0.8) is None
    assert first_switch([0.0] * 20, 0.8) == 20
    assert first_switch([1.0] * 20 + [0.0] * 10, 0.8) == 25  # 15 / 20 = 0.75 after five good steps


def _warmup_config(*extra: str):
    config = apply_overrides(get_preset("cifar10-resnet110"), [*OVERRIDES, *extra])
    assert (config.schedule.warmup_lr, config.optim.lr) == (0.01, 0.1)  # the paper's warm-up and base lr
    return config


def _events(run: Path) -> tuple[list[dict], list[dict]]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r.get("event") == "warmup_done"], [r for r in records if "test_top1_error" in r]


def test_warmup_switches_at_the_first_running_error_below_the_threshold(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    real_dataset, real_step = datasets.synthetic_dataset, trainer.train_step
    monkeypatch.setattr(datasets, "synthetic_dataset", lambda **kw: real_dataset(**{**TINY_SYNTHETIC, **kw}))
    steps: list[tuple[float, float]] = []  # (lr, training error) of every step, as the trainer ran it

    def recording_step(model, optimizer, images, labels, lr, **kw):
        loss, mistakes = real_step(model, optimizer, images, labels, lr, **kw)
        steps.append((lr, mistakes.item() / len(labels)))
        return loss, mistakes

    monkeypatch.setattr(trainer, "train_step", recording_step)
    # The threshold is lower than the paper's 80% because this tiny task starts below 80% running error;
    # at 30% the switch falls well inside the run (iteration 28 of 40 here), not at the first full window.
    threshold = 0.3
    run = tmp_path / "run"
    train(_warmup_config("train.iterations=40", f"schedule.warmup_until_error={threshold}"), run, progress=False)

    lrs, errors = [lr for lr, _ in steps], [e for _, e in steps]
    switch = first_switch(errors, threshold)
    assert switch is not None and WINDOW < switch < 40, f"running errors never crossed {threshold} mid-run"
    done, evals = _events(run)
    assert done == [{"iteration": switch, "event": "warmup_done", "lr": 0.1}]
    assert lrs[:switch] == [0.01] * switch  # the warm-up, up to the step that brought the error below
    assert lrs[switch:] == [0.1] * (40 - switch)  # then back to the base lr (not left at 0.01)
    assert [r["iteration"] for r in evals] == [10, 20, 30, 40]
    assert [r["lr"] for r in evals] == [0.01 if r["iteration"] <= switch else 0.1 for r in evals]
    assert load_checkpoint(run / "checkpoints/last.pt")["schedule"]["warmup_done_at"] == switch


SCRIPT = """
import json, os, sys, torch
import resnetlab.data.datasets as datasets
import resnetlab.engine.trainer as trainer
from resnetlab.config import apply_overrides
from resnetlab.engine import train
from resnetlab.presets import get_preset

out, overrides, tiny = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
real_dataset, real_step = datasets.synthetic_dataset, trainer.train_step
datasets.synthetic_dataset = lambda **kw: real_dataset(**{**tiny, **kw})
rank, lrs = int(os.environ["RANK"]), []  # torchrun's; train() leaves the process group when it ends

def scripted_step(model, optimizer, images, labels, lr, **kw):
    # A real (DDP) step, whose mistakes are then replaced by a script: rank 0 gets every image wrong,
    # rank 1 all of them for 20 steps and then a quarter. Rank 1 alone would end the warm-up after step 26,
    # rank 0 alone never; on the global error (mean 62.5% from step 21) it ends at step 31.
    loss, mistakes = real_step(model, optimizer, images, labels, lr, **kw)
    rate = 1.0 if rank == 0 or len(lrs) < 20 else 0.25
    lrs.append(lr)
    return loss, torch.full_like(mistakes, round(rate * len(labels)))

trainer.train_step = scripted_step
train(apply_overrides(get_preset("cifar10-resnet110"), overrides), out, progress=False)
with open(f"{out}.rank{rank}.json", "w") as f:
    json.dump(lrs, f)
"""


def test_two_processes_switch_together_on_the_global_error(tmp_path):
    rank0 = [1.0] * 36
    rank1 = [1.0] * 20 + [0.25] * 16
    world = [(a + b) / 2 for a, b in zip(rank0, rank1)]  # equal shares of the global batch
    assert (first_switch(rank0, 0.8), first_switch(rank1, 0.8), first_switch(world, 0.8)) == (None, 26, 31)

    script = tmp_path / "warmup.py"
    script.write_text(textwrap.dedent(SCRIPT))
    run = tmp_path / "run"
    overrides = [*OVERRIDES, "train.iterations=36"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(script)]
    cmd += [str(run), json.dumps(overrides), json.dumps(TINY_SYNTHETIC)]
    env = {**os.environ, "RESNETLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]

    lrs = [json.loads(Path(f"{run}.rank{rank}.json").read_text()) for rank in (0, 1)]
    assert lrs[0] == lrs[1] == [0.01] * 31 + [0.1] * 5  # both ranks leave the warm-up after step 31
    done, _ = _events(run)
    assert done == [{"iteration": 31, "event": "warmup_done", "lr": 0.1}]
    assert json.loads((run / "env.json").read_text())["world_size"] == 2
