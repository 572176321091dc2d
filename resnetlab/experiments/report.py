"""What `resnetlab experiment` prints: the numbers each experiment measured and the files it wrote."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["format_written", "format_table6_report", "format_responses"]


def format_written(paths: Iterable[Path | str]) -> str:
    """The files an experiment wrote (degradation: Fig. 1 and Fig. 6), on one line."""
    return "wrote " + ", ".join(map(str, paths))


def format_table6_report(markdown: str, paths: Iterable[Path | str]) -> str:
    """Table 6 as Markdown (from ``table6_report``), then the files it was written to."""
    return markdown + "\n" + format_written(paths)


def format_responses(summary: dict[str, Any]) -> str:
    """Fig. 7's mean response std per network, the paper's claims about them, and the figures (``responses``)."""
    lines = [f"{net:<10} mean response std {value:.4f}" for net, value in summary["mean_std"].items()]
    lines += [
        f"paper's claim, {claim}: {'holds' if held else 'does NOT hold'}" for claim, held in summary["claims"].items()
    ]
    lines.append(format_written(summary["figures"]))
    return "\n".join(lines)
