"""Training throughput (images/s) of the paper's CIFAR nets through resnetlab's own training step.

Each measurement runs the engine's real step (the in-memory loader's batched augmentation, SGD with momentum
and weight decay, channels_last, bf16 autocast on CUDA) on synthetic 32x32 images after a warm-up, and
prints one line per network. Not a test: numbers depend on the machine.

    python scripts/bench_train.py                       # resnet20 and resnet56 on the CPU
    python scripts/bench_train.py --device cuda --models resnet20 resnet56 plain20 --steps 200
"""

from __future__ import annotations

import argparse
import time

import torch

from resnetlab.data import InMemoryLoader, synthetic_dataset
from resnetlab.engine.loop import train_step
from resnetlab.models import create_model


def measure(
    name: str, device: torch.device, batch: int, steps: int, warmup: int, amp: bool, channels_last: bool, compile_: bool
) -> float:
    data = synthetic_dataset(num_train=max(batch * (steps + warmup), 2 * batch), num_test=1)
    loader = InMemoryLoader(
        data.train.images,
        data.train.labels,
        batch_size=batch,
        mean=data.mean,
        train=True,
        device=device,
        channels_last=channels_last,
    )
    model = create_model(name).to(
        device, memory_format=torch.channels_last if channels_last else torch.contiguous_format
    )
    step_model = torch.compile(model) if compile_ else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batches = iter(loader)

    def run(n: int) -> None:
        nonlocal batches
        for _ in range(n):
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(loader)
                x, y = next(batches)
            train_step(step_model, optimizer, x, y, 0.1, amp=amp)

    run(warmup)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    run(steps)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet20", "resnet56"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true")
    args = parser.parse_args()
    device = torch.device(args.device)
    amp = args.amp == "bf16" or (args.amp == "auto" and device.type == "cuda")
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(
        f"torch {torch.__version__}, {where}; batch {args.batch_size}, amp {'bf16' if amp else 'off'}, "
        f"channels_last {not args.no_channels_last}, compile {args.compile}"
    )
    for name in args.models:
        rate = measure(
            name, device, args.batch_size, args.steps, args.warmup, amp, not args.no_channels_last, args.compile
        )
        print(f"{name:<10} {rate:9.0f} images/s  ({rate / args.batch_size:.2f} iterations/s)")


if __name__ == "__main__":
    main()
