"""Presets, --set overrides and their one-line errors."""

from __future__ import annotations

import pytest

from resnetlab.config import apply_overrides, config_from_dict
from resnetlab.errors import UserError
from resnetlab.presets import get_preset, list_presets


def test_every_paper_experiment_has_a_preset():
    names = set(list_presets())
    assert {f"cifar10-resnet{d}" for d in (20, 32, 44, 56, 110, 1202)} <= names
    assert {f"cifar10-plain{d}" for d in (20, 32, 44, 56, 110)} <= names
    assert {f"imagenet-resnet{d}" for d in (18, 34, 50, 101, 152)} | {"imagenet-plain18", "imagenet-plain34"} <= names
    assert "fashion-mnist-resnet20" in names


def test_cifar_recipe_is_the_papers():
    cfg = get_preset("cifar10-plain56")
    assert (cfg.optim.batch_size, cfg.optim.lr, cfg.optim.momentum, cfg.optim.weight_decay) == (128, 0.1, 0.9, 1e-4)
    assert cfg.schedule.milestones == [32_000, 48_000] and cfg.train.iterations == 64_000
    assert cfg.model.name == "plain56" and cfg.schedule.warmup_lr is None
    assert get_preset("imagenet-resnet34").optim.batch_size == 256


def test_overrides_parse_types():
    cfg = apply_overrides(
        get_preset("cifar10-resnet20"),
        [
            "train.iterations=1_000",
            "optim.lr=0.05",
            "train.deterministic=true",
            "schedule.milestones=500,750",
            "model.shortcut=B",
            "schedule.warmup_lr=0.01",
            "model.stride_in_1x1=none",
        ],
    )
    assert cfg.train.iterations == 1000 and cfg.optim.lr == 0.05 and cfg.train.deterministic is True
    assert cfg.schedule.milestones == [500, 750] and cfg.model.shortcut == "B" and cfg.schedule.warmup_lr == 0.01
    assert cfg.model.options() == {"shortcut": "B"}
    assert get_preset("cifar10-resnet20").train.iterations == 64_000  # presets are copied, never mutated


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.iteration=5", "unknown --set key 'train.iteration'"),
        ("trian.iterations=5", "unknown --set section"),
        ("train.iterations=five", "takes an integer"),
        ("train.deterministic=maybe", "takes true or false"),
        ("optim.lr=fast", "takes a number"),
        ("iterations=5", "section.key=value"),
        ("train.amp=fp8", "train.amp must be"),
        ("train.iterations=0", "must be >= 1"),
    ],
)
def test_bad_overrides_are_one_line_errors(override, message):
    with pytest.raises(UserError, match=message) as info:
        apply_overrides(get_preset("cifar10-resnet20"), [override])
    assert "\n" not in str(info.value)


def test_unknown_preset():
    with pytest.raises(UserError, match="did you mean .*cifar10-resnet20"):
        get_preset("cifar10-resnet2")


def test_config_round_trips_through_json():
    cfg = apply_overrides(get_preset("cifar10-resnet110"), ["data.val_split=5000"])
    assert config_from_dict(cfg.to_dict()) == cfg
