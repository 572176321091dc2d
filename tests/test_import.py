"""resnetlab import-weights torchvision: torchvision-shaped random weights in, torchvision's outputs out."""

from __future__ import annotations

import json
import socket

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image
from torchvision.models import ResNet50_Weights

from resnetlab.checkpoint import load_checkpoint
from resnetlab.cli import main
from resnetlab.data import view_transform
from resnetlab.deploy import (
    export_model,
    imagenet_classes,
    import_torchvision,
    load_bundle,
    predict_images,
    read_bundle,
)
from resnetlab.errors import UserError

from numerics import assert_close_to_scale, seeded_randn
from test_eval import calibrate


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    """torchvision's resnet50 with random weights and calibrated BN statistics, saved as a .pth state dict."""
    torch.manual_seed(0)
    reference = calibrate(torchvision.models.resnet50(weights=None), torch.randn(4, 3, 96, 96))
    path = tmp_path_factory.mktemp("tv") / "resnet50-random.pth"
    torch.save(reference.state_dict(), path)
    return path, reference


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def test_imported_weights_give_torchvisions_outputs(torchvision_file, tmp_path, no_network, capsys):
    path, reference = torchvision_file
    out = tmp_path / "resnet50-tv.pt"
    assert main(["import-weights", "torchvision", str(path), "--model", "resnet50", "--out", str(out)]) == 0
    assert "wrote" in capsys.readouterr().out
    state = load_checkpoint(out)  # a plain checkpoint: weights_only
    assert (
        state["config"]["model"] | {"name": "resnet50", "shortcut": "B", "stride_in_1x1": False}
        == state["config"]["model"]
    )
    assert state["classes"] == imagenet_classes() and len(state["classes"]) == 1000 and state["classes"][0] == "tench"
    assert state["preprocessing"]["view"] == "center" and state["preprocessing"]["resize"] == 256
    assert state["preprocessing"]["std"] == pytest.approx([58.395, 57.12, 57.375])
    eager, prepared = read_bundle(out), load_bundle(out)  # as stored; as eval/predict run it (folded, NHWC)
    x = seeded_randn(2, 3, 96, 80)
    with torch.no_grad():
        expected = reference(x)
        assert_close_to_scale(eager.model(x), expected, layers=50)
        assert_close_to_scale(prepared.model(x.contiguous(memory_format=torch.channels_last)), expected, layers=50)


def test_predict_on_an_image_matches_torchvisions_own_pipeline(torchvision_file, tmp_path, no_network):
    path, reference = torchvision_file
    out = import_torchvision(path, "resnet50", tmp_path / "tv.pt")
    image_path = tmp_path / "photo.jpg"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (300, 260, 3), dtype=np.uint8)).save(image_path)
    pixels = torch.from_numpy(np.array(Image.open(image_path))).permute(2, 0, 1).contiguous()  # uint8 (3, H, W)
    bundle = read_bundle(out)
    pre = bundle.preprocessing
    ours = pre.normalizer()(view_transform("center", pre)(pixels))  # (1, 3, 224, 224)
    theirs = ResNet50_Weights.IMAGENET1K_V1.transforms()(pixels)  # resize 256, crop 224, /255, mean/std
    # The same operations; the two resize kernels (torchvision v2 on uint8, v1) round some pixels apart by
    # one level, 1/std = 0.0175 after normalisation.
    assert (ours[0] - theirs).abs().max().item() <= 1.01 / 57.12
    assert (ours[0] - theirs).abs().mean().item() < 5e-3  # a fifth of the pixels on random noise
    with torch.no_grad():  # torchvision's network on that view (random weights magnify a level's difference)
        on_our_view = reference(ours).softmax(1)[0]
    (result,) = predict_images(load_bundle(out), [image_path], top=5)
    assert [row["index"] for row in result.top] == on_our_view.topk(5).indices.tolist()
    for row in result.top:
        assert row["probability"] == pytest.approx(on_our_view[row["index"]].item(), rel=1e-4, abs=1e-6)
        assert row["class"] == imagenet_classes()[row["index"]]


def test_imported_checkpoint_exports_with_its_std(torchvision_file, tmp_path):
    path, _ = torchvision_file
    out = import_torchvision(path, "resnet50", tmp_path / "tv.pt", resize=232)
    report = export_model(out, "safetensors", tmp_path / "tv.safetensors")
    assert report.within_tolerance
    pre = read_bundle(tmp_path / "tv.safetensors").preprocessing
    assert pre.std is not None and pre.resize == 232 and pre.mean.shape == (3,)


def test_mismatched_files_are_refused_with_one_line(tmp_path, capsys):
    resnet18 = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), resnet18)
    with pytest.raises(
        UserError, match=r"not a torchvision resnet50 state dict: keys 198 missing \(layer1.0.conv3.weight"
    ):
        import_torchvision(resnet18, "resnet50", tmp_path / "x.pt")
    ten = tmp_path / "resnet18-10.pth"
    torch.save(torchvision.models.resnet18(weights=None, num_classes=10).state_dict(), ten)
    with pytest.raises(UserError, match=r"fc.weight is \(10, 512\) there, \(1000, 512\) expected"):
        import_torchvision(ten, "resnet18", tmp_path / "x.pt")
    for argv, message in [
        (
            ["import-weights", "torchvision", str(tmp_path / "missing.pth"), "--model", "resnet18", "--out", "x"],
            "no checkpoint at",
        ),
        (
            ["import-weights", "torchvision", str(resnet18), "--model", "resnet50", "--out", str(tmp_path / "x")],
            "missing",
        ),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x").exists()
    with pytest.raises(UserError, match="torchvision publishes"):
        import_torchvision(resnet18, "plain18", tmp_path / "x.pt")


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused_before_anything_is_written(tmp_path, capsys, value):
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer2.0.bn1.running_var"][3] = value  # a diverged run's statistics: predict would print nan%
    state["layer3.1.conv1.weight"][0, 0, 0, 0] = value
    path = tmp_path / "resnet18-nan.pth"
    torch.save(state, path)
    out = tmp_path / "tv.pt"
    argv = ["import-weights", "torchvision", str(path), "--model", "resnet18", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert str(path) in err and "non-finite" in err and "layer2.0.bn1.running_var" in err  # the first bad one
    assert not out.exists()


@pytest.mark.slow
def test_imported_checkpoint_evaluates_on_an_imagenet_layout(tmp_path, capsys):
    """1000 class folders named like ImageNet's (WordNet ids), one validation image each (about 30 s)."""
    torch.manual_seed(0)
    weights = tmp_path / "resnet18.pth"
    torch.save(calibrate(torchvision.models.resnet18(weights=None), torch.randn(4, 3, 64, 64)).state_dict(), weights)
    out = import_torchvision(weights, "resnet18", tmp_path / "tv.pt")
    root = tmp_path / "imagenet"
    rng = np.random.default_rng(2)
    for split in ("train", "val"):
        for i in range(1000):
            folder = root / split / f"n{i:08d}"
            folder.mkdir(parents=True)
            Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(folder / "a.png")
    argv = [
        "eval",
        "--checkpoint",
        str(out),
        "--data-dir",
        str(root),
        "--json",
        "--workers",
        "0",
        "--out",
        str(tmp_path / "e"),
    ]
    assert main(argv) == 0
    captured = capsys.readouterr()
    result = json.loads(captured.out)
    assert result["images"] == 1000 and result["view"] == "center" and result["class_images"] == [1] * 1000
    assert "matched by index" in captured.err
