"""The table behind `resnetlab models`: every network's measured size beside the paper's figure."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

import torch

from ..paper import MULTIPLY_ADDS, PARAMETERS, Figure
from .complexity import count_multiply_adds, count_parameters
from .registry import create_model, list_models, model_info

__all__ = ["SizeRow", "PAPER_VARIANTS", "size_table", "format_size_table", "format_agreement", "format_models"]

# Variants the paper gives counts for, beyond the registered defaults (Sec. 2 of PAPER.md; Table 3).
PAPER_VARIANTS: list[tuple[str, dict[str, object]]] = [
    ("resnet18", {"shortcut": "A"}),
    ("resnet18", {"shortcut": "C"}),
    ("resnet34", {"shortcut": "A"}),
    ("resnet34", {"shortcut": "C"}),
    ("resnet50", {"stride_in_1x1": False}),
    ("resnet101", {"stride_in_1x1": False}),
    ("resnet152", {"stride_in_1x1": False}),
]


@dataclass
class SizeRow:
    name: str
    family: str
    depth: int
    block: str
    shortcut: str  # "A" | "B" | "C", or "-" for a plain net
    stride: str  # "v1" (stride in the 1x1) | "v1.5" (in the 3x3) for bottlenecks; "-" for basic blocks
    input_size: int
    parameters: int
    multiply_adds: int
    paper_parameters: Figure | None
    paper_multiply_adds: Figure | None

    @property
    def matches(self) -> bool:
        """True when every figure the paper gives for this network agrees with the measurement."""
        return all(
            figure is None or figure.matches(measured)
            for figure, measured in (
                (self.paper_parameters, self.parameters),
                (self.paper_multiply_adds, self.multiply_adds),
            )
        )

    def to_json(self) -> dict[str, object]:
        row = asdict(self)
        for key in ("paper_parameters", "paper_multiply_adds"):
            figure = getattr(self, key)
            row[key] = None if figure is None else {"value": figure.value, "source": figure.source}
        row["matches_paper"] = self.matches
        return row


def _measure(name: str, options: dict[str, object]) -> SizeRow:
    info = model_info(name)
    merged = {**info.options, **options}
    with torch.device("meta"):  # shapes only: counting ResNet-1202 or ResNet-152 allocates nothing
        model = create_model(name, **options)
    shortcut = str(getattr(merged.get("shortcut"), "value", merged.get("shortcut"))) if info.residual else "-"
    stride = ("v1" if merged["stride_in_1x1"] else "v1.5") if info.block == "bottleneck" else "-"
    return SizeRow(
        name=name,
        family=info.family,
        depth=info.depth,
        block=info.block,
        shortcut=shortcut,
        stride=stride,
        input_size=info.input_size,
        parameters=count_parameters(model),
        multiply_adds=count_multiply_adds(model, (3, info.input_size, info.input_size)),
        paper_parameters=PARAMETERS.get((name, shortcut)),
        paper_multiply_adds=MULTIPLY_ADDS.get((name, shortcut, stride)),
    )


def size_table(variants: bool = True, family: str | None = None) -> list[SizeRow]:
    """One row per registered network (paper defaults), then the paper's variants when ``variants``."""
    rows = [_measure(name, {}) for name in list_models(family)]
    if variants:
        rows += [_measure(name, opts) for name, opts in PAPER_VARIANTS if family in (None, model_info(name).family)]
    return rows


def _si(value: float) -> str:
    return f"{value / 1e9:.3f}G" if value >= 1e9 else f"{value / 1e6:.2f}M"


def _agreement(row: SizeRow) -> str:
    if row.paper_parameters is None and row.paper_multiply_adds is None:
        return "-"
    return "yes" if row.matches else "NO"


def _sources(row: SizeRow) -> str:
    sources = [
        f.source + (f" ({f.digits} digits)" if f.digits else "")
        for f in (row.paper_parameters, row.paper_multiply_adds)
        if f
    ]
    return ", ".join(dict.fromkeys(sources)) or "-"


def format_size_table(rows: list[SizeRow], markdown: bool = False) -> str:
    header = [
        "model",
        "family",
        "depth",
        "block",
        "shortcut",
        "stride",
        "input",
        "params",
        "paper",
        "mult-adds",
        "paper",
        "agrees",
        "paper source",
    ]
    body = [
        [
            r.name,
            r.family,
            str(r.depth),
            r.block,
            r.shortcut,
            r.stride,
            f"{r.input_size}x{r.input_size}",
            f"{r.parameters:,}",
            r.paper_parameters.text if r.paper_parameters else "-",
            _si(r.multiply_adds),
            r.paper_multiply_adds.text if r.paper_multiply_adds else "-",
            _agreement(r),
            _sources(r),
        ]
        for r in rows
    ]
    if markdown:
        lines = [
            "| " + " | ".join(header) + " |",
            "|" + "".join("---:|" if i in _NUMERIC else "---|" for i in range(len(header))),
        ]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]

    def fmt_row(cells: list[str]) -> str:
        return "  ".join(
            c.rjust(w) if i in _NUMERIC else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()

    return "\n".join([fmt_row(header), fmt_row(["-" * w for w in widths]), *map(fmt_row, body)])


_NUMERIC = {2, 7, 8, 9, 10}


def format_agreement(rows: list[SizeRow]) -> str:
    """The line under the table: how many of the networks the paper gives a figure for agree with it."""
    checked = [row for row in rows if row.paper_parameters or row.paper_multiply_adds]
    agree = sum(row.matches for row in checked)
    return (
        f"{len(rows)} networks; {agree} of the {len(checked)} with a figure in the paper agree with it "
        "(parameters exactly, multiply-adds within 0.5%, or to the digits Table 1 gives)."
    )


def format_models(rows: list[SizeRow], markdown: bool = False, as_json: bool = False) -> str:
    """What `resnetlab models` prints: JSON (one object per network), or the table and the agreement line."""
    if as_json:
        return json.dumps([row.to_json() for row in rows], indent=2)
    return format_size_table(rows, markdown=markdown) + "\n\n" + format_agreement(rows)
