"""Float32 comparisons of deep networks that hold on every machine CI may run on.

Two float32 computations of the same network (another memory format, BN folded, another library's kernels)
differ by rounding alone, and how much depends on the CPU's oneDNN kernels: an element-wise ``atol=1e-4``
passed on an Intel Xeon VM and failed on an AMD EPYC one (1.06e-4 on one of 2,000 ResNet-50 logits). The
rounding error grows with the outputs' magnitude and with depth, so the bound is relative to the largest
reference output and to the number of layers: measured on the AMD VM (ResNet-50, folded BN, channels_last,
seeded inputs), ``max |a - b| / max |b|`` was 4.4e-5 to 5.0e-5, and each side alone was 2.4e-5 to 3.6e-5
from a float64 evaluation.
"""

from __future__ import annotations

import torch

# Per 50 layers, relative to the largest reference output: 4x what rounding alone gave on the slower machine.
ROUNDING_PER_50_LAYERS = 2e-4


def seeded_randn(*shape: int, seed: int = 0) -> torch.Tensor:
    """A standard normal input that is the same on every run and machine."""
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def assert_close_to_scale(
    actual: torch.Tensor, expected: torch.Tensor, *, layers: int = 50, rel: float | None = None
) -> None:
    """``max |actual - expected| <= rel * max |expected|``; ``rel`` defaults to the rounding bound for a
    network of ``layers`` layers (at least the bound for 50)."""
    assert actual.shape == expected.shape, f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}"
    rel = rel if rel is not None else ROUNDING_PER_50_LAYERS * max(1.0, layers / 50)
    scale = expected.abs().max().item()
    worst = (actual.double() - expected.double()).abs().max().item()
    assert worst <= rel * max(scale, 1e-6), (
        f"max |difference| {worst:.3g} is {worst / max(scale, 1e-12):.3g} of the outputs' scale {scale:.3g}; "
        f"rounding alone allows {rel:.3g}"
    )
