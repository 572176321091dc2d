"""The paper's CIFAR-10 figures from run records: Fig. 1, Fig. 6 (three panels) and Fig. 7 (two panels).

Curves follow the paper: error (%) against iterations, training error dashed, test error solid. With several
seeds of one network, the curve is their mean at each evaluation; the caption says how many seeds.
"""

from __future__ import annotations

import textwrap
from collections import defaultdict
from pathlib import Path

from ..engine.rundir import RunRecord

__all__ = [
    "mean_curves",
    "figure_fig1",
    "figure_fig6",
    "figure_fig7",
    "plot_fig1",
    "plot_fig6",
    "plot_fig7",
    "save_figure",
]


def _figure(rows: int, cols: int, figsize: tuple[float, float], **kwargs):
    """A figure that belongs to no GUI (``matplotlib.figure.Figure``, not pyplot): drawing a file never
    touches the user's backend, and needs no ``matplotlib.use``."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize)
    return fig, fig.subplots(rows, cols, **kwargs)


def mean_curves(records: list[RunRecord]) -> dict[str, dict[str, tuple[list[int], list[float]]]]:
    """model -> {"train": (iterations, error %), "test": (...), "seeds": n}: means over the model's seeds."""
    by_model: dict[str, list[RunRecord]] = defaultdict(list)
    for record in records:
        by_model[record.model].append(record)
    curves = {}
    for model, runs in by_model.items():
        out: dict = {"seeds": len(runs)}
        for kind, key in (("train", "train_error"), ("test", "test_top1_error")):
            common = sorted(set.intersection(*(set(r.series(key)[0]) for r in runs)))
            values = [sum(dict(zip(*r.series(key)))[i] for r in runs) / len(runs) * 100 for i in common]
            out[kind] = (common, values)
        curves[model] = out
    return curves


def _draw(ax, curves: dict, models: list[str], kinds: tuple[str, ...] = ("train", "test")) -> None:
    colors = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b"]
    for color, model in zip(colors, [m for m in models if m in curves]):
        c = curves[model]
        label = f"{model} ({c['seeds']} seed{'s' * (c['seeds'] > 1)})"
        if "train" in kinds:  # dashed when beside the test curve, as in Fig. 6; solid when alone (Fig. 1)
            ax.plot(
                *c["train"],
                "--" if "test" in kinds else "-",
                color=color,
                linewidth=1,
                label=None if "test" in kinds else label,
            )
        if "test" in kinds:
            ax.plot(*c["test"], "-", color=color, linewidth=2, label=label)
    ax.set_xlabel("iterations")
    ax.set_ylabel("error (%)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _title(fig, text: str, width: int) -> None:
    """The figure's title, wrapped to the figure's width (``width`` characters at 9 pt): the schedule and
    the choices behind the figure must be readable on it, not cut off."""
    fig.suptitle(textwrap.fill(text, width), fontsize=9)


def save_figure(fig, out: Path) -> list[Path]:
    """``out``.png and ``out``.svg."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    paths = [out.with_suffix(".png"), out.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=120)
    return paths


def plot_fig1(records: list[RunRecord], out: Path, note: str) -> list[Path]:
    return save_figure(figure_fig1(records, note), out)


def plot_fig6(records: list[RunRecord], out: Path, note: str) -> list[Path]:
    return save_figure(figure_fig6(records, note), out)


def plot_fig7(stds: dict[str, list[float]], out: Path, note: str) -> list[Path]:
    return save_figure(figure_fig7(stds, note), out)


def figure_fig1(records: list[RunRecord], note: str):
    """Fig. 1: training error (left) and test error (right) of plain-20 and plain-56."""
    curves = mean_curves(records)
    fig, (left, right) = _figure(1, 2, (10, 4))
    for ax, kind, title in ((left, "train", "training error"), (right, "test", "test error")):
        _draw(ax, curves, ["plain20", "plain56"], kinds=(kind,))
        ax.set_title(f"{title}: plain-20 vs plain-56")
    _title(fig, f"Fig. 1 (CIFAR-10). {note}", width=110)
    return fig


def figure_fig6(records: list[RunRecord], note: str):
    """Fig. 6: plain nets (left), ResNets (middle), ResNet-110 vs ResNet-1202 (right)."""
    curves = mean_curves(records)
    fig, axes = _figure(1, 3, (15, 4.2), sharey=True)
    panels = [
        ("plain networks", ["plain20", "plain32", "plain44", "plain56"]),
        ("ResNets", ["resnet20", "resnet32", "resnet44", "resnet56", "resnet110"]),
        ("ResNet-110 vs ResNet-1202", ["resnet110", "resnet1202"]),
    ]
    for ax, (title, models) in zip(axes, panels):
        _draw(ax, curves, models)
        present = [m for m in models if m in curves]
        ax.set_title(title if present else f"{title}: no runs")
    _title(fig, f"Fig. 6 (CIFAR-10): dashed training error, solid test error. {note}", width=170)
    return fig


def figure_fig7(stds: dict[str, list[float]], note: str):
    """Fig. 7: std of each 3x3 layer's response, in layer order (top) and sorted descending (bottom)."""
    fig, (top, bottom) = _figure(2, 1, (8, 7))
    for model, values in stds.items():
        top.plot(range(1, len(values) + 1), values, marker=".", linewidth=1, label=model)
        bottom.plot(range(1, len(values) + 1), sorted(values, reverse=True), marker=".", linewidth=1, label=model)
    top.set_xlabel("layer index (original)")
    bottom.set_xlabel("layer index (sorted by magnitude)")
    for ax in (top, bottom):
        ax.set_ylabel("std")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    _title(fig, f"Fig. 7 (CIFAR-10): std of layer responses. {note}", width=95)
    return fig
