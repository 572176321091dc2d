"""torchvision interop (weights, keys, outputs) and stage features for downstream tasks."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torchvision.models.feature_extraction import create_feature_extractor

from resnetlab.models import create_model

from numerics import assert_close_to_scale, seeded_randn

DEPTHS = (18, 34, 50, 101, 152)


@pytest.mark.parametrize("depth", DEPTHS)
def test_torchvision_weights_load_strict_and_give_the_same_outputs(depth):
    torch.manual_seed(depth)
    reference = getattr(torchvision.models, f"resnet{depth}")(weights=None).eval()
    # Random BN statistics, so that a mismatched buffer could not hide behind the defaults.
    with torch.no_grad():
        for m in reference.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    ours = create_model(f"resnet{depth}", stride_in_1x1=False).eval()
    ref_state, our_state = reference.state_dict(), ours.state_dict()
    assert list(our_state) == list(ref_state)
    assert all(our_state[k].shape == ref_state[k].shape for k in ref_state)
    ours.load_state_dict(ref_state, strict=True)

    x = seeded_randn(2, 3, 96, 96)  # the nets are fully convolutional; 96x96 keeps the 152-layer net quick
    with torch.inference_mode():
        assert_close_to_scale(ours(x), reference(x), layers=depth)

        # In the paper's v1 mode the same weights load (same keys and shapes) but compute another network.
        if depth >= 50:
            v1 = create_model(f"resnet{depth}").eval()
            v1.load_state_dict(ref_state, strict=True)
            assert not torch.allclose(v1(x), reference(x), rtol=1e-3, atol=1e-3)


def test_stage_outputs_imagenet():
    model = create_model("resnet50").eval()
    with torch.no_grad():
        stages = model.forward_stages(torch.randn(1, 3, 224, 224))
    assert {k: tuple(v.shape) for k, v in stages.items()} == {
        "conv2_x": (1, 256, 56, 56),
        "conv3_x": (1, 512, 28, 28),
        "conv4_x": (1, 1024, 14, 14),
        "conv5_x": (1, 2048, 7, 7),
    }  # Table 1's output sizes
    assert [(f.name, f.channels, f.reduction) for f in model.feature_info] == [
        ("conv2_x", 256, 4),
        ("conv3_x", 512, 8),
        ("conv4_x", 1024, 16),
        ("conv5_x", 2048, 32),
    ]


def test_stage_outputs_cifar():
    model = create_model("plain20").eval()
    with torch.no_grad():
        stages = model.forward_stages(torch.randn(2, 3, 32, 32))
    assert {k: tuple(v.shape) for k, v in stages.items()} == {
        "stage1": (2, 16, 32, 32),
        "stage2": (2, 32, 16, 16),
        "stage3": (2, 64, 8, 8),
    }  # Sec. 4.2: maps of 32, 16, 8 with 16, 32, 64 filters


@pytest.mark.parametrize("name", ["resnet101", "resnet18", "resnet56", "plain34", "resnet20"])
def test_create_feature_extractor(name):
    model = create_model(name).eval()
    size = 32 if name in ("resnet56", "resnet20") else 128
    extractor = create_feature_extractor(model, return_nodes=model.feature_nodes)
    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        features, direct = extractor(x), model.forward_stages(x)
    assert list(features) == list(direct)
    for key in direct:
        torch.testing.assert_close(features[key], direct[key])
