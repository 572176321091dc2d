"""The campaign's plan: which runs of the paper's CIFAR-10 section it trains, in which order, and which it cannot.

The GPU plan follows the issue's (a)-(d): (a) seed 0 of plain-20/32/44/56 and ResNet-20/32/44/56 (Fig. 6 left
and middle, Table 6); (b) ResNet-110 seed 0; (c) seeds 1-4 of ResNet-20 to 110 (Table 6's mean +- std), each
network's seeds packed into one (``train_packed``); (d) plain-110 and ResNet-1202 seed 0. The CPU plan has the
same runs in the order that finishes soonest what the claims need most: ResNet-20 and plain-20, then ResNet-56
and plain-56 (Fig. 6's two ends), then 32 and 44 with their plain twins, ResNet-110, seeds 1-4 one at a time
(packing does not pay on a CPU), plain-110.

A window's machine takes and gives back at most 64 MiB, so the networks packed together are as many seeds as
keep the carried checkpoints under ``CARRY_LIMIT``; a network whose single checkpoint is larger (ResNet-1202:
19.4M parameters, 155 MB with its momentum) cannot be carried and is left out of the windows, said so.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..models import count_parameters, create_model
from ..runtime import resolve_device

__all__ = ["CARRY_LIMIT", "PLANS", "TABLE6_SEEDS", "Unit", "checkpoint_bytes", "paper_plan", "resolve_plan"]

# Bytes of unfinished checkpoints one window may hand to the next. A window's machine receives at most 64 MiB
# (the repository, with the shipped weights (about 32 MB once the plan is done), and the 19 MB CIFAR-10
# archive) and gives back at most 64 MiB: 16 MiB leaves room for both.
CARRY_LIMIT = 16 * 2**20
PLAIN = ["plain20", "plain32", "plain44", "plain56"]
RESNETS = ["resnet20", "resnet32", "resnet44", "resnet56"]
# The CPU plan's part (a): what finishes soonest first, in pairs that each answer a claim. ResNet-20 and
# plain-20 (the cheapest pair, ~3x faster than 56); then 56 and plain-56, the two ends of Fig. 6 (the
# degradation of the plain net and its absence in the ResNet show with these two pairs alone); then the
# depths between them.
CPU_FIRST = ["resnet20", "plain20", "resnet56", "plain56", "resnet32", "plain32", "resnet44", "plain44"]
PLANS = ("gpu", "cpu")
TABLE6_SEEDS = 5  # Table 6's "best (mean +- std)" is over 5 runs (Sec. 4.2)


@dataclass(frozen=True)
class Unit:
    """Seeds of one network trained together (packed), in the plan's part (a)-(d)."""

    part: str
    net: str
    seeds: tuple[int, ...]

    @property
    def label(self) -> str:
        seeds = ",".join(map(str, self.seeds))
        return f"({self.part}) {self.net} seed{'s' if len(self.seeds) > 1 else ''} {seeds}"


def checkpoint_bytes(net: str) -> int:
    """A training checkpoint of ``net``: weights and momentum in float32, plus the record (about 64 KiB)."""
    return 8 * count_parameters(create_model(net)) + 64 * 1024


def resolve_plan(plan: str) -> str:
    """``auto``: the GPU plan where CUDA is, the CPU plan elsewhere; ``gpu`` and ``cpu`` as they are."""
    if plan == "auto":
        return "gpu" if resolve_device("auto").type == "cuda" else "cpu"
    if plan not in PLANS:
        raise UserError(f"unknown plan {plan!r} (auto, gpu or cpu)")
    return plan


def paper_plan(
    seeds: int = TABLE6_SEEDS, nets: list[str] | None = None, carry_limit: int = CARRY_LIMIT, plan: str = "gpu"
) -> tuple[list[Unit], list[tuple[Unit, str]]]:
    """The campaign's units in order, and the ones it cannot run across windows (with why).

    ``seeds``: seeds per network of Table 6, 1 to 5 (the paper: 5; part (c) trains seeds 1..seeds-1). ``nets``:
    only these networks (a tiny plan for tests); each must be the plan's, and one the windows cannot carry
    (ResNet-1202) is refused with why, not dropped. ``plan="gpu"``: the paper's order, a network's seeds in (c)
    packed in groups whose carried checkpoints fit ``carry_limit``; ``"cpu"``: ``CPU_FIRST``, and each seed
    of (c) a unit of its own (on a CPU packing is slower than one network after another)."""
    if not 1 <= seeds <= TABLE6_SEEDS:
        raise UserError(
            f"--table6-seeds must be 1 to {TABLE6_SEEDS} (Table 6 is over {TABLE6_SEEDS} runs of each network; "
            f"1: seed 0 only), got {seeds}"
        )
    if plan == "cpu":
        wanted = [("a", net, (0,)) for net in CPU_FIRST] + [("b", "resnet110", (0,))] + [
            ("c", net, (seed,)) for net in RESNETS + ["resnet110"] for seed in range(1, seeds)
        ]  # fmt: skip
    else:
        wanted = [
            ("a", net, (0,)) for net in PLAIN + RESNETS
        ] + [("b", "resnet110", (0,))] + [
            ("c", net, tuple(range(1, seeds))) for net in RESNETS + ["resnet110"]
        ]  # fmt: skip
    wanted += [("d", "plain110", (0,)), ("d", "resnet1202", (0,))]
    units, refused = [], []
    for part, net, group in wanted:
        if (nets is not None and net not in nets) or not group:
            continue
        size = checkpoint_bytes(net)
        per_unit = carry_limit // size
        if per_unit < 1:
            refused.append(
                (
                    Unit(part, net, group),
                    f"its checkpoint ({size / 1e6:.0f} MB with momentum) is more than a window can carry to the "
                    f"next ({carry_limit / 2**20:.0f} MiB); it needs one uninterrupted run of its own",
                )
            )
            continue
        parts = -(-len(group) // per_unit)  # as few units as fit, of balanced sizes
        for i in range(parts):
            units.append(Unit(part, net, group[i * len(group) // parts : (i + 1) * len(group) // parts]))
    if nets is not None:
        known = list(dict.fromkeys(net for _, net, _ in wanted))
        unknown = [net for net in nets if net not in known]
        if unknown:
            raise UserError(f"--nets {' '.join(unknown)}: not in the campaign's plan ({', '.join(known)})")
        for unit, why in refused:
            raise UserError(
                f"--nets {unit.net}: a campaign cannot train it in windows: {why} "
                f"(resnetlab train --preset cifar10-{unit.net})"
            )
    return units, refused
