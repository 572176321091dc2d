"""Every registered network: builds, right shapes, gradients everywhere, the paper's options."""

from __future__ import annotations

import operator
import pickle

import pytest
import torch
from torch import nn

import resnetlab
from resnetlab.models import (
    BasicBlock,
    Bottleneck,
    ResNet,
    Shortcut,
    ZeroPadShortcut,
    cifar_plain,
    cifar_resnet,
    create_model,
    list_models,
    model_info,
    register_model,
)

from numerics import assert_close_to_scale, seeded_randn

ALL = list_models()


def _input(name: str, batch: int = 2) -> torch.Tensor:
    size = model_info(name).input_size
    return torch.randn(batch, 3, size, size)


def test_registry_lists_every_network_of_the_paper():
    expected = {f"resnet{d}" for d in (18, 34, 50, 101, 152)} | {f"plain{d}" for d in (18, 34, 50, 101, 152)}
    expected |= {f"resnet{d}" for d in (20, 32, 44, 56, 110, 1202)} | {f"plain{d}" for d in (20, 32, 44, 56, 110)}
    assert set(ALL) == expected
    assert resnetlab.list_models() == ALL
    assert list_models("cifar") == [n for n in ALL if model_info(n).family == "cifar"]


@pytest.mark.parametrize("name", ALL)
def test_forward_backward(name):
    # One image pair at the native resolution, forward and backward: about 8 s for the five deepest nets.
    torch.manual_seed(0)
    model = create_model(name)
    x = _input(name)
    out = model(x)
    assert out.shape == (2, 1000 if model_info(name).family == "imagenet" else 10)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} received no gradient"
        assert torch.isfinite(p.grad).all(), f"{pname} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{pname} has an all-zero gradient"


def test_resnet1202_forward_on_cpu():
    model = create_model("resnet1202")
    assert sum(1 for m in model.modules() if isinstance(m, BasicBlock)) == 600  # 3 stages x n=200
    with torch.inference_mode():
        out = model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()


@pytest.mark.parametrize("depth, n", [(20, 3), (32, 5), (44, 7), (56, 9), (110, 18), (8, 1), (74, 12)])
def test_cifar_6n_plus_2_rule(depth, n):
    model = cifar_resnet(depth)
    assert [len(stage) for stage in model.stages] == [n, n, n]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) + 1 == depth  # 6n 3x3 convs + the first conv + the fc (option A adds no conv)


def test_any_6n_plus_2_depth_by_name():
    assert create_model("cifar_resnet74").layer1.__len__() == 12
    assert not create_model("cifar_plain8").layer1[0].residual
    assert len(create_model("cifar_resnet50").layer1) == 8  # "resnet50" itself is the ImageNet net
    with pytest.raises(ValueError, match="6n\\+2"):
        create_model("cifar_resnet21")
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_plain(19)


def test_unknown_model_and_option_are_errors():
    with pytest.raises(ValueError, match="did you mean .*resnet50"):
        create_model("resnet05")
    with pytest.raises(TypeError, match="does not take option"):
        create_model("resnet20", stride_in_1x1=False)  # CIFAR nets have no bottleneck
    with pytest.raises(TypeError, match="does not take option"):
        create_model("plain34", shortcut="B")  # a plain net has no shortcuts
    with pytest.raises(TypeError, match="bogus"):
        create_model("resnet50", bogus=1)
    with pytest.raises(ValueError, match="A, B, C"):
        create_model("resnet18", shortcut="D")


def test_registry_refuses_duplicates():
    with pytest.raises(ValueError, match="already registered"):
        register_model(model_info("resnet50"))


def test_defaults_are_the_papers():
    assert model_info("resnet50").options == {
        "shortcut": Shortcut.B,
        "stride_in_1x1": True,
        "zero_init_residual": False,
        "num_classes": 1000,
        "in_channels": 3,
    }
    assert model_info("resnet56").options["shortcut"] is Shortcut.A
    assert not create_model("resnet56").layer1[0].bn2.weight.eq(0).any()


def test_shortcut_options_a_b_c():
    def shortcut_types(model: ResNet) -> list[str]:
        return [type(b.downsample).__name__ for stage in model.stages for b in stage]

    assert shortcut_types(create_model("resnet18", shortcut="A")) == [
        "NoneType",
        "NoneType",
        "ZeroPadShortcut",
        "NoneType",
        "ZeroPadShortcut",
        "NoneType",
        "ZeroPadShortcut",
        "NoneType",
    ]
    assert shortcut_types(create_model("resnet18")) == [
        "NoneType",
        "NoneType",
        "Sequential",
        "NoneType",
        "Sequential",
        "NoneType",
        "Sequential",
        "NoneType",
    ]
    assert set(shortcut_types(create_model("resnet18", shortcut="c"))) == {"Sequential"}  # every block
    assert shortcut_types(create_model("resnet20", shortcut="B")).count("Sequential") == 2


def test_option_a_is_parameter_free_and_pads_zero_channels():
    shortcut = ZeroPadShortcut(16, 32, stride=2)
    assert list(shortcut.parameters()) == [] and list(shortcut.buffers()) == []
    x = torch.randn(2, 16, 8, 8)
    y = shortcut(x)
    assert y.shape == (2, 32, 4, 4)
    assert torch.equal(y[:, :16], x[:, :, ::2, ::2])
    assert torch.count_nonzero(y[:, 16:]) == 0
    assert ZeroPadShortcut(64, 128, 2)(torch.randn(1, 64, 7, 7)).shape == (1, 128, 4, 4)  # like the strided conv
    # Option A adds no parameters at all: ResNet-20 has exactly the parameters of plain-20 (Sec. 4.2).
    assert sum(p.numel() for p in create_model("resnet20").parameters()) == sum(
        p.numel() for p in create_model("plain20").parameters()
    )


def test_option_a_network_pickles():
    model = create_model("resnet20").eval()
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), clone(x))


def _add_nodes(model: nn.Module) -> int:
    graph = torch.fx.symbolic_trace(model).graph
    return sum(1 for node in graph.nodes if node.op == "call_function" and node.target in (operator.add, torch.add))


@pytest.mark.parametrize("name", ["plain20", "plain56", "plain18", "plain34", "plain50"])
def test_plain_nets_have_no_shortcut_path(name):
    model = create_model(name)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert blocks and all(not b.residual and b.downsample is None for b in blocks)
    assert _add_nodes(model) == 0  # the traced graph has no addition at all
    twin = create_model(name.replace("plain", "resnet"))
    assert _add_nodes(twin) == len(blocks)  # the ResNet adds one shortcut per block


@pytest.mark.parametrize("name", ["plain20", "resnet20"])
def test_block_output_with_silenced_residual_branch(name):
    # With the last BN at gamma = beta = 0, F(x) = 0: a residual block passes ReLU(x) through its shortcut,
    # a plain block outputs zeros, since it has no other path.
    block = create_model(name).layer1[1].eval()
    nn.init.zeros_(block.bn2.weight)
    nn.init.zeros_(block.bn2.bias)
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        y = block(x)
    assert torch.equal(y, torch.relu(x) if name.startswith("resnet") else torch.zeros_like(x))


def test_stride_in_1x1_moves_the_bottleneck_stride():
    v1 = create_model("resnet50").layer2[0]
    v15 = create_model("resnet50", stride_in_1x1=False).layer2[0]
    assert (v1.conv1.stride, v1.conv2.stride) == ((2, 2), (1, 1))
    assert (v15.conv1.stride, v15.conv2.stride) == ((1, 1), (2, 2))
    assert v1.downsample[0].stride == v15.downsample[0].stride == (2, 2)


def test_zero_init_residual():
    model = create_model("resnet50", zero_init_residual=True)
    assert all(b.bn3.weight.eq(0).all() for stage in model.stages for b in stage)
    assert model.bn1.weight.eq(1).all()
    with pytest.raises(ValueError, match="plain"):
        ResNet(BasicBlock, (1, 1, 1), (16, 32, 64), stem="cifar", shortcut=None, zero_init_residual=True)


@pytest.mark.parametrize(
    "name, path",
    [
        ("resnet50", "conv1"),  # stem 7x7, 3 -> 64: fan_in 147, fan_out 3,136
        ("resnet50", "layer1.0.conv3"),  # bottleneck 1x1 expand, 64 -> 256
        ("resnet50", "layer2.0.conv1"),  # bottleneck 1x1 reduce with stride 2, 256 -> 128
        ("resnet50", "layer1.0.downsample.0"),  # option B projection, 64 -> 256
        ("resnet56", "layer2.0.conv1"),  # CIFAR 3x3 with stride 2, 16 -> 32
        ("plain34", "layer4.0.conv1"),  # 3x3 with stride 2, 256 -> 512
    ],
)
def test_he_initialisation_uses_fan_out(name, path):
    # He et al. 2015 (the paper's ref. [13]) in fan-out mode, as fb.resnet.torch and torchvision use:
    # std = sqrt(2 / (k * k * out_channels)). These convs have fan_in != fan_out (by a factor of 2 or
    # more), so the fan-in std, sqrt(2 / (k * k * in_channels)), is at least 29% away and fails the check.
    torch.manual_seed(0)
    conv = create_model(name).get_submodule(path)
    out_channels, in_channels, kh, kw = conv.weight.shape
    fan_out, fan_in = out_channels * kh * kw, in_channels * kh * kw
    assert max(fan_in, fan_out) >= 2 * min(fan_in, fan_out)
    std = conv.weight.std().item()
    assert std == pytest.approx((2 / fan_out) ** 0.5, rel=0.05)
    assert std != pytest.approx((2 / fan_in) ** 0.5, rel=0.2)
    assert conv.weight.mean().item() == pytest.approx(0, abs=0.05 * std)


def test_bn_and_fc_initialisation():
    # BN at gamma 1, beta 0; the fc keeps PyTorch's nn.Linear default (U(-b, b) with b = 1/sqrt(fan_in) for
    # weight and bias), which the code leaves untouched: no He init there.
    torch.manual_seed(0)
    model = create_model("resnet50")
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.weight.eq(1).all() and m.bias.eq(0).all()
    fc = model.fc  # 2048 -> 1000
    bound = 1 / fc.in_features**0.5
    assert fc.weight.abs().max().item() <= bound and fc.bias.abs().max().item() <= bound
    assert fc.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.02)  # the std of U(-b, b)
    assert fc.bias.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)


def test_num_classes_and_grayscale_input():
    model = create_model("resnet20", num_classes=7, in_channels=1)
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 7)  # 28x28 Fashion-MNIST: fully convolutional
    assert create_model("resnet18", in_channels=1, num_classes=5)(torch.randn(2, 1, 64, 64)).shape == (2, 5)


def test_channels_last_gives_the_same_output():
    model = create_model("resnet20").eval()
    x = seeded_randn(4, 3, 32, 32)
    with torch.no_grad():
        ref = model(x)
        out = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert_close_to_scale(out, ref, layers=20)
