"""Where a preset's training step spends its time: torch.profiler over the step ``resnetlab train`` takes.

The preset's own configuration (``build_data`` and ``build_state``, as the trainer builds them: its
network, BN variant, memory format, loader with augmentation, SGD), on synthetic CIFAR-shaped images
unless ``--data-dir`` names the dataset, in the precision ``--amp`` gives (default: what ``train.amp=auto``
picks here). Each step is cut into phases by ``record_function`` (data, forward, backward, optimizer), and
the CPU time of every PyTorch operator inside a phase is summed into a kind (convolution, BN, ReLU, add,
...), so the table reads "forward convolutions: 31%". Self time: an operator's time without its children.

    python scripts/profile_train.py                          # cifar10-resnet20, 10 profiled steps
    python scripts/profile_train.py --preset cifar10-resnet56 --amp off

Not a test: the shares depend on the machine's kernels.
"""

from __future__ import annotations

import argparse
import platform
from collections import defaultdict

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile, record_function

from resnetlab.config import apply_overrides
from resnetlab.engine.inputs import build_data
from resnetlab.engine.loop import autocast
from resnetlab.engine.trainer import build_state
from resnetlab.presets import get_preset
from resnetlab.runtime import native_bf16, resolve_precision

PHASES = ("data", "forward", "backward", "optimizer")
KINDS = [  # (kind, operator name fragments), first match wins
    ("convolution", ("convolution",)),
    ("batch norm", ("batch_norm",)),
    ("ReLU", ("relu", "threshold", "clamp_min")),
    ("add (residual, gradient sums)", ("aten::add",)),
    ("copy, cat, casts", ("copy_", "aten::cat", "_to_copy", "contiguous")),
    ("loss", ("cross_entropy", "log_softmax", "nll_loss")),
    ("pooling, fc", ("avg_pool", "mean", "addmm", "mm", "linear")),
]


def _kind(name: str) -> str:
    for kind, fragments in KINDS:
        if any(fragment in name for fragment in fragments):
            return kind
    return "other"


def _phase(event) -> str | None:
    while event is not None:
        if event.name in PHASES:
            return event.name
        event = event.cpu_parent
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="cifar10-resnet20")
    parser.add_argument("--amp", choices=("auto", "off", "bf16"), default="auto", help="train.amp (default auto)")
    parser.add_argument("--steps", type=int, default=10, help="profiled steps (after 5 untimed ones)")
    parser.add_argument("--data-dir", default=None, help="the preset's dataset (default: synthetic images)")
    args = parser.parse_args()
    sets = [f"train.amp={args.amp}", "train.device=cpu"]
    sets += [f"data.data_dir={args.data_dir}"] if args.data_dir else ["data.dataset=synthetic"]
    config = apply_overrides(get_preset(args.preset), sets)
    device = torch.device("cpu")
    bf16 = resolve_precision(config.train.amp, device) == "bf16"
    data = build_data(config, device)
    state = build_state(config, data, device)
    model, optimizer = state.model, state.optimizer
    model.train()
    batches = iter(data.train)

    def step() -> None:
        nonlocal batches
        with record_function("data"):
            try:
                images, labels = next(batches)
            except StopIteration:
                batches = iter(data.train)
                images, labels = next(batches)
        with record_function("forward"), autocast(device, bf16):
            loss = F.cross_entropy(model(images), labels)
        with record_function("backward"):
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("optimizer"):
            optimizer.step()

    for _ in range(5):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(args.steps):
            step()
    seconds: dict[tuple[str, str], float] = defaultdict(float)
    phase_total: dict[str, float] = defaultdict(float)
    for event in prof.events():
        if event.name in PHASES:
            phase_total[event.name] += event.cpu_time_total / 1e6
        elif event.name.startswith("aten::") and (phase := _phase(event)) is not None:
            seconds[(phase, _kind(event.name))] += event.self_cpu_time_total / 1e6
    total = sum(phase_total.values())
    where = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print(
        f"{args.preset}, batch {config.optim.batch_size}, BN over {config.model.bn_group or 'the batch'}, "
        f"{'bf16' if bf16 else 'float32'} (native bf16: {native_bf16(device) or 'no'}), torch {torch.__version__}, "
        f"CPU ({where}); {args.steps} steps, {total / args.steps * 1e3:.1f} ms per step under the profiler"
    )
    print(f"{'phase':<10} {'kind':<32} {'ms/step':>8} {'share':>7}")
    for phase in PHASES:
        rows = sorted(((s, k) for (p, k), s in seconds.items() if p == phase), reverse=True)
        other = phase_total[phase] - sum(s for s, _ in rows)  # Python, the autograd engine, the profiler
        for s, kind in [*rows, (other, "(outside operators)")]:
            if s * 1e3 / args.steps >= 0.05:
                print(f"{phase:<10} {kind:<32} {s * 1e3 / args.steps:>8.2f} {s / total:>7.1%}")
        print(
            f"{phase:<10} {'all':<32} {phase_total[phase] * 1e3 / args.steps:>8.2f} {phase_total[phase] / total:>7.1%}"
        )


if __name__ == "__main__":
    main()
