"""Packed seeds (``--seeds``): K networks trained as one equal K single runs, to float32 rounding.

The reference for "equal" is measured, not assumed: two single runs that differ only in memory format
(channels_last or not) differ by float32 rounding alone; a packed network must stay as close to its single
run as that pair stays to each other (times a small factor: the packed network rounds differently again).
"""

from __future__ import annotations

import copy
import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch

import resnetlab.engine.packed as packed_module
from resnetlab.checkpoint import load_checkpoint, model_from_checkpoint
from resnetlab.cli import main
from resnetlab.config import apply_overrides, set_values
from resnetlab.data import InMemoryLoader, synthetic_dataset
from resnetlab.engine import train
from resnetlab.engine.fused import FusedStep
from resnetlab.engine.packed import train_packed
from resnetlab.engine.trainer import Deadline
from resnetlab.errors import UserError
from resnetlab.models import create_model
from resnetlab.models.norm import group_batchnorm
from resnetlab.models.packed import PackedNetworks, pack_state, unpack_state

from test_train import metrics, tiny_config, write_idx

SEEDS = [3, 4, 5]


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    return write_idx(tmp_path / "fashion-mnist")


def _networks(k: int, bn_group: int = 0) -> list[torch.nn.Module]:
    nets = []
    for seed in range(k):
        torch.manual_seed(seed)
        net = create_model("resnet20")
        nets.append(group_batchnorm(net, bn_group) if bn_group else net)
    return nets


@pytest.mark.parametrize("layout", ["grouped", "branches"])
def test_packing_keeps_each_network_exactly(layout):
    nets = _networks(3, bn_group=16)
    packed = PackedNetworks(nets[0], 3, layout)
    packed.load_members([n.state_dict() for n in nets])
    for member, net in zip(packed.members(), nets):
        assert list(member) == list(net.state_dict())
        assert all(torch.equal(member[key], value) for key, value in net.state_dict().items())
    x = torch.randn(3, 32, 3, 32, 32)
    for mode in ("train", "eval"):
        packed.train(mode == "train")
        for net in nets:
            net.train(mode == "train")
        out = packed(x)
        single = torch.stack([net(x[i]) for i, net in enumerate(nets)])
        assert out.shape == (3, 32, 10)
        torch.testing.assert_close(out, single, rtol=0, atol=2e-5 * single.abs().max().item())


def test_pack_state_round_trip_and_refusals():
    states = [n.state_dict() for n in _networks(2)]
    back = unpack_state(pack_state(states), 2)
    assert all(torch.equal(a[key], b[key]) for a, b in zip(back, states) for key in a)
    states[1]["bn1.num_batches_tracked"] = torch.tensor(7)
    with pytest.raises(ValueError, match="num_batches_tracked differs"):
        pack_state(states)
    with pytest.raises(ValueError, match="layout"):
        PackedNetworks(_networks(1)[0], 2, "stacked")


def test_fused_batches_are_the_single_loaders_batches():
    """Each network's batch (images, labels, crops, flips) is exactly its single run's, across an epoch's end
    and from a loader state restored mid-epoch."""
    data = synthetic_dataset(num_train=200, num_test=1)
    loaders = [
        InMemoryLoader(data.train.images, data.train.labels, batch_size=32, mean=data.mean, train=True, seed=s)
        for s in SEEDS
    ]
    singles = [
        InMemoryLoader(data.train.images, data.train.labels, batch_size=32, mean=data.mean, train=True, seed=s)
        for s in SEEDS
    ]
    for loader in loaders + singles:  # mid-epoch: position 4 of 6
        loader.load_state_dict({"epoch": 2, "position": 4, "seed": loader.seed})
    nets = _networks(3)
    step = FusedStep(
        PackedNetworks(nets[0], 3),
        loaders,
        momentum=0.9,
        weight_decay=1e-4,
        nesterov=False,
        amp=False,
        graph=False,
        device=torch.device("cpu"),
    )
    streams = [iter(single) for single in singles]
    for _ in range(5):  # 2 batches of epoch 2, then epoch 3
        step._prepare()
        x, y = step.batch()
        for k, stream in enumerate(streams):
            try:
                xs, ys = next(stream)
            except StopIteration:
                streams[k] = iter(singles[k])
                xs, ys = next(streams[k])
            assert torch.equal(x[k], xs) and torch.equal(y[k], ys)
        step.set_lr([0.1] * 3)
        step()
    assert [loader.state_dict() for loader in loaders] == [single.state_dict() for single in singles]


def _logit_gap(a: Path, b: Path, batch: torch.Tensor) -> float:
    """max |logit difference| / max |logit| of two checkpoints' networks (eval mode) on ``batch``."""
    (net_a, _), (net_b, _) = model_from_checkpoint(a), model_from_checkpoint(b)
    with torch.no_grad():
        la, lb = net_a(batch), net_b(batch)
    return ((la - lb).abs().max() / lb.abs().max()).item()


@pytest.mark.parametrize(("steps", "layout"), [(1, "grouped"), (2, "grouped"), (2, "branches"), (30, "grouped")])
def test_packed_seeds_train_as_single_runs(data_dir, tmp_path, steps, layout):
    """K=3 packed against 3 single runs: the same data order (the loader states agree), and the logits on a
    fixed batch within the spread float32 rounding alone causes. One step checks the data, initialisation,
    lr and weight decay of each network, two its momentum, thirty the lr drops; lr 0.02, because at 0.1 this
    tiny set makes SGD so chaotic that rounding alone moves the logits by 30-80% within 30 steps (at 0.02:
    a few %), and a check that loose would catch nothing."""
    config = tiny_config(
        data_dir,
        "model.name=resnet20",
        "optim.lr=0.02",
        f"train.packing={layout}",
        f"train.iterations={steps}",
        f"train.eval_every={steps}",
        f"train.checkpoint_every={steps}",
        "train.deterministic=false",
        "schedule.milestones=20,25",
    )
    outs = [tmp_path / "packed" / f"seed{s}" for s in SEEDS]
    train_packed(config, SEEDS, outs, progress=False)
    from resnetlab.data import load_dataset

    dataset = load_dataset("fashion-mnist", data_dir)
    batch = (dataset.test.images[:64].float() - dataset.mean) / 255
    rounding = []
    for seed, out in zip(SEEDS, outs):
        single = set_values(copy.deepcopy(config), {"train.seed": seed})
        train(single, tmp_path / f"single{seed}", progress=False)
        other_format = set_values(copy.deepcopy(single), {"train.channels_last": False})
        train(other_format, tmp_path / f"contiguous{seed}", progress=False)
        a, b = (
            load_checkpoint(out / "checkpoints/last.pt"),
            load_checkpoint(tmp_path / f"single{seed}/checkpoints/last.pt"),
        )
        assert a["loader"] == b["loader"] and a["iteration"] == b["iteration"] == steps
        assert a["schedule"] == b["schedule"]
        rounding.append(
            _logit_gap(
                tmp_path / f"contiguous{seed}/checkpoints/last.pt",
                tmp_path / f"single{seed}/checkpoints/last.pt",
                batch,
            )
        )
        gap = _logit_gap(out / "checkpoints/last.pt", tmp_path / f"single{seed}/checkpoints/last.pt", batch)
        print(f"seed {seed}: packed {gap:.2e}")
        assert gap <= max(10 * max(rounding), 1e-5), (seed, gap, rounding)
        packed_records, single_records = metrics(out), metrics(tmp_path / f"single{seed}")
        last = packed_records[-1]
        assert last["packed"] == 3 and last["iteration"] == steps
        if steps == 1:  # later, the barely trained network's test predictions sit on its decision boundaries
            assert last["test_top1_error"] == pytest.approx(single_records[-1]["test_top1_error"], abs=0.02)
        # One step: the same loss to rounding; 30 steps: rounding has grown as it does between any two runs.
        assert last["train_loss"] == pytest.approx(single_records[-1]["train_loss"], rel=1e-4 if steps == 1 else 0.05)
    print(f"logit gaps to the single runs, {steps} steps: rounding alone {rounding}")


def test_packed_initialisation_is_the_single_runs(data_dir, tmp_path):
    config = tiny_config(data_dir, "train.iterations=1", "train.eval_every=1", "optim.lr=1e-30")  # ~no update
    train_packed(config, SEEDS[:2], [tmp_path / f"p{s}" for s in SEEDS[:2]], progress=False)
    for seed in SEEDS[:2]:
        train(set_values(copy.deepcopy(config), {"train.seed": seed}), tmp_path / f"s{seed}", progress=False)
        a, b = (
            load_checkpoint(tmp_path / f"p{seed}/checkpoints/last.pt"),
            load_checkpoint(tmp_path / f"s{seed}/checkpoints/last.pt"),
        )
        for key in a["model"]:
            if key.endswith("weight") and "bn" not in key and "downsample.1" not in key:  # conv and fc: untouched
                torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-6, atol=1e-12)


def assert_same_runs(whole: list[Path], other: list[Path]) -> None:
    """Each seed's last checkpoint and its records (timings aside), bit for bit."""
    for a, b in zip(whole, other):
        sa, sb = load_checkpoint(a / "checkpoints/last.pt"), load_checkpoint(b / "checkpoints/last.pt")
        assert sa["iteration"] == sb["iteration"] == 20
        for key in sa["model"]:
            assert torch.equal(sa["model"][key], sb["model"][key]), key
        for key in ("loader", "schedule", "window", "optimizer"):
            assert str(sa[key]) == str(sb[key]), key
        assert metrics(a) == metrics(b)


def test_packed_resume_is_exact_and_a_seed_resumes_alone(data_dir, tmp_path, monkeypatch, capsys):
    """Stopped at iteration 7 (mid-epoch, between checkpoints and between two logs) and resumed, a packed run
    ends bit-identical to an uninterrupted one, records included (issue 20: the steps since the last log were
    missing from the saved training statistics). A stop during the K checkpoint writes of iteration 12 (seed 3
    saved, 4 and 5 not) comes back level at 8 and ends bit-identical too. Each seed's checkpoint continues as an
    ordinary single run."""
    config = tiny_config(data_dir)
    whole = [tmp_path / "whole" / f"seed{s}" for s in SEEDS]
    train_packed(config, SEEDS, whole, progress=False)
    cut = [tmp_path / "cut" / f"seed{s}" for s in SEEDS]
    real, calls = FusedStep.__call__, {"n": 0}

    def step(self):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: the step finishes, all K runs are saved
        real(self)

    monkeypatch.setattr(FusedStep, "__call__", step)
    assert train_packed(config, SEEDS, cut, progress=False)[0] == {"stopped": True, "iteration": 7}
    monkeypatch.setattr(FusedStep, "__call__", real)
    train_packed(config, SEEDS, cut, resume="auto", progress=False)
    assert_same_runs(whole, cut)

    torn = [tmp_path / "torn" / f"seed{s}" for s in SEEDS]
    write = packed_module.write_checkpoint

    def power_cut_at_12(run, config, *args, **kwargs):
        if config.train.seed == SEEDS[1] and args[1]["iteration"] == 12:
            raise RuntimeError("power cut")
        write(run, config, *args, **kwargs)

    monkeypatch.setattr(packed_module, "write_checkpoint", power_cut_at_12)
    with pytest.raises(RuntimeError, match="power cut"):
        train_packed(config, SEEDS, torn, progress=False)
    monkeypatch.setattr(packed_module, "write_checkpoint", write)
    assert [load_checkpoint(o / "checkpoints/last.pt")["iteration"] for o in torn] == [12, 8, 8]
    capsys.readouterr()
    train_packed(config, SEEDS, torn, resume="auto", progress=False)
    assert "every seed resumes from iteration 8" in capsys.readouterr().err
    assert_same_runs(whole, torn)
    assert not list(torn[0].glob("checkpoints/.*.tmp"))
    seed, out = SEEDS[0], tmp_path / "cut" / f"seed{SEEDS[0]}"
    more = apply_overrides(set_values(copy.deepcopy(config), {"train.seed": seed}), ["train.iterations=24"])
    train(more, out, resume="auto", progress=False)  # the single trainer takes the packed run's checkpoint
    assert load_checkpoint(out / "checkpoints/last.pt")["iteration"] == 24


def test_the_deadline_stops_while_a_step_and_a_save_still_fit():
    clock = [90.0]
    deadline = Deadline(100.0, clock=lambda: clock[0])
    deadline.step_done(2.0)
    deadline.saved(3.0)
    assert not deadline.out_of_time()  # 90 + 2 x 2 + 1.5 x 3 = 98.5 < 100
    clock[0] = 91.5
    assert deadline.out_of_time()  # 100: no room for two more steps and a save
    clock[0] = 80.0
    deadline.queued = 5  # five steps launched on a GPU and not yet run: owed too
    assert not deadline.out_of_time()  # 80 + 7 x 2 + 4.5 = 98.5
    deadline.step_floor = 2.5
    assert deadline.out_of_time()  # 80 + 7 x 2.5 + 4.5 = 102
    assert not Deadline(None).out_of_time()


def stop_after(monkeypatch, steps: int) -> None:
    """Make a run with a deadline run out of time after every ``steps`` steps (instead of on the clock)."""
    calls = {"n": 0}

    def out_of_time(self) -> bool:
        if self.deadline is None:
            return False
        calls["n"] += 1
        return calls["n"] % steps == 0

    monkeypatch.setattr(Deadline, "out_of_time", out_of_time)


def test_packed_runs_stop_at_a_deadline_and_resume(data_dir, tmp_path, monkeypatch):
    config = tiny_config(data_dir, "train.iterations=40", "train.eval_every=40", "train.checkpoint_every=40")
    outs = [tmp_path / f"seed{s}" for s in SEEDS[:2]]
    stop_after(monkeypatch, 7)
    results = train_packed(config, SEEDS[:2], outs, progress=False, deadline=time.monotonic() + 3600)
    assert results[0]["stopped"] and results[0]["iteration"] == 7
    assert [load_checkpoint(o / "checkpoints/last.pt")["iteration"] for o in outs] == [7, 7]
    monkeypatch.undo()
    short = apply_overrides(copy.deepcopy(config), ["train.iterations=11"])
    train_packed(short, SEEDS[:2], outs, resume="auto", progress=False)
    assert [load_checkpoint(o / "checkpoints/last.pt")["iteration"] for o in outs] == [11, 11]


def test_packed_refusals(data_dir, tmp_path):
    config = tiny_config(data_dir)
    with pytest.raises(UserError, match="twice"):
        train_packed(config, [1, 1], [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(UserError, match="own run directory"):
        train_packed(config, [1, 2], [tmp_path / "a", tmp_path / "a"])
    with pytest.raises(UserError, match="resume auto"):
        train_packed(config, [1, 2], [tmp_path / "a", tmp_path / "b"], resume=str(tmp_path / "x.pt"))
    with pytest.raises(UserError, match="from scratch"):
        train_packed(apply_overrides(copy.deepcopy(config), ["train.freeze=stem"]), [1], [tmp_path / "f"])
    short = apply_overrides(copy.deepcopy(config), ["train.iterations=4"])
    train_packed(short, [1, 2], [tmp_path / "a", tmp_path / "b"], progress=False)
    train(set_values(copy.deepcopy(config), {"train.seed": 1, "train.iterations": 8}), tmp_path / "a", resume="auto")
    with pytest.raises(UserError, match="one iteration"):  # a seed trained on alone: no kill to repair
        train_packed(config, [1, 2], [tmp_path / "a", tmp_path / "b"], resume="auto")
    with pytest.raises(UserError, match="one iteration"):  # a seed added to two that ran: refused, no trace left
        train_packed(short, [2, 3], [tmp_path / "b", tmp_path / "new" / "c"], resume="auto")
    assert not (tmp_path / "new").exists()
    with pytest.raises(UserError, match="at most 16"):
        train_packed(config, list(range(17)), [tmp_path / f"k{s}" for s in range(17)])
    with pytest.raises(UserError, match="not a seed"):
        train_packed(config, [2**63], [tmp_path / "huge"])
    assert not (tmp_path / "k0").exists() and not (tmp_path / "huge").exists()


def test_cli_train_seeds_writes_one_run_per_seed(data_dir, tmp_path, capsys):
    sets = [f"--set={s}" for s in ("model.name=cifar_resnet8", "optim.batch_size=32", "train.eval_every=4")]
    out = tmp_path / "runs"
    argv = ["train", "--preset", "fashion-mnist-resnet20", "--data-dir", str(data_dir), "--iterations", "4"]
    assert main([*argv, *sets, "--seeds", "0", "1", "--out", str(out)]) == 0
    for seed in (0, 1):
        config = json.loads((out / f"seed{seed}" / "config.json").read_text())
        assert config["train"]["seed"] == seed
        assert (out / f"seed{seed}" / "checkpoints" / "last.pt").is_file()
    assert main([*argv, *sets, "--seeds", "0", "0", "--out", str(out / "again")]) == 2
    assert "twice" in capsys.readouterr().err
    # a packed seed's checkpoint is an ordinary one: eval and export read it as a single run's
    checkpoint = str(out / "seed1" / "checkpoints" / "last.pt")
    assert main(["eval", "--checkpoint", checkpoint, "--runtime", "torch", "--out", str(tmp_path / "eval")]) == 0
    assert (
        main(
            ["export", "--checkpoint", checkpoint, "--format", "safetensors", "--out", str(tmp_path / "s1.safetensors")]
        )
        == 0
    )


@pytest.mark.parametrize("packed", [False, True], ids=["single", "packed"])
def test_images_per_s_counts_training_steps_only(data_dir, tmp_path, monkeypatch, packed):
    """An evaluation that takes 0.5 s must not count as training time in the next interval's images/s (the
    packed loop's interval clock used to start at the log before the evaluation and the save)."""
    import resnetlab.engine.packed as packed_module
    import resnetlab.engine.trainer as trainer_module

    pause = 0.5
    if packed:
        slow = packed_module._PackedLoop._evaluate_split

        def evaluate_split(self, name):
            time.sleep(pause)
            return slow(self, name)

        monkeypatch.setattr(packed_module._PackedLoop, "_evaluate_split", evaluate_split)
    else:
        slow = trainer_module.evaluate

        def evaluate(*args, **kwargs):
            time.sleep(pause)
            return slow(*args, **kwargs)

        monkeypatch.setattr(trainer_module, "evaluate", evaluate)
    config = tiny_config(data_dir, "train.iterations=12", "train.eval_every=4", "train.log_every=2")
    out = tmp_path / ("p" if packed else "s")
    if packed:
        train_packed(config, SEEDS[:2], [out / "seed3", out / "seed4"], progress=False)
        out = out / "seed3"
    else:
        train(config, out, progress=False)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "test_top1_error" in r]
    assert [r["iteration"] for r in evals] == [4, 8, 12]
    for before, record in zip(evals, evals[1:]):
        step_seconds = 4 * 32 / record["images_per_s"]  # the interval's training time, as the record counts it
        between = record["wall_s"] - before["wall_s"]  # steps, plus the evaluation (and save) of `before`
        assert step_seconds <= between - pause, (step_seconds, between)
