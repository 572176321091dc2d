"""resnetlab predict: JPEG and PNG files, a corrupt one, the checkpoint's own preprocessing, bad checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from resnetlab.cli import main
from resnetlab.deploy import load_bundle, predict_images, read_bundle

from test_eval import make_checkpoint, trained_run  # noqa: F401  (a fixture)


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (40, 31, 3), dtype=np.uint8)).save(tmp_path / "photo.jpg", quality=90)
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "native.png")
    Image.fromarray(rng.integers(0, 256, (25, 25), dtype=np.uint8), mode="L").save(tmp_path / "gray.png")
    (tmp_path / "truncated.jpg").write_bytes((tmp_path / "photo.jpg").read_bytes()[:300])
    (tmp_path / "notes.png").write_text("not an image")
    return tmp_path


def test_predict_jpeg_png_and_corrupt_files(tmp_path, images, capsys, monkeypatch):
    monkeypatch.setenv("RESNETLAB_CACHE", str(tmp_path / "cache"))  # the default runtime may cache an ONNX export
    ckpt = make_checkpoint(tmp_path / "c.pt", dataset="cifar10")
    files = [images / n for n in ("photo.jpg", "truncated.jpg", "native.png", "notes.png", "gray.png")]
    assert main(["predict", "--checkpoint", str(ckpt), *map(str, files), "--json"]) == 2  # some files failed
    captured = capsys.readouterr()
    errors = [line for line in captured.err.strip().splitlines() if not line.startswith("note: running with torch")]
    assert len(errors) == 2 and "Traceback" not in captured.err
    assert "truncated.jpg" in errors[0] and "notes.png" in errors[1]
    results = json.loads(captured.out)
    assert [r["image"] for r in results] == list(map(str, files))
    good = [r for r in results if "error" not in r]
    assert len(good) == 3  # the others are still predicted, in order
    for r in good:
        assert len(r["top"]) == 3  # top-5 capped at the 3 classes
        probs = [row["probability"] for row in r["top"]]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-5)
        assert {row["class"] for row in r["top"]} == {"cat", "dog", "frog"}
    assert main(["predict", "--checkpoint", str(ckpt), str(files[0]), "--top", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == str(files[0]) and len(out) == 3 and out[1].strip().endswith(("cat", "dog", "frog"))


def test_probabilities_are_the_eager_networks_on_the_checkpoints_preprocessing(tmp_path, images):
    ckpt = make_checkpoint(tmp_path / "c.pt", dataset="cifar10")
    eager = read_bundle(ckpt)
    pixels = torch.from_numpy(np.array(Image.open(images / "native.png"))).permute(2, 0, 1).float()
    with torch.no_grad():
        expected = eager.model(((pixels - eager.preprocessing.mean) / 255)[None]).softmax(1)[0]
    (result,) = predict_images(load_bundle(ckpt), [images / "native.png"], top=3)
    got = torch.zeros(3)
    for row in result.top:
        got[row["index"]] = row["probability"]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_grayscale_network_takes_colour_photos(trained_run, images, monkeypatch):
    run, cache = trained_run  # Fashion-MNIST-shaped: one channel, 28x28
    bundle = load_bundle(run / "checkpoints/last.pt")
    assert bundle.preprocessing.channels == 1 and bundle.preprocessing.image_size == (28, 28)
    results = predict_images(bundle, [images / "photo.jpg", images / "gray.png"], top=5)
    assert all(r.error is None and len(r.top) == 5 for r in results)
    assert results[0].top[0]["class"] in bundle.classes
    multi = predict_images(bundle, [images / "photo.jpg"], top=10, view="multiscale")[0]
    assert sum(row["probability"] for row in multi.top) == pytest.approx(1.0, abs=1e-5)


class Evil:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_bad_checkpoints_are_one_line_errors(tmp_path, images, capsys):
    cases = {}
    cases["no checkpoint at"] = tmp_path / "missing.pt"
    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil(str(tmp_path / "pwned"))}, evil)
    cases["refusing to load"] = evil
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00\x01 not a checkpoint" * 10)
    cases["garbage.pt"] = garbage  # torch reads it as a legacy pickle: refused like the crafted one
    bare = tmp_path / "resnet18.pth"
    torch.save({"conv1.weight": torch.zeros(2, 3, 7, 7)}, bare)
    cases["import-weights torchvision"] = bare
    foreign = tmp_path / "other.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign), metadata={"format": "pt"})
    cases["not a resnetlab export"] = foreign
    cases["is a folder"] = tmp_path
    for message, path in cases.items():
        assert main(["predict", "--checkpoint", str(path), str(images / "photo.jpg")]) == 2, message
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err and "Traceback" not in err, (message, err)
    assert not (tmp_path / "pwned").exists()  # the pickle's code never ran


def test_command_line_errors_have_no_traceback(tmp_path, images):
    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil(str(tmp_path / "pwned"))}, evil)
    for argv in (
        ["predict", "--checkpoint", str(evil), str(images / "photo.jpg")],
        ["eval", "--checkpoint", str(tmp_path / "missing.pt")],
    ):
        proc = subprocess.run([sys.executable, "-m", "resnetlab", *argv], capture_output=True, text=True)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1 and "error:" in proc.stderr
    assert not (tmp_path / "pwned").exists()
