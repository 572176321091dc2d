"""The paper's learning-rate schedules, in iterations (Sec. 3.4, 4.2)."""

from __future__ import annotations

import pytest

from resnetlab.engine.schedule import LRSchedule, scale_milestones
from resnetlab.presets import get_preset


def _from_preset(name: str) -> LRSchedule:
    cfg = get_preset(name)
    s = cfg.schedule
    return LRSchedule(
        cfg.optim.lr,
        kind=s.kind,
        milestones=s.milestones,
        gamma=s.gamma,
        warmup_lr=s.warmup_lr,
        warmup_until_error=s.warmup_until_error,
    )


def test_cifar_steps_at_32k_and_48k():
    schedule = _from_preset("cifar10-resnet56")
    lr = schedule.lr_at
    assert lr(0) == 0.1 and lr(31_999) == 0.1
    assert lr(32_000) == pytest.approx(0.01) and lr(47_999) == pytest.approx(0.01)
    assert lr(48_000) == pytest.approx(0.001) and lr(64_000) == pytest.approx(0.001)
    assert get_preset("cifar10-resnet56").train.iterations == 64_000


def test_resnet110_warmup_switches_back_to_0_1_and_keeps_the_schedule():
    schedule = _from_preset("cifar10-resnet110")
    assert schedule.in_warmup and schedule.lr_at(0) == 0.01
    iteration = 0
    for iteration in range(400):  # training error falls from 90% to 70% over 400 iterations
        if schedule.observe_train_error(iteration, 0.9 - 0.2 * iteration / 400):
            break
    assert not schedule.in_warmup
    assert schedule.warmup_done_at == iteration + 1
    # the running mean (20 steps) must be below 80%, so the switch comes after the per-step error crosses it
    assert 0.9 - 0.2 * iteration / 400 < 0.8
    assert schedule.lr_at(iteration + 1) == 0.1  # back to 0.1: the failure of akamaster's warm-up
    assert schedule.lr_at(32_000) == pytest.approx(0.01) and schedule.lr_at(48_000) == pytest.approx(0.001)
    assert _from_preset("cifar10-resnet1202").in_warmup and not _from_preset("cifar10-resnet56").in_warmup


def test_warmup_state_round_trips():
    a = _from_preset("cifar10-resnet110")
    for i in range(10):
        a.observe_train_error(i, 0.85)
    b = _from_preset("cifar10-resnet110")
    b.load_state_dict(a.state_dict())
    for i in range(10, 40):
        assert a.observe_train_error(i, 0.7) == b.observe_train_error(i, 0.7)
    assert a.warmup_done_at == b.warmup_done_at is not None


def test_plateau_divides_when_the_error_stops_improving():
    schedule = LRSchedule(0.1, kind="plateau", plateau_patience=2)
    for error in (0.6, 0.5, 0.45):
        assert not schedule.observe_val_error(error)
    assert not schedule.observe_val_error(0.45)
    assert schedule.observe_val_error(0.46)  # two evaluations without improvement
    assert schedule.lr_at(10**6) == pytest.approx(0.01)
    assert get_preset("imagenet-resnet50").schedule.kind == "plateau"
    assert get_preset("imagenet-resnet50").train.iterations == 600_000


def test_scaled_milestones_keep_the_papers_fractions():
    assert scale_milestones([32_000, 48_000], 64_000, 64_000) == [32_000, 48_000]
    assert scale_milestones([32_000, 48_000], 64_000, 4_000) == [2_000, 3_000]
    fm = get_preset("fashion-mnist-resnet20")
    assert [m / fm.train.iterations for m in fm.schedule.milestones] == [0.5, 0.75]
