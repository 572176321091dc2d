"""Table 6 from run records: per network, parameters, test error mean +- std over seeds and best.

The reported error is each run's final-iteration test error (no selection on the test set). When a run
held out a validation split, the test error of its validation-selected evaluation is given too.
"""

from __future__ import annotations

import csv
import statistics
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch

from ..engine.rundir import RunRecord
from ..models import count_parameters, create_model
from ..paper import TABLE6_TEST_ERROR

__all__ = ["Table6Row", "table6", "format_table6", "write_table6_csv"]


@dataclass
class Table6Row:
    model: str
    parameters: int
    seeds: int
    iterations: int
    mean: float  # test error %, final iteration, mean over seeds
    std: float  # sample std over seeds (0 with one seed)
    best: float
    val_selected: float | None  # mean test error % of the validation-selected evaluations, if any
    paper: str
    data: str


def _depth(model: str) -> tuple[bool, int]:
    digits = "".join(ch for ch in model if ch.isdigit())
    return (not model.startswith("resnet"), int(digits or 0))


def table6(records: list[RunRecord]) -> list[Table6Row]:
    groups: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for record in records:
        if record.evals:
            groups[(record.model, record.iterations)].append(record)
    rows = []
    for (model, iterations), runs in sorted(groups.items(), key=lambda kv: (_depth(kv[0][0]), kv[0][1])):
        errors = [100 * r.final["test_top1_error"] for r in runs]
        selected = [
            100
            * min((e for e in r.evals if "val_top1_error" in e), key=lambda e: e["val_top1_error"])["test_top1_error"]
            for r in runs
            if any("val_top1_error" in e for e in r.evals)
        ]
        with torch.device("meta"):
            params = count_parameters(create_model(model))
        data = sorted({r.data for r in runs})
        rows.append(
            Table6Row(
                model=model,
                parameters=params,
                seeds=len(runs),
                iterations=iterations,
                mean=statistics.fmean(errors),
                std=statistics.stdev(errors) if len(errors) > 1 else 0.0,
                best=min(errors),
                val_selected=statistics.fmean(selected) if selected else None,
                paper=TABLE6_TEST_ERROR.get(model, "-"),
                data=", ".join(data),
            )
        )
    return rows


def format_table6(rows: list[Table6Row]) -> str:
    header = "| network | params | iterations | seeds | test error % (mean +- std) | best | val-selected | paper (Table 6) | data |"
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        selected = f"{r.val_selected:.2f}" if r.val_selected is not None else "-"
        lines.append(
            f"| {r.model} | {r.parameters / 1e6:.2f}M | {r.iterations:,} | {r.seeds} | {r.mean:.2f} +- {r.std:.2f} | "
            f"{r.best:.2f} | {selected} | {r.paper} | {r.data} |"
        )
    return "\n".join(lines)


def write_table6_csv(rows: list[Table6Row], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(
            ["network", "parameters", "iterations", "seeds", "mean", "std", "best", "val_selected", "paper", "data"]
        )
        for r in rows:
            writer.writerow(
                [
                    r.model,
                    r.parameters,
                    r.iterations,
                    r.seeds,
                    f"{r.mean:.4f}",
                    f"{r.std:.4f}",
                    f"{r.best:.4f}",
                    "" if r.val_selected is None else f"{r.val_selected:.4f}",
                    r.paper,
                    r.data,
                ]
            )
    return path
