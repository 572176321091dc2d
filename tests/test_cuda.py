"""The CUDA path: the graphed step against the eager one, packed against single, the trainer end to end.

Skipped without CUDA (CI has none); ``scripts/gpu_campaign.sh`` runs these first in every GPU window.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch
from fusedcheck import assert_same_training, fused_step

from resnetlab.checkpoint import load_checkpoint, model_from_checkpoint
from resnetlab.config import set_values
from resnetlab.data import InMemoryLoader, synthetic_dataset
from resnetlab.engine import train
from resnetlab.engine.fused import CAPTURE_AFTER, FusedStep
from resnetlab.engine.loop import train_step
from resnetlab.engine.packed import train_packed
from resnetlab.models import create_model
from resnetlab.models.norm import group_batchnorm
from resnetlab.models.packed import PackedNetworks

from test_train import tiny_config, write_idx

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")
LR = 0.02  # small enough that rounding (TF32, atomics) does not grow chaotically over a few steps


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    return write_idx(tmp_path / "fashion-mnist")


def _setup(k: int, layout: str = "grouped", graph: bool = True, amp: bool = False):
    data = synthetic_dataset(num_train=2048, num_test=1)
    images, labels = data.train.images.to(CUDA), data.train.labels.to(CUDA)
    nets = []
    for seed in range(k):
        torch.manual_seed(seed)
        nets.append(group_batchnorm(create_model("resnet20"), 64).to(CUDA, memory_format=torch.channels_last))
    packed = PackedNetworks(nets[0], k, layout, channels_last=True).to(CUDA).to(memory_format=torch.channels_last)
    packed.load_members([n.state_dict() for n in nets])
    loaders = [
        InMemoryLoader(
            images, labels, batch_size=128, mean=data.mean, train=True, device=CUDA, seed=s, channels_last=True
        )
        for s in range(k)
    ]
    step = FusedStep(
        packed, loaders, momentum=0.9, weight_decay=1e-4, nesterov=False, amp=amp, graph=graph, device=CUDA
    )
    step.set_lr([LR] * k)
    return step, packed, nets, data


def _gap(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("layout", ["grouped", "branches"])
def test_the_graphed_step_computes_the_eager_step(layout):
    """Past the capture (CAPTURE_AFTER eager steps, then replays), the same networks as the eager step's,
    and the statistics on the device count every step."""
    steps = CAPTURE_AFTER + 5
    graphed, packed_g, _, data = _setup(3, layout, graph=True)
    eager, packed_e, _, _ = _setup(3, layout, graph=False)
    for _ in range(CAPTURE_AFTER + 1):
        graphed()
        eager()
    assert graphed.graph is not None  # captured, and replayed once
    before = packed_g.members()[1]["fc.weight"].clone()
    for _ in range(steps - CAPTURE_AFTER - 1):
        graphed()
        eager()
    assert not torch.equal(before, packed_g.members()[1]["fc.weight"])  # the replays train the network
    assert graphed.loaders[0].position == steps
    stats_g, stats_e = graphed.take_stats(), eager.take_stats()
    assert stats_g[:, 2].tolist() == [steps * 128.0] * 3  # every step counted on the device
    torch.testing.assert_close(stats_g[:, 0], stats_e[:, 0], rtol=1e-2, atol=0)  # the summed losses
    assert (stats_g[:, 1] - stats_e[:, 1]).abs().max() <= 0.05 * steps * 128  # mistakes
    x = ((data.train.images[:64].float() - data.mean) / 255).to(CUDA)[None].expand(3, -1, -1, -1, -1)
    packed_g.eval()
    packed_e.eval()
    with torch.no_grad():
        assert _gap(packed_g(x), packed_e(x)) < 5e-2


@pytest.mark.parametrize("layout", ["grouped", "branches"])
def test_the_graphed_step_trains_the_eager_steps_networks_across_epochs_and_lr_changes(layout, monkeypatch):
    """Graphed against eager, float32 without TF32 and with deterministic cuDNN (rounding alone differs): the
    same loss at every step, then the same parameters, BN statistics and momentum buffers, over 2.75 short
    epochs with each network's lr changed between replays (fusedcheck; test_fused_check shows on the CPU that
    a frozen lr, a stale batch or a stale epoch plan fails it)."""
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    monkeypatch.setattr(torch.backends.cudnn, "deterministic", True)
    graphed = fused_step(CUDA, graph=True, layout=layout)
    eager = fused_step(CUDA, graph=False, layout=layout)
    assert_same_training(graphed, eager)
    assert graphed.graph is not None and graphed.eager_steps == CAPTURE_AFTER  # the replays were checked


def test_packed_graphed_networks_take_the_single_eager_step():
    """One graphed packed step (after CAPTURE_AFTER eager ones) against single eager steps on the same batches."""
    step, packed, nets, data = _setup(3)
    singles = []
    for seed, net in enumerate(nets):
        optimizer = torch.optim.SGD(net.parameters(), lr=LR, momentum=0.9, weight_decay=1e-4)
        loader = InMemoryLoader(
            data.train.images.to(CUDA), data.train.labels.to(CUDA), batch_size=128, mean=data.mean, train=True,
            device=CUDA, seed=seed, channels_last=True,
        )  # fmt: skip
        singles.append((net, optimizer, iter(loader)))
    for _ in range(CAPTURE_AFTER + 1):
        step()
        for net, optimizer, batches in singles:
            x, y = next(batches)
            train_step(net, optimizer, x, y, LR, amp=False)
    x = ((data.train.images[:64].float() - data.mean) / 255).to(CUDA)
    packed.eval()
    with torch.no_grad():
        out = packed(x[None].expand(3, -1, -1, -1, -1))
        for k, (net, _, _) in enumerate(singles):
            net.eval()
            assert _gap(out[k], net(x.contiguous(memory_format=torch.channels_last))) < 5e-2  # TF32 convolutions


@pytest.mark.parametrize("precision", ["off", "bf16"])
def test_train_on_cuda_is_graphed_and_resumes(data_dir, tmp_path, precision):
    config = tiny_config(data_dir, "train.deterministic=false", f"train.amp={precision}", "train.device=cuda")
    outs = [tmp_path / f"seed{s}" for s in (1, 2)]
    train_packed(set_values(copy.deepcopy(config), {"train.iterations": 10}), [1, 2], outs, progress=False)
    train_packed(config, [1, 2], outs, resume="auto", progress=False)
    for out in outs:
        state = load_checkpoint(out / "checkpoints/last.pt")
        assert state["iteration"] == 20
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        evals = [r for r in records if "test_top1_error" in r]
        assert [r["iteration"] for r in evals] == [5, 10, 15, 20] and evals[-1]["packed"] == 2
        model, _ = model_from_checkpoint(out / "checkpoints/last.pt")
        assert torch.isfinite(model(torch.zeros(2, 1, 28, 28))).all()
    single = tmp_path / "single"
    train(set_values(copy.deepcopy(config), {"train.seed": 3}), single, progress=False)  # delegated to the graph
    last = [json.loads(line) for line in (single / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["packed"] == 1 and last["iteration"] == 20


def test_the_warm_up_switches_per_network_on_cuda(data_dir, tmp_path):
    config = tiny_config(
        data_dir,
        "train.deterministic=false",
        "train.device=cuda",
        "schedule.warmup_lr=0.01",
        "schedule.warmup_until_error=0.99",
    )
    outs = [tmp_path / f"seed{s}" for s in (1, 2)]
    train_packed(config, [1, 2], outs, progress=False)
    for out in outs:
        events = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        assert any(e.get("event") == "warmup_done" for e in events)
