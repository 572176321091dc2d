"""The full-schedule campaign on a tiny plan: windows cut short, each on a "fresh machine" (an empty --runs
folder; only the carry folder goes from one window to the next), must end where one uninterrupted campaign
ends, without losing or repeating an iteration."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_packed import stop_after

from resnetlab.checkpoint import load_checkpoint
from resnetlab.cli import main
from resnetlab.deploy import read_bundle
from resnetlab.experiments.campaign import Campaign, format_status, paper_plan

NETS = ["plain20", "resnet20"]
ITERATIONS = 8


@pytest.fixture
def cifar(tmp_path, monkeypatch):
    from conftest import write_cifar_python

    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    write_cifar_python(tmp_path / "data", per_batch=26, n_test=20)  # 130 training images: one batch of 128
    return str(tmp_path / "data")


def _campaign(root: Path, runs: str, data: str) -> Campaign:
    return Campaign(
        root / runs, root / "carry", root / "weights", iterations=ITERATIONS, data_dir=data, seeds=2, nets=NETS
    )


def _values(records: list[dict]) -> list[float]:
    keys = ("train_loss", "train_error", "test_loss", "test_top1_error")
    return [r[k] for r in records if "test_top1_error" in r for k in keys]


def test_the_plan_is_the_papers_order_and_fits_the_carry():
    units, refused = paper_plan()
    labels = [u.label for u in units]
    assert labels[:8] == [
        f"(a) {n} seed 0"
        for n in ["plain20", "plain32", "plain44", "plain56", "resnet20", "resnet32", "resnet44", "resnet56"]
    ]
    assert labels[8] == "(b) resnet110 seed 0"
    # Packed as many as carry in 16 MiB: 4 x 2.2 MB (ResNet-20), 4 x 3.7, 2 x 5.3, 2 x 6.8, 1 x 13.8 (ResNet-110)
    assert labels[9:11] == ["(c) resnet20 seeds 1,2,3,4", "(c) resnet32 seeds 1,2,3,4"]
    assert labels[11:15] == [
        "(c) resnet44 seeds 1,2",
        "(c) resnet44 seeds 3,4",
        "(c) resnet56 seeds 1,2",
        "(c) resnet56 seeds 3,4",
    ]
    assert labels[15:19] == [f"(c) resnet110 seed {s}" for s in (1, 2, 3, 4)]
    assert labels[19:] == ["(d) plain110 seed 0"]
    assert [u.label for u, _ in refused] == ["(d) resnet1202 seed 0"]
    assert "more than a window can carry" in refused[0][1]
    tiny, _ = paper_plan(seeds=2, nets=NETS)
    assert [u.label for u in tiny] == ["(a) plain20 seed 0", "(a) resnet20 seed 0", "(c) resnet20 seed 1"]


def test_windows_on_fresh_machines_end_where_one_uninterrupted_campaign_ends(tmp_path, cifar, monkeypatch):
    whole = _campaign(tmp_path / "whole", "runs", cifar).run(budget=600)
    assert not whole["stopped"] and whole["windows_left"] == 0
    stop_after(monkeypatch, 3)  # every window's time runs out after 3 steps (the clock would make it flaky)
    root = tmp_path / "windows"
    windows = 0
    while True:
        windows += 1
        assert windows < 40, "the campaign makes no progress"
        status = _campaign(root, f"machine{windows}", cifar).run(budget=600)  # each window a bare machine
        carried = sorted(p.name for p in (root / "carry" / "checkpoints").glob("*.pt"))
        unfinished = [r["unit"] for r in status["units"] if r["left"]]
        assert len(carried) <= 2  # one checkpoint per unfinished run, never more
        if not unfinished:
            assert carried == []  # deleted once the runs finished
            break
    assert windows >= 8, "3 steps a window: 24 iterations take 8 windows or more"
    for net, seed in [("plain20", 0), ("resnet20", 0), ("resnet20", 1)]:
        name = f"cifar10-{net}-it{ITERATIONS}-seed{seed}"
        a = [
            json.loads(line)
            for line in (tmp_path / "whole/carry/records" / name / "metrics.jsonl").read_text().splitlines()
        ]
        b = [json.loads(line) for line in (root / "carry/records" / name / "metrics.jsonl").read_text().splitlines()]
        assert [r["iteration"] for r in b if "test_top1_error" in r] == list(
            range(1, ITERATIONS + 1)
        )  # none lost, none twice
        assert _values(a) == pytest.approx(_values(b), rel=1e-5, abs=1e-6)
    index = json.loads((root / "weights" / "index.json").read_text())
    assert sorted(index) == ["plain20", "resnet20"]
    assert index["resnet20"]["iterations"] == ITERATIONS and 0 <= index["resnet20"]["test_top1_error"] <= 1
    bundle = read_bundle(root / "weights" / "cifar10-resnet20.safetensors")
    assert bundle.model_name == "resnet20"
    whole_last = load_checkpoint(tmp_path / "whole/runs" / f"cifar10-resnet20-it{ITERATIONS}-seed0/checkpoints/last.pt")
    assert whole_last["iteration"] == ITERATIONS
    text = format_status(status)
    assert "the plan is done" in text and "carried between windows" in text
    assert torch.isfinite(bundle.model(torch.zeros(1, 3, 32, 32))).all()


def test_campaign_command_status_and_errors(tmp_path, cifar, capsys):
    common = ["--runs", str(tmp_path / "runs"), "--carry", str(tmp_path / "carry"), "--weights", str(tmp_path / "w")]
    assert main(["experiment", "campaign", *common]) == 2
    assert "--budget" in capsys.readouterr().err
    assert main(["experiment", "campaign", "--status", *common]) == 0
    out = capsys.readouterr().out
    assert "(a) plain20 seed 0" in out and "resnet1202" in out and "unknown until a window" in out
    tiny = [*common, "--iterations", "2", "--nets", "resnet20", "--table6-seeds", "1", "--data-dir", cifar]
    assert main(["experiment", "campaign", "--budget", "120", *tiny]) == 0
    out = capsys.readouterr().out
    assert "the plan is done" in out
    assert (tmp_path / "w" / "cifar10-resnet20.safetensors").is_file()
    assert (tmp_path / "carry" / "records" / "cifar10-resnet20-it2-seed0" / "metrics.jsonl").is_file()
    assert not list((tmp_path / "carry").glob("checkpoints/*.pt"))


def test_the_results_section_is_drawn_from_the_campaigns_records(tmp_path, cifar, monkeypatch):
    import importlib.util

    carry, weights = tmp_path / "carry", tmp_path / "weights"
    Campaign(
        tmp_path / "runs", carry, weights, iterations=2, data_dir=cifar, seeds=1, nets=["plain20", "resnet20"]
    ).run(120)
    spec = importlib.util.spec_from_file_location(
        "full_schedule", Path(__file__).parents[1] / "scripts" / "full_schedule.py"
    )
    full_schedule = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(full_schedule)
    monkeypatch.setattr(full_schedule, "ITERATIONS", 2)
    page = tmp_path / "docs" / "results.md"
    page.parent.mkdir()
    page.write_text("# Results\n\n## Redraw from the records\n")
    monkeypatch.setattr("sys.argv", ["full_schedule.py", "--carry", str(carry), "--weights", str(weights), "--page", str(page), "--figures", str(tmp_path / "docs" / "full")])  # fmt: skip
    full_schedule.main()
    text = page.read_text()
    assert text.index(full_schedule.BEGIN) < text.index("## Redraw from the records")
    assert "**Done so far: 1 of 25 Table 6 runs**, 2 runs in all." in text
    assert "| resnet20 |" in text and "### Fig. 6" in text and "### Fig. 7" in text
    assert (tmp_path / "docs" / "full" / "fig6.png").is_file() and (tmp_path / "docs" / "full" / "table6.md").is_file()
    full_schedule.main()  # drawn again: the section replaced, not added twice
    assert page.read_text().count(full_schedule.BEGIN) == 1
    # Fig. 7 from the exported (BN folded) network is Fig. 7 from its checkpoint
    from resnetlab.experiments import responses

    common = dict(iterations=2, nets=["resnet20", "plain20"], data_dir=cifar)
    eager = responses(tmp_path / "runs", tmp_path / "eager", **common)
    folded = responses(tmp_path / "runs", tmp_path / "folded", weights=weights, **common)
    for net in common["nets"]:
        assert folded["stds"][net] == pytest.approx(eager["stds"][net], rel=1e-4)


def test_a_networks_seeds_train_packed_and_are_reused(tmp_path, cifar, capsys):
    from resnetlab.experiments.cifar import ensure_runs, experiment_config, run_name

    configs = [experiment_config("resnet20", 2, seed, cifar) for seed in (0, 1)]
    paths = [tmp_path / run_name(c.preset, 2, c.train.seed) for c in configs]
    assert ensure_runs(configs, paths, progress=False, pack=True)
    assert "(2 packed)" in capsys.readouterr().out
    for config, path in zip(configs, paths):
        record = json.loads((path / "metrics.jsonl").read_text().splitlines()[-1])
        assert record["packed"] == 2 and record["iteration"] == 2
        assert json.loads((path / "config.json").read_text())["train"]["seed"] == config.train.seed
    assert ensure_runs(configs, paths, progress=False, pack=True)  # finished: reused, nothing trained
    assert capsys.readouterr().out.count("reusing") == 2


def test_a_window_ended_by_sigterm_carries_its_runs(tmp_path, cifar, monkeypatch):
    """gpu_campaign.sh's timeout sends SIGTERM if a campaign ever overruns: the step finishes, the run is saved
    and carried, and the next window (a bare machine) goes on from there."""
    import os
    import signal

    import resnetlab.engine.trainer as trainer

    real, calls = trainer.train_step, {"n": 0}

    def step(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", step)
    nets = ["resnet20"]
    first = Campaign(
        tmp_path / "m1", tmp_path / "carry", tmp_path / "w", iterations=6, data_dir=cifar, seeds=1, nets=nets
    )
    status = first.run(budget=300)
    assert status["stopped"] and status["units"][0]["done"] == [3]
    assert (tmp_path / "carry" / "checkpoints" / "cifar10-resnet20-it6-seed0.pt").is_file()
    monkeypatch.setattr(trainer, "train_step", real)
    second = Campaign(
        tmp_path / "m2", tmp_path / "carry", tmp_path / "w", iterations=6, data_dir=cifar, seeds=1, nets=nets
    )
    assert not second.run(budget=300)["stopped"]
    records = (tmp_path / "carry" / "records" / "cifar10-resnet20-it6-seed0" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iteration"] for line in records if "test_top1_error" in line] == [1, 2, 3, 4, 5, 6]
    assert not list((tmp_path / "carry").glob("checkpoints/*.pt"))
