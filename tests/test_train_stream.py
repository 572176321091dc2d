"""Training from image files (the ImageNet layout) through the streamed DataLoader path, and its resume."""

from __future__ import annotations

import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import resnetlab.engine.trainer as trainer
from resnetlab.checkpoint import load_checkpoint
from resnetlab.config import apply_overrides
from resnetlab.engine import train
from resnetlab.presets import get_preset

from test_train import metrics


def write_folder(root: Path, per_class: dict[str, int]) -> None:
    rng = np.random.default_rng(0)
    for split, count in per_class.items():
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                h, w = rng.integers(48, 72, 2)
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., label] = 255  # the class shows in one colour channel
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 3 == 0 else 'jpg'}")


@pytest.fixture
def folder(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    write_folder(tmp_path / "images", {"train": 12, "val": 5})
    return tmp_path / "images"


def config(folder: Path):
    # An ImageNet preset, shrunk: the paper's pipeline (scale augmentation, 224 crops, PCA colour noise,
    # centre-view evaluation) on 24 files, with a tiny network. Workers 0: augmentation draws from the
    # main process's RNG, which the checkpoint restores, so even this path resumes exactly.
    return apply_overrides(
        get_preset("imagenet-resnet18"),
        [
            f"data.data_dir={folder}",
            "data.num_workers=0",
            "model.name=cifar_resnet8",
            "optim.batch_size=4",
            "train.iterations=8",
            "train.eval_every=4",
            "train.checkpoint_every=2",
            "train.log_every=2",
            "train.deterministic=true",
        ],
    )


def test_imagenet_preset_streams_files_and_resumes(folder, tmp_path, monkeypatch):
    reference = tmp_path / "reference"
    train(config(folder), reference, progress=False)
    evals = metrics(reference)
    assert [r["iteration"] for r in evals] == [4, 8] and all(r["test_images"] == 10 for r in evals)
    state = load_checkpoint(reference / "checkpoints/last.pt")
    assert state["preprocessing"]["view"] == "center" and state["preprocessing"]["image_size"] == [224, 224]
    assert state["mean"].shape == (3, 224, 224) and state["classes"] == ["cat", "dog"]
    assert state["loader"] == {"epoch": 1, "position": 2, "seed": 0}  # 6 batches of 4 per epoch

    run = tmp_path / "run"
    real, calls = trainer.train_step, {"n": 0}

    def interrupted(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            signal.raise_signal(signal.SIGINT)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", interrupted)
    assert train(config(folder), run, progress=False) == {"stopped": True, "iteration": 3}
    monkeypatch.setattr(trainer, "train_step", real)
    train(config(folder), run, resume="auto", progress=False)
    resumed = load_checkpoint(run / "checkpoints/last.pt")
    for key, value in state["model"].items():
        assert torch.equal(value, resumed["model"][key]), key
    assert metrics(run) == evals
