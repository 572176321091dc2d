"""resnetlab eval: the paper's test views on tiny fixtures, the metrics, a trained run's own numbers back.

The helpers here (``calibrate``, ``make_checkpoint``, ``write_val_folder``, the ``trained_run`` fixture)
are shared with the predict, export, import and distributed evaluation tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from resnetlab.checkpoint import save_checkpoint
from resnetlab.cli import main
from resnetlab.config import DataConfig, ModelConfig, RunConfig, apply_overrides
from resnetlab.data import Preprocessing, view_transform
from resnetlab.deploy.scoring import class_log_probs
from resnetlab.engine import train
from resnetlab.errors import UserError
from resnetlab.evaluation import eval_data, evaluate_checkpoint, evaluate_model
from resnetlab.models import create_model
from resnetlab.presets import get_preset

from test_train import metrics, tiny_config, write_idx


@torch.no_grad()
def calibrate(model: nn.Module, x: torch.Tensor) -> nn.Module:
    """BN running statistics set to those of ``x`` (so BN folding has real statistics to fold), then eval."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None  # a cumulative average: after one batch, exactly its statistics
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-0.2, 0.2)
    model.train()
    model(x)
    return model.eval()


def make_checkpoint(
    path: Path,
    *,
    dataset: str = "imagefolder",
    data_dir: Path | None = None,
    classes: list[str] | None = None,
    channels: int = 3,
    size: int = 16,
    model: str = "cifar_resnet8",
    val_split: int = 0,
    seed: int = 0,
) -> Path:
    """A checkpoint dict as training writes one, built directly: a random network with calibrated BN."""
    torch.manual_seed(seed)
    classes = classes or ["cat", "dog", "frog"]
    net = calibrate(
        create_model(model, num_classes=len(classes), in_channels=channels), torch.randn(16, channels, size, size)
    )
    config = RunConfig(
        model=ModelConfig(name=model),
        data=DataConfig(dataset=dataset, data_dir=str(data_dir) if data_dir else None, val_split=val_split),
    )
    mean = torch.rand(channels, size, size) * 255
    view = "center" if dataset == "imagefolder" else "single"
    state = {
        "model": net.state_dict(),
        "config": config.to_dict(),
        "classes": classes,
        "mean": mean,
        "dataset": dataset,
        "preprocessing": {"scale": 1 / 255, "image_size": [size, size], "channels": channels, "view": view},
        "iteration": 0,
    }
    return save_checkpoint(state, path)


def write_val_folder(
    root: Path, counts: tuple[int, ...] = (3, 2, 2), classes: tuple[str, ...] = ("cat", "dog", "frog")
) -> Path:
    """An ImageNet-layout folder: train/ (2 per class) and val/ (``counts``) of JPEG and PNG images of varied
    sizes, each class a distinct colour so that a network can tell them apart."""
    rng = np.random.default_rng(0)
    for split, per_class in (("train", (2,) * len(classes)), ("val", counts)):
        for label, (name, n) in enumerate(zip(classes, per_class)):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                h, w = 18 + 5 * i, 24 - 2 * i
                pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
                pixels[..., label] += 180
                Image.fromarray(pixels).save(folder / f"{i}.{'png' if i % 2 else 'jpg'}", quality=95)
    return root


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """One real ``resnetlab train`` run (Fashion-MNIST-shaped idx data, 56 images held out for validation)."""
    root = tmp_path_factory.mktemp("trained")
    old = os.environ.get("RESNETLAB_CACHE")
    os.environ["RESNETLAB_CACHE"] = str(root / "cache")
    try:
        data = write_idx(root / "fashion-mnist")
        train(tiny_config(data, "data.val_split=56", "train.iterations=20"), root / "run", progress=False)
    finally:
        os.environ.pop("RESNETLAB_CACHE") if old is None else os.environ.__setitem__("RESNETLAB_CACHE", old)
    return root / "run", root / "cache"


def pre_for(size: int = 16, channels: int = 3, view: str = "center") -> Preprocessing:
    return Preprocessing(
        mean=torch.rand(channels, size, size) * 255, image_size=(size, size), channels=channels, view=view
    )


def test_paper_geometry_at_224_and_scaled_at_other_sizes():
    paper = pre_for(224)
    assert paper.resize_side == 256 and paper.multiscale_sides == (224, 256, 384, 480, 640)  # Sec. 3.4
    small = pre_for(32)
    assert small.resize_side == 37 and small.multiscale_sides == (32, 37, 55, 69, 91)


def test_each_view_has_the_paper_count_and_shape():
    pre = pre_for(16)
    image = torch.randint(0, 256, (3, 30, 21), dtype=torch.uint8)
    assert view_transform("single", pre)(image).shape == (1, 3, 16, 16)
    assert view_transform("center", pre)(image).shape == (1, 3, 16, 16)
    ten = view_transform("10crop", pre)(image)
    assert ten.shape == (10, 3, 16, 16)  # 4 corners + centre, and their flips
    # torchvision's TenCrop order: the flipped image's top-left crop is the mirror of the top-right one, ...
    assert all(torch.equal(ten[5 + i], ten[j].flip(-1)) for i, j in enumerate((1, 0, 3, 2, 4)))
    multi = view_transform("multiscale", pre)(image)
    assert len(multi) == 10
    assert [min(v.shape[-2:]) for v in multi[::2]] == list(pre.multiscale_sides)
    assert all(torch.equal(multi[i + 1], multi[i].flip(-1)) for i in range(0, 10, 2))
    native = torch.randint(0, 256, (3, 16, 16), dtype=torch.uint8)
    assert torch.equal(view_transform("single", pre)(native)[0], native.float())  # the original view, untouched


def test_multiscale_scores_are_the_average_of_the_softmax_over_views():
    torch.manual_seed(0)
    model = calibrate(create_model("cifar_resnet8", num_classes=3), torch.randn(8, 3, 16, 16))
    pre = pre_for(16)
    image = torch.randint(0, 256, (3, 20, 27), dtype=torch.uint8)
    views = view_transform("multiscale", pre)(image)
    normalize = pre.normalizer()
    with torch.no_grad():
        ours = class_log_probs(model, [v.unsqueeze(0) for v in views], normalize).exp()[0]
        by_hand = torch.stack([model(normalize(v)[None]).softmax(1)[0] for v in views]).mean(0)
    torch.testing.assert_close(ours, by_hand, rtol=1e-5, atol=1e-6)
    assert ours.sum().item() == pytest.approx(1.0, abs=1e-5)


class Counting(nn.Module):
    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner, self.images = inner, 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += len(x)
        return self.inner(x)


@pytest.mark.parametrize("view, per_image", [("single", 1), ("center", 1), ("10crop", 10), ("multiscale", 10)])
def test_every_view_on_an_image_folder(tmp_path, view, per_image):
    root = write_val_folder(tmp_path / "imagenet")
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", data_dir=root)
    result = evaluate_checkpoint(ckpt, view=view, workers=0)
    assert result.images == 7 and result.views_per_image == per_image and result.view == view
    assert sum(map(sum, result.confusion)) == 7 and result.class_images == [3, 2, 2]
    # the network sees views_per_image views of every image
    from resnetlab.deploy import load_bundle

    bundle = load_bundle(ckpt)
    data = eval_data(bundle.preprocessing, view, bundle.data, workers=0)
    counting = Counting(bundle.model)
    again = evaluate_model(
        counting,
        data.batches,
        bundle.preprocessing,
        bundle.classes,
        model="m",
        dataset="d",
        split="test",
        view=view,
        views_per_image=per_image,
    )
    assert counting.images == 7 * per_image
    assert again.confusion == result.confusion and again.loss == pytest.approx(result.loss, rel=1e-6)


def test_in_memory_views_batch_images_together(tmp_path, monkeypatch):
    """Images of one size give views of one size: multi-scale batches across images, same result as one by one."""
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    data = write_idx(tmp_path / "fashion-mnist", n_train=20, n_test=13)
    classes = [f"c{i}" for i in range(10)]
    ckpt = make_checkpoint(
        tmp_path / "c.pt", dataset="fashion-mnist", data_dir=data, classes=classes, channels=1, size=28
    )
    for view in ("multiscale", "10crop", "center"):
        batched, alone = (
            evaluate_checkpoint(ckpt, view=view, batch_size=5),
            evaluate_checkpoint(ckpt, view=view, batch_size=1),
        )
        assert batched.images == alone.images == 13 and batched.confusion == alone.confusion
        assert batched.loss == pytest.approx(alone.loss, rel=1e-5)
    with pytest.raises(UserError, match="--batch-size must be 1"):
        evaluate_checkpoint(
            make_checkpoint(tmp_path / "f.pt", data_dir=write_val_folder(tmp_path / "im")),
            view="multiscale",
            batch_size=4,
        )


def test_eval_of_a_trained_run_gives_the_run_its_own_numbers(trained_run, monkeypatch):
    run, cache = trained_run
    monkeypatch.setenv("RESNETLAB_CACHE", str(cache))
    last = [r for r in metrics(run) if "test_top1_error" in r][-1]
    for split in ("test", "val"):
        unfolded = evaluate_checkpoint(run / "checkpoints/last.pt", split=split, fold_bn=False)
        assert unfolded.images == last[f"{split}_images"]
        assert unfolded.top1_error == last[f"{split}_top1_error"] and unfolded.top5_error == last[f"{split}_top5_error"]
        assert unfolded.loss == pytest.approx(last[f"{split}_loss"], rel=1e-5)
        folded = evaluate_checkpoint(run / "checkpoints/last.pt", split=split)  # the default: BN folded
        assert folded.loss == pytest.approx(unfolded.loss, rel=1e-4)
        assert abs(folded.top1_error - unfolded.top1_error) <= 1 / unfolded.images
        assert sum(a * n for a, n in zip(folded.class_accuracy, folded.class_images) if a is not None) == pytest.approx(
            (1 - folded.top1_error) * folded.images
        )


def test_eval_of_a_streamed_imagenet_layout_run_gives_its_numbers(tmp_path, monkeypatch):
    """An ImageNet preset on files (scale augmentation, 224 crops, per-pixel mean at 224x224): its checkpoint
    evaluates on the centre view by default, as training evaluated it, and on every other view."""
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    folder = write_val_folder(tmp_path / "imagenet")
    config = apply_overrides(
        get_preset("imagenet-resnet18"),
        [
            f"data.data_dir={folder}",
            "data.num_workers=0",
            "model.name=cifar_resnet8",
            "optim.batch_size=3",
            "train.iterations=4",
            "train.eval_every=4",
            "train.checkpoint_every=4",
            "train.deterministic=true",
        ],
    )
    train(config, tmp_path / "run", progress=False)
    last = [r for r in metrics(tmp_path / "run") if "test_top1_error" in r][-1]
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    result = evaluate_checkpoint(ckpt, fold_bn=False, workers=0)
    assert result.view == "center" and result.images == last["test_images"] == 7
    assert result.top1_error == last["test_top1_error"] and result.loss == pytest.approx(last["test_loss"], rel=1e-5)
    for view in ("10crop", "multiscale"):
        assert evaluate_checkpoint(ckpt, view=view, workers=0).images == 7


def test_cli_writes_metrics_and_the_confusion_png(trained_run, tmp_path, monkeypatch, capsys):
    run, cache = trained_run
    monkeypatch.setenv("RESNETLAB_CACHE", str(cache))
    out = tmp_path / "eval"
    assert main(["eval", "--checkpoint", str(run / "checkpoints/last.pt"), "--json", "--out", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["view"] == "single" and printed["images"] == 101 and len(printed["class_accuracy"]) == 10
    saved = json.loads((out / "metrics-test-single.json").read_text())
    assert np.array(saved["confusion"]).sum() == 101 and saved["top1_error"] == printed["top1_error"]
    png = (out / "confusion-test-single.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["eval", "--checkpoint", str(run / "checkpoints/last.pt"), "--views", "10crop", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "10crop view (10 per image)" in text and "per-class accuracy" in text and "Ankle boot" in text


def test_val_split_without_one_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    data = write_idx(tmp_path / "fashion-mnist", n_train=40, n_test=11)
    classes = [f"c{i}" for i in range(10)]
    ckpt = make_checkpoint(
        tmp_path / "c.pt", dataset="fashion-mnist", data_dir=data, classes=classes, channels=1, size=28
    )
    assert main(["eval", "--checkpoint", str(ckpt), "--split", "val", "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "no validation split" in err and "--split test" in err
    with pytest.raises(UserError, match="has 10 classes; the network"):
        make_checkpoint(tmp_path / "three.pt", dataset="fashion-mnist", data_dir=data, channels=1, size=28)
        evaluate_checkpoint(tmp_path / "three.pt")


@pytest.mark.parametrize("option, value", [("--batch-size", "-5"), ("--batch-size", "0"), ("--workers", "-1")])
def test_bad_batch_size_or_workers_is_a_one_line_error(tmp_path, capsys, option, value):
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", data_dir=write_val_folder(tmp_path / "imagenet"))
    assert main(["eval", "--checkpoint", str(ckpt), option, value, "--out", str(tmp_path / "e")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err and f"{option} must be" in err
    with pytest.raises(UserError, match=f"{option} must be"):
        evaluate_checkpoint(ckpt, **{option.lstrip("-").replace("-", "_"): int(value)})


@pytest.mark.slow
def test_compiled_inference_gives_the_same_evaluation(tmp_path):
    """``eval --compile`` (torch.compile with freezing; a compilation of 10-30 s here) changes nothing."""
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", data_dir=write_val_folder(tmp_path / "imagenet"))
    eager = evaluate_checkpoint(ckpt, view="center", workers=0)
    compiled = evaluate_checkpoint(ckpt, view="center", workers=0, compile=True)
    assert compiled.confusion == eager.confusion and compiled.loss == pytest.approx(eager.loss, rel=1e-4)
