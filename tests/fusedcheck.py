"""One fused step against another, step by step and parameter by parameter: what ``test_cuda`` holds the graphed
step to (against the eager one), and what ``test_fused_check`` shows catches a broken step on the CPU.

A broken graph can replay a stale batch (the plan or the position frozen at capture), keep the lr it was
captured with, or miss an epoch's new plan; losses within 1% tell none of that. So the run is short epochs
(``EPOCH_BATCHES`` batches) for ``STEPS`` steps, past two epoch boundaries after the capture, with each
network's lr changed between steps (``LRS``), and the two steps must agree at every step on each network's loss
(another batch's loss differs by percents; float32 rounding by ~1e-6) and at the end on every parameter,
BatchNorm statistic and momentum buffer.
"""

from __future__ import annotations

import torch

from resnetlab.data import InMemoryLoader, synthetic_dataset
from resnetlab.engine.fused import FusedStep
from resnetlab.models import create_model
from resnetlab.models.norm import group_batchnorm
from resnetlab.models.packed import PackedNetworks

EPOCH_BATCHES = 4
STEPS = 11  # 2.75 epochs: after CAPTURE_AFTER eager steps the replays cross the epoch boundaries at 4 and 8
LRS = [(0, [0.05, 0.05]), (5, [0.005, 0.05]), (8, [0.0005, 0.005])]  # (from step, each network's lr)
K = len(LRS[0][1])
RTOL, ATOL = 1e-4, 1e-5  # float32 without TF32, deterministic cuDNN: rounding only


def lrs_at(step: int) -> list[float]:
    return next(lrs for start, lrs in reversed(LRS) if step >= start)


def fused_step(
    device: torch.device,
    *,
    graph: bool,
    model: str = "resnet20",
    batch: int = 128,
    layout: str = "grouped",
    step_class: type[FusedStep] = FusedStep,
) -> FusedStep:
    """K networks (seeds 0..K-1) packed, on a synthetic set of ``EPOCH_BATCHES`` batches, stepped by ``step_class``."""
    data = synthetic_dataset(num_train=batch * EPOCH_BATCHES, num_test=1)
    images, labels = data.train.images.to(device), data.train.labels.to(device)
    nets = []
    for seed in range(K):
        torch.manual_seed(seed)
        nets.append(group_batchnorm(create_model(model), 64).to(device, memory_format=torch.channels_last))
    packed = PackedNetworks(nets[0], K, layout, channels_last=True).to(device).to(memory_format=torch.channels_last)
    packed.load_members([n.state_dict() for n in nets])
    loaders = [
        InMemoryLoader(
            images, labels, batch_size=batch, mean=data.mean, train=True, device=device, seed=s, channels_last=True
        )
        for s in range(K)
    ]
    assert len(loaders[0]) == EPOCH_BATCHES
    return step_class(
        packed, loaders, momentum=0.9, weight_decay=1e-4, nesterov=False, amp=False, graph=graph, device=device
    )


def assert_same_training(candidate: FusedStep, reference: FusedStep, steps: int = STEPS) -> None:
    """Step both ``steps`` times at ``lrs_at(step)``; the same per-step losses, mistakes (a near-tie may flip
    one) and image counts, then the same networks (parameters, BN statistics) and momentum buffers."""
    for step in range(steps):
        for fused in (candidate, reference):
            fused.set_lr(lrs_at(step))
            fused()
        got, want = candidate.take_stats(), reference.take_stats()
        torch.testing.assert_close(
            got[:, 0], want[:, 0], rtol=RTOL, atol=0, msg=lambda m, s=step: f"step {s}'s losses: {m}"
        )
        assert (got[:, 1] - want[:, 1]).abs().max() <= 1, f"step {step}'s mistakes: {got[:, 1]} vs {want[:, 1]}"
        assert got[:, 2].tolist() == [float(reference.batch_size)] * K, f"step {step}'s images"
    epoch, position = divmod(steps, EPOCH_BATCHES)
    for fused in (candidate, reference):
        assert [(loader.epoch, loader.position) for loader in fused.loaders] == [(epoch, position)] * K
    for k, (got_net, want_net) in enumerate(zip(candidate.model.members(), reference.model.members())):
        assert got_net.keys() == want_net.keys()
        for key in want_net:
            torch.testing.assert_close(
                got_net[key],
                want_net[key],
                rtol=RTOL,
                atol=ATOL,
                msg=lambda m, k=k, key=key: f"network {k}'s {key}: {m}",
            )
    for i, (got_buf, want_buf) in enumerate(zip(candidate.buffers, reference.buffers, strict=True)):
        torch.testing.assert_close(
            got_buf, want_buf, rtol=RTOL, atol=ATOL, msg=lambda m, i=i: f"momentum buffer {i}: {m}"
        )
