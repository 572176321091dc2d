"""ResNet-50 (224x224) inference on the CPU: resnetlab's inference path against torchvision's ``resnet50`` in
eager mode, batch-1 latency and batch-32 throughput, in the same run (issue 5's goal: at least 1.3x, with
outputs within 1e-4; issue 14's: onnxruntime on resnetlab's export at least 1.6x at batch 1, 2.4x at 32).

Variants, all on the same weights and the same random inputs:

- ``torchvision eager``: ``torchvision.models.resnet50``, ``eval()``, NCHW, under ``torch.inference_mode``;
  the baseline.
- ``resnetlab``: what ``resnetlab eval`` and ``predict`` run with ``--runtime torch``
  (``prepare_inference``): the weights loaded into ``create_model("resnet50", stride_in_1x1=False)``, BN folded into the convolutions,
  channels_last weights and inputs, ``torch.inference_mode``.
- ``resnetlab onnxruntime``: what ``eval``/``predict`` run with ``--runtime onnxruntime`` (the CPU default
  where onnxruntime is installed): the folded network exported by resnetlab's own ONNX export
  (``write_onnx``: torch's ``torch.export``-based exporter, N, H, W dynamic), run by
  ``OnnxRuntimeNetwork`` (graph optimisation level all, intra-op threads = torch's); NCHW input. Its
  export and session creation time is printed apart. Skipped where onnxruntime is not installed.
- ``resnetlab --compile``: the same as ``resnetlab``, then ``torch.compile`` with Inductor's freezing
  (``eval --compile``, ``predict --compile``); its compilation time is printed apart and not in the timings.
- with ``--levers``, single levers for the record: torchvision with channels_last only, resnetlab with BN
  folding only (NCHW).

Timings are interleaved (each round times every variant once, in turn) so that a machine busy with other
work slows all of them alike; the median of the rounds is reported. Weights: torchvision's initialisation
with the BN statistics measured on random images, so activations and logits have a trained network's
scale (logits of order 1, not 100); ``--weights FILE`` uses a local torchvision .pth instead. The output
difference is the largest absolute difference from torchvision's logits on the batch-32 inputs.

    python scripts/bench_inference.py                  # a few minutes on a 2-core VM
    python scripts/bench_inference.py --threads 1      # less disturbed by other work on a busy machine
    python scripts/bench_inference.py --rounds 5 --no-compile --json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from resnetlab.deploy import OnnxRuntimeNetwork, fold_batchnorm, prepare_inference, write_onnx
from resnetlab.models import create_model

Variant = tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]  # the network and how it wants its input


def channels_last(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous(memory_format=torch.channels_last)


def torchvision_resnet50(weights: str | None, seed: int) -> nn.Module:
    torch.manual_seed(seed)
    model = torchvision.models.resnet50(weights=None)
    if weights:
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        return model.eval()
    for m in model.modules():  # running statistics = the statistics of one batch of random images
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 224, 224))
    return model.eval()


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def measure(variants: dict[str, Variant], x: torch.Tensor, rounds: int) -> dict[str, float]:
    """Median seconds per forward pass of each variant on ``x``, interleaved round by round."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    with torch.inference_mode():
        for model, prepare in variants.values():  # warm-up: oneDNN primitives, allocator, caches
            model(prepare(x))
        for _ in range(rounds):
            for name, (model, prepare) in variants.items():
                xin = prepare(x)
                start = time.perf_counter()
                model(xin)
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--rounds", type=int, default=20, help="timed rounds at batch 1 (batch 32: a quarter, at least 3)"
    )
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's, the core count)")
    parser.add_argument("--weights", metavar="FILE", help="a local torchvision resnet50 .pth")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile variant")
    parser.add_argument("--no-onnxruntime", action="store_true", help="skip the onnxruntime variant")
    parser.add_argument("--levers", action="store_true", help="also time single levers")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    reference = torchvision_resnet50(args.weights, args.seed)
    ours = create_model("resnet50", stride_in_1x1=False)
    ours.load_state_dict(reference.state_dict(), strict=True)
    variants: dict[str, Variant] = {
        "torchvision eager": (reference, lambda x: x),
        "resnetlab": (prepare_inference(ours), channels_last),
    }
    g = torch.Generator().manual_seed(args.seed)
    x1 = torch.randn(1, 3, 224, 224, generator=g)
    xb = torch.randn(args.batch_size, 3, 224, 224, generator=g)
    compile_s = {}
    setup_s = {}
    if not args.no_onnxruntime:
        try:
            import onnxruntime  # noqa: F401  (the optional extra)
        except ImportError:
            print("onnxruntime is not installed: its variant is skipped")
        else:
            start = time.perf_counter()
            tmp = Path(tempfile.mkdtemp()) / "resnet50.onnx"
            write_onnx(fold_batchnorm(ours), x1, tmp)
            setup_s["onnx export"] = time.perf_counter() - start
            start = time.perf_counter()
            variants["resnetlab onnxruntime"] = (OnnxRuntimeNetwork(tmp), lambda x: x)
            setup_s["onnxruntime session"] = time.perf_counter() - start
    if not args.no_compile:
        compiled = prepare_inference(ours, compile=True)
        with torch.inference_mode():
            for x in (x1, xb):
                start = time.perf_counter()
                compiled(channels_last(x))
                compile_s[tuple(x.shape)[0]] = time.perf_counter() - start
        variants["resnetlab --compile"] = (compiled, channels_last)
    if args.levers:
        tv_cl = torchvision_resnet50(args.weights, args.seed).to(memory_format=torch.channels_last)
        variants["torchvision channels_last"] = (tv_cl, channels_last)
        variants["resnetlab BN folded, NCHW"] = (prepare_inference(ours, channels_last=False), lambda x: x)

    load_before = os.getloadavg()[0]
    with torch.inference_mode():
        logits = reference(xb)
        diffs = {
            name: (model(prepare(xb)).float() - logits).abs().max().item()
            for name, (model, prepare) in variants.items()
        }
    latency = measure(variants, x1, args.rounds)
    batch = measure(variants, xb, max(3, args.rounds // 4))
    base_latency, base_batch = latency["torchvision eager"], batch["torchvision eager"]
    rows = {
        name: {
            "batch1_ms": 1e3 * latency[name],
            "batch1_speedup": base_latency / latency[name],
            f"batch{args.batch_size}_images_per_s": args.batch_size / batch[name],
            f"batch{args.batch_size}_speedup": base_batch / batch[name],
            "max_abs_diff": diffs[name],
        }
        for name in variants
    }
    env = {
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cpu": cpu_name(),
        "threads": torch.get_num_threads(),
        "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "weights": args.weights or "torchvision init, BN statistics of random images",
        "max_abs_logit": logits.abs().max().item(),
        "compile_s": compile_s,
        "setup_s": setup_s,
    }
    try:
        import onnxruntime

        env["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    if args.json:
        print(json.dumps({"env": env, "results": rows}, indent=1))
        return
    print(
        f"torch {env['torch']}, torchvision {env['torchvision']}; {env['cpu']}, {env['threads']} threads; "
        f"load average {env['load_average'][0]} -> {env['load_average'][1]}"
    )
    print(f"ResNet-50 224x224, {env['weights']}; largest |logit| {env['max_abs_logit']:.3g}")
    if setup_s:
        print(f"onnxruntime {env['onnxruntime']}: " + ", ".join(f"{k} {s:.1f} s" for k, s in setup_s.items()))
    if compile_s:
        print("torch.compile: " + ", ".join(f"{s:.1f} s for the first batch of {b}" for b, s in compile_s.items()))
    n = args.batch_size
    print(
        f"\n{'':<27} {'batch 1 latency':>16} {'speedup':>8} {f'batch {n} throughput':>21} {'speedup':>8} {'max |diff|':>11}"
    )
    for name, r in rows.items():
        print(
            f"{name:<27} {r['batch1_ms']:13.1f} ms {r['batch1_speedup']:7.2f}x {r[f'batch{n}_images_per_s']:14.1f} images/s "
            f"{r[f'batch{n}_speedup']:7.2f}x {r['max_abs_diff']:11.2e}"
        )


if __name__ == "__main__":
    main()
