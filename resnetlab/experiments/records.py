"""Run records as the experiments read them: the config, the evaluation lines, the last checkpoint.

Figures and tables are drawn from these records only (never from numbers typed in), and the reported test
error is the final iteration's: no model is selected on the test set.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError

__all__ = ["RunRecord", "read_record", "run_name"]


def run_name(preset: str, iterations: int, seed: int) -> str:
    """The folder of one experiment run, e.g. ``cifar10-plain56-it8000-seed0``."""
    return f"{preset}-it{iterations}-seed{seed}"


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    evals: list[dict[str, Any]]  # evaluation lines of metrics.jsonl, by iteration
    env: dict[str, Any]  # env.json: versions, device, the data source

    @property
    def model(self) -> str:
        return self.config["model"]["name"]

    @property
    def iterations(self) -> int:
        return int(self.config["train"]["iterations"])

    @property
    def seed(self) -> int:
        return int(self.config["train"]["seed"])

    @property
    def data(self) -> str:
        return str(self.env.get("data_source") or self.config["data"].get("data_dir") or self.config["data"]["dataset"])

    @property
    def reached(self) -> int:
        """The iteration of the last evaluation (0 before the first)."""
        return int(self.evals[-1]["iteration"]) if self.evals else 0

    @property
    def finished(self) -> bool:
        return self.reached >= self.iterations

    @property
    def final(self) -> dict[str, Any]:
        """The last evaluation: the reported number (no selection on the test set)."""
        return self.evals[-1]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(r["iteration"], r[key]) for r in self.evals if key in r]
        return [p[0] for p in points], [p[1] for p in points]


def read_record(path: str | Path) -> RunRecord:
    path = Path(path)
    config, metrics = path / "config.json", path / "metrics.jsonl"
    if not config.is_file() or not metrics.is_file():
        raise UserError(f"{path} is not a run directory (needs config.json and metrics.jsonl)")
    lines = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evals = sorted((r for r in lines if "test_top1_error" in r), key=lambda r: r["iteration"])
    env = json.loads((path / "env.json").read_text()) if (path / "env.json").is_file() else {}
    return RunRecord(path, json.loads(config.read_text()), evals, env)
