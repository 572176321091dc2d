"""Fine-tuning (``train.init``, ``train.freeze``) on tiny fixtures: the fc replaced for another class count,
frozen stages bit-identical (parameters and BN statistics) and out of the optimizer, BN held in eval mode,
mismatches as one-line errors, torchvision-shaped weights through the streamed ImageFolder path; and, on real
data (``realdata``), Fashion-MNIST -> 5 classes of CIFAR-10 with the stem and the first stage frozen."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.checkpoint import load_checkpoint
from resnetlab.config import apply_overrides
from resnetlab.engine import train
from resnetlab.errors import UserError
from resnetlab.models import create_model, freeze_stages
from resnetlab.models.freeze import is_frozen
from resnetlab.presets import get_preset


def _folder(root: Path, classes: int, train: int, val: int, seed: int) -> Path:
    """An ImageFolder of 32x32 RGB images whose class is visible (a bright row per class)."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", train), ("val", val)):
        for c in range(classes):
            (root / split / f"c{c}").mkdir(parents=True)
            for i in range(n):
                pixels = rng.integers(0, 100, (32, 32, 3), dtype=np.uint8)
                pixels[4 + 3 * c] = 255
                Image.fromarray(pixels).save(root / split / f"c{c}" / f"{i:03d}.png")
    return root


def _sets(root: Path, *extra: str) -> list[str]:
    return [
        f"data.data_dir={root}",
        "data.dataset=imagefolder",
        "data.loader=memory",
        "model.name=cifar_resnet8",
        "optim.batch_size=16",
        "train.iterations=6",
        "train.eval_every=6",
        "train.checkpoint_every=6",
        "schedule.milestones=100",
        "train.deterministic=true",
        *extra,
    ]


def _config(root: Path, *extra: str):
    return apply_overrides(get_preset("finetune-resnet20"), _sets(root, *extra))


@pytest.fixture
def source(tmp_path, data_env):
    """A 3-class cifar_resnet8 trained 2 iterations: its run directory."""
    run = tmp_path / "source"
    short = ("train.iterations=2", "train.eval_every=2", "train.checkpoint_every=2")
    train(_config(_folder(tmp_path / "three", 3, 16, 4, seed=0), *short), run, progress=False)
    return run


FROZEN = ("conv1.", "bn1.", "layer1.")  # stem and stage1 of a CIFAR network


def test_finetune_replaces_fc_and_keeps_frozen_stages(tmp_path, source, capsys):
    init = source / "checkpoints/last.pt"
    target = _folder(tmp_path / "two", 2, 24, 4, seed=1)
    config = _config(target, f"train.init={init}", "train.freeze=stem,stage1", "optim.weight_decay=0.1")
    train(config, tmp_path / "ft", progress=False)
    out = "".join(capsys.readouterr())  # the run's lines go to stderr (beside the progress bar)
    assert "fc 3 -> 2 classes: replaced" in out and "frozen: stem, stage1" in out
    before, after = load_checkpoint(init), load_checkpoint(tmp_path / "ft/checkpoints/last.pt")
    for key, value in before["model"].items():
        if key.startswith(FROZEN):  # weights, BN running statistics and num_batches_tracked, bit for bit
            assert torch.equal(after["model"][key], value), key
    assert not torch.equal(after["model"]["layer2.0.conv1.weight"], before["model"]["layer2.0.conv1.weight"])
    assert after["model"]["fc.weight"].shape == (2, 64)
    # A fresh start: 6 iterations of its own, not 6 more; the optimizer holds the trainable tensors only.
    assert after["iteration"] == 6
    trainable = [
        k for k in after["model"] if not k.startswith(FROZEN) and "running" not in k and "num_batches" not in k
    ]
    assert len(after["optimizer"]["param_groups"][0]["params"]) == len(trainable)
    env = json.loads((tmp_path / "ft/env.json").read_text())
    assert env["init"]["sha256"] == hashlib.sha256(init.read_bytes()).hexdigest()
    assert env["init"]["path"] == str(init.resolve()) and env["init"]["format"] == "resnetlab checkpoint"
    assert json.loads((tmp_path / "ft/config.json").read_text())["train"]["init"] == str(init)
    # --resume auto continues the fine-tune from its own checkpoint and keeps the init's record.
    longer = _config(target, f"train.init={init}", "train.freeze=stem,stage1", "optim.weight_decay=0.1")
    longer.train.iterations = 8
    train(longer, tmp_path / "ft", resume="auto", progress=False)
    assert json.loads((tmp_path / "ft/env.json").read_text())["init"] == env["init"]
    resumed = load_checkpoint(tmp_path / "ft/checkpoints/last.pt")
    assert resumed["iteration"] == 8 and torch.equal(resumed["model"]["conv1.weight"], before["model"]["conv1.weight"])


def test_frozen_bn_stays_in_eval_mode():
    model = create_model("cifar_resnet8", num_classes=3)
    frozen = freeze_stages(model, ["stem", "stage1"])
    assert frozen == sum(p.numel() for p in [*model.conv1.parameters(), *model.bn1.parameters()]) + sum(
        p.numel() for p in model.layer1.parameters()
    )
    for copy_of in (model, copy.deepcopy(model)):  # a copy (what export and folding make) stays frozen
        copy_of.train()
        assert not copy_of.bn1.training and not copy_of.layer1[0].bn2.training and is_frozen(copy_of.bn1)
        assert copy_of.layer2[0].bn1.training and copy_of.training
    stats = {k: v.clone() for k, v in model.state_dict().items() if k.startswith(FROZEN)}
    model(torch.randn(8, 3, 32, 32))  # a training-mode forward pass
    assert all(torch.equal(model.state_dict()[k], v) for k, v in stats.items())
    assert not model.state_dict()["layer2.0.bn1.num_batches_tracked"].eq(0).all()
    with pytest.raises(ValueError, match="this network has: stem, stage1"):
        freeze_stages(model, ["conv2_x"])


def test_mismatches_are_one_line_errors(tmp_path, source):
    init = source / "checkpoints/last.pt"
    target = _folder(tmp_path / "two", 2, 24, 4, seed=1)
    cases = {
        "model.name=cifar_resnet14": r"holds cifar_resnet8 weights; this run trains cifar_resnet14: .*unexpected|missing",
        "model.shortcut=B": r"missing \(layer2\.0\.downsample",
        "train.freeze=stem,conv9_x": r"train.freeze: unknown stage 'conv9_x'",
    }
    for i, (change, message) in enumerate(cases.items()):
        with pytest.raises(UserError, match=message) as err:
            train(_config(target, f"train.init={init}", change), tmp_path / f"bad{i}", progress=False)
        assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no file at"):
        train(_config(target, f"train.init={tmp_path / 'absent.pt'}"), tmp_path / "bad-absent", progress=False)


def test_channel_mismatch_names_the_channels(tmp_path, data_env):
    from tests.test_train import write_idx

    grey = write_idx(tmp_path / "fashion-mnist", n_train=64, n_test=16)
    source = apply_overrides(
        get_preset("fashion-mnist-resnet20"),
        [f"data.data_dir={grey}", "model.name=cifar_resnet8", "optim.batch_size=16", "train.iterations=1"],
    )
    train(source, tmp_path / "grey", progress=False)
    target = _folder(tmp_path / "two", 2, 24, 4, seed=1)
    with pytest.raises(
        UserError, match=r"takes 1-channel images, this run's 3-channel ones: shapes differ: conv1.weight"
    ):
        train(_config(target, f"train.init={tmp_path / 'grey/checkpoints/last.pt'}"), tmp_path / "ft", progress=False)


def test_folded_export_is_refused(tmp_path, source):
    from resnetlab.deploy.export import export_model

    export = tmp_path / "net.safetensors"
    export_model(source / "checkpoints/last.pt", "safetensors", export)
    target = _folder(tmp_path / "two", 2, 24, 4, seed=1)
    with pytest.raises(
        UserError, match=r"BN folded .* fine-tune from the checkpoint it was exported from \(.*last.pt\)"
    ):
        train(_config(target, f"train.init={export}"), tmp_path / "ft", progress=False)


def _photos(root: Path) -> Path:
    """Photos of several sizes and modes (RGB, grey, RGBA, palette, CMYK JPEG) in train/ and val/."""
    rng = np.random.default_rng(2)
    modes = ("RGB", "L", "RGBA", "P", "CMYK")
    for split, n in (("train", 4), ("val", 2)):
        for c in ("ant", "bee", "fly"):
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                size = (int(rng.integers(60, 300)), int(rng.integers(60, 300)))
                image = Image.fromarray(rng.integers(0, 256, (*size[::-1], 3), dtype=np.uint8)).convert(modes[i % 5])
                image.save(root / split / c / f"{i}.{'jpg' if image.mode in ('RGB', 'L', 'CMYK') else 'png'}")
    return root


def test_torchvision_weights_init_on_photos(tmp_path, data_env, capsys):
    from torchvision.models import resnet18

    torch.manual_seed(0)
    weights = {k: v for k, v in resnet18().state_dict().items()}  # random: nothing is downloaded
    pth = tmp_path / "resnet18.pth"
    torch.save(weights, pth)
    config = apply_overrides(
        get_preset("finetune-resnet18"),
        [
            f"data.data_dir={_photos(tmp_path / 'photos')}",
            "data.num_workers=0",
            "optim.batch_size=4",
            "train.iterations=2",
            "train.eval_every=2",
            "train.checkpoint_every=2",
            "train.freeze=stem,conv2_x",
            f"train.init={pth}",
        ],
    )
    assert config.data.dataset == "imagefolder" and config.data.loader == "auto"  # streamed: photos of any size
    result = train(config, tmp_path / "ft", progress=False)
    assert "fc 1000 -> 3 classes: replaced" in capsys.readouterr().err
    assert result["test_images"] == 6
    after = load_checkpoint(tmp_path / "ft/checkpoints/last.pt")
    assert after["preprocessing"]["view"] == "center"  # evaluated on the ImageNet test view
    for key, value in weights.items():
        if key.startswith(("conv1.", "bn1.", "layer1.")):
            assert torch.equal(after["model"][key], value), key
    assert json.loads((tmp_path / "ft/env.json").read_text())["init"]["format"] == "torchvision"


def test_torchvision_needs_the_v15_network(tmp_path):
    from torchvision.models import resnet50

    pth = tmp_path / "resnet50.pth"
    torch.save(resnet50().state_dict(), pth)
    config = apply_overrides(get_preset("finetune-resnet50"), [f"train.init={pth}", "model.stride_in_1x1=true"])
    with pytest.raises(UserError, match=r"v1\.5.*--set model\.stride_in_1x1=false$"):
        train(config, tmp_path / "ft", progress=False)
    config = apply_overrides(get_preset("finetune-resnet50"), [f"train.init={pth}", "model.name=resnet20"])
    with pytest.raises(UserError, match="exist for resnet18, .*; this run trains resnet20"):
        train(config, tmp_path / "ft2", progress=False)


# --- real data: Fashion-MNIST -> CIFAR-10 -----------------------------------------------------------------

SOURCE_CLASSES = 10
TARGET = ("airplane", "automobile", "bird", "cat", "ship")  # 5 of CIFAR-10's classes: chance is 20%
MARGIN = 0.15  # the fine-tuned head must beat chance by 15 points on CIFAR-10's own test images


def _fashion_mnist_folder(src: Path, root: Path, train_n: int, test_n: int) -> Path:
    """Real Fashion-MNIST (idx) as an ImageFolder of grey PNGs, which the ImageFolder reader decodes to RGB:
    the source network then takes 3 channels, as the CIFAR target does."""
    from resnetlab.data.readers import read_idx_split

    for split, n, folder in (("train", train_n, "train"), ("test", test_n, "val")):
        images, labels = read_idx_split(src, split, SOURCE_CLASSES)
        for i in range(n):
            out = root / folder / f"c{int(labels[i])}"
            out.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i, 0].numpy()).save(out / f"{i:05d}.png")
    return root


def _cifar_subset(archive: Path, root: Path, train_n: int, test_n: int) -> Path:
    """TARGET's classes of the real CIFAR-10 JPEG archive: the first ``train_n`` training and ``test_n`` test
    images of each, as train/ and val/ (val/ is CIFAR-10's own test split, never trained on)."""
    wanted = {"train": train_n, "test": test_n}
    with tarfile.open(archive) as tar:
        for member in tar:
            parts = Path(member.name).parts
            if not member.isfile() or len(parts) < 4 or parts[-2] not in TARGET or parts[-3] not in wanted:
                continue
            split, label, name = parts[-3], parts[-2], parts[-1]
            if int(Path(name).stem) >= wanted[split]:
                continue
            out = root / ("val" if split == "test" else "train") / label
            out.mkdir(parents=True, exist_ok=True)
            (out / name).write_bytes(tar.extractfile(member).read())
    return root


@pytest.mark.realdata
@pytest.mark.skipif(not os.environ.get("RESNETLAB_DATA"), reason="RESNETLAB_DATA is not set")
def test_finetune_real_fashion_mnist_to_cifar(tmp_path, monkeypatch, capsys):
    data = Path(os.environ["RESNETLAB_DATA"])
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    # channels_last off: on 2 CPU cores it runs this small network 1.6x faster than NHWC (measured here).
    common = ["data.dataset=imagefolder", "data.loader=memory", "model.name=cifar_resnet8", "train.seed=0"]
    common += ["train.channels_last=false", "optim.batch_size=64"]
    fm = _fashion_mnist_folder(data / "fashion-mnist", tmp_path / "fm", train_n=1500, test_n=500)
    source = apply_overrides(
        get_preset("finetune-resnet20"),
        [*common, f"data.data_dir={fm}", "optim.lr=0.1", "data.augment=false"]
        + ["train.iterations=80", "train.eval_every=80", "schedule.milestones=60"],
    )
    source_result = train(source, tmp_path / "source", progress=False)
    cifar = _cifar_subset(data / "cifar10-jpeg.tar.gz", tmp_path / "cifar5", train_n=300, test_n=100)
    init = tmp_path / "source/checkpoints/last.pt"
    target = apply_overrides(
        get_preset("finetune-resnet20"),
        [*common, f"data.data_dir={cifar}", f"train.init={init}", "train.freeze=stem,stage1"]
        + ["optim.lr=0.05", "train.iterations=80", "train.eval_every=80", "schedule.milestones=60"],
    )
    result = train(target, tmp_path / "target", progress=False)
    out = capsys.readouterr().err
    assert "fc 10 -> 5 classes: replaced" in out
    before, after = load_checkpoint(init), load_checkpoint(tmp_path / "target/checkpoints/last.pt")
    for key, value in before["model"].items():
        if key.startswith(FROZEN):
            assert torch.equal(after["model"][key], value), key
    accuracy, chance = 1 - result["test_top1_error"], 1 / len(TARGET)
    print(
        f"source Fashion-MNIST test accuracy {1 - source_result['test_top1_error']:.3f}; fine-tuned CIFAR-5 "
        f"held-out accuracy {accuracy:.3f} on {result['test_images']} images, chance {chance:.2f}"
    )
    assert result["test_images"] == 100 * len(TARGET)
    assert accuracy > chance + MARGIN, result
