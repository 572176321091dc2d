"""Exact parameter counts and multiply-adds against the paper (PAPER.md Sec. 2 and 4), measured."""

from __future__ import annotations

import pytest
import torch

from resnetlab.models import count_multiply_adds, count_parameters, create_model
from resnetlab.models.summary import PAPER_VARIANTS, size_table
from resnetlab.paper import MULTIPLY_ADDS, PARAMETERS, Figure


@pytest.fixture(scope="module")
def table():
    return size_table(variants=True)


def test_every_registered_network_and_variant_is_in_the_table(table):
    assert len(table) == 21 + len(PAPER_VARIANTS)


def test_every_count_agrees_with_the_paper(table):
    disagree = [(r.name, r.shortcut, r.stride, r.parameters, r.multiply_adds) for r in table if not r.matches]
    assert disagree == []


def test_every_figure_of_the_paper_is_checked(table):
    # Each reference number of paper.py is compared against some measured row (none is left unused).
    used_params = {(r.name, r.shortcut) for r in table if r.paper_parameters}
    used_macs = {(r.name, r.shortcut, r.stride) for r in table if r.paper_multiply_adds}
    assert used_params == set(PARAMETERS)
    assert used_macs == set(MULTIPLY_ADDS)


# The exact numbers, written out once more so that a typo in paper.py cannot hide a wrong network.
@pytest.mark.parametrize(
    "name, options, params, macs",
    [
        ("resnet18", {}, 11_689_512, 1.814e9),
        ("resnet34", {}, 21_797_672, 3.664e9),
        ("resnet50", {}, 25_557_032, 3.858e9),
        ("resnet101", {}, 44_549_160, 7.570e9),
        ("resnet152", {}, 60_192_808, 11.282e9),
        ("resnet50", {"stride_in_1x1": False}, 25_557_032, 4.089e9),
        ("resnet101", {"stride_in_1x1": False}, 44_549_160, 7.801e9),
        ("resnet152", {"stride_in_1x1": False}, 60_192_808, 11.514e9),
        ("resnet18", {"shortcut": "A"}, 11_515_688, None),
        ("resnet34", {"shortcut": "A"}, 21_623_848, None),
        ("plain18", {}, 11_515_688, None),
        ("plain34", {}, 21_623_848, None),
        ("resnet18", {"shortcut": "C"}, 12_043_816, None),
        ("resnet34", {"shortcut": "C"}, 22_716_840, None),
        ("resnet20", {}, 269_722, 40.55e6),
        ("resnet32", {}, 464_154, 68.86e6),
        ("resnet44", {}, 658_586, 97.17e6),
        ("resnet56", {}, 853_018, 125.49e6),
        ("resnet110", {}, 1_727_962, 252.89e6),
        ("resnet1202", {}, 19_421_274, 2.83e9),
        ("plain56", {}, 853_018, 125.49e6),
    ],
)
def test_exact_sizes(name, options, params, macs):
    size = 224 if name in {f"{k}{d}" for k in ("resnet", "plain") for d in (18, 34, 50, 101, 152)} else 32
    with torch.device("meta"):
        model = create_model(name, **options)
    assert count_parameters(model) == params
    if macs is not None:
        assert count_multiply_adds(model, (3, size, size)) == pytest.approx(macs, rel=0.005)


def test_multiply_adds_counter_on_a_real_device_matches_meta():
    model = create_model("resnet20")
    with torch.device("meta"):
        meta = create_model("resnet20")
    assert count_multiply_adds(model, (3, 32, 32)) == count_multiply_adds(meta, (3, 32, 32)) == 40_551_040
    assert model.training  # the counter restores the mode it found


def test_multiply_adds_by_hand_for_resnet20():
    # conv1 + 3 stages of 6 3x3 convs (the first of stages 2 and 3 strided) + the fc, counted by hand.
    by_hand = 16 * 27 * 32 * 32 + 6 * 16 * 144 * 32 * 32
    by_hand += 32 * 144 * 16 * 16 + 5 * 32 * 288 * 16 * 16
    by_hand += 64 * 288 * 8 * 8 + 5 * 64 * 576 * 8 * 8
    by_hand += 64 * 10
    assert count_multiply_adds(create_model("resnet20"), (3, 32, 32)) == by_hand


def test_rounded_figures_match_by_their_digits():
    table1 = Figure(3.6e9, "Table 1", digits=2)
    assert table1.matches(3.6445e9) and table1.matches(3.55e9)
    assert not table1.matches(3.66e9) and not table1.matches(3.5e9)
    assert Figure(100, "x", rel_tol=0.005).matches(100.4)
    assert not Figure(100, "x").matches(101)
