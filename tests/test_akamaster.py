"""resnetlab import-weights akamaster: akamaster/pytorch_resnet_cifar10's networks, with their middle-padded
option A, in; their outputs out, through resnetlab's own option A with the channels reordered.

The reference below is written from their description (../shared/data/README.md, their resnet.py's layout),
not from resnetlab: option A subsamples the identity by 2 and pads C/4 zero channels before and C/4 after it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resnetlab.checkpoint import load_checkpoint
from resnetlab.cli import AKAMASTER_CHOICES, TORCHVISION_CHOICES, main
from resnetlab.deploy import AKAMASTER_MODELS, TORCHVISION_MODELS, export_model, load_bundle, read_bundle
from resnetlab.deploy.akamaster import stage_permutations
from resnetlab.errors import UserError

from numerics import assert_close_to_scale, seeded_randn
from test_eval import calibrate

SHIPPED = {  # ../shared/data/akamaster: their files, their README's test errors (best epoch, original test set)
    "resnet20": ("resnet20-12fca82f.th", 8.27),
    "resnet32": ("resnet32-d509ac18.th", 7.37),
    "resnet44": ("resnet44-014dd654.th", 6.90),
    "resnet56": ("resnet56-4bfd9763.th", 6.61),
}
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class TheirBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.pad = planes // 4 if (stride != 1 or in_planes != planes) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        shortcut = x if self.pad is None else F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))
        return F.relu(out + shortcut)


class TheirResNet(nn.Module):
    """akamaster's CIFAR ResNet: 3x3 stem of 16, three stages of n blocks (16, 32, 64), pool, ``linear``."""

    def __init__(self, depth: int) -> None:
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        planes, layers = 16, []
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            blocks = []
            for b in range(n):
                blocks.append(TheirBlock(planes, width, stride if b == 0 else 1))
                planes = width
            layers.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = layers
        self.linear = nn.Linear(64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        return self.linear(F.avg_pool2d(out, out.size()[3]).flatten(1))


def _their_file(path: Path, depth: int, seed: int = 0) -> TheirResNet:
    """A random, BN-calibrated network of theirs saved as they publish it: DataParallel keys, best_prec1."""
    torch.manual_seed(seed)
    net = calibrate(TheirResNet(depth), torch.randn(8, 3, 32, 32))
    state = {f"module.{k}": v for k, v in net.state_dict().items() if not k.endswith("num_batches_tracked")}
    torch.save({"best_prec1": 91.5, "state_dict": state}, path)
    return net


def _their_view(pixels: torch.Tensor) -> torch.Tensor:
    """Their input: pixels 0..255 scaled to [0, 1], normalised per channel."""
    return (pixels / 255 - MEAN) / STD


def test_the_permutation_puts_their_identity_channels_on_ours():
    perms = stage_permutations([16, 32, 64])
    assert perms[0].tolist() == list(range(16))
    assert perms[1].tolist() == [*range(8, 24), *range(8), *range(24, 32)]
    assert perms[2][:32].tolist() == [16 + p for p in perms[1].tolist()]  # the identity: stage 2's, shifted
    for p in perms:
        assert sorted(p.tolist()) == list(range(len(p)))  # a permutation


@pytest.mark.parametrize("depth", [20, 32])
def test_the_imported_network_computes_theirs(tmp_path, depth):
    theirs = _their_file(tmp_path / "theirs.th", depth, seed=depth)
    out = tmp_path / "ours.pt"
    assert main(["import-weights", "akamaster", str(tmp_path / "theirs.th"), "--model", f"resnet{depth}", "--out", str(out)]) == 0  # fmt: skip
    bundle = load_bundle(out)
    pixels = seeded_randn(4, 3, 32, 32).mul(60).add(128).clamp(0, 255)
    with torch.no_grad():
        expected = theirs(_their_view(pixels))
        ours = bundle.model.eval()(bundle.preprocessing.normalizer()(pixels))
    assert_close_to_scale(ours, expected, layers=depth)
    saved = load_checkpoint(out)
    assert saved["source"]["format"] == "akamaster" and saved["source"]["best_prec1"] == 91.5
    assert saved["classes"][:2] == ["airplane", "automobile"] and saved["config"]["model"]["shortcut"] == "A"
    # export and the hub take it as any checkpoint
    assert export_model(out, "safetensors", tmp_path / "ours.safetensors").within_tolerance
    with torch.no_grad():
        folded = read_bundle(tmp_path / "ours.safetensors").model(bundle.preprocessing.normalizer()(pixels))
    assert_close_to_scale(folded, expected, layers=depth)
    hub = torch.hub.load(str(Path(__file__).parents[1]), f"resnet{depth}", source="local", weights=str(out))
    with torch.no_grad():  # the hub's network is not BN-folded: the same function to rounding
        assert_close_to_scale(hub.eval()(bundle.preprocessing.normalizer()(pixels)), expected, layers=depth)


def test_files_of_another_kind_or_depth_are_one_line_errors(tmp_path, capsys):
    _their_file(tmp_path / "r20.th", 20)
    common = ["--out", str(tmp_path / "x.pt")]
    assert main(["import-weights", "akamaster", str(tmp_path / "r20.th"), "--model", "resnet32", *common]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("resnetlab import-weights: error:")
        and "not an akamaster resnet32 checkpoint: keys 60 missing" in err
    )
    assert "\n" not in err
    torch.save({"state_dict": {"module.fc.weight": torch.zeros(3, 3)}}, tmp_path / "other.th")
    assert main(["import-weights", "akamaster", str(tmp_path / "other.th"), "--model", "resnet20", *common]) == 2
    assert "not an akamaster resnet20 checkpoint" in capsys.readouterr().err
    assert main(["import-weights", "akamaster", str(tmp_path / "r20.th"), "--model", "resnet50", *common]) == 2
    assert "akamaster publishes resnet20" in capsys.readouterr().err
    assert main(["import-weights", "akamaster", str(tmp_path / "r20.th"), "--model", "resnet20", "--resize", "232", *common]) == 2  # fmt: skip
    assert "--resize is torchvision's" in capsys.readouterr().err
    assert not (tmp_path / "x.pt").exists()


def test_a_pickle_that_runs_code_is_refused(tmp_path, capsys):
    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "ran"),))

    torch.save({"best_prec1": Payload(), "state_dict": {}}, tmp_path / "evil.th")
    assert main(["import-weights", "akamaster", str(tmp_path / "evil.th"), "--model", "resnet20", "--out", str(tmp_path / "x.pt")]) == 2  # fmt: skip
    assert "refusing to load" in capsys.readouterr().err and not (tmp_path / "ran").exists()


def test_the_cli_names_what_deploy_imports():
    assert TORCHVISION_CHOICES == TORCHVISION_MODELS and AKAMASTER_CHOICES == AKAMASTER_MODELS


@pytest.mark.realdata
@pytest.mark.skipif(not os.environ.get("RESNETLAB_DATA"), reason="RESNETLAB_DATA is not set")
def test_their_published_resnet20_imports_evaluates_on_the_copy_and_fine_tunes(tmp_path, capsys):
    """The shipped file: our network computes theirs on real images; eval on the JPEG copy is far below chance
    and above their original-test-set error (the copy's penalty); a fine-tune starts from it."""
    data = Path(os.environ["RESNETLAB_DATA"])
    file = data / "akamaster" / SHIPPED["resnet20"][0]
    out = tmp_path / "resnet20.pt"
    assert main(["import-weights", "akamaster", str(file), "--model", "resnet20", "--out", str(out)]) == 0
    theirs = TheirResNet(20)
    state = load_checkpoint(file)["state_dict"]
    theirs.load_state_dict({k.removeprefix("module."): v for k, v in state.items()}, strict=False)
    bundle = load_bundle(out)
    pixels = seeded_randn(8, 3, 32, 32).mul(60).add(128).clamp(0, 255)
    with torch.no_grad():
        assert_close_to_scale(bundle.model(bundle.preprocessing.normalizer()(pixels)), theirs.eval()(_their_view(pixels)), layers=20)  # fmt: skip
    capsys.readouterr()
    assert (
        main(["eval", "--checkpoint", str(out), "--data-dir", str(data), "--json", "--out", str(tmp_path / "e")]) == 0
    )
    error = json.loads(capsys.readouterr().out)["top1_error"]
    assert SHIPPED["resnet20"][1] / 100 < error < 0.35, error  # the copy costs points; far below chance (90%)
    run = tmp_path / "tuned"
    overrides = ["--set", "train.iterations=2", "--set", "train.eval_every=2", "--train-subset", "256"]
    assert main(["train", "--preset", "cifar10-resnet20", "--init", str(out), "--data-dir", str(data), "--out", str(run), *overrides]) == 0  # fmt: skip
    env = json.loads((run / "env.json").read_text())
    assert env["init"]["sha256"] and (run / "checkpoints" / "last.pt").is_file()


def test_read_akamaster_refuses_a_missing_file(tmp_path):
    from resnetlab.deploy import read_akamaster

    with pytest.raises(UserError, match="no checkpoint at"):
        read_akamaster(tmp_path / "nope.th", "resnet20")
