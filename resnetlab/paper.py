"""The reference numbers that measured values are held against, each with its source.

Two kinds, both via ``shared/PAPER.md`` (the paper as a specification): figures the paper prints (Table 1's
two-digit FLOPs, Table 6's test errors), and exact parameter and multiply-add counts of the networks it
specifies, which it does not print (Table 1 gives FLOPs to two digits and no parameters; Table 6 rounds
parameters to 0.27M and gives no multiply-adds). PAPER.md lists the exact counts "for cross-checking" in
Sec. 2 (ImageNet; option B's equal torchvision's) and Sec. 4 (CIFAR-10), and they cite those sections.
Everything here is only ever *compared with*; no count the library reports is taken from this file.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Figure", "PARAMETERS", "MULTIPLY_ADDS", "TABLE6_TEST_ERROR"]


@dataclass(frozen=True)
class Figure:
    """A number from the paper and how precisely it was given.

    ``rel_tol``: relative tolerance for an exact count (0 for parameters, 0.5% for the multiply-add
    cross-check counts). ``digits``: significant digits of a figure the paper rounds, such as
    Table 1's "3.6 x 10^9"; a measured value matches when it rounds to the same figure.
    """

    value: float
    source: str
    rel_tol: float = 0.0
    digits: int | None = None
    text: str = ""  # as the paper writes it, e.g. "3.858G"

    def matches(self, measured: float) -> bool:
        if self.digits is not None:
            return float(f"{measured:.{self.digits}g}") == float(f"{self.value:.{self.digits}g}")
        return abs(measured - self.value) <= self.rel_tol * abs(self.value)


def _exact(value: int, source: str) -> Figure:
    return Figure(value, source, text=f"{value:,}")


_UNITS = {"M": 1e6, "G": 1e9}


def _macs(text: str, source: str, digits: int | None = None) -> Figure:
    """A multiply-add figure as the paper writes it ("3.858G"); ``digits`` for a rounded one ("3.6G")."""
    return Figure(float(text[:-1]) * _UNITS[text[-1]], source, rel_tol=0.005, digits=digits, text=text)


# Exact counts of the architectures the paper specifies, as PAPER.md lists them; the paper prints none of them.
_SEC2 = "PAPER.md Sec. 2"  # ImageNet: Table 1's networks at 224x224
_SEC4 = "PAPER.md Sec. 4"  # CIFAR-10: Sec. 4.2's 6n+2 networks at 32x32; Table 6 gives 0.27M .. 19.4M

# Keys: (model name, shortcut option or "-" for plain nets).
PARAMETERS: dict[tuple[str, str], Figure] = {
    **{
        (f"resnet{d}", "B"): _exact(n, _SEC2)
        for d, n in zip((18, 34, 50, 101, 152), (11_689_512, 21_797_672, 25_557_032, 44_549_160, 60_192_808))
    },
    **{(f"resnet{d}", "A"): _exact(n, _SEC2) for d, n in ((18, 11_515_688), (34, 21_623_848))},
    **{(f"plain{d}", "-"): _exact(n, _SEC2) for d, n in ((18, 11_515_688), (34, 21_623_848))},
    **{(f"resnet{d}", "C"): _exact(n, _SEC2) for d, n in ((18, 12_043_816), (34, 22_716_840))},
}
_CIFAR_PARAMETERS = {20: 269_722, 32: 464_154, 44: 658_586, 56: 853_018, 110: 1_727_962, 1202: 19_421_274}
_CIFAR_MACS = {20: "40.55M", 32: "68.86M", 44: "97.17M", 56: "125.49M", 110: "252.89M", 1202: "2.83G"}
for _d, _n in _CIFAR_PARAMETERS.items():
    # Sec. 4.2: option A everywhere, so a ResNet and its plain twin have exactly the same parameters. Table 6
    # gives them rounded (0.27M, 0.46M, ...); the exact counts are PAPER.md's.
    PARAMETERS[(f"resnet{_d}", "A")] = _exact(_n, _SEC4)
    if _d != 1202:  # the paper has no plain-1202
        PARAMETERS[(f"plain{_d}", "-")] = _exact(_n, _SEC4)

# Keys: (model name, shortcut option or "-" for plain, stride placement "v1" | "v1.5" for bottleneck nets or
# "-" for basic-block nets, which have no 1x1 to move the stride to); multiply-adds at the native resolution.
MULTIPLY_ADDS: dict[tuple[str, str, str], Figure] = {}
for _d, _v1, _v15 in zip((50, 101, 152), ("3.858G", "7.570G", "11.282G"), ("4.089G", "7.801G", "11.514G")):
    MULTIPLY_ADDS[(f"resnet{_d}", "B", "v1")] = _macs(_v1, _SEC2)
    MULTIPLY_ADDS[(f"resnet{_d}", "B", "v1.5")] = _macs(_v15, _SEC2)
for _d, _exact_g, _table1_g in ((18, "1.814G", "1.8G"), (34, "3.664G", "3.6G")):
    MULTIPLY_ADDS[(f"resnet{_d}", "B", "-")] = _macs(_exact_g, _SEC2)
    # Table 1 gives 1.8 and 3.6 x 10^9 for the stacks themselves, and the text calls the plain 34-layer
    # baseline "3.6 billion FLOPs". Option A shortcuts add no multiply-adds.
    MULTIPLY_ADDS[(f"plain{_d}", "-", "-")] = _macs(_table1_g, "Table 1", digits=2)
    MULTIPLY_ADDS[(f"resnet{_d}", "A", "-")] = _macs(_table1_g, "Table 1", digits=2)
for _d, _m in _CIFAR_MACS.items():
    MULTIPLY_ADDS[(f"resnet{_d}", "A", "-")] = _macs(_m, _SEC4)
    if _d != 1202:
        MULTIPLY_ADDS[(f"plain{_d}", "-", "-")] = _macs(_m, _SEC4)


# Table 6: CIFAR-10 test error (%) of the paper's ResNets (ResNet-110: best of 5 runs, mean 6.61 +- 0.16).
TABLE6_TEST_ERROR: dict[str, str] = {
    "resnet20": "8.75",
    "resnet32": "7.51",
    "resnet44": "7.17",
    "resnet56": "6.97",
    "resnet110": "6.43 (best of 5; 6.61 +- 0.16)",
    "resnet1202": "7.93",
}
