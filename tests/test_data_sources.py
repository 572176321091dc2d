"""Finding datasets: the search order, the not-found error, downloads, and the verified archive."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
import tarfile
import urllib.error

import pytest

from resnetlab.data import load_dataset, locate, sources
from resnetlab.errors import UserError


def test_search_order_data_dir_then_env_then_system(data_env, tmp_path, monkeypatch, idx_folder):
    given, env, system = tmp_path / "given", tmp_path / "env", tmp_path / "system"
    for folder in (given / "fashion-mnist", env / "fashion-mnist", system):
        idx_folder(folder)
    spec = sources.SPECS["fashion-mnist"]
    monkeypatch.setitem(sources.SPECS, "fashion-mnist", dataclasses.replace(spec, system_dir=system))
    monkeypatch.setenv("RESNETLAB_DATA", str(env))
    assert locate("fashion-mnist", given).found_via == "--data-dir"
    assert locate("fashion-mnist").path == env / "fashion-mnist"
    monkeypatch.delenv("RESNETLAB_DATA")
    found = locate("fashion-mnist", download=False)
    assert (found.path, found.found_via, found.format) == (system, "system location", "idx")


def test_layouts_found_directly_and_in_subfolders(data_env, tmp_path, idx_folder, cifar_python, image_folder):
    idx_folder(tmp_path / "a" / "FashionMNIST" / "raw")  # torchvision's download layout
    assert locate("fashion-mnist", tmp_path / "a").path == tmp_path / "a" / "FashionMNIST" / "raw"
    idx_folder(tmp_path / "b", gz=False)  # uncompressed, directly in the folder
    assert locate("mnist", tmp_path / "b").path == tmp_path / "b"
    cifar_python(tmp_path / "c")
    assert locate("cifar10", tmp_path / "c").format == "cifar-python"
    image_folder(tmp_path / "d" / "cifar10-jpeg")
    assert locate("cifar10", tmp_path / "d").path == tmp_path / "d" / "cifar10-jpeg"
    image_folder(tmp_path / "e")  # an extracted copy given directly
    assert locate("cifar10", tmp_path / "e").format == "imagefolder"
    image_folder(tmp_path / "f", eval_split="val")
    assert locate("imagefolder", tmp_path / "f").path == tmp_path / "f"


def test_not_found_names_every_place_and_the_remedy(data_env, tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path))
    with pytest.raises(UserError) as err:
        locate("cifar10", empty, download=False)
    message = str(err.value)
    assert "\n" not in message
    for part in (
        str(empty),
        str(tmp_path),
        "cifar-10-batches-py/",
        "cifar10-jpeg.tar.gz",
        "downloading is off",
        "--data-dir",
        "RESNETLAB_DATA",
    ):
        assert part in message


def test_failed_download_is_one_line(data_env, monkeypatch):
    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")

    monkeypatch.setattr(torchvision.datasets, "CIFAR100", offline)
    with pytest.raises(UserError, match=r"the download failed \(.*Name or service not known.*\)") as err:
        locate("cifar100")
    assert "\n" not in str(err.value)
    assert (data_env / "downloads").is_dir()  # torchvision's root, inside the cache


def test_a_download_that_arrives_is_used(data_env, monkeypatch, cifar_python):
    import torchvision.datasets

    def fake_download(root, train, download):
        if train:
            cifar_python(sources.Path(root))  # what torchvision leaves: root/cifar-10-batches-py

    monkeypatch.setattr(torchvision.datasets, "CIFAR10", fake_download)
    found = locate("cifar10")
    assert (found.found_via, found.format) == ("download", "cifar-python")
    assert locate("cifar10", download=False).found_via == "download"  # found again without downloading


def test_user_mistakes(data_env, tmp_path, monkeypatch):
    with pytest.raises(UserError, match="unknown dataset 'cifar11'"):
        locate("cifar11")
    with pytest.raises(UserError, match=f"--data-dir {tmp_path / 'nope'}: no such folder"):
        locate("cifar10", tmp_path / "nope")
    monkeypatch.setenv("RESNETLAB_DATA", str(tmp_path / "gone"))
    with pytest.raises(UserError, match="RESNETLAB_DATA=.*gone: no such folder"):
        locate("cifar10")
    monkeypatch.delenv("RESNETLAB_DATA")
    with pytest.raises(UserError, match="imagefolder not found.*cannot be downloaded"):
        locate("imagefolder")


def _archive(path, image_root, extra: tarfile.TarInfo | None = None) -> str:
    with tarfile.open(path, "w:gz") as tar:
        tar.add(image_root, arcname="cifar10-jpeg")
        if extra is not None:
            tar.addfile(extra, io.BytesIO(b"x"))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_archive_verified_and_extracted_once_into_the_cache(data_env, tmp_path, monkeypatch, image_folder):
    made = image_folder(tmp_path / "src", classes=tuple(f"k{i}" for i in range(10)), counts={"train": 2, "test": 1})
    data = tmp_path / "data"
    data.mkdir()
    sha = _archive(data / "cifar10-jpeg.tar.gz", made["root"])
    spec = sources.SPECS["cifar10"]
    monkeypatch.setitem(sources.SPECS, "cifar10", dataclasses.replace(spec, archives={"cifar10-jpeg.tar.gz": sha}))
    data.chmod(0o555)  # like ../shared/data: nothing may be written beside the archive
    try:
        ds = load_dataset("cifar10", data, progress=False)
        assert (len(ds.train), len(ds.test), ds.classes[0]) == (20, 10, "k0")
        assert sorted(os.listdir(data)) == ["cifar10-jpeg.tar.gz"]
        extracted = list((data_env / "extracted").iterdir())
        assert len(extracted) == 1 and extracted[0].name == f"cifar10-jpeg-{sha[:12]}"
        hashed = []
        monkeypatch.setattr(sources, "sha256_of", lambda p: hashed.append(p) or sha)
        sources.extract_archive(data / "cifar10-jpeg.tar.gz", sha)
        assert hashed == []  # the marker says it is done: no second hash, no second extraction
    finally:
        data.chmod(0o755)


def test_archive_with_the_wrong_checksum_is_refused(data_env, tmp_path, image_folder):
    made = image_folder(tmp_path / "src")
    data = tmp_path / "data"
    data.mkdir()
    _archive(data / "cifar10-jpeg.tar.gz", made["root"])  # not the published archive
    with pytest.raises(UserError, match=r"cifar10-jpeg.tar.gz: sha256 \w+\.\.\. is not the published 1fab6e733a06cc26"):
        load_dataset("cifar10", data, progress=False)


def test_archive_with_an_unsafe_member_is_refused(data_env, tmp_path, image_folder):
    made = image_folder(tmp_path / "src")
    evil = tarfile.TarInfo("../escape.txt")
    evil.size = 1
    archive = tmp_path / "evil.tar.gz"
    sha = _archive(archive, made["root"], extra=evil)
    with pytest.raises(UserError, match="refusing the unsafe archive entry '../escape.txt'"):
        sources.extract_archive(archive, sha)
    assert not (data_env / "escape.txt").exists() and not (data_env / "extracted" / "escape.txt").exists()


def test_truncated_archive(data_env, tmp_path, image_folder):
    made = image_folder(tmp_path / "src")
    archive = tmp_path / "cut.tar.gz"
    _archive(archive, made["root"])
    archive.write_bytes(archive.read_bytes()[:200])
    sha = hashlib.sha256(archive.read_bytes()).hexdigest()
    with pytest.raises(UserError, match="cut.tar.gz: cannot unpack"):
        sources.extract_archive(archive, sha)
