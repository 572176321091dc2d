"""The CIFAR-10 experiments of Sec. 4.2 as commands: degradation (Fig. 1, 6), Table 6, responses (Fig. 7).

Every run is an ordinary training run of a CIFAR-10 preset in ``ROOT/<preset>-it<N>-seed<S>``, so a run
that finished is reused, a run cut short is resumed (``--resume auto``) and nothing is trained twice. A
shorter schedule keeps the paper's shape: the lr drops land at the same fractions of the run (32k and 48k
of 64k: 0.5 and 0.75), and every figure says so.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from .. import data as rdata
from ..checkpoint import read_iteration
from ..config import RunConfig, apply_overrides, config_from_dict
from ..deploy.bundle import read_bundle
from ..engine import choose_stepper, scale_milestones, train, train_packed
from ..engine.rundir import RunDir, RunRecord, read_record
from ..errors import UserError
from ..presets import get_preset
from .figures import plot_fig1, plot_fig6, plot_fig7
from .responses import layer_response_stds
from .table6 import format_table6, table6, write_table6_csv

__all__ = [
    "DEGRADATION_NETS",
    "RESPONSE_NETS",
    "experiment_config",
    "ensure_run",
    "ensure_runs",
    "finished_run",
    "degradation",
    "table6_report",
    "responses",
    "response_claims",
]

DEGRADATION_NETS = [
    "plain20",
    "plain32",
    "plain44",
    "plain56",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "resnet110",
]
RESPONSE_NETS = ["plain20", "plain56", "resnet20", "resnet56", "resnet110"]
PAPER_ITERATIONS = 64000


def run_name(preset: str, iterations: int, seed: int) -> str:
    """The folder of one experiment run, e.g. ``cifar10-plain56-it8000-seed0``."""
    return f"{preset}-it{iterations}-seed{seed}"


def experiment_config(net: str, iterations: int, seed: int, data_dir: str | None, eval_points: int = 32) -> RunConfig:
    """The preset ``cifar10-<net>`` over ``iterations``, its lr drops at the paper's fractions of the run.

    The test set is evaluated ``eval_points`` times, evenly spaced (the points of each test-error curve).
    """
    config = get_preset(f"cifar10-{net}")
    milestones = scale_milestones(config.schedule.milestones, PAPER_ITERATIONS, iterations)
    every = max(1, iterations // eval_points)
    overrides = [
        f"train.iterations={iterations}",
        f"schedule.milestones={','.join(map(str, milestones))}",
        f"train.seed={seed}",
        f"train.eval_every={every}",
        f"train.checkpoint_every={every}",
    ]
    if data_dir:
        overrides.append(f"data.data_dir={data_dir}")
    return apply_overrides(config, overrides)


def schedule_note(iterations: int) -> str:
    first, second = scale_milestones([32000, 48000], PAPER_ITERATIONS, iterations)
    return f"{iterations:,} iterations, lr 0.1 /10 at {first:,} and {second:,} (0.5 and 0.75 of the run; paper: 32k/48k of 64k)"


def finished_run(config: RunConfig, path: Path) -> RunRecord | None:
    """The record of ``path`` if it holds ``config``'s run, finished and checkpointed; None if that run is still
    to train (or to finish); a one-line error if the folder holds another run."""
    run = RunDir(path)
    if not run.config.is_file():
        return None
    saved = config_from_dict(run.read_config())
    if (
        saved.model != config.model
        or saved.train.iterations != config.train.iterations
        or saved.train.seed != config.train.seed
    ):
        raise UserError(
            f"{path} holds a different run ({saved.model.name}, {saved.train.iterations} iterations, seed {saved.train.seed})"
        )
    record = read_record(path)
    return record if record.finished and run.last.is_file() else None


def checkpoint_iteration(path: Path) -> int | None:
    """The iteration of the run directory ``path``'s last.pt, or of the checkpoint file ``path`` (0 without
    one; None if it cannot be read: such a run is resumed on its own)."""
    last = path if path.suffix == ".pt" else RunDir(path).last
    if not last.is_file():
        return 0
    try:
        return read_iteration(last)
    except UserError:
        return None


def ensure_run(config: RunConfig, path: Path, progress: bool | None = None) -> RunRecord:
    """Reuse a finished run, resume one cut short, or train it; refuses a folder holding another config."""
    record = finished_run(config, path)
    if record is not None:
        print(f"reusing {path} (finished)")
        return record
    resume = "auto" if path.exists() else None  # auto: the newest intact checkpoint, or a fresh start
    print(f"{'resuming' if RunDir(path).last.is_file() else 'training'} {path}")
    result = train(config, path, resume=resume, progress=progress)
    if result.get("stopped"):
        raise UserError(f"stopped during {path}; run the same command again to resume")
    return read_record(path)


def ensure_runs(
    configs: list[RunConfig],
    paths: list[Path],
    progress: bool | None = None,
    deadline: float | None = None,
    pack: bool | None = None,
) -> bool:
    """``ensure_run`` for the seeds of one network (``configs`` differ in ``train.seed`` only): where one of
    them would take the packed step anyway (``pack`` None: the engine's ``choose_stepper``; a GPU) or with
    ``pack``, the runs still to train go packed into one network (``train_packed``), those that start from the
    same checkpoint iteration together; on the CPU one after another (packing hides kernel launches, which a
    CPU does not have: there it is slower, docs/training.md). Returns False if ``deadline`` stopped them (every
    run checkpointed), True once all are finished."""
    if pack is None:
        pack = bool(configs) and choose_stepper(configs[0], "auto").packed
    todo = []
    for config, path in zip(configs, paths):
        if finished_run(config, path) is not None:
            print(f"reusing {path} (finished)")
        else:
            todo.append((config, path))
    groups: dict[int | None, list[tuple[RunConfig, Path]]] = {}
    for config, path in todo:
        groups.setdefault(checkpoint_iteration(path), []).append((config, path))
    for start, group in groups.items():
        members = [[item] for item in group] if start is None or not pack else [group]  # unreadable: alone
        for member in members:
            seeds, outs = [c.train.seed for c, _ in member], [p for _, p in member]
            names = ", ".join(str(p) for p in outs)
            print(
                f"{'resuming' if start else 'training'} {names}" + (f" ({len(outs)} packed)" if len(outs) > 1 else "")
            )
            if len(member) == 1:
                results = [train(member[0][0], outs[0], resume="auto", progress=progress, deadline=deadline)]
            else:
                results = train_packed(member[0][0], seeds, outs, resume="auto", progress=progress, deadline=deadline)
            if any(r.get("stopped") for r in results):
                if deadline is not None and time.monotonic() < deadline + 60:
                    return False
                raise UserError(f"stopped during {names}; run the same command again to resume")
    return True


def degradation(
    nets: list[str],
    seeds: list[int],
    iterations: int,
    root: Path,
    out: Path,
    data_dir: str | None,
    eval_points: int = 32,
    train_missing: bool = True,
) -> list[Path]:
    """Fig. 1 and Fig. 6; ``train_missing=False`` draws from the records under ``root`` and trains nothing."""
    records = []
    if train_missing and len(seeds) > 1:  # each network's seeds packed into one run (train --seeds)
        for net in nets:
            configs = [experiment_config(net, iterations, seed, data_dir, eval_points) for seed in seeds]
            ensure_runs(configs, [root / run_name(c.preset, iterations, c.train.seed) for c in configs])
    for seed in seeds:
        for net in nets:
            config = experiment_config(net, iterations, seed, data_dir, eval_points)
            path = root / run_name(config.preset, iterations, seed)
            if train_missing:
                records.append(ensure_run(config, path))
            elif RunDir(path).metrics.is_file():
                record = read_record(path)
                if not record.finished:
                    print(f"{path}: unfinished ({record.reached} of {iterations} iterations), drawn as it is")
                records.append(record)
            else:
                print(f"{path}: no record, left out")
    if not records:
        raise UserError(f"no run records under {root} for {iterations} iterations")
    note = schedule_note(iterations)
    return plot_fig1(records, out / "fig1", note) + plot_fig6(records, out / "fig6", note)


def table6_report(root: Path, out: Path, iterations: int | None = None) -> tuple[str, list[Path]]:
    """Table 6 in Markdown (returned) and CSV from every run record under ``root``."""
    records = [read_record(run.path) for run in RunDir.under(root)]
    records = [r for r in records if iterations is None or r.iterations == iterations]
    for record in [r for r in records if not r.finished]:  # its last error is not the run's final error
        print(f"{record.path}: left out, unfinished ({record.reached} of {record.iterations} iterations)")
    records = [r for r in records if r.finished]
    if not records:
        raise UserError(f"no run records under {root}" + (f" with {iterations} iterations" if iterations else ""))
    rows = table6(records)
    markdown = format_table6(rows)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table6.md").write_text(markdown + "\n")
    return markdown, [out / "table6.md", write_table6_csv(rows, out / "table6.csv")]


def response_claims(mean_std: dict[str, float]) -> dict[str, bool]:
    """The paper's two Fig. 7 claims on mean response stds: each ResNet below its plain twin of the same depth,
    and each ResNet below the next shallower ResNet measured (e.g. resnet56 below resnet20)."""
    depth = {net: int(net.removeprefix("resnet").removeprefix("plain")) for net in mean_std}
    resnets = sorted((n for n in mean_std if n.startswith("resnet")), key=depth.get)
    twins = {
        f"{r} below plain{depth[r]}": mean_std[r] < mean_std[f"plain{depth[r]}"]
        for r in resnets
        if f"plain{depth[r]}" in mean_std
    }
    deeper = {
        f"{deep} below {shallow}": mean_std[deep] < mean_std[shallow] for shallow, deep in zip(resnets, resnets[1:])
    }
    return twins | deeper


def responses(
    root: Path,
    out: Path,
    *,
    iterations: int,
    seed: int = 0,
    nets: list[str] = RESPONSE_NETS,
    data_dir: str | None = None,
    split: str = "test",
    bn_mode: str = "eval",
    std_over: str = "all",
    device: str = "cpu",
    weights: Path | None = None,
) -> dict[str, Any]:
    """Fig. 7 from the last checkpoints of the runs under ``root``, or from the exported networks
    ``weights/cifar10-<net>.safetensors`` (BN folded: each BN's eval-mode output is its folded convolution's,
    so ``bn_mode="eval"`` only); returns the stds and the paper's claims."""
    dev = torch.device(device)
    if weights is not None and bn_mode != "eval":
        raise UserError("exported networks have their BN folded: their responses are BN's eval mode only")
    stds: dict[str, list[float]] = {}
    for net in nets:
        if weights is not None:
            checkpoint = Path(weights) / f"cifar10-{net}.safetensors"
        else:
            checkpoint = RunDir(root / run_name(f"cifar10-{net}", iterations, seed)).last
        bundle = read_bundle(checkpoint)
        model, record = bundle.model.to(dev), bundle.record
        dataset = rdata.load_dataset(
            record.dataset, data_dir or record.data["data_dir"], val_size=record.data["val_split"]
        )
        chosen = {"test": dataset.test, "train": dataset.train, "val": dataset.val}[split]
        if chosen is None:
            raise UserError(f"{checkpoint} was trained without a validation split; use --split test or train")
        loader = rdata.InMemoryLoader(
            chosen.images, chosen.labels, batch_size=500, mean=record.preprocessing.mean, train=False, device=dev
        )
        stds[net] = layer_response_stds(model, loader, bn_mode=bn_mode, std_over=std_over)
    mean = {net: sum(v) / len(v) for net, v in stds.items()}
    claims = response_claims(mean)
    note = f"{split} split, BN in {bn_mode} mode, std over {'all elements' if std_over == 'all' else 'each channel (mean)'}; {schedule_note(iterations)}"
    paths = plot_fig7(stds, out / "fig7", note)
    summary = {"note": note, "mean_std": mean, "claims": claims, "stds": stds, "figures": [str(p) for p in paths]}
    (out / "fig7.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary
