"""BatchNorm folding and resnetlab export: every format present (safetensors, pt2, torchscript, onnx) matches
the eager network within 1e-4."""

from __future__ import annotations

import json
import sys
import warnings
import zipfile

import pytest
import torch
from safetensors import safe_open
from torch import nn

from resnetlab.checkpoint import FORMAT
from resnetlab.cli import main
from resnetlab.deploy import conv_bn_pairs, export_model, fold_batchnorm, outputs_match, read_bundle
from resnetlab.errors import UserError
from resnetlab.evaluation import evaluate_checkpoint
from resnetlab.models import create_model

from numerics import assert_close_to_scale, seeded_randn
from test_eval import calibrate, make_checkpoint, write_val_folder

NETWORKS = [
    ("resnet20", {}, 32),  # option A
    ("plain20", {}, 32),
    ("resnet18", {"shortcut": "C"}, 64),
    ("resnet50", {}, 64),  # v1: stride on the 1x1
    ("resnet50", {"stride_in_1x1": False}, 64),  # v1.5
]


@pytest.mark.parametrize("name, options, size", NETWORKS)
def test_folding_keeps_the_function_and_removes_every_bn(name, options, size):
    torch.manual_seed(0)
    model = calibrate(create_model(name, **options), torch.randn(8, 3, size, size))
    folded = fold_batchnorm(model)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules())  # the original is untouched
    x = torch.randn(3, 3, size + 8, size)
    with torch.no_grad():
        assert outputs_match(folded(x), model(x))  # within 1e-4 of the logits' scale
    assert fold_batchnorm(folded).state_dict().keys() == folded.state_dict().keys()  # folding twice: a no-op


def test_a_bn_without_its_convolution_is_refused():
    odd = nn.Sequential(nn.ReLU(), nn.BatchNorm2d(3))
    with pytest.raises(ValueError, match="cannot fold 1"):
        conv_bn_pairs(odd)


@pytest.fixture
def checkpoint(tmp_path):
    return make_checkpoint(tmp_path / "ckpt.pt", data_dir=write_val_folder(tmp_path / "imagenet"))


def _runner(fmt: str, path):
    if fmt == "safetensors":
        return read_bundle(path).model
    if fmt == "torchscript":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            return torch.jit.load(str(path))
    if fmt == "pt2":
        return torch.export.load(str(path)).module()
    ort = pytest.importorskip("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


@pytest.mark.parametrize("fmt", ["safetensors", "pt2", "torchscript", "onnx"])
def test_every_format_matches_the_eager_network(checkpoint, tmp_path, fmt):
    if fmt == "onnx":
        for package in ("onnx", "onnxscript", "onnxruntime"):
            pytest.importorskip(package)
    out = tmp_path / f"model.{fmt}"
    report = export_model(checkpoint, fmt, out)
    assert report.within_tolerance and report.max_abs_diff is not None and report.max_abs_diff < 1e-4
    assert out.is_file() and not list(tmp_path.glob(".model.*"))  # written atomically, no temporary left
    eager = read_bundle(checkpoint).model
    run = _runner(fmt, out)
    for shape in [(4, 3, 16, 16), (1, 3, 23, 31)]:  # another batch and image size than the export's example
        x = seeded_randn(*shape, seed=len(shape) + shape[-1])
        with torch.no_grad():
            assert_close_to_scale(run(x), eager(x), layers=8)


def test_safetensors_export_is_read_by_eval_and_predict(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))  # the default runtime may cache an ONNX export
    out = tmp_path / "model.safetensors"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(out)]) == 0
    assert "max |difference|" in capsys.readouterr().out
    with safe_open(str(out), framework="pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["format"] == FORMAT and json.loads(meta["classes"]) == ["cat", "dog", "frog"]
    assert json.loads(meta["model"])["bn_folded"] and "preprocessing.mean" in keys
    assert not any("bn" in k or "running" in k for k in keys)  # folded: convolutions with biases, the fc
    for view in ("center", "10crop"):
        a = evaluate_checkpoint(checkpoint, view=view, workers=0)
        b = evaluate_checkpoint(out, view=view, workers=0)
        assert a.confusion == b.confusion and b.loss == pytest.approx(a.loss, rel=1e-5)
    image = next((tmp_path / "imagenet" / "val" / "cat").iterdir())
    assert main(["predict", "--checkpoint", str(out), str(image), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["top"][0]["class"] in ("cat", "dog", "frog")


def test_torchscript_carries_the_record(checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    export_model(checkpoint, "torchscript", out)
    with zipfile.ZipFile(out) as z:
        name = next(n for n in z.namelist() if n.endswith("extra/resnetlab.json"))
        record = json.loads(z.read(name))
    assert record["format"] == FORMAT and record["preprocessing"]["view"] == "center"
    assert torch.tensor(record["preprocessing.mean"]).shape == (3, 16, 16)


def test_pt2_is_an_exported_program_with_the_record(checkpoint, tmp_path, capsys):
    out = tmp_path / "model.pt2"
    assert main(["export", "--checkpoint", str(checkpoint), "--format", "pt2", "--out", str(out)]) == 0
    assert "(pt2, BN folded" in capsys.readouterr().out
    extra = {"resnetlab.json": ""}
    program = torch.export.load(str(out), extra_files=extra)
    assert isinstance(program, torch.export.ExportedProgram)
    record = json.loads(extra["resnetlab.json"])
    assert record["format"] == FORMAT and record["classes"] == ["cat", "dog", "frog"]
    assert record["model"]["bn_folded"] and torch.tensor(record["preprocessing.mean"]).shape == (3, 16, 16)
    assert not any("running_var" in k for k in program.state_dict)  # BN folded: no statistics left
    eager = read_bundle(checkpoint).model
    for shape in [(1, 3, 16, 16), (3, 3, 40, 28)]:  # the native size and a multi-scale-like one, other batches
        x = seeded_randn(*shape, seed=shape[2])
        with torch.no_grad():
            assert_close_to_scale(program.module()(x), eager(x), layers=8)


def test_export_help_says_torchscript_is_for_old_consumers(capsys):
    with pytest.raises(SystemExit):
        main(["export", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "pt2" in text and "deprecates TorchScript" in text


@pytest.mark.parametrize("missing", ["onnx", "onnxscript"])
def test_missing_onnx_packages_give_one_clear_line(checkpoint, tmp_path, monkeypatch, missing):
    monkeypatch.setitem(sys.modules, missing, None)  # what an environment without the package gives
    # The first package found missing is named: onnx itself where it is not installed at all (as in CI).
    with pytest.raises(
        UserError, match=rf"needs the optional package (onnx|{missing}): pip install 'resnetlab\[onnx\]'"
    ):
        export_model(checkpoint, "onnx", tmp_path / "model.onnx")
    assert not (tmp_path / "model.onnx").exists()


def test_export_errors(checkpoint, tmp_path, capsys):
    with pytest.raises(UserError, match="unknown export format"):
        export_model(checkpoint, "tflite", tmp_path / "m")
    assert (
        main(["export", "--checkpoint", str(tmp_path / "nope.pt"), "--format", "onnx", "--out", str(tmp_path / "m")])
        == 2
    )
    assert "no checkpoint at" in capsys.readouterr().err


# --- a pt2 (or TorchScript) file is code (issue 20, item 13) --------------------------------------------------


def test_pt2_and_torchscript_are_loaded_only_from_the_bytes_just_written(checkpoint, tmp_path, monkeypatch):
    """torch.export.load unpickles a pt2 file's weights with weights_only off: a crafted file runs its code. The
    one place resnetlab loads one is export's read-back, and only from the bytes whose SHA-256 it took when
    writing them: a file changed in between is refused, never loaded."""
    from resnetlab.deploy import export as export_module

    monkeypatch.setattr(export_module, "sha256_file", lambda path: "0" * 64)  # as if the file changed since
    for fmt in ("pt2", "torchscript"):
        with pytest.raises(UserError, match="changed after it was written"):
            export_model(checkpoint, fmt, tmp_path / f"model.{fmt}")


def test_nothing_in_resnetlab_loads_code_from_a_file_it_did_not_just_write():
    """Every torch.export.load and torch.jit.load in resnetlab's source reads ``_written_bytes(...)``, and the
    module that does says that a pt2 file is code."""
    import ast
    from pathlib import Path

    import resnetlab

    calls = []
    for source in Path(resnetlab.__file__).parent.rglob("*.py"):
        text = source.read_text()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load":
                owner = ast.unparse(node.func.value)
                if owner in ("torch.export", "torch.jit", "export", "jit"):
                    calls.append((source.name, ast.unparse(node.args[0]) if node.args else ""))
                    assert "pt2 file is code" in " ".join(text.split()), source
    assert calls and all(arg.startswith("_written_bytes(") for _, arg in calls), calls


def test_a_crafted_pt2_is_refused_unread_by_eval_and_predict(tmp_path, capsys):
    """A zip that names itself a pt2 archive, holding a pickle that runs code: refused by what it is, before
    torch reads a byte of it (torch.export.load would run it), and the pickle never runs."""
    import pickle

    from faultcheck import Evil

    evil = tmp_path / "model.pt2"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("model/archive_format", "pt2")
        archive.writestr("model/data/weights/weights.pkl", pickle.dumps(Evil(tmp_path / "pwned")))
    image = tmp_path / "x.png"
    image.write_bytes(b"")
    for argv in (["predict", "--checkpoint", str(evil), str(image)], ["eval", "--checkpoint", str(evil)]):
        assert main(argv) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "pt2 archive" in line and "weights_only" not in line, line
    assert not (tmp_path / "pwned").exists()
