"""Training curves in the style of the paper's Fig. 6: training error dashed, test error solid."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError

__all__ = ["read_run", "plot_runs"]


def read_run(path: str | Path) -> tuple[str, list[dict]]:
    """(label, evaluation records) of a run directory, from its config.json and metrics.jsonl."""
    path = Path(path)
    metrics = path / "metrics.jsonl"
    if not metrics.is_file():
        raise UserError(f"{path} is not a run directory (no metrics.jsonl)")
    records = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    evals = [r for r in records if "test_top1_error" in r]
    label = path.name
    config = path / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text())
        label = cfg.get("model", {}).get("name", label)
        if len({path.name, label}) > 1 and not path.name.startswith(label):
            label = f"{label} ({path.name})"
    return label, evals


def plot_runs(runs: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Overlay runs: error (%) against iterations, dashed = training error, solid = test error."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    drawn = 0
    for i, run in enumerate(runs):
        label, evals = read_run(run)
        if not evals:
            continue
        its = [r["iteration"] for r in evals]
        color = colors[i % len(colors)]
        ax.plot(its, [100 * r["train_error"] for r in evals], "--", color=color, linewidth=1)
        ax.plot(its, [100 * r["test_top1_error"] for r in evals], "-", color=color, linewidth=2, label=label)
        drawn += 1
    if not drawn:
        plt.close(fig)
        raise UserError("no evaluations to plot yet in " + ", ".join(map(str, runs)))
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.set_title(title or "dashed: training error, solid: test error")
    ax.grid(alpha=0.3)
    ax.legend()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out
