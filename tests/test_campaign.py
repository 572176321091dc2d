"""The full-schedule campaign on a tiny plan: windows cut short, each on a "fresh machine" (an empty --runs
folder; only the carry folder goes from one window to the next), must end where one uninterrupted campaign
ends, without losing or repeating an iteration."""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import pytest
import torch
from test_packed import stop_after

from resnetlab.checkpoint import load_checkpoint
from resnetlab.cli import main
from resnetlab.deploy import read_bundle
from resnetlab.errors import UserError
from resnetlab.experiments.campaign import Campaign
from resnetlab.experiments.campaign_plan import paper_plan
from resnetlab.experiments.campaign_status import format_status

NETS = ["plain20", "resnet20"]
ITERATIONS = 8
ITERATIONS_CHAIN = 40


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
    # Issue 20, item 5: what the plan cannot do is said, not dropped
    with pytest.raises(UserError, match="resnet1202: a campaign cannot train it in windows: its checkpoint"):
        paper_plan(nets=["resnet20", "resnet1202"])
    with pytest.raises(UserError, match="--nets resnet18: not in the campaign's plan"):
        paper_plan(nets=["resnet18", "resnet20"])
    for seeds in (0, 6):
        with pytest.raises(UserError, match="--table6-seeds must be 1 to 5"):
            paper_plan(seeds=seeds)


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


def test_the_results_section_is_drawn_from_the_campaigns_records(tmp_path, cifar, monkeypatch, capsys):
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
    monkeypatch.setattr("sys.argv", ["full_schedule.py", "--carry", str(carry), "--weights", str(weights), "--page", str(page), "--figures", str(tmp_path / "docs" / "full"), "--data-dir", cifar])  # fmt: skip
    full_schedule.main()
    text = page.read_text()
    # The shipped network's error on the page is the one `resnetlab eval` prints for the file, and the hub's
    # weights="cifar10" loads that file.
    shipped = weights / "cifar10-resnet20.safetensors"
    capsys.readouterr()
    command = ["eval", "--checkpoint", str(shipped), "--data-dir", cifar, "--json", "--out", str(tmp_path / "e")]
    assert main(command) == 0
    error = json.loads(capsys.readouterr().out)["top1_error"]
    assert f"| resnet20 | 2 | {100 * error:.2f} % |" in text
    assert "| cifar10-resnet20-it2-seed0 | 0-2 |" in text and "JPEG at quality ~75" in text
    monkeypatch.setenv("RESNETLAB_WEIGHTS", str(weights))
    hub = torch.hub.load(str(Path(__file__).parents[1]), "resnet20", source="local", weights="cifar10").eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(hub(x), read_bundle(shipped).model(x))
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


def test_the_cpu_plan_trains_what_finishes_soonest_first_one_run_at_a_time():
    units, refused = paper_plan(plan="cpu")
    labels = [u.label for u in units]
    first = ["resnet20", "plain20", "resnet56", "plain56", "resnet32", "plain32", "resnet44", "plain44"]
    assert labels[:9] == [f"(a) {n} seed 0" for n in first] + ["(b) resnet110 seed 0"]
    nets = ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]
    assert labels[9:29] == [f"(c) {n} seed {s}" for n in nets for s in (1, 2, 3, 4)]  # not packed on a CPU
    assert labels[29:] == ["(d) plain110 seed 0"]
    assert [u.label for u, _ in refused] == ["(d) resnet1202 seed 0"]
    gpu, _ = paper_plan(plan="gpu")
    runs = lambda plan: sorted((u.net, s) for u in plan for s in u.seeds)  # noqa: E731
    assert runs(units) == runs(gpu)  # the same runs, in another order: a run may move between plans


def test_chained_windows_carry_within_each_budget_on_a_fake_clock(tmp_path, cifar, monkeypatch):
    """scripts/cpu_window.sh chains `campaign --budget 600` processes. On a clock where every step takes 40 s,
    each process carries before its 600 s are out, so a window killed at any moment loses at most 600 s of
    training; the status counts the carried checkpoint, ahead of the last evaluation; each window's line in
    windows.jsonl says what it trained on and which iterations. (Only steps take time on this clock: start-up
    and saves take none.)"""
    import time

    import resnetlab.engine.trainer as trainer
    from resnetlab.experiments.cifar import checkpoint_iteration

    clock = {"now": 1000.0}
    fake = lambda: clock["now"]  # noqa: E731
    monkeypatch.setattr(time, "monotonic", fake)
    monkeypatch.setattr(time, "perf_counter", fake)  # the trainer's step durations, which the Deadline reads
    monkeypatch.setattr(trainer.Deadline.__init__, "__defaults__", (fake,))
    real_step, real_sync = trainer.train_step, Campaign.sync

    def step(*args, **kwargs):
        clock["now"] += 40.0
        return real_step(*args, **kwargs)

    carries = [(clock["now"], 0)]

    def sync(self):
        real_sync(self)
        carried = tmp_path / "carry" / "checkpoints" / f"{name}.pt"
        records = tmp_path / "carry" / "records" / name / "metrics.jsonl"
        at = checkpoint_iteration(carried) if carried.is_file() else (ITERATIONS_CHAIN if records.is_file() else 0)
        carries.append((clock["now"], at))

    monkeypatch.setattr(trainer, "train_step", step)
    monkeypatch.setattr(Campaign, "sync", sync)
    name = f"cifar10-resnet20-it{ITERATIONS_CHAIN}-seed0"
    statuses = []
    while len(statuses) < 10:
        campaign = Campaign(
            tmp_path / "runs", tmp_path / "carry", tmp_path / "weights", iterations=ITERATIONS_CHAIN,
            data_dir=cifar, seeds=1, nets=["resnet20"], eval_points=2, plan="cpu",
        )  # fmt: skip
        status = campaign.run(budget=600)
        statuses.append(status)
        if not status["stopped"]:
            break
    # 40 steps of 40 s, 580 s a window (20 kept for the carry): 13 a window, since 13 steps (520 s) and two more
    # (the Deadline's margin) would pass 580 s
    assert len(statuses) == 4
    gaps = [b[0] - a[0] for a, b in zip(carries, carries[1:]) if b[1] > a[1]]
    assert gaps and max(gaps) <= 600, carries
    assert [at for _, at in carries if at][-1] == ITERATIONS_CHAIN
    # After the first window the last evaluation (every 20 iterations) is 0, the checkpoint 13: the status says 13
    assert statuses[0]["units"][0]["done"] == [13] and statuses[0]["units"][0]["left"] == ITERATIONS_CHAIN - 13
    windows = campaign.windows(name)
    assert [(w["from_iteration"], w["to_iteration"]) for w in windows] == [(0, 13), (13, 26), (26, 39), (39, 40)]
    assert [w["seconds"] for w in windows] == [520.0, 520.0, 520.0, 40.0]
    assert {w["device"] for w in windows} == {"cpu"} and all(w["machine"] and w["precision"] for w in windows)
    carried_lines = (tmp_path / "carry" / "records" / name / "windows.jsonl").read_text().splitlines()
    assert len(carried_lines) == 4  # carried with the other records
    index = json.loads((tmp_path / "weights" / "index.json").read_text())
    assert index["resnet20"]["windows"][0]["iterations"] == [0, 40]  # one machine, one commit: one entry
    assert campaign.gained(since=0) == {"resnet20 seed 0": 40}
    ended = datetime.fromisoformat(windows[0]["ended"]).timestamp()
    rate = campaign.status(now=ended)["units"][0]["images_per_s"]
    assert rate == pytest.approx(13 * 128 / 520, rel=1e-3)  # the windows that had ended by then: the first


def test_status_counts_the_carried_checkpoint_and_the_speed_of_the_last_10_minutes(
    tmp_path, cifar, monkeypatch, capsys
):
    """The issue's case: a short CPU window trained to a checkpoint between two evaluations. `--status` (a bare
    run folder, the carry only) says the checkpoint's iterations, and the current unit's speed and ETA."""
    import time

    stop_after(monkeypatch, 5)
    Campaign(
        tmp_path / "m1", tmp_path / "carry", tmp_path / "w", iterations=40, data_dir=cifar, seeds=1,
        nets=["resnet20"], eval_points=2, plan="cpu",
    ).run(budget=600)  # fmt: skip
    common = ["--runs", str(tmp_path / "m2"), "--carry", str(tmp_path / "carry"), "--weights", str(tmp_path / "w")]
    tiny = [*common, "--iterations", "40", "--nets", "resnet20", "--table6-seeds", "1", "--plan", "cpu"]
    assert main(["experiment", "campaign", "--status", *tiny]) == 0
    out = capsys.readouterr().out
    assert "the CPU plan:" in out and "5 iterations done, 35 left" in out and "images/s over the last 10 min" in out
    assert "ETA" in out and not (tmp_path / "m2").exists()  # a status writes nothing
    assert main(["experiment", "campaign", "--gained-since", str(time.time() - 3600), *tiny]) == 0
    assert capsys.readouterr().out.strip() == "resnet20 seed 0 +5 iterations"
    assert main(["experiment", "campaign", "--gained-since", str(time.time() + 3600), *tiny]) == 0
    assert capsys.readouterr().out.strip() == "no iterations gained"


def test_window_summary_says_when_a_run_moved_between_machines_and_the_rate_is_the_last_10_minutes():
    from resnetlab.experiments.windows import recent_rate, window_summary

    def window(a, b, machine, precision, started):
        return {
            "from_iteration": a, "to_iteration": b, "machine": machine, "precision": precision,
            "git_commit": "c1", "started": started, "ended": started, "seconds": 1.0,
        }  # fmt: skip

    cpu, gpu = ("AMD EPYC (2 threads)", "bf16"), ("NVIDIA H100", "float32")
    runs = [window(0, 227, *cpu, "t1"), window(227, 900, *cpu, "t2"), window(900, 64000, *gpu, "t3")]
    assert window_summary(runs) == [
        {"machine": cpu[0], "precision": "bf16", "git_commit": "c1", "iterations": [0, 900]},
        {"machine": gpu[0], "precision": "float32", "git_commit": "c1", "iterations": [900, 64000]},
    ]
    at = lambda t: datetime.fromtimestamp(t).astimezone().isoformat()  # noqa: E731
    timed = [  # two runs packed in one window (its time counted once), an older window, one after `now`
        {"from_iteration": 0, "to_iteration": 100, "started": at(1000), "ended": at(1100), "seconds": 100.0},
        {"from_iteration": 0, "to_iteration": 100, "started": at(1000), "ended": at(1100), "seconds": 100.0},
        {"from_iteration": 100, "to_iteration": 150, "started": at(300), "ended": at(400), "seconds": 100.0},
        {"from_iteration": 100, "to_iteration": 900, "started": at(1100), "ended": at(1300), "seconds": 200.0},
    ]
    assert recent_rate(timed, 128, now=1200, horizon=600) == pytest.approx(200 * 128 / 100)
    assert recent_rate(timed, 128, now=1800, horizon=600) == pytest.approx(800 * 128 / 200)
    assert recent_rate(timed, 128, now=5000, horizon=600) is None


def test_a_window_line_says_whether_float32_multiplied_in_tf32():
    """A GPU's float32 is TF32 in the convolutions by default: the window line says so (env.json's flag)."""
    from resnetlab.experiments.windows import window_record

    gpu = {"gpu": "NVIDIA H100", "device": "cuda", "precision": "float32", "tf32_convolutions": True}
    assert window_record(gpu, 0.0, 60.0, 0, 100, runs=1)["tf32"] is True
    cpu = {"device": "cpu", "precision": "bf16", "torch_threads": 2}
    assert window_record(cpu, 0.0, 60.0, 0, 100, runs=1)["tf32"] is None


def _evals(records: Path) -> list[int]:
    lines = (records / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["iteration"] for line in lines if "test_top1_error" in line]


def test_a_second_campaign_on_the_carry_of_one_that_trains_is_refused(tmp_path, cifar, monkeypatch):
    """Issue 20, item 3: a second campaign on the same --carry (from another runs folder, so the run directories'
    own locks never meet) once overwrote a finished run's records with a shorter copy. While the first one
    trains it is refused at once, having read and written nothing; once the first has ended the carry is free."""
    import resnetlab.engine.trainer as trainer

    real, refusals = trainer.train_step, []
    second = Campaign(
        tmp_path / "m2", tmp_path / "carry", tmp_path / "w", iterations=4, data_dir=cifar, seeds=1, nets=["resnet20"]
    )

    def step(*args, **kwargs):
        if not refusals:
            with pytest.raises(UserError, match="in use by resnetlab experiment campaign") as refused:
                second.run(budget=60)
            refusals.append(str(refused.value))
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_step", step)
    first = Campaign(
        tmp_path / "m1", tmp_path / "carry", tmp_path / "w", iterations=4, data_dir=cifar, seeds=1, nets=["resnet20"]
    )
    assert not first.run(budget=300)["stopped"]
    assert len(refusals) == 1 and f"--carry {tmp_path / 'carry'}" in refusals[0] and "\n" not in refusals[0]
    assert list((tmp_path / "m2").iterdir()) == []  # nothing restored, nothing trained
    records = tmp_path / "carry" / "records" / "cifar10-resnet20-it4-seed0"
    assert _evals(records) == [1, 2, 3, 4]
    monkeypatch.setattr(trainer, "train_step", real)
    status = second.run(budget=60)  # the first has ended: its lock went with it
    assert status["windows_left"] == 0 and _evals(records) == [1, 2, 3, 4]


def test_set_applies_to_every_run_and_each_window_records_it(tmp_path, cifar, monkeypatch):
    """``--set train.cuda_graph=off`` (what gpu_campaign.sh passes when the CUDA tests fail) changes how the runs
    are computed, not what: a run cut short in a window without it resumes exactly in a window with it, its
    config.json says the last window's setting and each window's line in windows.jsonl its own."""
    stop_after(monkeypatch, 2)

    def window(machine: str, *overrides: str) -> dict:
        return Campaign(
            tmp_path / machine, tmp_path / "carry", tmp_path / "w", iterations=4, data_dir=cifar, seeds=1,
            nets=["resnet20"], plan="cpu", overrides=list(overrides),
        ).run(budget=300)  # fmt: skip

    assert window("m1")["stopped"]
    later = 1
    while window(f"m{later + 1}", "train.cuda_graph=off", "data.num_workers=0")["stopped"]:
        later += 1
        assert later < 5, "the campaign makes no progress"
    records = tmp_path / "carry" / "records" / "cifar10-resnet20-it4-seed0"
    assert _evals(records) == [1, 2, 3, 4]  # no iteration lost or twice
    assert "resume_changes" not in (records / "metrics.jsonl").read_text()  # an exact continuation
    config = json.loads((records / "config.json").read_text())
    assert config["train"]["cuda_graph"] == "off" and config["data"]["num_workers"] == 0
    lines = [json.loads(line) for line in (records / "windows.jsonl").read_text().splitlines()]
    assert [w.get("set") for w in lines] == [None] + [{"train.cuda_graph": "off", "data.num_workers": 0}] * later


@pytest.mark.parametrize(
    "item, says",
    [
        ("optim.lr=0.05", "the paper's recipe"),  # a recipe field: refused, not trained under the paper's name
        ("train.amp=off", "the paper's recipe"),
        ("train.iterations=10", "--iterations"),  # the campaign's own
        ("train.cuda_graf=off", "unknown --set key"),
    ],
)
def test_set_refuses_what_would_change_the_runs_recipe_or_identity(tmp_path, item, says):
    with pytest.raises(UserError, match=says):
        Campaign(tmp_path / "r", tmp_path / "c", tmp_path / "w", nets=["resnet20"], seeds=1, overrides=[item])
    assert not (tmp_path / "c").exists()


def test_a_carried_metrics_file_cut_short_is_refused_before_anything_is_put_back(tmp_path, cifar, monkeypatch):
    """Issue 20, item 4: a carried metrics.jsonl cut in half was taken: the next window resumed from the carried
    checkpoint, and the evaluations the cut lost stayed a gap for good, said only by a Python warning. No
    checkpoint holds them, so the window refuses, naming the file and what to do; put back whole, it goes on."""
    stop_after(monkeypatch, 6)

    def window(machine: str) -> dict:
        return Campaign(
            tmp_path / machine, tmp_path / "carry", tmp_path / "w", iterations=8, data_dir=cifar, seeds=1,
            nets=["resnet20"], plan="cpu",
        ).run(budget=300)  # fmt: skip

    assert window("m1")["stopped"]
    name = "cifar10-resnet20-it8-seed0"
    records = tmp_path / "carry" / "records" / name
    metrics = records / "metrics.jsonl"
    whole = metrics.read_bytes()
    assert _evals(records) == [1, 2, 3, 4, 5, 6]
    metrics.write_bytes(whole[: len(whole) // 2])  # cut mid-line
    with pytest.raises(UserError, match="cut short \\(a torn line\\)") as refused:
        window("m2")
    assert str(metrics) in str(refused.value) and "git checkout" in str(refused.value)
    assert not (tmp_path / "m2" / name).exists()  # nothing put back, nothing trained
    metrics.write_bytes(b"".join(whole.splitlines(keepends=True)[:3]))  # cut between lines: no torn line
    with pytest.raises(UserError, match="evaluations stop at iteration 3, the carried checkpoint is at 6"):
        window("m2")
    metrics.write_bytes(whole)
    assert not window("m2")["stopped"]
    assert _evals(records) == list(range(1, 9))
