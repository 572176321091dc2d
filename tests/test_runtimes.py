"""eval and predict with --runtime onnxruntime: the torch path's answers, the ONNX cache, the missing extra."""

from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.checkpoint import load_checkpoint, save_checkpoint
from resnetlab.cli import main
from resnetlab.deploy import (
    OnnxRuntimeNetwork,
    choose_runtime,
    load_inference,
    onnx_cache_path,
    predict_images,
    read_bundle,
    runtimes,
)
from resnetlab.errors import UserError
from resnetlab.evaluation import evaluate_checkpoint

from numerics import assert_close_to_scale, seeded_randn
from test_eval import make_checkpoint, write_val_folder

needs_onnx = pytest.mark.skipif(
    any(importlib.util.find_spec(p) is None for p in ("onnx", "onnxscript", "onnxruntime")),
    reason="the optional extra resnetlab[onnx] is not installed",
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One image folder, checkpoint and cache for the module: its ONNX export is made once, then reused."""
    root = tmp_path_factory.mktemp("runtimes")
    imagenet = write_val_folder(root / "imagenet")
    return imagenet, make_checkpoint(root / "ckpt.pt", data_dir=imagenet), root / "cache"


@pytest.fixture
def cache(shared, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(shared[2]))
    return shared[2]


@pytest.fixture
def imagenet(shared):
    return shared[0]


@pytest.fixture
def checkpoint(shared):
    return shared[1]


@pytest.fixture
def photos(tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for i, (h, w) in enumerate([(40, 31), (16, 16), (23, 57)]):
        path = tmp_path / f"photo{i}.{'png' if i % 2 else 'jpg'}"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path, quality=95)
        paths.append(path)
    return paths


def _probabilities(result) -> torch.Tensor:
    got = torch.zeros(len(result.top))
    for row in result.top:
        got[row["index"]] = row["probability"]
    return got


@needs_onnx
@pytest.mark.parametrize("view", ["center", "multiscale"])  # multiscale: other image sizes (dynamic H, W)
def test_onnxruntime_predicts_what_torch_predicts(checkpoint, photos, cache, view):
    by_torch = predict_images(load_inference(checkpoint, runtime="torch"), photos, top=3, view=view)
    ort = load_inference(checkpoint, runtime="onnxruntime")
    assert isinstance(ort.model, OnnxRuntimeNetwork) and ort.runtime == "onnxruntime"
    by_ort = predict_images(ort, photos, top=3, view=view)
    for a, b in zip(by_ort, by_torch):
        assert [r["index"] for r in a.top] == [r["index"] for r in b.top]
        assert_close_to_scale(_probabilities(a), _probabilities(b), layers=8)


@needs_onnx
def test_onnxruntime_logits_at_other_sizes(checkpoint, cache):
    eager = load_inference(checkpoint, runtime="torch").model
    ort = load_inference(checkpoint, runtime="onnxruntime").model
    for shape in [(1, 3, 16, 16), (5, 3, 18, 18), (2, 3, 40, 27)]:  # the multi-scale views' kinds of sizes
        x = seeded_randn(*shape, seed=shape[-1])
        with torch.inference_mode():
            assert_close_to_scale(ort(x), eager(x.contiguous(memory_format=torch.channels_last)), layers=8)


@needs_onnx
@pytest.mark.parametrize("view", ["center", "10crop", "multiscale"])
def test_onnxruntime_evaluates_like_torch(checkpoint, cache, view):
    a = evaluate_checkpoint(checkpoint, view=view, workers=0, runtime_name="torch")
    b = evaluate_checkpoint(checkpoint, view=view, workers=0, runtime_name="onnxruntime")
    assert a.confusion == b.confusion and b.loss == pytest.approx(a.loss, rel=1e-4)


@needs_onnx
def test_the_cache_is_reused_and_follows_the_checkpoints_content(tmp_path, imagenet, monkeypatch):
    cache = tmp_path / "cache"
    monkeypatch.setenv("RESNETLAB_CACHE", str(cache))
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", data_dir=imagenet, seed=3)
    before = runtimes.EXPORTS
    first = load_inference(ckpt, runtime="onnxruntime").model.path
    assert runtimes.EXPORTS == before + 1 and first.parent == cache / "onnx" and first.is_file()
    stamp = first.stat().st_mtime_ns
    again = load_inference(ckpt, runtime="onnxruntime").model.path
    assert again == first and runtimes.EXPORTS == before + 1 and first.stat().st_mtime_ns == stamp  # reused
    copy = tmp_path / "elsewhere" / "copy.pt"
    copy.parent.mkdir()
    copy.write_bytes(ckpt.read_bytes())
    assert load_inference(copy, runtime="onnxruntime").model.path == first  # keyed by content, not by path
    make_checkpoint(ckpt, data_dir=imagenet, seed=1)  # new weights under the same name
    changed = load_inference(ckpt, runtime="onnxruntime").model.path
    assert changed != first and runtimes.EXPORTS == before + 2


@needs_onnx
def test_a_damaged_cache_entry_is_exported_again(tmp_path, imagenet, cache, capsys):
    checkpoint = make_checkpoint(tmp_path / "other.pt", data_dir=imagenet, seed=2)
    path = onnx_cache_path(read_bundle(checkpoint))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not an onnx model")
    before = runtimes.EXPORTS
    bundle = load_inference(checkpoint, runtime="onnxruntime")
    assert runtimes.EXPORTS == before + 1 and bundle.model.path == path and path.stat().st_size > 1000
    (note,) = bundle.notes  # printed by the commands after their output
    assert "exported" in note and "again" in note and path.name in note
    assert capsys.readouterr().err == ""
    again = load_inference(checkpoint, runtime="onnxruntime")
    assert runtimes.EXPORTS == before + 1 and again.notes == []  # the new entry verifies


@needs_onnx
def test_the_cache_key_is_the_network_read_not_the_file_hashed_later(tmp_path, imagenet, cache, monkeypatch):
    """A checkpoint overwritten between being read and being hashed (``last.pt`` during training): the entry is
    keyed by the network that was read and exported, never the new file's content."""
    ckpt = make_checkpoint(tmp_path / "last.pt", data_dir=imagenet, seed=7)
    first = read_bundle(ckpt)
    make_checkpoint(ckpt, data_dir=imagenet, seed=8)  # the file changes; `first` is what was read
    path = runtimes.cached_onnx(first).path
    assert path == onnx_cache_path(first) != onnx_cache_path(read_bundle(ckpt))


@needs_onnx
def test_cli_predict_and_eval_with_onnxruntime(checkpoint, photos, cache, tmp_path, capsys):
    argv = ["predict", "--checkpoint", str(checkpoint), *map(str, photos), "--json", "--top", "3"]
    assert main([*argv, "--runtime", "onnxruntime"]) == 0
    out = capsys.readouterr()
    assert out.err == ""  # the export into the cache prints nothing
    by_ort = json.loads(out.out)
    assert main([*argv, "--runtime", "torch"]) == 0
    by_torch = json.loads(capsys.readouterr().out)
    assert [[r["index"] for r in p["top"]] for p in by_ort] == [[r["index"] for r in p["top"]] for p in by_torch]
    assert main([*argv]) == 0  # the default on the CPU, with onnxruntime installed: onnxruntime, from the cache
    default = capsys.readouterr()
    assert default.err == "" and json.loads(default.out) == by_ort
    for runtime in ("onnxruntime", "torch"):
        eval_argv = ["eval", "--checkpoint", str(checkpoint), "--workers", "0", "--json", "--runtime", runtime]
        assert main([*eval_argv, "--out", str(tmp_path / runtime)]) == 0
    ort_metrics, torch_metrics = (json.loads(p.read_text()) for p in sorted(tmp_path.glob("*/metrics-*.json")))
    assert ort_metrics["confusion"] == torch_metrics["confusion"]


@needs_onnx
def test_scores_that_overflow_are_refused_as_with_torch(tmp_path, imagenet, cache, photos, capsys):
    """Finite weights whose forward pass overflows float32: the export's check has nothing to compare (NaN on
    both sides) and keeps the file; predict and eval refuse the scores in one line, as with torch."""
    ckpt = make_checkpoint(tmp_path / "huge.pt", data_dir=imagenet, seed=4)
    state = load_checkpoint(ckpt)
    for key, tensor in state["model"].items():
        if key.endswith("conv1.weight") or key.endswith("conv2.weight"):
            tensor.mul_(1e12)
    save_checkpoint(state, ckpt)
    for runtime in ("onnxruntime", "torch"):
        assert main(["predict", "--checkpoint", str(ckpt), str(photos[0]), "--runtime", runtime]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "NaN or infinite" in line, line
        argv = ["eval", "--checkpoint", str(ckpt), "--workers", "0", "--runtime", runtime, "--out", str(tmp_path / "e")]
        assert main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "NaN or infinite" in line, line


def _without(monkeypatch, package: str) -> None:
    monkeypatch.setitem(sys.modules, package, None)  # what an environment without the package gives


@pytest.mark.parametrize("missing", ["onnxruntime", "onnx"])
def test_missing_extra_falls_back_to_torch_by_default(checkpoint, photos, cache, monkeypatch, capsys, missing):
    _without(monkeypatch, missing)
    before = runtimes.EXPORTS
    assert main(["predict", "--checkpoint", str(checkpoint), str(photos[0]), "--json"]) == 0
    out = capsys.readouterr()
    assert json.loads(out.out)[0]["top"]
    (note,) = out.err.strip().splitlines()  # one line, after the output
    assert note.startswith("note: running with torch") and "resnetlab[onnx]" in note
    assert runtimes.EXPORTS == before  # torch ran: nothing exported


def test_explicit_onnxruntime_without_the_extra_is_one_line(checkpoint, photos, cache, monkeypatch, capsys):
    _without(monkeypatch, "onnxruntime")
    assert main(["predict", "--checkpoint", str(checkpoint), str(photos[0]), "--runtime", "onnxruntime"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "needs the optional package onnxruntime" in line and "pip install 'resnetlab[onnx]'" in line
    assert main(["eval", "--checkpoint", str(checkpoint), "--workers", "0", "--runtime", "onnxruntime"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "resnetlab eval: error:" in line and "onnxruntime" in line


def test_a_refused_checkpoint_stays_one_line_without_the_extra(tmp_path, monkeypatch, capsys):
    _without(monkeypatch, "onnxruntime")  # the fallback note is not added to a refusal
    assert main(["predict", "--checkpoint", str(tmp_path / "missing.pt"), str(tmp_path / "x.png")]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "no checkpoint at" in line


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_unknown_runtime_exits_2(checkpoint, command, capsys):
    argv = [command, "--checkpoint", str(checkpoint), *(["x.png"] if command == "predict" else []), "--runtime", "bad"]
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2 and "invalid choice: 'bad'" in capsys.readouterr().err


def test_the_default_runtime_and_its_refusals(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert choose_runtime("torch", cpu) == ("torch", None)
    assert choose_runtime(None, gpu) == ("torch", None)  # onnxruntime runs on the CPU here
    assert choose_runtime(None, cpu, compile=True) == ("torch", None)  # --compile is torch's
    with pytest.raises(UserError, match="runs on the CPU"):
        choose_runtime("onnxruntime", gpu)
    with pytest.raises(UserError, match="--compile"):
        choose_runtime("onnxruntime", cpu, compile=True)
    with pytest.raises(UserError, match="unknown runtime"):
        choose_runtime("tensorrt", cpu)
    _without(monkeypatch, "onnxruntime")
    chosen, note = choose_runtime(None, cpu)
    assert chosen == "torch" and note is not None and "\n" not in note


@needs_onnx
def test_onnxruntime_uses_torchs_thread_count(checkpoint, cache):
    network = load_inference(checkpoint, runtime="onnxruntime").model
    options = network.session.get_session_options()
    assert options.intra_op_num_threads == torch.get_num_threads()
    assert os.fspath(network.path).endswith(".onnx")
