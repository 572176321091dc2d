"""`resnetlab train`'s flags generated from the config, typed values, Literal errors, and dispatch."""

from __future__ import annotations

import argparse

import pytest

import resnetlab.config
import resnetlab.engine
from resnetlab import cli
from resnetlab.cli import build_parser, main
from resnetlab.config import train_flags


@pytest.fixture
def trained(monkeypatch):
    """Stands in for the trainer: records the config `resnetlab train` would have trained with."""
    calls = []
    monkeypatch.setattr(
        resnetlab.engine, "train", lambda config, out, resume=None, **options: calls.append((config, out))
    )
    return calls


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return action.choices


def test_generated_flags_keep_their_help(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")  # one line per option, so the help texts can be found whole
    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert info.value.code == 0
    assert "--iterations N  " in out and "total training iterations (the schedule is not rescaled)" in out
    assert "--seed SEED" in out and "--device DEVICE" in out and "--data-dir DIR" in out
    for flag in train_flags():
        assert flag.help in out
    assert "--set SECTION.KEY=VALUE" in out


def test_flags_reach_the_config_as_typed_values(trained, monkeypatch):
    set_values, parse_overrides, seen = resnetlab.config.set_values, resnetlab.config.parse_overrides, {}
    monkeypatch.setattr(resnetlab.config, "set_values", lambda c, v: set_values(c, seen.setdefault("values", v)))
    monkeypatch.setattr(resnetlab.config, "parse_overrides", lambda o: parse_overrides(seen.setdefault("set", o)))
    argv = ["train", "--preset", "cifar10-resnet20", "--iterations", "1_000", "--batch-size", "64"]
    argv += ["--data-dir", "/data", "--set", "train.amp=off", "--out", "runs/x"]
    assert main(argv) == 0
    # Only --set went through key=value text; the flags arrived as ints and strings, not as "train.iterations=1000".
    assert seen["set"] == ["train.amp=off"]
    assert seen["values"] == {
        "train.amp": "off",
        "train.iterations": 1000,
        "optim.batch_size": 64,
        "data.data_dir": "/data",
    }
    ((config, out),) = trained
    assert config.train.iterations == 1000 and config.optim.batch_size == 64 and config.data.data_dir == "/data"
    assert config.train.amp == "off" and out == "runs/x"


def test_parsed_flag_is_already_typed():
    args = build_parser().parse_args(["train", "--preset", "p", "--iterations", "2_000", "--data-dir", "none"])
    assert args.iterations == 2000 and isinstance(args.iterations, int)
    assert args.data_dir is None  # str | None, as --set data.data_dir=none reads it
    assert args.seed is None  # a flag not given leaves the preset's value alone


def test_a_flag_wins_over_set_for_the_same_field(trained):
    assert main(["train", "--preset", "cifar10-resnet20", "--set", "train.seed=3", "--seed", "7"]) == 0
    assert trained[0][0].train.seed == 7
    assert trained[0][1] == "runs/cifar10-resnet20"


def test_a_wrong_flag_value_is_argparses_one_line_error(capsys):
    # Parsed by the config's parser, refused in the words argparse's type=int used before the flags were generated.
    with pytest.raises(SystemExit) as info:
        main(["train", "--preset", "cifar10-resnet20", "--iterations", "five"])
    assert info.value.code == 2
    last = capsys.readouterr().err.splitlines()[-1]
    assert last == "resnetlab train: error: argument --iterations: invalid int value: 'five'"  # argparse's words


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.amp=fp8", "train.amp must be auto, bf16 or off, got 'fp8'"),
        ("data.loader=disk", "data.loader must be auto, memory or stream, got 'disk'"),
        ("schedule.kind=cosine", "schedule.kind must be steps or plateau, got 'cosine'"),
    ],
)
def test_literal_errors_through_set(trained, capsys, override, message):
    assert main(["train", "--preset", "cifar10-resnet20", "--set", override]) == 2
    assert capsys.readouterr().err == f"resnetlab train: error: {message}\n"
    assert trained == []


def test_every_subcommand_dispatches_to_its_function():
    for name, parser in _subcommands().items():
        assert parser.get_default("func") is getattr(cli, "_" + name.replace("-", "_"))


def test_main_calls_the_parsed_function(monkeypatch):
    called = []
    monkeypatch.setattr(cli, "_plot", lambda args: called.append(args.runs) or 0)
    assert main(["plot", "runs/a", "runs/b"]) == 0
    assert called == [["runs/a", "runs/b"]]


def test_presets_output(capsys):
    assert main(["presets", "-v"]) == 0
    lines = capsys.readouterr().out.splitlines()
    first = next(line for line in lines if line.startswith("cifar10-resnet20 "))
    assert "resnet20" in first and "batch 128" in first and "/10 at 32,000, 48,000; 64,000 iterations" in first
    assert any("Table 6 / Fig. 6: ResNet-20 on CIFAR-10" in line for line in lines)


def test_responses_report():
    from resnetlab.experiments import format_responses

    summary = {
        "mean_std": {"plain20": 1.5, "resnet20": 0.75},
        "claims": {"resnet20 below plain20": True},
        "figures": ["results/fig7.png"],
    }
    assert format_responses(summary).splitlines() == [
        "plain20    mean response std 1.5000",
        "resnet20   mean response std 0.7500",
        "paper's claim, resnet20 below plain20: holds",
        "wrote results/fig7.png",
    ]


def test_eval_and_predict_take_the_same_running_options():
    names = ("device", "compile", "runtime")

    def running(command: str) -> dict[str, tuple]:
        actions = _subcommands()[command]._actions
        return {a.dest: (a.option_strings, a.default, a.choices, a.help) for a in actions if a.dest in names}

    assert running("eval") == running("predict") and tuple(running("eval")) == names
