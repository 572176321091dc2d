"""Presets, --set overrides and their one-line errors."""

from __future__ import annotations

import pytest

from resnetlab.config import (
    DataConfig,
    ModelConfig,
    TrainConfig,
    apply_overrides,
    config_from_dict,
    set_values,
    train_flags,
)
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


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.momentum=-1", "optim.momentum must be in [0, 1)"),
        ("optim.momentum=1", "optim.momentum must be in [0, 1)"),
        ("optim.momentum=nan", "optim.momentum must be in [0, 1)"),
        ("optim.weight_decay=-1e-4", "optim.weight_decay must be >= 0"),
        ("optim.lr=nan", "optim.lr must be"),
        ("optim.lr=inf", "optim.lr must be"),
        ("schedule.gamma=0", "schedule.gamma must be in (0, 1]"),
        ("schedule.gamma=-0.1", "schedule.gamma must be in (0, 1]"),
        ("schedule.warmup_lr=0", "schedule.warmup_lr must be"),
        ("schedule.warmup_lr=-0.01", "schedule.warmup_lr must be"),
        ("schedule.warmup_until_error=0", "schedule.warmup_until_error must be in (0, 1]"),
        ("schedule.warmup_until_error=1.5", "schedule.warmup_until_error must be in (0, 1]"),
        ("schedule.plateau_patience=0", "schedule.plateau_patience must be >= 1"),
        ("schedule.milestones=[-5]", "schedule.milestones must be"),
        ("schedule.milestones=[48000,32000]", "schedule.milestones must be"),
        ("train.keep_every=-1", "train.keep_every must be >= 0"),
        ("data.num_workers=-1", "data.num_workers must be >= 0"),
        ("model.bn_group=-2", "model.bn_group must be >= 0"),
    ],
)
def test_values_torch_would_refuse_later_are_one_line_errors_now(override, message):
    with pytest.raises(UserError) as info:
        apply_overrides(get_preset("cifar10-resnet20"), [override])
    assert message in str(info.value) and "\n" not in str(info.value)


def test_edge_values_the_paper_and_torch_allow_are_accepted():
    values = ["optim.momentum=0", "optim.weight_decay=0", "schedule.gamma=1", "schedule.warmup_until_error=1"]
    cfg = apply_overrides(get_preset("cifar10-resnet20"), values + ["train.keep_every=0", "schedule.milestones=[]"])
    assert (cfg.optim.momentum, cfg.schedule.gamma, cfg.schedule.milestones) == (0.0, 1.0, [])


def test_unknown_preset():
    with pytest.raises(UserError, match="did you mean .*cifar10-resnet20"):
        get_preset("cifar10-resnet2")


def test_config_round_trips_through_json():
    cfg = apply_overrides(get_preset("cifar10-resnet110"), ["data.val_split=5000"])
    assert config_from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("data.loader=disk", "data.loader must be auto, memory or stream, got 'disk'"),
        ("data.on_bad_image=warn", "data.on_bad_image must be error or skip, got 'warn'"),
        ("schedule.kind=cosine", "schedule.kind must be steps or plateau, got 'cosine'"),
        ("train.amp=fp8", "train.amp must be auto, bf16 or off, got 'fp8'"),
        ("model.shortcut=D", "model.shortcut must be A, B or C, got 'D'"),
    ],
)
def test_literal_fields_list_their_choices(override, message):
    with pytest.raises(UserError, match=message) as info:
        apply_overrides(get_preset("cifar10-resnet20"), [override])
    assert "\n" not in str(info.value)


def test_literal_fields_are_checked_when_built_directly():
    # The same check runs in every __post_init__: a config built in code or read from a record is held to it.
    with pytest.raises(UserError, match="data.loader must be auto, memory or stream"):
        DataConfig(loader="disk")
    with pytest.raises(UserError, match="train.amp must be"):
        TrainConfig(amp="fp16")


def test_literal_values_are_stored_in_their_own_spelling():
    # create_model has always read a/b/c as A/B/C; the config stores the choice as the Literal spells it.
    cfg = apply_overrides(get_preset("cifar10-resnet20"), ["model.shortcut=b", "train.amp=BF16", "model.shortcut=b"])
    assert cfg.model.shortcut == "B" and cfg.train.amp == "bf16"
    assert ModelConfig(shortcut="c").shortcut == "C"
    assert apply_overrides(get_preset("cifar10-resnet20"), ["model.shortcut=none"]).model.shortcut is None


def test_typed_values_are_set_without_parsing():
    cfg = set_values(get_preset("cifar10-resnet20"), {"train.iterations": 500, "data.data_dir": "/data"})
    assert cfg.train.iterations == 500 and cfg.data.data_dir == "/data"
    with pytest.raises(UserError, match="unknown config key 'train.iteration'"):
        set_values(get_preset("cifar10-resnet20"), {"train.iteration": 500})
    with pytest.raises(UserError, match="must be >= 1"):
        set_values(get_preset("cifar10-resnet20"), {"train.iterations": 0})


def test_train_flags_come_from_the_fields():
    flags = {f.name: f for f in train_flags()}
    assert list(flags) == [
        "--data-dir",
        "--train-subset",
        "--batch-size",
        "--iterations",
        "--eval-every",
        "--checkpoint-every",
        "--seed",
        "--device",
        "--init",
    ]
    assert flags["--iterations"].key == "train.iterations" and flags["--iterations"].dest == "iterations"
    assert flags["--batch-size"].parse("1_024") == 1024
    with pytest.raises(UserError, match="train.seed takes an integer, got 'x'"):
        flags["--seed"].parse("x")


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda d: d["train"].update(epochs=90), "unknown config key 'train.epochs'"),
        (lambda d: d["data"].update(root="/x"), "unknown config key 'data.root'"),
        (lambda d: d.update(optimizer={}), "unknown config section 'optimizer'"),
    ],
)
def test_config_from_dict_refuses_unknown_keys(edit, message):
    data = get_preset("cifar10-resnet20").to_dict()
    edit(data)
    with pytest.raises(UserError, match=message) as info:
        config_from_dict(data)
    assert "\n" not in str(info.value)


def test_config_from_dict_fills_keys_an_older_record_lacks():
    data = get_preset("cifar10-resnet20").to_dict()
    del data["data"]["loader"]  # records written before data.loader existed (docs/runs/h100-cifar10-resnet20-7k)
    assert config_from_dict(data).data.loader == "auto"


def test_config_from_dict_reads_every_committed_run_record():
    import json
    from pathlib import Path

    records = sorted((Path(__file__).parents[1] / "docs").glob("**/config.json"))
    assert records
    for path in records:
        config_from_dict(json.loads(path.read_text()))
