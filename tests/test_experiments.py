"""The CIFAR-10 experiments: figures and Table 6 from fake run records, the Fig. 7 hooks, resuming."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import resnetlab.experiments.cifar as cifar
from resnetlab.cli import main
from resnetlab.experiments import experiment_config, layer_response_stds, read_record, response_layers, run_name, table6
from resnetlab.experiments.figures import figure_fig1, figure_fig6, figure_fig7, mean_curves
from resnetlab.models import create_model


def fake_run(
    root: Path,
    net: str,
    seed: int,
    errors: list[tuple[float, float]],
    iterations: int = 400,
    val: list[float] | None = None,
) -> Path:
    """A run directory with config.json and one evaluation line per (train_error, test_error)."""
    config = experiment_config(net, iterations, seed, None)
    path = root / run_name(config.preset, iterations, seed)
    path.mkdir(parents=True)
    (path / "config.json").write_text(config.to_json())
    (path / "env.json").write_text(json.dumps({"data_source": "/data/cifar10-jpeg.tar.gz (archive)"}))
    lines = []
    for i, (train_error, test_error) in enumerate(errors):
        line = {
            "iteration": (i + 1) * iterations // len(errors),
            "train_error": train_error,
            "test_top1_error": test_error,
        }
        if val:
            line["val_top1_error"] = val[i]
        lines.append(json.dumps(line))
    (path / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def records(tmp_path):
    runs = tmp_path / "runs"
    fake_run(runs, "plain20", 0, [(0.5, 0.5), (0.2, 0.25)])
    fake_run(runs, "plain20", 1, [(0.4, 0.45), (0.2, 0.27)])
    fake_run(runs, "plain56", 0, [(0.6, 0.6), (0.3, 0.33)])
    fake_run(runs, "resnet20", 0, [(0.5, 0.5), (0.1, 0.12)], val=[0.4, 0.1])
    fake_run(runs, "resnet56", 0, [(0.5, 0.5), (0.05, 0.1)])
    return runs


def _read(root: Path):
    return [read_record(p.parent) for p in sorted(root.glob("*/metrics.jsonl"))]


def test_lr_drops_scale_to_the_papers_fractions():
    config = experiment_config("plain56", 8000, 3, "/data")
    assert config.schedule.milestones == [4000, 6000] and config.train.iterations == 8000
    assert config.train.seed == 3 and config.data.data_dir == "/data" and config.train.eval_every == 250
    assert experiment_config("resnet110", 64000, 0, None).schedule.milestones == [32000, 48000]
    assert experiment_config("resnet110", 64000, 0, None).schedule.warmup_lr == 0.01
    assert "0.5 and 0.75 of the run" in cifar.schedule_note(8000) and "4,000 and 6,000" in cifar.schedule_note(8000)
    assert experiment_config("plain56", 2000, 0, None, eval_points=16).train.eval_every == 125


def test_response_claims_pair_twins_and_consecutive_depths():
    claims = cifar.response_claims(
        {"plain20": 0.9, "plain56": 0.8, "resnet20": 0.5, "resnet32": 0.45, "resnet56": 0.47, "resnet110": 0.3}
    )
    assert claims == {
        "resnet20 below plain20": True,
        "resnet56 below plain56": True,
        "resnet32 below resnet20": True,
        "resnet56 below resnet32": False,
        "resnet110 below resnet56": True,
    }


def test_no_train_draws_from_records_without_checkpoints(records, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(cifar, "train", lambda *a, **k: pytest.fail("--no-train must not train"))
    out = tmp_path / "out"
    common = ["--runs", str(records), "--out", str(out), "--iterations", "400", "--no-train", "--seeds", "0", "1"]
    assert main(["experiment", "degradation", "--nets", "plain20", "plain56", "resnet20", "resnet32", *common]) == 0
    assert (out / "fig1.png").exists() and (out / "fig6.svg").exists()
    assert "cifar10-resnet32-it400-seed0: no record, left out" in capsys.readouterr().out
    assert main(["experiment", "degradation", *common[:5], "8000", "--no-train"]) == 2
    assert "no run records" in capsys.readouterr().err


def test_curves_average_seeds(records):
    curves = mean_curves(_read(records))
    assert curves["plain20"]["seeds"] == 2
    assert curves["plain20"]["test"] == ([200, 400], pytest.approx([47.5, 26.0]))
    assert curves["resnet56"]["train"] == ([200, 400], pytest.approx([50.0, 5.0]))


def test_figures_have_the_papers_panels_and_series(records):
    runs = _read(records)
    fig1 = figure_fig1(runs, "note")
    assert [ax.get_title() for ax in fig1.axes] == [
        "training error: plain-20 vs plain-56",
        "test error: plain-20 vs plain-56",
    ]
    assert [len(ax.get_lines()) for ax in fig1.axes] == [2, 2]
    fig6 = figure_fig6(runs, "400 iterations")
    titles = [ax.get_title() for ax in fig6.axes]
    assert titles == ["plain networks", "ResNets", "ResNet-110 vs ResNet-1202: no runs"]
    plain, resnets, _ = fig6.axes
    assert [line.get_linestyle() for line in plain.get_lines()] == ["--", "-", "--", "-"]  # train dashed, test solid
    assert list(resnets.get_lines()[1].get_ydata()) == pytest.approx([50.0, 12.0])
    assert "400 iterations" in fig6._suptitle.get_text()
    fig7 = figure_fig7({"plain20": [1.0, 3.0, 2.0]}, "test split")
    top, bottom = fig7.axes
    assert list(top.get_lines()[0].get_ydata()) == [1.0, 3.0, 2.0] and list(bottom.get_lines()[0].get_ydata()) == [
        3.0,
        2.0,
        1.0,
    ]


def test_table6_leaves_out_unfinished_runs(records, tmp_path, capsys):
    fake_run(records, "resnet32", 0, [(0.5, 0.5)], iterations=400)
    lines = (
        (records / "cifar10-resnet32-it400-seed0" / "metrics.jsonl")
        .read_text()
        .replace('"iteration": 400', '"iteration": 100')
    )
    (records / "cifar10-resnet32-it400-seed0" / "metrics.jsonl").write_text(lines)
    assert (
        main(["experiment", "table6", "--runs", str(records), "--out", str(tmp_path / "out"), "--iterations", "400"])
        == 0
    )
    out = capsys.readouterr().out
    assert (
        "cifar10-resnet32-it400-seed0: left out, unfinished (100 of 400 iterations)" in out
        and "| resnet32 |" not in out
    )


def test_table6_from_records(records, tmp_path):
    rows = {r.model: r for r in table6(_read(records))}
    plain20 = rows["plain20"]
    assert plain20.seeds == 2 and plain20.mean == pytest.approx(26.0) and plain20.std == pytest.approx(2**0.5)
    assert plain20.best == pytest.approx(25.0) and plain20.paper == "-" and plain20.parameters == 269_722
    assert rows["resnet20"].paper == "8.75" and rows["resnet20"].val_selected == pytest.approx(12.0)
    assert rows["resnet20"].data == "/data/cifar10-jpeg.tar.gz (archive)"
    assert (
        main(["experiment", "table6", "--runs", str(records), "--out", str(tmp_path / "out"), "--iterations", "400"])
        == 0
    )
    markdown = (tmp_path / "out" / "table6.md").read_text()
    assert "| plain20 | 0.27M | 400 | 2 | 26.00 +- 1.41 | 25.00 | - | - |" in markdown
    assert (tmp_path / "out" / "table6.csv").read_text().startswith("network,parameters,iterations,seeds")


def test_response_hooks_pick_the_3x3_layers_after_bn():
    model = create_model("resnet56")
    layers = response_layers(model)
    assert len(layers) == 6 * 9  # two per basic block, 6n for a 6n+2 net: not the stem, not the fc
    assert layers[0][0] == "layer1.0.bn1" and layers[-1][0] == "layer3.8.bn2"


@pytest.mark.parametrize("std_over", ["all", "channel"])
def test_response_std_definition(std_over):
    # In train mode BN normalises each channel to mean 0, std 1 over the batch; gamma then scales it. With
    # gamma = 0.5 and beta = 0 every response has std 0.5, by either definition.
    model = create_model("resnet20")
    for _, bn in response_layers(model):
        torch.nn.init.constant_(bn.weight, 0.5)
    before = [bn.running_mean.clone() for _, bn in response_layers(model)]
    batches = [(torch.randn(16, 3, 32, 32), torch.zeros(16, dtype=torch.long)) for _ in range(2)]
    stds = layer_response_stds(model, batches, bn_mode="train", std_over=std_over)
    assert len(stds) == 18 and stds == pytest.approx([0.5] * 18, rel=1e-3)
    assert all(torch.equal(a, bn.running_mean) for a, (_, bn) in zip(before, response_layers(model)))  # untouched
    # eval mode: identity BN statistics (mean 0, var 1) leave gamma * conv output, a different, larger std
    eval_stds = layer_response_stds(model, batches, bn_mode="eval", std_over=std_over)
    assert eval_stds[0] != pytest.approx(0.5, rel=1e-2)


def test_a_killed_experiment_resumes_without_retraining_finished_runs(tmp_path, monkeypatch):
    calls = []

    def fake_train(config, out, resume=None, progress=None):
        calls.append((Path(out).name, resume))
        if len(calls) == 2 and resume is None:
            (Path(out) / "checkpoints").mkdir(parents=True)
            (Path(out) / "checkpoints" / "last.pt").write_bytes(b"")
            (Path(out) / "config.json").write_text(config.to_json())
            (Path(out) / "metrics.jsonl").write_text(
                json.dumps({"iteration": 2, "train_error": 0.5, "test_top1_error": 0.5}) + "\n"
            )
            raise KeyboardInterrupt  # killed in the middle of the second run
        Path(out, "checkpoints").mkdir(parents=True, exist_ok=True)
        Path(out, "checkpoints", "last.pt").write_bytes(b"")
        Path(out, "config.json").write_text(config.to_json())
        Path(out, "metrics.jsonl").write_text(
            json.dumps({"iteration": 4, "train_error": 0.4, "test_top1_error": 0.45}) + "\n"
        )
        return {"iteration": 4}

    monkeypatch.setattr(cifar, "train", fake_train)
    root, out = tmp_path / "runs", tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        cifar.degradation(["plain20", "plain56"], [0], 4, root, out, None)
    assert calls == [("cifar10-plain20-it4-seed0", None), ("cifar10-plain56-it4-seed0", None)]
    cifar.degradation(["plain20", "plain56"], [0], 4, root, out, None)
    # plain20 finished: reused, not retrained; plain56 was cut short: resumed from its checkpoint
    assert calls[2:] == [("cifar10-plain56-it4-seed0", "auto")]
    assert (out / "fig1.png").exists() and (out / "fig6.svg").exists()


def test_degradation_and_responses_end_to_end(tmp_path, monkeypatch):
    from conftest import write_cifar_python

    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    write_cifar_python(tmp_path / "data", per_batch=26, n_test=20)  # 130 training images: one batch of 128
    runs, out = tmp_path / "runs", tmp_path / "results"
    common = ["--runs", str(runs), "--out", str(out), "--iterations", "2", "--data-dir", str(tmp_path / "data")]
    assert main(["experiment", "degradation", "--nets", "plain20", "resnet20", *common]) == 0
    assert {p.name for p in out.iterdir()} >= {"fig1.png", "fig1.svg", "fig6.png", "fig6.svg"}
    assert read_record(runs / "cifar10-resnet20-it2-seed0").finished
    assert main(["experiment", "responses", "--nets", "plain20", "resnet20", *common]) == 0
    summary = json.loads((out / "fig7.json").read_text())
    assert len(summary["stds"]["plain20"]) == len(summary["stds"]["resnet20"]) == 18
    assert set(summary["claims"]) == {"resnet20 below plain20"}
    assert "test split, BN in eval mode, std over all elements" in summary["note"]


def test_the_results_page_table_is_what_its_committed_records_give():
    """docs/results/table6.md must stay what `resnetlab experiment table6` draws from docs/results/runs."""
    docs = Path(__file__).resolve().parents[1] / "docs" / "results"
    records = _read(docs / "runs")
    assert len(records) == 8 and all(r.finished for r in records)
    assert cifar.format_table6(table6(records)) == (docs / "table6.md").read_text().strip()
