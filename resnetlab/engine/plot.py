"""Training curves in the style of the paper's Fig. 6: training error dashed, test error solid."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .rundir import read_record

__all__ = ["read_run", "plot_runs"]


def read_run(path: str | Path) -> tuple[str, list[dict]]:
    """(label, evaluation records) of a run directory: the network's name, and the folder's when it says more."""
    record = read_record(path)
    label = record.config.get("model", {}).get("name", record.path.name)
    if record.path.name != label and not record.path.name.startswith(label):
        # A folder name that is not UTF-8 (surrogate-escaped bytes) cannot be drawn as text: shown with U+FFFD.
        shown = record.path.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        label = f"{label} ({shown})"
    return label, record.evals


def plot_runs(runs: list[str | Path], out: str | Path, title: str | None = None) -> Path:
    """Overlay runs: error (%) against iterations, dashed = training error, solid = test error."""
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: a file is drawn without touching the user's backend

    fig = Figure(figsize=(6.4, 4.4))
    ax = fig.subplots()
    colors = matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]
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
    return out
