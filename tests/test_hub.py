"""hubconf.py through torch.hub itself, from this checkout (source="local"), with sockets blocked: every
registered network is an entry, an entry is create_model's network, weights load from local files or by
the name of shipped weights, and every refusal is one line naming the file."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.hub
import torchvision

from resnetlab import create_model, list_models
from resnetlab.checkpoint import model_from_checkpoint
from resnetlab.deploy import export_model, read_bundle
from resnetlab.errors import UserError

from numerics import assert_close_to_scale, seeded_randn
from test_eval import calibrate, make_checkpoint

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.delenv("RESNETLAB_WEIGHTS", raising=False)


def hub_load(name: str, **kwargs) -> torch.nn.Module:
    return torch.hub.load(str(REPO), name, source="local", **kwargs)


def one_line_error(name: str, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        hub_load(name, **kwargs)
    message = str(info.value)
    assert "\n" not in message, message
    return message


@pytest.fixture
def local_hub(monkeypatch):
    """torch.hub.list and help take only "owner/repo" (they would download it); this checkout stands in."""
    monkeypatch.setattr(torch.hub, "_get_cache_or_reload", lambda *args, **kwargs: str(REPO))
    return "owner/resnetlab"


def test_every_registered_network_is_an_entry_with_its_docstring(local_hub):
    assert sorted(torch.hub.list(local_hub)) == sorted(list_models())
    for name in list_models():
        doc = torch.hub.help(local_hub, name)
        assert doc.startswith(f"{name}: the paper's ") and "weights" in doc
    assert "stride_in_1x1=True" in torch.hub.help(local_hub, "resnet50")
    assert "torchvision" not in torch.hub.help(local_hub, "plain50")  # torchvision publishes residual nets only


@pytest.mark.parametrize("name", ["resnet20", "plain20", "resnet110", "resnet18", "plain18", "resnet50"])
def test_an_entry_builds_create_models_network(name):
    torch.manual_seed(0)
    ours = hub_load(name)
    torch.manual_seed(0)
    reference = create_model(name)
    assert type(ours) is type(reference) and ours.training
    assert repr(ours) == repr(reference)
    theirs = reference.state_dict()
    assert all(torch.equal(value, theirs[key]) for key, value in ours.state_dict().items())


def test_options_pass_through():
    options = {"shortcut": "b", "zero_init_residual": True, "num_classes": 5, "in_channels": 1}
    torch.manual_seed(0)
    ours = hub_load("resnet20", **options)
    torch.manual_seed(0)
    reference = create_model("resnet20", **options)
    assert repr(ours) == repr(reference) and ours.fc.out_features == 5 and ours.conv1.in_channels == 1
    assert all(torch.equal(value, reference.state_dict()[key]) for key, value in ours.state_dict().items())
    v15 = hub_load("resnet50", stride_in_1x1=False, shortcut="C")
    assert v15.layer2[0].conv1.stride == (1, 1) and v15.layer2[0].conv2.stride == (2, 2)


def test_weights_from_a_checkpoint_and_an_export(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "run.pt", model="resnet20")  # 3 classes, 16x16 images
    reference, _ = model_from_checkpoint(checkpoint)
    x = seeded_randn(4, 3, 16, 16)
    ours = hub_load("resnet20", weights=str(checkpoint))
    assert ours.training and ours.fc.out_features == 3  # num_classes from the file
    with torch.no_grad():
        expected = reference(x)
        assert torch.equal(ours.eval()(x), expected)
        assert torch.equal(hub_load("resnet20", weights=checkpoint, num_classes=3, shortcut="a").eval()(x), expected)
    export = tmp_path / "run.safetensors"
    assert export_model(checkpoint, "safetensors", export).within_tolerance
    with torch.no_grad():
        assert_close_to_scale(hub_load("resnet20", weights=export).eval()(x), expected, layers=20)


def test_weights_that_do_not_fit_are_one_line_naming_the_file(tmp_path):
    checkpoint = make_checkpoint(tmp_path / "run.pt", model="resnet20")
    assert f"{checkpoint} holds the weights of resnet20, not resnet32" == one_line_error("resnet32", weights=checkpoint)
    assert f"{checkpoint} holds the weights of resnet20, not plain20" == one_line_error("plain20", weights=checkpoint)
    message = one_line_error("resnet20", weights=checkpoint, num_classes=10, shortcut="B")
    assert (
        message
        == f"{checkpoint} does not fit resnet20 with num_classes=10, shortcut='B': it holds resnet20 with num_classes=3, shortcut='A'"
    )
    assert "does not take option(s) stride_in_1x1" in one_line_error(
        "resnet20", weights=checkpoint, stride_in_1x1=False
    )
    assert (
        one_line_error("resnet20", weights=tmp_path / "missing.pt") == f"no weights file at {tmp_path / 'missing.pt'}"
    )
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    assert str(tmp_path / "junk.safetensors") in one_line_error("resnet20", weights=tmp_path / "junk.safetensors")
    assert "shortcut must be one of A, B, C" in one_line_error("resnet20", shortcut="D")


def torchvision_file(folder: Path, depth: int) -> tuple[Path, torch.nn.Module]:
    """torchvision's resnet{depth}, random weights with calibrated BN statistics, saved as a .pth state dict."""
    torch.manual_seed(0)
    reference = calibrate(getattr(torchvision.models, f"resnet{depth}")(weights=None), torch.randn(4, 3, 64, 64))
    path = folder / f"resnet{depth}-random.pth"
    torch.save(reference.state_dict(), path)
    return path, reference


def test_torchvision_weights_load_as_the_v15_network(tmp_path):
    path, reference = torchvision_file(tmp_path, 50)
    ours = hub_load("resnet50", weights=path)
    assert ours.layer2[0].conv2.stride == (2, 2) and ours.fc.out_features == 1000  # v1.5: stride on the 3x3
    x = seeded_randn(2, 3, 64, 48)
    with torch.no_grad():
        assert_close_to_scale(ours.eval()(x), reference(x), layers=50)
    message = one_line_error("resnet50", weights=path, stride_in_1x1=True)
    assert message.startswith(f"{path} does not fit resnet50 with stride_in_1x1=True: it holds resnet50 with")
    assert "v1.5" in message


def test_torchvision_weights_refused_where_they_do_not_fit(tmp_path):
    path, _ = torchvision_file(tmp_path, 18)
    assert "num_classes=10" in one_line_error("resnet18", weights=path, num_classes=10)
    assert "not resnet20" in one_line_error("resnet20", weights=path)  # CIFAR nets have no torchvision weights
    assert "not a torchvision resnet34 state dict" in one_line_error("resnet34", weights=path)


def test_named_weights_say_what_there_is_until_files_exist(tmp_path, monkeypatch):
    message = one_line_error("resnet20", weights="cifar10")
    assert "ships none yet" in message and "weights/cifar10-<network>.safetensors" in message
    # A release puts exports in weights/; $RESNETLAB_WEIGHTS stands in for that folder.
    folder = tmp_path / "weights"
    folder.mkdir()
    checkpoint = make_checkpoint(tmp_path / "run.pt", model="resnet20")
    assert export_model(checkpoint, "safetensors", folder / "cifar10-resnet20.safetensors").within_tolerance
    monkeypatch.setenv("RESNETLAB_WEIGHTS", str(folder))
    x = seeded_randn(2, 3, 16, 16)
    expected = read_bundle(folder / "cifar10-resnet20.safetensors").model(x)
    with torch.no_grad():
        assert torch.equal(hub_load("resnet20", weights="cifar10").eval()(x), expected)
    message = one_line_error("resnet56", weights="cifar10")
    assert message.endswith(f"{folder} has: cifar10 for resnet20") and "cifar10-resnet56.safetensors" in message
