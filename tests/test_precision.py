"""train.amp: what auto resolves to on each kind of machine, and that a run's records name its precision."""

from __future__ import annotations

import json

import pytest
import torch

from resnetlab import runtime
from resnetlab.engine import train
from resnetlab.presets import format_presets

from test_train import tiny_config, write_idx

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.fixture
def measured_choice(monkeypatch):
    """auto as shipped (conftest.py pins float32 for every other test through RESNETLAB_CPU_BF16=off)."""
    monkeypatch.setattr(runtime, "AUTO_BF16_ON_NATIVE_CPU", True)
    monkeypatch.delenv("RESNETLAB_CPU_BF16", raising=False)


def test_the_environment_can_keep_auto_at_float32(monkeypatch, measured_choice):
    monkeypatch.setattr(runtime, "native_bf16", lambda _device: "AMX")
    assert runtime.resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setenv("RESNETLAB_CPU_BF16", "off")
    assert runtime.resolve_precision("auto", CPU) == "float32"
    assert runtime.resolve_precision("bf16", CPU) == "bf16"  # a precision asked for by name is kept


@pytest.mark.parametrize(
    ("amp", "device", "native", "expected"),
    [
        ("auto", CPU, "AVX512-BF16", "bf16"),
        ("auto", CPU, "AMX", "bf16"),
        ("auto", CPU, None, "float32"),  # emulated bf16 is slower than float32
        ("auto", CUDA, "CUDA", "float32"),  # the GPU default stays float32 (TF32 convolutions)
        ("off", CPU, "AMX", "float32"),
        ("bf16", CPU, None, "bf16"),  # asked for by name: bf16 even where it is emulated
        ("bf16", CUDA, "CUDA", "bf16"),
    ],
)
def test_auto_precision_is_bf16_only_on_cpus_with_native_bf16(
    monkeypatch, measured_choice, amp, device, native, expected
):
    monkeypatch.setattr(runtime, "native_bf16", lambda _device: native)
    assert runtime.resolve_precision(amp, device) == expected


def test_native_bf16_asks_torch_for_the_instructions():
    found = runtime.native_bf16(CPU)
    assert found in (None, "AMX", "AVX512-BF16")
    assert (found is not None) == (torch.cpu._is_amx_tile_supported() or torch.cpu._is_avx512_bf16_supported())
    assert runtime.native_bf16(torch.device("meta")) is None


@pytest.mark.parametrize(("native", "precision"), [("AVX512-BF16", "bf16"), (None, "float32")])
def test_the_run_records_name_the_precision(tmp_path, monkeypatch, measured_choice, native, precision):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(runtime, "native_bf16", lambda _device: native)
    config = tiny_config(write_idx(tmp_path / "fashion-mnist"), "train.iterations=4", "train.eval_every=4")
    assert config.train.amp == "auto"
    train(config, tmp_path / "run", progress=False)
    env = json.loads((tmp_path / "run/env.json").read_text())
    assert env["amp"] == "auto" and env["precision"] == precision and env["native_bf16"] == native
    evals = [json.loads(line) for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if "test_top1_error" in r]
    assert evals and all(r["precision"] == precision for r in evals)


def test_presets_say_what_auto_means_here(monkeypatch, measured_choice):
    monkeypatch.setattr(runtime, "native_bf16", lambda _device: "AMX")
    monkeypatch.setattr(runtime, "resolve_device", lambda _name: CPU)
    text = format_presets(verbose=True)
    assert "cifar10-resnet20" in text and "; precision auto" in text
    assert text.splitlines()[-1].endswith("here (cpu, AMX): bf16")
