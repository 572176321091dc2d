"""resnetlab eval under torchrun with 2 gloo processes on the CPU: every image counted exactly once.

Both data paths are checked with an odd number of images, so the shards are uneven: the in-memory split
(single view through InMemoryLoader, 10-crop through a DataLoader) and image files (multi-scale).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from resnetlab.evaluation import evaluate_checkpoint

from test_eval import make_checkpoint, write_val_folder
from test_train import write_idx

SCRIPT = """
import json, sys
import torch
from resnetlab import runtime
from resnetlab.evaluation import evaluate_checkpoint

runtime.init_distributed(torch.device("cpu"))
out = {}
for name, path, view in [("idx-single", sys.argv[1], "single"), ("idx-10crop", sys.argv[1], "10crop"),
                         ("files-multiscale", sys.argv[2], "multiscale")]:
    r = evaluate_checkpoint(path, view=view, workers=0)
    out[name] = {"images": r.images, "confusion": r.confusion, "top1": r.top1_error, "top5": r.top5_error,
                 "loss": r.loss, "world": r.world_size}
if runtime.is_main_process():
    print(json.dumps(out))
runtime.destroy()
"""


def test_two_ranks_count_every_image_once(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    data = write_idx(tmp_path / "fashion-mnist", n_train=40, n_test=101)
    classes = [f"c{i}" for i in range(10)]
    idx_ckpt = make_checkpoint(
        tmp_path / "idx.pt", dataset="fashion-mnist", data_dir=data, classes=classes, channels=1, size=28
    )
    folder = write_val_folder(tmp_path / "imagenet", counts=(3, 1, 1))  # 5 images: 3 on rank 0, 2 on rank 1
    files_ckpt = make_checkpoint(tmp_path / "files.pt", data_dir=folder)

    script = tmp_path / "evaluate.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        str(script),
        str(idx_ckpt),
        str(files_ckpt),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads(proc.stdout.strip().splitlines()[-1])

    for name, path, view, n in [
        ("idx-single", idx_ckpt, "single", 101),
        ("idx-10crop", idx_ckpt, "10crop", 101),
        ("files-multiscale", files_ckpt, "multiscale", 5),
    ]:
        one = evaluate_checkpoint(path, view=view, workers=0)
        assert two[name]["world"] == 2 and one.world_size == 1
        assert two[name]["images"] == one.images == n  # nothing padded, nothing counted twice
        assert two[name]["confusion"] == one.confusion, name
        assert two[name]["top1"] == one.top1_error and two[name]["top5"] == one.top5_error
        assert two[name]["loss"] == pytest.approx(one.loss, rel=1e-6)
