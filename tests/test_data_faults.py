"""Issue 10, the data side ("nothing lost, nothing poisoned"): a named folder is used or refused, never
replaced; a subset keeps every class; a valid image is never dropped for its file name; a link loop is not
a traceback; ``eval --split val`` reads an ImageNet-layout ``val/`` folder."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision.datasets
from PIL import Image

from resnetlab import data as rdata
from resnetlab.cli import main
from resnetlab.config import RunConfig, apply_overrides
from resnetlab.data import index_folder, load_dataset, locate, read_image
from resnetlab.engine.inputs import build_data
from resnetlab.errors import UserError
from resnetlab.evaluation import evaluate_checkpoint

from test_eval import make_checkpoint, write_val_folder


def _no_download(monkeypatch):
    """Any download attempt fails the test: a given --data-dir must never be replaced by one."""

    def refuse(*args, **kwargs):
        raise AssertionError("downloaded although --data-dir was given")

    for name in ("CIFAR10", "CIFAR100", "FashionMNIST", "MNIST"):
        monkeypatch.setattr(torchvision.datasets, name, refuse)


def _one_line_error(call) -> str:
    with pytest.raises(UserError) as err:
        call()
    message = str(err.value)
    assert "\n" not in message
    return message


# --- 1. a given --data-dir is used or refused -------------------------------------------------------------
def test_image_folder_without_test_is_refused_not_replaced(data_env, tmp_path, monkeypatch, image_folder):
    """Before: RESNETLAB_DATA's complete copy was used instead, silently (exit 0)."""
    elsewhere = tmp_path / "env"
    image_folder(elsewhere, classes=tuple(f"k{i}" for i in range(10)))
    monkeypatch.setenv("RESNETLAB_DATA", str(elsewhere))
    _no_download(monkeypatch)
    given = tmp_path / "given"
    image_folder(given, classes=tuple(f"k{i}" for i in range(10)), counts={"train": 2})
    message = _one_line_error(lambda: load_dataset("cifar10", given, progress=False))
    assert str(given) in message and "train/ without test/" in message and "expected" in message
    assert str(elsewhere) not in message  # nothing else was looked in


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100", "fashion-mnist", "mnist", "imagefolder"])
def test_unrelated_data_dir_is_refused_for_every_dataset(
    data_env, tmp_path, monkeypatch, dataset, image_folder, idx_folder, cifar_python
):
    env = tmp_path / "env"  # a complete copy of every dataset, which must not be used
    cifar_python(env)
    cifar_python(env, "cifar100")
    idx_folder(env / "fashion-mnist")
    idx_folder(env / "mnist")
    image_folder(env / "imagenet", eval_split="val")
    monkeypatch.setenv("RESNETLAB_DATA", str(env))
    assert locate(dataset).found_via == "RESNETLAB_DATA"
    _no_download(monkeypatch)
    given = tmp_path / "given"
    given.mkdir()
    (given / "notes.txt").write_text("not a dataset")
    (given / "photos").mkdir()
    message = _one_line_error(lambda: locate(dataset, given))
    assert f"{given} (--data-dir)" in message and "notes.txt" in message and "photos/" in message
    assert "expected" in message


@pytest.mark.parametrize(
    "dataset, layout, hint",
    [
        ("fashion-mnist", "two idx files", "2 of the 4 idx files"),
        ("imagefolder", "train/ + test/", "train/ + test/, but imagefolder's evaluation folder is val/"),
        ("cifar10", "train/ + val/", "train/ + val/, but cifar10's evaluation folder is test/"),
        ("cifar10", "cifar10-jpeg/train/", "cifar10-jpeg/train/ without cifar10-jpeg/test/"),
        ("cifar100", "cifar-100-python/ without meta", "cifar-100-python/ without its meta file"),
    ],
)
def test_near_misses_say_what_was_found(data_env, tmp_path, monkeypatch, image_folder, dataset, layout, hint):
    _no_download(monkeypatch)
    given = tmp_path / "given"
    if layout == "two idx files":
        given.mkdir()
        for stem in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"):
            (given / stem).write_bytes(b"")
    elif layout == "cifar10-jpeg/train/":
        image_folder(given / "cifar10-jpeg", counts={"train": 1})
    elif layout.startswith("cifar-100-python"):
        (given / "cifar-100-python").mkdir(parents=True)
    else:
        image_folder(given, counts={"train": 1, layout.split()[-1].rstrip("/"): 1})
    assert hint in _one_line_error(lambda: locate(dataset, given))


def test_a_data_dir_given_for_synthetic_data_is_refused(data_env, tmp_path):
    """Synthetic images are generated: a folder named for them would be silently ignored."""
    assert "synthetic" in _one_line_error(lambda: load_dataset("synthetic", tmp_path, progress=False))


# --- 2. --train-subset keeps every class ------------------------------------------------------------------
def test_stratified_subset_gives_each_class_its_share():
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)  # sorted by class, as an ImageFolder is
    chosen = rdata.stratified_subset(labels, 10, seed=0)
    assert torch.equal(chosen, chosen.sort().values) and len(chosen.unique()) == 10
    assert torch.bincount(labels[chosen], minlength=3).tolist() == [5, 3, 2]
    # largest remainder: 7 * (50, 30, 20) / 100 = 3.5, 2.1, 1.4 -> 4, 2, 1 (exactly 7)
    assert torch.bincount(labels[rdata.stratified_subset(labels, 7, seed=0)], minlength=3).tolist() == [4, 2, 1]
    assert torch.equal(rdata.stratified_subset(labels, 10, seed=0), chosen)  # depends on (labels, n, seed) only
    assert not torch.equal(rdata.stratified_subset(labels, 10, seed=1), chosen)
    # fewer than one per class: the largest classes get one each (ties: the lower label)
    assert torch.bincount(labels[rdata.stratified_subset(labels, 2, seed=0)], minlength=3).tolist() == [1, 1, 0]
    assert len(rdata.stratified_subset(labels, 100, seed=0)) == 100
    assert "more than the 100 training images" in _one_line_error(lambda: rdata.stratified_subset(labels, 101, seed=0))


def _subset_config(root: Path, *extra: str) -> RunConfig:
    return apply_overrides(
        RunConfig(),
        ["data.dataset=cifar10", f"data.data_dir={root}", "optim.batch_size=4", "data.train_subset=10", *extra],
    )


def test_train_subset_of_a_class_sorted_folder_holds_every_class(data_env, tmp_path, image_folder):
    """Before: the first 10 files, all of class k0 and k1 (the folder is sorted by class)."""
    classes = tuple(f"k{i}" for i in range(10))
    root = image_folder(tmp_path / "data", classes=classes, counts={"train": 3, "test": 1})["root"]
    data = build_data(_subset_config(root), torch.device("cpu"))
    assert data.num_train == 10
    assert torch.bincount(data.train.labels, minlength=10).tolist() == [1] * 10
    again = build_data(_subset_config(root), torch.device("cpu"))  # a resume, another rank: the same images
    assert torch.equal(again.train.images, data.train.images)
    other = build_data(_subset_config(root, "train.seed=1"), torch.device("cpu"))
    assert not torch.equal(other.train.images, data.train.images)
    message = _one_line_error(lambda: build_data(_subset_config(root, "data.train_subset=31"), torch.device("cpu")))
    assert "--train-subset 31 is more than the 30 training images" in message


# --- 3. a file name that is not UTF-8 ---------------------------------------------------------------------
def test_valid_jpeg_with_a_non_utf8_name_is_read(data_env, tmp_path, image_folder):
    """Before: torchvision.io.read_file refused the surrogate-escaped str, reported as 'truncated or corrupt'
    and dropped under skip."""
    root = image_folder(tmp_path / "data", counts={"train": 2, "val": 1}, eval_split="val")["root"]
    pixels = np.full((32, 32, 3), 200, dtype=np.uint8)
    name = os.fsencode(root / "train" / "cat") + b"/caf\xe9.jpg"  # Latin-1 bytes: not valid UTF-8
    with open(name, "wb") as f:
        Image.fromarray(pixels).save(f, format="JPEG", quality=95)
    path = Path(os.fsdecode(name))
    assert (read_image(path, 3).float() - 200).abs().max() <= 2
    ds = load_dataset("imagefolder", root, on_bad_image="skip", progress=False)
    assert ds.train.skipped == 0 and len(ds.train) == 7 and ds.train.counts(3) == [3, 2, 2]


def test_a_data_folder_whose_name_is_not_utf8_is_read(data_env, tmp_path, image_folder):
    """Before: a UnicodeEncodeError traceback from hashing the folder's name for the cache."""
    root = Path(os.fsdecode(os.fsencode(tmp_path) + b"/d\xe9ta"))
    image_folder(root, counts={"train": 2, "val": 1}, eval_split="val")
    for _ in range(2):  # decoded, then read back from the cache
        assert len(load_dataset("imagefolder", root, progress=False).train) == 6
    index = index_folder(root / "train")
    assert rdata.folder_statistics(index, resize=8, crop=8, progress=False).mean_image.shape == (3, 8, 8)


# --- 4. link loops ----------------------------------------------------------------------------------------
def test_a_link_loop_inside_a_class_is_skipped_with_a_warning(data_env, tmp_path, image_folder, caplog):
    """Before: OSError 'Too many levels of symbolic links' (a traceback). The loop's images are the class
    folder's own, so they are listed once, from the real path, and the loop is named in a warning."""
    root = image_folder(tmp_path / "data", counts={"train": 2, "val": 1}, eval_split="val")["root"]
    (root / "train" / "cat" / "loop").symlink_to(".")
    (root / "val" / "dog" / "sub").mkdir()
    (root / "val" / "dog" / "sub" / "back").symlink_to("..")  # val/dog/sub/back/sub/back/...
    with caplog.at_level(logging.WARNING, logger="resnetlab.data"):
        ds = load_dataset("imagefolder", root, progress=False)
    assert ds.train.counts(3) == [2, 2, 2]
    assert (
        str(root / "train" / "cat" / "loop") in caplog.text
        and str(root / "val" / "dog" / "sub" / "back") in caplog.text
    )
    assert ds.test.counts(3) == [1, 1, 1]
    train, val = rdata.open_image_folder(root)  # the streamed path indexes the same way
    assert len(train.files) == 6 and len(set(train.files)) == 6


def test_a_class_folder_linked_to_its_parent_is_an_error(data_env, tmp_path, image_folder):
    """Its images would be every other class's too: refused, naming the link."""
    root = image_folder(tmp_path / "data", counts={"train": 2, "val": 1}, eval_split="val")["root"]
    (root / "train" / "zoo").symlink_to(".")
    message = _one_line_error(lambda: index_folder(root / "train"))
    assert str(root / "train" / "zoo") in message and "two labels" in message
    assert str(root / "train" / "zoo") in _one_line_error(lambda: load_dataset("imagefolder", root, progress=False))


def test_one_folder_linked_into_two_classes_is_an_error(data_env, tmp_path, image_folder):
    root = image_folder(tmp_path / "data", counts={"train": 2})["root"]
    (root / "train" / "dog" / "also-cats").symlink_to(root / "train" / "cat")
    message = _one_line_error(lambda: index_folder(root / "train"))
    assert "also-cats" in message and "class cat" in message


def test_a_file_link_loop_or_a_dangling_link_is_a_bad_image(data_env, tmp_path, image_folder):
    """Before: OSError 'Too many levels of symbolic links' from stat() while keying the cache (a traceback)."""
    root = image_folder(tmp_path / "data", counts={"train": 2, "val": 1}, eval_split="val")["root"]
    (root / "train" / "cat" / "a.jpg").symlink_to("b.jpg")
    (root / "train" / "cat" / "b.jpg").symlink_to("a.jpg")
    (root / "train" / "dog" / "gone.png").symlink_to("nowhere.png")
    message = _one_line_error(lambda: load_dataset("imagefolder", root, progress=False))
    assert str(root / "train" / "cat" / "a.jpg") in message and "not a readable image" in message
    ds = load_dataset("imagefolder", root, on_bad_image="skip", progress=False)
    assert ds.train.skipped == 3 and ds.train.counts(3) == [2, 2, 2]


# --- 5. eval --split val on the ImageNet layout -----------------------------------------------------------
def test_eval_split_val_reads_the_val_folder(data_env, tmp_path, capsys):
    """Before: '--split val: ... there is no validation split; evaluate --split test'."""
    root = write_val_folder(tmp_path / "imagenet")
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", data_dir=root)
    val, test = evaluate_checkpoint(ckpt, split="val", workers=0), evaluate_checkpoint(ckpt, split="test", workers=0)
    assert val.images == test.images == 7 and val.confusion == test.confusion and val.split == "val"
    assert main(["eval", "--checkpoint", str(ckpt), "--split", "val", "--out", str(tmp_path / "e")]) == 0
    assert (tmp_path / "e" / "metrics-val-center.json").is_file()


def test_eval_split_val_with_a_held_out_split_says_which(data_env, tmp_path, capsys):
    """A run that held images out of train/ (data.val_split) has two candidates: the held-out split is the
    one used, as training evaluated it, and a note says so and how to reach val/."""
    root = write_val_folder(tmp_path / "imagenet")
    ckpt = make_checkpoint(tmp_path / "ckpt.pt", data_dir=root, val_split=3)
    assert evaluate_checkpoint(ckpt, split="val", workers=0).images == 3
    note = capsys.readouterr().err
    assert "held out of train/" in note and "--split test" in note and "val/" in note


# --- 6. crafted images (issue 20, item 11) ----------------------------------------------------------------
def test_streamed_training_skips_a_png_with_a_short_idat(data_env, tmp_path, image_folder):
    """A PNG whose header is valid and whose IDAT holds too little image data passes the quick check before
    training (it ends in IEND), then is met mid-epoch by the loader: under on_bad_image=skip it is dropped from
    its batch and training goes on; before, libpng's "Not enough image data" killed the process (exit 139)."""
    from resnetlab.engine import train
    from resnetlab.presets import get_preset

    from test_data_bad_inputs import crafted_png

    root = image_folder(tmp_path / "data", counts={"train": 2, "val": 1}, eval_split="val")["root"]
    crafted_png(root / "train" / "cat" / "0002.png", "short-idat")
    config = apply_overrides(
        get_preset("imagenet-resnet18"),
        [
            f"data.data_dir={root}",
            "data.loader=stream",
            "data.num_workers=0",
            "data.on_bad_image=skip",
            "model.name=cifar_resnet8",
            "optim.batch_size=7",  # the 7 files, one of them bad: every batch of the epoch meets it
            "train.iterations=1",
            "train.eval_every=1",
            "train.tensorboard=off",
            "train.device=cpu",
        ],
    )
    record = train(config, tmp_path / "run", progress=False)
    assert record["iteration"] == 1 and record["test_images"] == 3
