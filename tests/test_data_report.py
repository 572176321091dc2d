"""`resnetlab data NAME`: the report's counts, its JSON, and one-line errors."""

from __future__ import annotations

import json

from resnetlab.cli import main
from resnetlab.data import describe, format_report


def test_report_of_an_image_folder_cifar10(data_env, tmp_path, image_folder, capsys):
    image_folder(tmp_path / "cifar10-jpeg", classes=tuple(f"k{i}" for i in range(10)), counts={"train": 3, "test": 2})
    assert main(["data", "cifar10", "--data-dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"cifar10: imagefolder at {tmp_path / 'cifar10-jpeg'} (via --data-dir)")
    assert "images: 32x32, 3 channel(s) (RGB), 10 classes" in out
    assert "splits: train 30, test 20" in out
    assert "      9  k9           3        2" in out
    assert "mean image 3x32x32 (pixel values 0..255), from all 30 training images:" in out
    assert f"cache: {data_env}" in out and "train-" in out


def test_report_json_via_resnetlab_data(data_env, tmp_path, idx_folder, monkeypatch, capsys):
    idx_folder(tmp_path / "fashion-mnist")
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path))
    assert main(["data", "fashion-mnist", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["source"] == {"format": "idx", "path": str(tmp_path / "fashion-mnist"), "found_via": "RESNETLAB_DATA"}
    assert (info["channels"], info["image_size"]) == (1, [28, 28])
    assert info["splits"]["train"]["images"] == 30 and info["splits"]["test"]["per_class"]["Trouser"] == 1
    gray = info["mean_image"]["channels"][0]
    assert gray["channel"] == "gray" and 0 <= gray["min"] <= gray["mean"] <= gray["max"] <= 255
    assert info["mean_image"]["shape"] == [1, 28, 28] and info["cache_root"] == str(data_env)


def test_report_of_an_imagenet_layout(data_env, tmp_path, image_folder):
    counts = {"train": 3, "val": 2}
    image_folder(tmp_path / "imagenet", classes=("n01", "n02"), counts=counts, eval_split="val", size=300)
    info = describe("imagefolder", tmp_path, progress=False)
    assert info["splits"]["val"] == {"images": 4, "per_class": {"n01": 2, "n02": 2}, "skipped": 0}
    assert info["image_size"] == {"sampled": 6, "height": [300, 300], "width": [300, 300]}
    assert info["mean_image"]["shape"] == [3, 224, 224]
    assert "heights 300..300, widths 300..300 (of 6 sampled)" in format_report(info)


def test_report_of_synthetic_data():
    info = describe("synthetic", progress=False)
    assert info["source"] is None and info["splits"]["train"]["images"] == 50_000
    assert format_report(info).startswith("synthetic: synthetic")


def test_user_errors_exit_2(data_env, tmp_path, capsys):
    assert main(["data", "cifar10", "--data-dir", str(tmp_path / "missing")]) == 2
    assert capsys.readouterr().err == f"resnetlab data: error: --data-dir {tmp_path / 'missing'}: no such folder\n"
    assert main(["data", "svhn"]) == 2
    assert "unknown dataset 'svhn'; the datasets are cifar10, cifar100" in capsys.readouterr().err
    assert main(["data", "mnist", "--data-dir", str(tmp_path), "--no-download"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mnist not found: looked in" in err and "downloading is off" in err
