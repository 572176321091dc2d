"""Every user mistake and every damaged file, one table (issue 10): exit 2, one line on stderr starting
``resnetlab CMD: error:``, no traceback, never a nan% with exit 0.

Each case builds its bad input in tmp_path from good ones (``test_the_good_inputs_work`` shows those succeed,
so each refusal is the bad input's doing) and runs ``resnetlab.cli.main`` in this process. A ``match`` is a
word the line must hold (the option, the value or the file at fault), case-insensitively. Each case tried is
counted in ``$RESNETLAB_FAULT_LOG`` (``faultcheck.faults``).
"""

from __future__ import annotations

import gzip
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from resnetlab.deploy import export_model
from resnetlab.models import create_model

from faultcheck import Evil, error_line, faults, flip_bit, run_cli  # noqa: F401 (a fixture)
from test_data_bad_inputs import crafted_png
from test_eval import make_checkpoint, write_val_folder
from test_train import write_idx

PRESET = "fashion-mnist-resnet20"
TEN = tuple(f"k{i}" for i in range(10))


@dataclass
class Assets:
    """Good inputs, made once: a Fashion-MNIST-shaped idx folder; an ImageNet-layout folder with a checkpoint
    that evaluates on it, and its safetensors export; a photo for predict."""

    idx: Path
    checkpoint: Path
    export: Path
    image: Path


@pytest.fixture(scope="module")
def assets(tmp_path_factory) -> Assets:
    root = tmp_path_factory.mktemp("good")
    checkpoint = make_checkpoint(root / "run" / "last.pt", data_dir=write_val_folder(root / "imagenet"))
    export = export_model(checkpoint, "safetensors", root / "run" / "model.safetensors").path
    image = root / "photo.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (20, 20, 3), dtype=np.uint8)).save(image)
    return Assets(write_idx(root / "fashion-mnist", n_train=64, n_test=16), checkpoint, export, image)


@dataclass
class Ctx:
    tmp: Path
    good: Assets
    image_folder: Callable[..., dict]

    def file(self, name: str, data: bytes | str = b"") -> Path:
        path = self.tmp / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data.encode() if isinstance(data, str) else data)
        return path

    def copy(self, source: Path, name: str) -> Path:
        return Path(shutil.copy(source, self.tmp / name))

    def images(self) -> Path:
        """CIFAR-10 as class folders, ``images/{train,test}/k0..k9/``: 0000.png and 0001.jpg in each train
        folder, 0000.png in each test folder."""
        return self.image_folder(self.tmp / "images", classes=TEN, counts={"train": 2, "test": 1})["root"]


@pytest.fixture
def ctx(tmp_path, assets, data_env, image_folder) -> Ctx:
    return Ctx(tmp_path, assets, image_folder)


# --- building the inputs ------------------------------------------------------------------------------------


def train(c: Ctx, *extra, out: Path | None = None, data: Path | None = None) -> list:
    """A two-iteration training run that works (``test_the_good_inputs_work``) but for ``extra``."""
    return [
        "train", "--preset", PRESET, "--data-dir", data or c.good.idx, "--out", out or c.tmp / "run",
        "--set", "model.name=cifar_resnet8", "--batch-size", "16", "--iterations", "2", "--eval-every", "2",
        "--set", "train.device=cpu", *extra,
    ]  # fmt: skip


def campaign(c: Ctx, *extra, carry: Path | None = None, weights: Path | None = None) -> list:
    """A window of a tiny campaign plan (``test_the_good_inputs_work``) but for ``extra``; each refusal comes
    before anything trains."""
    return [
        "experiment", "campaign", "--runs", c.tmp / "campaign-runs", "--carry", carry or c.tmp / "carry",
        "--weights", weights or c.tmp / "weights", "--iterations", "1", "--nets", "resnet20", "--table6-seeds", "1",
        "--plan", "cpu", "--data-dir", c.tmp / "cifar", "--budget", "120", *extra,
    ]  # fmt: skip


def data(folder: Path, name: str = "cifar10") -> list:
    return ["data", name, "--data-dir", folder, "--no-download"]


def evaluate(checkpoint: Path, c: Ctx, *extra) -> list:
    return ["eval", "--checkpoint", checkpoint, "--out", c.tmp / "eval", *extra]


def predict(checkpoint: Path, c: Ctx, *extra) -> list:
    return ["predict", "--checkpoint", checkpoint, c.good.image, *extra]


def predict_file(c: Ctx, name: str, make: Callable[[Path], object]) -> list:
    """``predict`` (torch runtime: no ONNX export per case) of one file made by ``make`` in tmp."""
    path = c.tmp / name
    make(path)
    return ["predict", "--checkpoint", c.good.checkpoint, path, "--runtime", "torch"]


def halved_copy(c: Ctx) -> Callable[[Path], object]:
    return lambda path: path.write_bytes(c.good.image.read_bytes()[: c.good.image.stat().st_size // 2])


def exported(c: Ctx, fmt: str) -> Path:
    """The good checkpoint exported as ``fmt`` (torchscript, pt2, onnx): a file that is not a checkpoint."""
    suffix = {"torchscript": "ts", "pt2": "pt2", "onnx": "onnx"}[fmt]
    return export_model(c.good.checkpoint, fmt, c.tmp / f"model.{suffix}").path


def not_utf8(c: Ctx, name: str) -> Path:
    return Path(os.fsdecode(os.fsencode(c.tmp) + b"/" + name.encode("latin-1")))  # Latin-1 bytes: not UTF-8


def export(checkpoint: Path, out: Path) -> list:
    return ["export", "--checkpoint", checkpoint, "--format", "safetensors", "--out", out]


def import_weights(weights: Path, c: Ctx, *extra) -> list:
    return ["import-weights", "torchvision", weights, "--model", "resnet18", "--out", c.tmp / "imported.pt", *extra]


def damaged_folder(c: Ctx, name: str, damage: Callable[[Path], object]) -> list:
    """``data cifar10`` of the image folder with ``images/NAME`` damaged."""
    root = c.images()
    damage(root / name)
    return data(root)


def damaged_image(c: Ctx, name: str, damage: Callable[[Path], object]) -> list:
    return damaged_folder(c, f"train/{name}", damage)


def halve(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def short_idat(path: Path) -> None:
    crafted_png(path, "short-idat")  # libpng: "Not enough image data", then a segfault (before: exit 139)


def broken_zlib(path: Path) -> None:
    crafted_png(path, "broken-zlib")


def bad_filter(path: Path) -> None:
    crafted_png(path, "bad-filter")


def self_loop(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)
    os.symlink(path.name, path)  # path -> path: ELOOP on every open


def empty_folder(folder: Path) -> None:
    for f in folder.iterdir():
        f.unlink()


def idx_with(c: Ctx, damage: Callable[[Path], object]) -> list:
    folder = Path(shutil.copytree(c.good.idx, c.tmp / "fashion-mnist"))
    damage(folder)
    return data(folder, "fashion-mnist")


def fewer_labels(folder: Path) -> None:
    labels = bytes([0, 0, 8, 1]) + (60).to_bytes(4, "big") + bytes(60)  # 60 labels for 64 images
    (folder / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(labels))


def read_only_dir(c: Ctx) -> Path:
    folder = c.tmp / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        pytest.skip("this user (root) may write into a read-only directory")
    return folder


def no_cuda() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")


def bare_state_dict(c: Ctx) -> Path:
    path = c.tmp / "bare.pt"
    torch.save(create_model("cifar_resnet8", num_classes=3).state_dict(), path)
    return path


def flipped(c: Ctx, source: Path, name: str) -> Path:
    path = c.copy(source, name)
    flip_bit(path)
    return path


def evil(c: Ctx, key: str = "model") -> Path:
    path = c.tmp / "evil.pt"
    torch.save({key: Evil(c.tmp / "pwned")}, path)
    return path


def safetensors_header(length: int) -> bytes:
    return length.to_bytes(8, "little") + b'{"__metadata__": {"format": "' + b"x" * 64


def wrong_keys(c: Ctx) -> Path:
    """A .pth of tensors that is not a torchvision ResNet."""
    path = c.tmp / "other.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "head.weight": torch.zeros(9, 512)}, path)
    return path


def other_programs_safetensors(c: Ctx) -> Path:
    path = c.tmp / "other.safetensors"
    save_file({"weight": torch.zeros(4, 4)}, path, metadata={"format": "pt"})
    return path


# --- the table ----------------------------------------------------------------------------------------------


@dataclass
class Bad:
    id: str
    argv: Callable[[Ctx], list]
    match: str | None = None  # a word the error line holds (regex, any case)


CASES = [
    # data
    Bad("data/missing-data-dir", lambda c: data(c.tmp / "nope", "fashion-mnist"), "nope"),
    Bad("train/missing-data-dir", lambda c: train(c, data=c.tmp / "nope"), "nope"),
    Bad("data/no-test-split", lambda c: damaged_folder(c, "test", shutil.rmtree), "test"),
    Bad("data/empty-class-folder", lambda c: damaged_image(c, "k3", empty_folder), "k3"),
    Bad("data/truncated-png", lambda c: damaged_image(c, "k1/0000.png", halve), "0000.png"),
    Bad("data/truncated-jpeg", lambda c: damaged_image(c, "k1/0001.jpg", halve), "0001.jpg"),
    Bad(
        "data/corrupt-image",
        lambda c: damaged_image(c, "k2/0000.png", lambda p: p.write_bytes(os.urandom(600))),
        "0000.png",
    ),  # fmt: skip
    Bad("data/png-short-idat", lambda c: damaged_image(c, "k6/0000.png", short_idat), "0000.png"),
    Bad("data/png-idat-broken-zlib", lambda c: damaged_image(c, "k6/0000.png", broken_zlib), "0000.png"),
    Bad("data/zero-byte-image", lambda c: damaged_image(c, "k4/0000.png", lambda p: p.write_bytes(b"")), "0000.png"),
    Bad("data/symlink-loop-image", lambda c: damaged_image(c, "k5/0000.png", self_loop), "0000.png"),
    Bad("data/symlink-loop-split", lambda c: damaged_folder(c, "train", self_loop), "train"),
    Bad("data/truncated-idx", lambda c: idx_with(c, lambda f: halve(f / "train-images-idx3-ubyte.gz")), "train-images"),
    Bad("data/idx-label-count", lambda c: idx_with(c, fewer_labels), "label"),
    Bad("data/unknown-dataset", lambda c: ["data", "fashion_mnist"], "fashion_mnist"),
    # train: options
    Bad("train/unknown-preset", lambda c: [*train(c), "--preset", "cifar10-resnet2"], "cifar10-resnet2"),
    Bad("train/set-unknown-key", lambda c: train(c, "--set", "train.iteration=3"), "train.iteration"),
    Bad("train/set-unknown-section", lambda c: train(c, "--set", "trainer.iterations=3"), "trainer"),
    Bad("train/set-without-value", lambda c: train(c, "--set", "train.iterations"), "train.iterations"),
    Bad("train/set-bad-int", lambda c: train(c, "--set", "train.iterations=many"), "many"),
    Bad("train/set-bad-float", lambda c: train(c, "--set", "optim.lr=fast"), "fast"),
    Bad("train/set-bad-bool", lambda c: train(c, "--set", "train.deterministic=maybe"), "maybe"),
    Bad("train/set-bad-choice", lambda c: train(c, "--set", "train.amp=fp8"), "fp8"),
    Bad("train/momentum-negative", lambda c: train(c, "--set", "optim.momentum=-1"), "momentum"),
    Bad("train/weight-decay-negative", lambda c: train(c, "--set", "optim.weight_decay=-1"), "weight_decay"),
    Bad("train/lr-zero", lambda c: train(c, "--set", "optim.lr=0"), "lr"),
    Bad("train/lr-nan", lambda c: train(c, "--set", "optim.lr=nan"), "lr"),
    Bad("train/iterations-zero", lambda c: train(c, "--iterations", "0"), "iterations"),
    Bad("train/iterations-negative", lambda c: train(c, "--iterations", "-5"), "iterations"),
    Bad("train/iterations-not-a-number", lambda c: train(c, "--iterations", "ten"), "ten"),
    Bad("train/batch-size-zero", lambda c: train(c, "--batch-size", "0"), "batch"),
    Bad("train/batch-size-negative", lambda c: train(c, "--batch-size", "-32"), "batch"),
    Bad("train/eval-every-zero", lambda c: train(c, "--eval-every", "0"), "eval_every"),
    Bad("train/eval-every-negative", lambda c: train(c, "--eval-every", "-1"), "eval_every"),
    Bad("train/checkpoint-every-zero", lambda c: train(c, "--checkpoint-every", "0"), "checkpoint_every"),
    Bad("train/train-subset-negative", lambda c: train(c, "--train-subset", "-1"), "train_subset"),
    Bad("train/out-under-a-file", lambda c: train(c, out=c.file("notes.txt", "x") / "run"), "notes.txt"),
    Bad("train/out-is-a-file", lambda c: train(c, out=c.file("notes.txt", "x")), "notes.txt"),
    Bad("train/out-read-only", lambda c: train(c, out=read_only_dir(c) / "run"), "read-only"),
    Bad("train/device-unknown", lambda c: train(c, "--device", "tpu"), "tpu"),
    Bad("train/device-cuda-without-cuda", lambda c: no_cuda() or train(c, "--device", "cuda"), "cuda"),
    Bad("train/seeds-negative", lambda c: train(c, "--seeds", "-1"), "-1"),
    Bad("train/seeds-beyond-int64", lambda c: train(c, "--seeds", "0", str(10**20)), str(10**20)),
    Bad("train/seed-beyond-int64", lambda c: train(c, "--seed", str(10**20)), "train.seed"),
    Bad("train/seed-negative", lambda c: train(c, "--seed", "-3"), "train.seed"),
    Bad("train/seed-beside-seeds", lambda c: train(c, "--seed", "5", "--seeds", "1", "2"), "--seed"),
    Bad("train/set-seed-beside-seeds", lambda c: train(c, "--set", "train.seed=5", "--seeds", "1"), "--seed"),
    Bad("train/seeds-too-many", lambda c: train(c, "--seeds", *map(str, range(100))), "at most 16"),
    # experiment campaign: refused before anything trains (issue 20)
    Bad("campaign/budget-nan", lambda c: campaign(c, "--budget", "nan"), "budget"),
    Bad("campaign/budget-inf", lambda c: campaign(c, "--budget", "inf"), "budget"),
    Bad("campaign/budget-zero", lambda c: campaign(c, "--budget", "0"), "budget"),
    Bad("campaign/carry-is-a-file", lambda c: campaign(c, carry=c.file("notes.txt", "x")), "notes.txt"),
    Bad("campaign/carry-under-a-file", lambda c: campaign(c, carry=c.file("notes.txt", "x") / "carry"), "notes.txt"),
    Bad("campaign/weights-is-a-file", lambda c: campaign(c, weights=c.file("index.json", "{}")), "index.json"),
    Bad("campaign/nets-resnet1202", lambda c: campaign(c, "--nets", "resnet20", "resnet1202"), "resnet1202.*carry"),
    Bad("campaign/nets-unknown", lambda c: campaign(c, "--nets", "resnet20", "resnet18"), "resnet18"),
    Bad("campaign/table6-seeds-zero", lambda c: campaign(c, "--table6-seeds", "0"), "table6-seeds"),
    Bad("campaign/table6-seeds-six", lambda c: campaign(c, "--table6-seeds", "6"), "table6-seeds"),
    Bad("campaign/set-unknown-key", lambda c: campaign(c, "--set", "train.cuda_graf=off"), "train.cuda_graf"),
    Bad("campaign/set-bad-choice", lambda c: campaign(c, "--set", "train.cuda_graph=maybe"), "maybe"),
    Bad("campaign/set-recipe-field", lambda c: campaign(c, "--set", "optim.lr=0.05"), "optim.lr"),
    Bad("campaign/set-its-own-field", lambda c: campaign(c, "--set", "train.seed=3"), "train.seed"),
    Bad("experiment/set-not-campaign", lambda c: ["experiment", "table6", "--set", "train.cuda_graph=off"], "--set"),
    # eval, predict, export, import-weights, plot: options
    Bad("eval/batch-size-negative", lambda c: evaluate(c.good.checkpoint, c, "--batch-size", "-5"), "batch"),
    Bad("eval/batch-size-zero", lambda c: evaluate(c.good.checkpoint, c, "--batch-size", "0"), "batch"),
    Bad("eval/workers-negative", lambda c: evaluate(c.good.checkpoint, c, "--workers", "-1"), "workers"),
    Bad("eval/views-bad", lambda c: evaluate(c.good.checkpoint, c, "--views", "bad"), "views"),
    Bad("eval/device-unknown", lambda c: evaluate(c.good.checkpoint, c, "--device", "tpu"), "tpu"),
    Bad("eval/split-unknown", lambda c: evaluate(c.good.checkpoint, c, "--split", "train"), "train"),
    Bad("predict/top-zero", lambda c: predict(c.good.checkpoint, c, "--top", "0"), "top"),
    Bad("predict/top-negative", lambda c: predict(c.good.checkpoint, c, "--top", "-3"), "top"),
    Bad("predict/views-bad", lambda c: predict(c.good.checkpoint, c, "--views", "bad"), "views"),
    Bad("predict/device-unknown", lambda c: predict(c.good.checkpoint, c, "--device", "tpu"), "tpu"),
    Bad("export/format-unknown", lambda c: [*export(c.good.checkpoint, c.tmp / "m"), "--format", "tflite"], "tflite"),
    Bad("export/out-is-a-folder", lambda c: export(c.good.checkpoint, c.tmp), None),
    Bad("export/out-under-a-file", lambda c: export(c.good.checkpoint, c.file("notes.txt", "x") / "m"), "notes.txt"),
    Bad("import/model-unknown", lambda c: [*import_weights(bare_state_dict(c), c), "--model", "resnet9"], "resnet9"),
    Bad("plot/not-a-run", lambda c: ["plot", c.tmp / "nothing"], "nothing"),
    # files
    Bad("eval/missing-checkpoint", lambda c: evaluate(c.tmp / "missing.pt", c), "missing.pt"),
    Bad("eval/folder-as-checkpoint", lambda c: evaluate(c.tmp, c), "folder"),
    Bad("eval/text-file-as-checkpoint", lambda c: evaluate(c.file("notes.pt", "hello\n"), c), "notes.pt"),
    Bad("eval/zero-byte-pt", lambda c: evaluate(c.file("empty.pt"), c), "empty.pt"),
    Bad("eval/zero-byte-safetensors", lambda c: evaluate(c.file("empty.safetensors"), c), "empty.safetensors"),
    Bad(
        "eval/truncated-pt",
        lambda c: evaluate(c.file("half.pt", c.good.checkpoint.read_bytes()[:20_000]), c),
        "half.pt",
    ),  # fmt: skip
    Bad(
        "eval/safetensors-huge-header",
        lambda c: evaluate(c.file("huge.safetensors", safetensors_header(2**62)), c),
        "huge.safetensors",
    ),  # fmt: skip
    Bad(
        "eval/safetensors-header-past-the-end",
        lambda c: evaluate(c.file("long.safetensors", safetensors_header(99_999_999)), c),
        "long.safetensors",
    ),  # fmt: skip
    Bad("eval/another-programs-safetensors", lambda c: evaluate(other_programs_safetensors(c), c), "other.safetensors"),
    Bad("eval/bare-state-dict", lambda c: evaluate(bare_state_dict(c), c), "bare.pt"),
    Bad("eval/bit-flipped-checkpoint", lambda c: evaluate(flipped(c, c.good.checkpoint, "flipped.pt"), c), "flipped"),
    Bad("eval/malicious-pickle", lambda c: evaluate(evil(c), c), "evil.pt"),
    Bad("predict/bare-state-dict", lambda c: predict(bare_state_dict(c), c), "bare.pt"),
    Bad("predict/zero-byte-safetensors", lambda c: predict(c.file("empty.safetensors"), c), "empty.safetensors"),
    Bad(
        "predict/truncated-export",
        lambda c: predict(c.file("half.safetensors", c.good.export.read_bytes()[:9000]), c),
        "half.safetensors",
    ),  # fmt: skip
    Bad(
        "predict/bit-flipped-export", lambda c: predict(flipped(c, c.good.export, "flipped.safetensors"), c), "flipped"
    ),  # fmt: skip
    Bad("predict/malicious-pickle", lambda c: predict(evil(c), c), "evil.pt"),
    Bad("predict/truncated-png", lambda c: predict_file(c, "half.png", halved_copy(c)), "half.png"),
    Bad("predict/png-short-idat", lambda c: predict_file(c, "short.png", short_idat), "short.png"),
    Bad("predict/png-bad-filter", lambda c: predict_file(c, "filter.png", bad_filter), "filter.png"),
    Bad("predict/torchscript-export", lambda c: predict(exported(c, "torchscript"), c), "model.ts.*TorchScript"),
    Bad("predict/pt2-export", lambda c: predict(exported(c, "pt2"), c), "model.pt2.*pt2 archive"),
    Bad("eval/onnx-model", lambda c: evaluate(exported(c, "onnx"), c), "model.onnx.*ONNX"),
    Bad("train/init-torchscript-export", lambda c: train(c, "--init", exported(c, "torchscript")), "TorchScript"),
    Bad("train/init-pt2-export", lambda c: train(c, "--init", exported(c, "pt2")), "pt2 archive"),
    Bad(
        "train/out-not-utf8-with-tensorboard-on",
        lambda c: train(c, "--set", "train.tensorboard=on", out=not_utf8(c, "runé")),
        "tensorboard",
    ),  # fmt: skip
    Bad("export/text-file", lambda c: export(c.file("notes.pt", "hello\n"), c.tmp / "m.safetensors"), "notes.pt"),
    Bad(
        "export/bit-flipped-checkpoint",
        lambda c: export(flipped(c, c.good.checkpoint, "flipped.pt"), c.tmp / "m"),
        "flipped",
    ),  # fmt: skip
    Bad("import/missing-file", lambda c: import_weights(c.tmp / "missing.pth", c), "missing.pth"),
    Bad("import/wrong-keys", lambda c: import_weights(wrong_keys(c), c), "other.pth"),
    Bad("import/a-resnetlab-checkpoint", lambda c: import_weights(c.good.checkpoint, c), "last.pt"),
    Bad("import/malicious-pickle", lambda c: import_weights(evil(c, "conv1.weight"), c), "evil.pt"),
    Bad("train/resume-not-a-training-checkpoint", lambda c: [*train(c), "--resume", c.good.checkpoint], "last.pt"),
    Bad("train/resume-missing-file", lambda c: [*train(c), "--resume", c.tmp / "missing.pt"], "missing.pt"),
    Bad("train/resume-a-folder", lambda c: [*train(c), "--resume", c.tmp], "folder"),
    Bad("train/resume-malicious-pickle", lambda c: [*train(c), "--resume", evil(c)], "evil.pt"),
]


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_a_bad_input_is_refused_with_one_line(case, ctx, capsys, faults):
    argv = case.argv(ctx)
    faults.inject("bad_input", case.id)
    line = error_line(run_cli(argv, capsys), str(argv[0]))
    if case.match:
        assert re.search(case.match, line, re.IGNORECASE), f"{line!r} does not say {case.match!r}"
    assert "weights_only" not in line, "torch's advice to load with weights_only=False, which runs code"
    assert "corrupted" not in line, "torch calling an intact archive it cannot read corrupted"
    assert not (ctx.tmp / "pwned").exists(), "a pickle's code ran"
    faults.survived()


def test_the_table_is_large_and_its_ids_unique():
    assert len(CASES) >= 40 and len({case.id for case in CASES}) == len(CASES)


def test_the_good_inputs_work(ctx, capsys):
    """The inputs the table damages, undamaged: each command succeeds, so each refusal above is the damage's."""
    from conftest import write_cifar_python

    write_cifar_python(ctx.tmp / "cifar", per_batch=26, n_test=20)  # the campaign's: one batch of 128
    for argv in [
        data(ctx.images()),
        data(ctx.good.idx, "fashion-mnist"),
        train(ctx),
        evaluate(ctx.good.checkpoint, ctx, "--batch-size", "5", "--workers", "0"),
        predict(ctx.good.checkpoint, ctx, "--top", "2"),
        predict(ctx.good.export, ctx),
        export(ctx.good.checkpoint, ctx.tmp / "again.safetensors"),
        campaign(ctx, "--set", "train.cuda_graph=off"),
    ]:
        outcome = run_cli(argv, capsys)
        assert outcome.code == 0 and outcome.exception is None, outcome.describe()
        assert "nan%" not in outcome.out
