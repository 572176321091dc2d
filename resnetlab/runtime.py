"""Where a process runs: the device it computes on and its place among torchrun's processes.

Every rank/world helper lives here (detectron2's comm.py), with device resolution, so that training,
evaluation and prediction resolve ``--device`` and join torchrun's group the same way. torchrun is detected
from the environment. This module imports nothing of resnetlab's but ``errors``.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from .errors import UserError

__all__ = [
    "resolve_device",
    "native_bf16",
    "resolve_precision",
    "precision_record",
    "launched_by_torchrun",
    "launched_processes",
    "init_distributed",
    "destroy",
    "is_distributed",
    "get_rank",
    "get_world_size",
    "get_local_rank",
    "is_main_process",
    "barrier",
    "all_reduce_sum",
    "broadcast_buffers",
]


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and "MASTER_ADDR" in os.environ


def launched_processes() -> int:
    """How many processes torchrun started (its WORLD_SIZE; 1 without torchrun): the world size before the
    process group is joined, when ``get_world_size`` still says 1."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def resolve_device(name: str) -> torch.device:
    """``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; under torchrun on CUDA, this process's
    local GPU. A device that does not exist here is a one-line UserError."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (cpu, cuda, cuda:N or auto)") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name!r} asked for, but CUDA is not available here")
    if device.type == "cuda" and launched_by_torchrun():
        device = torch.device("cuda", get_local_rank())
    return device


def native_bf16(device: torch.device) -> str | None:
    """What makes ``device`` compute bf16 natively (``"AMX"``, ``"AVX512-BF16"``, ``"CUDA"``), or None.

    On the CPU this asks torch's cpuinfo checks for the bf16 instructions themselves. Not the mkldnn check
    (``torch.ops.mkldnn._is_mkldnn_bf16_supported``): oneDNN also says yes on plain AVX512 CPUs, where it
    emulates bf16 and a bf16 step is slower than a float32 one.
    """
    if device.type == "cuda":
        return "CUDA" if torch.cuda.is_bf16_supported() else None
    if device.type != "cpu":
        return None
    if getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)():
        return "AMX"
    if getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)():
        return "AVX512-BF16"
    return None


# train.amp=auto's choice on a CPU with native bf16, set by the four-run test of docs/training.md ("bf16 on
# the CPU", scripts/bf16_parity.py): ResNet-20 on the CIFAR-10 copy, 4,000 iterations, seeds 0 and 1, ended
# at 19.54% in float32 and 19.61% in bf16 (within the 0.5-point bound), so auto trains in bf16 there.
AUTO_BF16_ON_NATIVE_CPU = True


def resolve_precision(amp: str, device: torch.device) -> str:
    """The precision a step runs in, ``"bf16"`` (autocast) or ``"float32"``, for ``train.amp`` on ``device``.

    ``bf16`` and ``off`` are what they say. ``auto``: bf16 on a CPU that computes it natively (AVX512-BF16
    or AMX; measured to reach float32's error, see ``AUTO_BF16_ON_NATIVE_CPU``); float32 elsewhere, that is
    on CPUs without it (emulated bf16 is slower) and on CUDA (TF32 convolutions; the GPU default stays).
    """
    if amp == "bf16":
        return "bf16"
    if amp == "auto" and device.type == "cpu" and _auto_bf16_allowed() and native_bf16(device):
        return "bf16"
    return "float32"


def _auto_bf16_allowed() -> bool:
    """auto may pick bf16: the measured choice, unless ``RESNETLAB_CPU_BF16=off`` asks for float32 on every
    CPU (the test suite sets it, so that its float32 tolerances hold on machines with and without bf16)."""
    return AUTO_BF16_ON_NATIVE_CPU and os.environ.get("RESNETLAB_CPU_BF16", "").lower() != "off"


def precision_record(amp: str, device: torch.device) -> dict[str, object]:
    """What a run's records say of its precision: the setting, what it resolved to here, and why."""
    precision = resolve_precision(amp, device)
    record: dict[str, object] = {"amp": amp, "precision": precision, "native_bf16": native_bf16(device)}
    if device.type == "cuda":
        record["tf32_convolutions"] = bool(torch.backends.cudnn.allow_tf32)
        record["tf32_matmul"] = bool(torch.backends.cuda.matmul.allow_tf32)
    return record


def init_distributed(device: torch.device) -> None:
    """Join the process group torchrun set up: NCCL on CUDA, gloo on the CPU. A no-op without torchrun."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(get_local_rank())
    dist.init_process_group(backend=backend, timeout=timedelta(minutes=30))


def destroy() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def get_local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def is_main_process() -> bool:
    return get_rank() == 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over ranks, in place and returned; the identity on one process."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Give every rank rank ``src``'s BN running statistics (what rank 0 saves is what every rank evaluates)."""
    if is_distributed():
        for buffer in module.buffers():
            dist.broadcast(buffer, src=src)
