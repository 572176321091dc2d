"""Training throughput (images/s) of the paper's CIFAR nets: eager, graphed, and K seeds packed.

Every mode runs resnetlab's own training step on synthetic CIFAR-shaped images (50,000, so that the epoch
length is CIFAR-10's) after a warm-up, batch 128 per network, SGD with momentum and weight decay, channels_last:

- ``single eager``: one network, the step ``resnetlab train`` takes without a GPU graph (``train_step``:
  the in-memory loader's batch, forward, backward, torch.optim.SGD; hundreds of kernel launches a step);
- ``single graphed``: one network through ``FusedStep``, the whole step one CUDA graph (CUDA only);
- ``packed xK graphed``: K networks in one ``FusedStep``, layout ``grouped`` (groups=K convolutions) or
  ``branches`` (K networks side by side in one graph).

Each row gives images/s per network and in all, and the speed-up in all over single eager at the same
precision, for float32 (TF32 convolutions, the default) and bf16. Not a test: numbers depend on the machine;
one run measures every row on one machine, so the ratios compare.

    python scripts/bench_train.py                                  # CPU: resnet20, eager vs packed x5, float32
    python scripts/bench_train.py --device cuda                    # the table of docs/training.md
    python scripts/bench_train.py --device cuda --models resnet20 --seconds 30   # a quick look
"""

from __future__ import annotations

import argparse
import time

import torch

from resnetlab.data import InMemoryLoader, synthetic_dataset
from resnetlab.engine.fused import FusedStep
from resnetlab.engine.loop import train_step
from resnetlab.models import create_model
from resnetlab.models.norm import group_batchnorm
from resnetlab.models.packed import PackedNetworks

MODELS = ["resnet20", "resnet56", "resnet110", "plain20", "plain56"]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(step, device: torch.device, warmup: int, steps: int, seconds: float | None) -> tuple[int, float]:
    """Run ``step`` ``warmup`` times, then ``steps`` times (or for ``seconds``); (steps timed, seconds)."""
    for _ in range(warmup):
        step()
    _sync(device)
    t0, done = time.perf_counter(), 0
    while done < steps or (seconds is not None and time.perf_counter() - t0 < seconds):
        step()
        done += 1
        if seconds is not None and done % 10 == 0:
            _sync(device)
            if time.perf_counter() - t0 >= seconds:
                break
    _sync(device)
    return done, time.perf_counter() - t0


def _networks(name: str, k: int, bn_group: int, device: torch.device, channels_last: bool) -> list[torch.nn.Module]:
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    nets = []
    for seed in range(k):
        torch.manual_seed(seed)
        net = create_model(name)
        nets.append((group_batchnorm(net, bn_group) if bn_group else net).to(device, memory_format=fmt))
    return nets


def _loaders(data, k: int, batch: int, device: torch.device, channels_last: bool) -> list[InMemoryLoader]:
    images, labels = data.train.images.to(device), data.train.labels.to(device)  # shared by the K loaders
    return [
        InMemoryLoader(
            images,
            labels,
            batch_size=batch,
            mean=data.mean,
            train=True,
            device=device,
            seed=s,
            channels_last=channels_last,
        )
        for s in range(k)
    ]


def measure_eager(name, data, device, batch, amp, bn_group, channels_last, warmup, steps, seconds) -> float:
    (model,) = _networks(name, 1, bn_group, device, channels_last)
    (loader,) = _loaders(data, 1, batch, device, channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batches = iter(loader)

    def step() -> None:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:
            batches = iter(loader)
            x, y = next(batches)
        train_step(model, optimizer, x, y, 0.1, amp=amp)

    done, elapsed = _timed(step, device, warmup, steps, seconds)
    return done * batch / elapsed


def measure_fused(name, data, device, batch, amp, bn_group, channels_last, k, layout, graph, warmup, steps, seconds):
    nets = _networks(name, k, bn_group, device, channels_last)
    packed = PackedNetworks(nets[0], k, layout, channels_last).to(device)
    if channels_last:
        packed = packed.to(memory_format=torch.channels_last)
    packed.load_members([n.state_dict() for n in nets])
    fused = FusedStep(
        packed,
        _loaders(data, k, batch, device, channels_last),
        momentum=0.9,
        weight_decay=1e-4,
        nesterov=False,
        amp=amp,
        graph=graph,
        device=device,
    )
    fused.set_lr([0.1] * k)
    done, elapsed = _timed(fused, device, warmup, steps, seconds)
    return done * batch * k / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--models", nargs="+", default=None, help=f"default: {' '.join(MODELS)} on CUDA, resnet20 on the CPU"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128, help="per network (default 128, the paper's)")
    parser.add_argument("--seeds", type=int, default=5, metavar="K", help="networks packed (default 5)")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per row (default 100 CUDA, 10 CPU)")
    parser.add_argument("--seconds", type=float, default=None, help="time each row for this long instead")
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 8 CUDA, 2 CPU)")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=None, help="default both on CUDA")
    parser.add_argument("--layouts", nargs="+", choices=("grouped", "branches"), default=["grouped", "branches"])
    parser.add_argument("--bn-group", type=int, default=64, help="BN over groups of N images (the presets': 64)")
    parser.add_argument("--no-channels-last", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    models = args.models or (MODELS if cuda else ["resnet20"])
    precisions = args.precision or (["fp32", "bf16"] if cuda else ["fp32"])
    steps = args.steps if args.steps is not None else (100 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (8 if cuda else 2)
    channels_last = not args.no_channels_last
    bn_group = args.bn_group if args.bn_group and args.bn_group < args.batch_size else 0
    where = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, {where}; batch {args.batch_size} per network, BN over {bn_group or args.batch_size} "
        f"images, channels_last {channels_last}, {f'{args.seconds:g} s' if args.seconds else f'{steps} steps'} per row"
    )
    data = synthetic_dataset(num_train=50_000, num_test=1)
    header = f"{'network':<10} {'mode':<26} {'precision':<9} {'img/s/net':>10} {'img/s all':>10} {'x eager':>8}"
    print(header)
    print("-" * len(header))
    for name in models:
        for precision in precisions:
            amp = precision == "bf16"
            common = dict(data=data, device=device, batch=args.batch_size, amp=amp, bn_group=bn_group,
                          channels_last=channels_last, warmup=warmup, steps=steps, seconds=args.seconds)  # fmt: skip
            eager = measure_eager(name, **common)
            rows = [("single eager", 1, eager)]
            modes = [("single graphed", 1, "grouped")] if cuda else []
            modes += [
                (f"packed x{args.seeds} {layout}{' graphed' if cuda else ''}", args.seeds, layout)
                for layout in args.layouts
            ]
            for label, k, layout in modes:
                rows.append((label, k, measure_fused(name, k=k, layout=layout, graph=cuda, **common)))
            for label, k, total in rows:
                print(f"{name:<10} {label:<26} {precision:<9} {total / k:>10.0f} {total:>10.0f} {total / eager:>7.1f}x")


if __name__ == "__main__":
    main()
