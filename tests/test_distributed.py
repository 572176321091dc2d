"""torchrun with 2 gloo processes on the CPU: the same training as one process, every test image once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from resnetlab import runtime

from test_train import metrics, write_idx

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone"]


def _run(cmd: list[str], tmp_path: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "RESNETLAB_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def test_two_processes_follow_the_single_process_loss_trajectory(tmp_path):
    data = write_idx(tmp_path / "fashion-mnist", n_train=256, n_test=101)
    # Global batch 32: two ranks of 16, or one process whose BN uses groups of 16 (model.bn_group), which
    # is what per-rank BN statistics are. Same data order and augmentation: both split one global batch.
    args = [
        "-m",
        "resnetlab",
        "train",
        "--preset",
        "fashion-mnist-resnet20",
        "--data-dir",
        str(data),
        "--iterations",
        "12",
        "--eval-every",
        "3",
        "--batch-size",
        "32",
        "--set",
        "model.name=cifar_resnet8",
        "--set",
        "model.bn_group=16",
        "--set",
        "train.log_every=3",
        "--set",
        "schedule.milestones=6,9",
        "--set",
        "data.augment=true",
    ]
    _run([sys.executable, *args, "--out", str(tmp_path / "one")], tmp_path)
    _run([*TORCHRUN, "--nproc_per_node=2", *args, "--out", str(tmp_path / "two")], tmp_path)
    one, two = metrics(tmp_path / "one"), metrics(tmp_path / "two")
    assert [r["iteration"] for r in one] == [r["iteration"] for r in two] == [3, 6, 9, 12]
    for a, b in zip(one, two):
        # float drift from the different reduction order grows over the steps (about 2e-4 after 12)
        assert b["train_loss"] == pytest.approx(a["train_loss"], rel=1e-3, abs=1e-5)
        assert b["train_error"] == pytest.approx(a["train_error"], abs=1 / 96 + 1e-9)  # at most one image flips
        assert a["test_images"] == b["test_images"] == 101
    env = json.loads((tmp_path / "two" / "env.json").read_text())
    assert env["world_size"] == 2
    assert not (tmp_path / "two" / "metrics.jsonl.tmp").exists()


SCRIPT = """
import json, sys, torch
from resnetlab.data import InMemoryLoader
from resnetlab import runtime
from resnetlab.engine.loop import evaluate
from resnetlab.models import create_model

device = torch.device("cpu")
runtime.init_distributed(device)
rank, world = runtime.get_rank(), runtime.get_world_size()
g = torch.Generator().manual_seed(0)
images = torch.randint(0, 256, (101, 3, 32, 32), dtype=torch.uint8, generator=g)
labels = torch.randint(0, 10, (101,), generator=g)
torch.manual_seed(0)
model = create_model("cifar_resnet8")
loader = InMemoryLoader(images, labels, batch_size=16, mean=images.float().mean(0), train=False,
                        rank=rank, world_size=world)
result = evaluate(model, loader, device, num_classes=10, amp=False)
if rank == 0:
    print(json.dumps(result))
runtime.destroy()
"""


def test_evaluation_counts_every_image_once_with_an_uneven_split(tmp_path):
    script = tmp_path / "evaluate.py"
    script.write_text(textwrap.dedent(SCRIPT))
    single = json.loads(_run([sys.executable, str(script)], tmp_path).stdout.strip().splitlines()[-1])
    double = json.loads(_run([*TORCHRUN, "--nproc_per_node=2", str(script)], tmp_path).stdout.strip().splitlines()[-1])
    assert single["images"] == double["images"] == 101  # 51 + 50: nothing padded, nothing counted twice
    assert double["top1_error"] == single["top1_error"] and double["top5_error"] == single["top5_error"]
    assert double["loss"] == pytest.approx(single["loss"], rel=1e-5)


def test_launched_processes_is_torchruns_world_size(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert runtime.launched_processes() == 1  # WORLD_SIZE alone is not torchrun
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "localhost")
    assert runtime.launched_processes() == 4
