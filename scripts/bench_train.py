"""Training throughput (images/s) of the paper's CIFAR nets: a textbook loop, the preset as ``resnetlab train``
runs it, resnetlab's eager step, graphed, and K seeds packed.

The first two rows answer "how fast is the preset against what anyone would write":

- ``textbook``: the PyTorch loop of every tutorial, written here: a CIFAR-10 dataset as torchvision's
  ``CIFAR10`` holds it (uint8 HWC array, a PIL image per item), ``RandomCrop(32, padding=4)``,
  ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``, a ``DataLoader`` with 2 workers, the same option-A
  ResNet with ``nn.BatchNorm2d`` (BN over the batch), NCHW, float32, ``torch.optim.SGD``;
- ``resnetlab train --preset``: the preset's own configuration through the real command (a subprocess;
  BN over 64, channels_last), in float32 (``train.amp=off``) and bf16, the row of the precision
  ``train.amp=auto`` picks on this machine marked; its images/s read from the run's metrics.jsonl
  (training steps only, the second half of the run, after the start-up).

Then resnetlab's step on its in-memory loader, batch 128 per network, SGD with momentum and weight decay,
channels_last, for float32 and bf16:

- ``eager, BN over the batch`` / ``eager, BN over 64``: one network, the step ``resnetlab train`` takes
  without a GPU graph (``train_step``);
- ``eager, compiled``: the same with ``torch.compile`` of the network (``--compile``; compile time printed);
- ``single graphed``: one network through ``FusedStep``, the whole step one CUDA graph (CUDA only);
- ``packed xK``: K networks in one ``FusedStep``, layout ``grouped`` (groups=K convolutions) or
  ``branches`` (K networks side by side).

Images are synthetic, CIFAR-shaped (50,000, so that the epoch length is CIFAR-10's), unless ``--data-dir``
gives the CIFAR-10 copy for the preset row. Not a test: numbers depend on the machine; one run measures
every row on one machine, so the ratios compare. The "x textbook" column is each row's images/s (in all)
over the textbook loop's.

    python scripts/bench_train.py                                  # CPU: resnet20, float32 and bf16
    python scripts/bench_train.py --models resnet20 resnet56 --seconds 20 --layouts   # the docs' CPU table
    python scripts/bench_train.py --device cuda                    # the table of docs/training.md
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image

from resnetlab.data import InMemoryLoader, synthetic_dataset
from resnetlab.engine.fused import FusedStep
from resnetlab.engine.loop import train_step
from resnetlab.models import create_model
from resnetlab.models.norm import group_batchnorm
from resnetlab.models.packed import PackedNetworks
from resnetlab.runtime import native_bf16, resolve_precision

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


class TextbookCIFAR(torch.utils.data.Dataset):
    """CIFAR-10 as torchvision's ``CIFAR10`` holds and serves it: a uint8 (N, H, W, C) array, one PIL image per
    item through the transform."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform) -> None:
        self.data = images.permute(0, 2, 3, 1).contiguous().numpy()  # (N, H, W, C), as CIFAR10.data
        self.targets = labels.tolist()
        self.transform = transform

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.data[index])), self.targets[index]


def measure_textbook(name, data, batch, warmup, steps, seconds) -> float:
    """The tutorial loop: DataLoader with 2 workers, torchvision transforms, nn.BatchNorm2d, NCHW, float32."""
    from torchvision import transforms

    mean = data.train.images.float().mean(dim=(0, 2, 3)) / 255
    std = (data.train.images.float() / 255).std(dim=(0, 2, 3))
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean.tolist(), std.tolist()),
        ]
    )
    dataset = TextbookCIFAR(data.train.images, data.train.labels, transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, num_workers=2, drop_last=True, persistent_workers=True
    )
    torch.manual_seed(0)
    model = create_model(name)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batches = _forever(loader)

    def step() -> None:
        x, y = next(batches)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    done, elapsed = _timed(step, torch.device("cpu"), warmup, steps, seconds)
    return done * batch / elapsed


def measure_preset(preset: str, device: torch.device, data_dir: str | None, iterations: int, amp: str) -> float:
    """``resnetlab train --preset`` as a user runs it (a subprocess) with ``train.amp=amp``, ``iterations``
    long: images/s over the second half of the run, as its metrics.jsonl records it (training steps only)."""
    half = max(iterations // 2, 1)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "run"
        command = [sys.executable, "-m", "resnetlab", "train", "--preset", preset, "--out", str(run),
                   "--iterations", str(2 * half), "--eval-every", str(half), "--checkpoint-every", str(2 * half),
                   "--device", str(device), "--set", f"train.amp={amp}"]  # fmt: skip
        command += ["--data-dir", data_dir] if data_dir else ["--set", "data.dataset=synthetic"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        last = [r for r in records if "images_per_s" in r][-1]
        return float(last["images_per_s"])


def _forever(loader):
    """The loader's batches, epoch after epoch."""
    while True:
        yield from loader


def measure_eager(name, data, device, batch, amp, bn_group, channels_last, warmup, steps, seconds, compile=False):
    """resnetlab's eager step (``train_step``) on its in-memory loader, the network under ``torch.compile`` if
    asked; (images/s, seconds the first two steps took: the compilation, if any)."""
    (model,) = _networks(name, 1, bn_group, device, channels_last)
    (loader,) = _loaders(data, 1, batch, device, channels_last)
    trained = torch.compile(model) if compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    batches = _forever(loader)

    def step() -> None:
        x, y = next(batches)
        train_step(trained, optimizer, x, y, 0.1, amp=amp)

    started = time.perf_counter()
    for _ in range(2):
        step()
    first_s = time.perf_counter() - started
    done, elapsed = _timed(step, device, warmup, steps, seconds)
    return done * batch / elapsed, first_s


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


def _row(name: str, reference: float | None, label: str, precision: str, total: float, k: int = 1, note: str = ""):
    ratio = f"{total / reference:>9.2f}x" if reference else f"{'':>10}"
    print(f"{name:<10} {label:<32} {precision:<9} {total / k:>10.0f} {total:>10.0f} {ratio}{note}", flush=True)


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
    parser.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 8 CUDA, 3 CPU)")
    parser.add_argument("--precision", nargs="+", choices=("fp32", "bf16"), default=None, help="default both")
    parser.add_argument(
        "--layouts", nargs="*", choices=("grouped", "branches"), default=None,
        help="packed layouts to time (default both on CUDA, none on the CPU; --layouts alone: none)",
    )  # fmt: skip
    parser.add_argument("--bn-group", type=int, default=64, help="BN over groups of N images (the presets': 64)")
    parser.add_argument("--no-channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="also time the eager step under torch.compile")
    parser.add_argument("--no-reference", action="store_true", help="skip the textbook and preset rows")
    parser.add_argument(
        "--preset-iterations", type=int, default=None, help="length of the resnetlab train run (default 400 CPU)"
    )
    parser.add_argument("--data-dir", default=None, help="the CIFAR-10 copy for the preset row (default synthetic)")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    models = args.models or (MODELS if cuda else ["resnet20"])
    precisions = args.precision or ["fp32", "bf16"]
    steps = args.steps if args.steps is not None else (100 if cuda else 10)
    warmup = args.warmup if args.warmup is not None else (8 if cuda else 3)
    layouts = args.layouts if args.layouts is not None else (["grouped", "branches"] if cuda else [])
    channels_last = not args.no_channels_last
    bn_group = args.bn_group if args.bn_group and args.bn_group < args.batch_size else 0
    if cuda:
        torch.backends.cudnn.benchmark = True  # as training sets it
        where = torch.cuda.get_device_name(device)
    else:
        import platform

        where = f"CPU ({platform.processor() or platform.machine()}), {torch.get_num_threads()} threads"
    native = native_bf16(device)
    print(
        f"torch {torch.__version__}, {where}, native bf16: {native or 'no'}; batch {args.batch_size} per network, "
        f"channels_last {channels_last}, {f'{args.seconds:g} s' if args.seconds else f'{steps} steps'} per row"
    )
    data = synthetic_dataset(num_train=50_000, num_test=1)
    header = f"{'network':<10} {'mode':<32} {'precision':<9} {'img/s/net':>10} {'img/s all':>10} {'x textbook':>10}"
    print(header)
    print("-" * len(header))
    timing = dict(warmup=warmup, steps=steps, seconds=args.seconds)
    for name in models:
        reference = None

        if not args.no_reference and not cuda:
            reference = measure_textbook(name, data, args.batch_size, **timing)
            _row(name, reference, "textbook (torchvision, DataLoader)", "fp32", reference)
            preset, auto = f"cifar10-{name}", resolve_precision("auto", device)
            source = "CIFAR-10 copy" if args.data_dir else "synthetic"
            for precision in precisions:
                amp = "bf16" if precision == "bf16" else "off"
                rate = measure_preset(preset, device, args.data_dir, args.preset_iterations or 400, amp)
                here = ", amp auto here" if {"bf16": "bf16", "fp32": "float32"}[precision] == auto else ""
                _row(name, reference, f"resnetlab train --preset {preset}", precision, rate, note=f"  ({source}{here})")
        for precision in precisions:
            amp = precision == "bf16"
            common = dict(data=data, device=device, batch=args.batch_size, amp=amp, channels_last=channels_last,
                          **timing)  # fmt: skip
            if bn_group:
                _row(
                    name, reference, "eager, BN over the batch", precision, measure_eager(name, bn_group=0, **common)[0]
                )
            label = f"eager, BN over {bn_group or args.batch_size}"
            _row(name, reference, label, precision, measure_eager(name, bn_group=bn_group, **common)[0])
            if args.compile:
                rate, compile_s = measure_eager(name, bn_group=bn_group, compile=True, **common)
                _row(
                    name, reference, f"{label}, compiled", precision, rate, note=f"  (first 2 steps {compile_s:.0f} s)"
                )
            modes = [("single graphed", 1, "grouped")] if cuda else []
            modes += [
                (f"packed x{args.seeds} {layout}{' graphed' if cuda else ''}", args.seeds, layout) for layout in layouts
            ]
            for label, k, layout in modes:
                total = measure_fused(name, k=k, layout=layout, graph=cuda, bn_group=bn_group, **common)
                _row(name, reference, label, precision, total, k=k)
    if not cuda:
        print(f"train.amp=auto on this machine: {resolve_precision('auto', device)}")


if __name__ == "__main__":
    main()
