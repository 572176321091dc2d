"""Every bad input gets a one-line error naming the file or folder, or is skipped and counted."""

from __future__ import annotations

import gzip
import logging
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from resnetlab.cli import main
from resnetlab.data import FileDataset, index_folder, load_dataset, read_image, verify_images
from resnetlab.data.decode import BadImage
from resnetlab.data.loaders import collate_skipping
from resnetlab.errors import UserError

TEN = tuple(f"k{i}" for i in range(10))


def png_header(path, width: int, height: int) -> None:
    """A valid PNG that claims ``width`` x ``height`` pixels: a decompression bomb's header, a few bytes long."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunks)


def _chunk(kind: bytes, data: bytes, crc: int | None = None) -> bytes:
    crc = zlib.crc32(kind + data) if crc is None else crc
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)


# Damaged PNG image streams behind a valid header. torchvision 0.29's libpng decoder kills the process on each
# (SIGSEGV after "libpng error: ..."), so read_image must never hand it one (issue 20, item 11).
CRAFTED_PNGS = ("short-idat", "idat-crc", "broken-zlib", "bad-filter")


def crafted_png(path, damage: str, size: int = 32):
    """A ``size`` x ``size`` RGB PNG, valid but for ``damage``: ``short-idat`` (a complete zlib stream of 60
    bytes where ``size * (1 + 3 * size)`` are due: an IDAT of 70-odd bytes, libpng's "Not enough image
    data"), ``idat-crc`` (the IDAT fails its CRC), ``broken-zlib`` (no deflate stream), ``bad-filter`` (a row's
    filter byte is 9). Returns ``path``."""
    rows = np.random.default_rng(0).integers(0, 256, (size, 1 + 3 * size), dtype=np.uint8)
    rows[:, 0] = 0  # filter type "none" on every row
    raw, crc = rows.tobytes(), None
    if damage == "short-idat":
        idat = zlib.compress(raw[:60])
    elif damage == "idat-crc":
        idat, crc = zlib.compress(raw), 1234
    elif damage == "broken-zlib":
        idat = b"\x78\x9c" + bytes(range(200))
    elif damage == "bad-filter":
        rows[size // 2, 0] = 9
        idat = zlib.compress(rows.tobytes())
    else:
        raise ValueError(damage)
    ihdr = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)  # 8-bit RGB, not interlaced
    body = _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat, crc) + _chunk(b"IEND", b"")
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + body)
    return path


def truncate(path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


@pytest.fixture
def cifar_folder(data_env, tmp_path, image_folder):
    return image_folder(tmp_path / "data", classes=TEN, counts={"train": 3, "test": 1})["root"]


def _one_line_error(match: str, *args, **kwargs) -> str:
    with pytest.raises(UserError, match=match) as err:
        load_dataset(*args, progress=False, **kwargs)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_folder(data_env, tmp_path):
    with pytest.raises(UserError, match=f"{tmp_path / 'nope'}: no such folder"):
        index_folder(tmp_path / "nope")


def test_missing_test_split_is_not_a_dataset(cifar_folder):
    import shutil

    shutil.rmtree(cifar_folder / "test")
    _one_line_error("cifar10 not found.*train/ \\+ test/ class folders", "cifar10", cifar_folder, download=False)


def test_class_folders_must_agree_across_splits(cifar_folder):
    (cifar_folder / "test" / "k9").rename(cifar_folder / "test" / "k99")
    _one_line_error(
        r"test: class folders differ from the training split's \(missing \['k9'\], extra \['k99'\]\)",
        "cifar10",
        cifar_folder,
    )


def test_wrong_number_of_classes(data_env, tmp_path, image_folder):
    image_folder(tmp_path, classes=("a", "b"))
    _one_line_error("train: 2 class folders; cifar10 has 10", "cifar10", tmp_path)


def test_empty_class_folder(cifar_folder, caplog):
    for f in (cifar_folder / "train" / "k4").iterdir():
        f.unlink()
    (cifar_folder / "train" / "k4" / "notes.txt").write_text("not an image")
    _one_line_error(f"{cifar_folder / 'train' / 'k4'}: empty class folder", "cifar10", cifar_folder)
    with caplog.at_level(logging.WARNING, logger="resnetlab.data"):
        ds = load_dataset("cifar10", cifar_folder, on_bad_image="skip", progress=False)
    assert ds.train.counts(10)[4] == 0 and ds.classes[4] == "k4" and len(ds.train) == 27  # labels still agree
    assert "skipped 1 empty class folder(s): k4" in caplog.text


def test_no_images_at_all(data_env, tmp_path):
    for split in ("train", "test"):
        (tmp_path / split / "cat").mkdir(parents=True)
        (tmp_path / split / "cat" / "readme.md").write_text("x")
    with pytest.raises(UserError, match="train: no images in any class folder"):
        index_folder(tmp_path / "train", on_bad_image="skip")
    with pytest.raises(UserError, match="cat: no class folders"):
        index_folder(tmp_path / "test" / "cat")


@pytest.mark.parametrize("name", ["0000.png", "0001.jpg"])
def test_truncated_image(cifar_folder, caplog, name):
    bad = cifar_folder / "train" / "k2" / name
    truncate(bad)
    message = _one_line_error("truncated or corrupt", "cifar10", cifar_folder)
    assert message.startswith(f"{bad}: ") and "on_bad_image='skip'" in message
    with caplog.at_level(logging.WARNING, logger="resnetlab.data"):
        ds = load_dataset("cifar10", cifar_folder, on_bad_image="skip", progress=False)
    assert (len(ds.train), ds.train.skipped, ds.train.counts(10)[2]) == (29, 1, 2)
    assert f"skipped 1 bad image(s) of 30 (first: {bad}" in caplog.text


def test_corrupt_file_and_wrong_size(cifar_folder):
    bad = cifar_folder / "test" / "k0" / "0000.png"
    bad.write_bytes(np.random.default_rng(0).bytes(500))
    _one_line_error(f"{bad}: not a readable image", "cifar10", cifar_folder)
    bad.unlink()
    Image.new("RGB", (40, 32)).save(bad)
    _one_line_error(f"{bad}: is 40x32, not 32x32 like the others .*image_size", "cifar10", cifar_folder)
    ds = load_dataset("cifar10", cifar_folder, on_bad_image="skip", progress=False)
    assert (len(ds.test), ds.test.skipped) == (9, 1)


@pytest.mark.parametrize("size", [(10_000, 10_000), (20_000, 20_000)])  # PIL's warning (> 89.5 Mpx) and error (2x)
def test_decompression_bomb(cifar_folder, size):
    bomb = cifar_folder / "train" / "k1" / "0002.png"
    png_header(bomb, *size)
    _one_line_error(f"{bomb}: decompression-bomb-sized image refused", "cifar10", cifar_folder)
    assert load_dataset("cifar10", cifar_folder, on_bad_image="skip", progress=False).train.skipped == 1


def _save(path, image: Image.Image, **kw) -> Image.Image:
    image.save(path, **kw)
    return image


@pytest.mark.parametrize(
    ("mode", "suffix", "make", "rgb", "gray"),
    [
        ("L", "png", lambda: Image.new("L", (4, 4), 200), (200, 200, 200), 200),
        ("LA", "png", lambda: Image.new("LA", (4, 4), (90, 0)), (90, 90, 90), 90),  # alpha dropped
        ("RGBA", "png", lambda: Image.new("RGBA", (4, 4), (255, 0, 0, 10)), (255, 0, 0), 76),
        ("P", "png", lambda: Image.new("RGB", (4, 4), (0, 0, 255)).convert("P"), (0, 0, 255), 29),
        ("CMYK", "jpg", lambda: Image.new("CMYK", (4, 4), (0, 255, 255, 0)), (255, 0, 0), 76),
        ("I;16", "png", lambda: Image.fromarray(np.full((4, 4), 51400, np.uint16)), (200, 200, 200), 200),
    ],
)
def test_unusual_modes_become_the_datasets_channels(tmp_path, mode, suffix, make, rgb, gray):
    path = tmp_path / f"x.{suffix}"
    image = make()
    if mode == "P":
        image.info["transparency"] = 0
    _save(path, image, quality=100)
    with Image.open(path) as check:
        assert check.mode == mode
    as_rgb, as_gray = read_image(path, 3), read_image(path, 1)
    assert as_rgb.shape == (3, 4, 4) and as_gray.shape == (1, 4, 4) and as_rgb.dtype == as_gray.dtype == torch.uint8
    assert (as_rgb[:, 0, 0].int() - torch.tensor(rgb)).abs().max() <= 2  # JPEG's CMYK rounding
    assert abs(int(as_gray[0, 0, 0]) - gray) <= 2


def test_unsupported_mode(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.zeros((4, 4), np.float32)).save(path)
    with pytest.raises(BadImage, match="floating-point"):
        read_image(path, 3)


def test_bad_idx_files(data_env, tmp_path, idx_folder):
    made = idx_folder(tmp_path / "mnist")
    images = made["folder"] / "train-images-idx3-ubyte.gz"
    truncate(images)
    _one_line_error(f"{images}: cannot read", "mnist", tmp_path)
    images.write_bytes(gzip.compress(b"\0\0\x08\x03" + struct.pack(">3I", 30, 28, 28) + b"\0" * 100))
    _one_line_error(r"truncated or padded \(100 bytes of data for shape \(30, 28, 28\)\)", "mnist", tmp_path)
    images.write_bytes(gzip.compress(b"\0\0\x0d\x03" + b"\0" * 20))
    _one_line_error("not an idx file of unsigned bytes with 3 dimension", "mnist", tmp_path)


def test_truncated_cifar_batch(data_env, tmp_path, cifar_python):
    made = cifar_python(tmp_path)
    truncate(made["folder"] / "data_batch_2")
    _one_line_error("data_batch_2: not a readable CIFAR python batch", "cifar10", tmp_path)
    (made["folder"] / "data_batch_2").unlink()
    _one_line_error("data_batch_2: missing", "cifar10", tmp_path)


def test_verify_images_before_training_and_skip_at_load_time(cifar_folder, caplog):
    truncate(cifar_folder / "train" / "k0" / "0001.jpg")
    truncate(cifar_folder / "train" / "k5" / "0000.png")
    png_header(cifar_folder / "train" / "k7" / "0002.png", 20_000, 20_000)
    index = index_folder(cifar_folder / "train")
    with pytest.raises(UserError, match=r"k0/0001.jpg: truncated \(no JPEG end-of-image marker\)"):
        verify_images(index, progress=False)
    with caplog.at_level(logging.WARNING, logger="resnetlab.data"):
        clean = verify_images(index, on_bad_image="skip", progress=False)
    assert len(clean.files) == 27 and "skipped 3 bad image(s) of 30" in caplog.text
    assert len(verify_images(index, full=True, on_bad_image="skip", progress=False).files) == 27

    strict = FileDataset(index)
    with pytest.raises(UserError, match="k5/0000.png: truncated or corrupt"):
        strict[index.files.index(cifar_folder / "train" / "k5" / "0000.png")]
    lenient = FileDataset(index, on_bad_image="skip")
    images, labels = collate_skipping([lenient[i] for i in range(6)])  # k0's three files and k1's
    assert images.shape == (5, 3, 32, 32) and labels.tolist() == [0, 0, 1, 1, 1]
    assert collate_skipping([None, None]) is None


def test_cli_bad_file_exits_2_with_one_line(cifar_folder, capsys):
    bad = cifar_folder / "train" / "k3" / "0001.jpg"
    truncate(bad)
    run = [sys.executable, "-m", "resnetlab", "data", "cifar10", "--data-dir", str(cifar_folder)]
    proc = subprocess.run(run, capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"resnetlab data: error: {bad}: truncated or corrupt")
    assert main(["data", "cifar10", "--data-dir", str(cifar_folder), "--skip-bad-images"]) == 0
    assert "splits: train 29, test 10; 1 bad image(s) skipped" in capsys.readouterr().out


def test_a_bad_file_met_in_a_loader_worker_is_still_one_line(cifar_folder):
    """A file that breaks after verification is met inside a DataLoader worker; PyTorch re-raises the
    UserError in the main process with the worker's traceback in its text, and the message keeps one line."""
    from resnetlab.errors import user_message

    index = index_folder(cifar_folder / "train")
    bad = cifar_folder / "train" / "k0" / "0001.jpg"
    truncate(bad)
    loader = torch.utils.data.DataLoader(FileDataset(index), batch_size=4, num_workers=1)
    with pytest.raises(UserError) as caught:
        list(loader)
    assert "Original Traceback" in str(caught.value)  # what PyTorch hands over
    message = user_message(caught.value)
    assert "\n" not in message and message.startswith(f"{bad}: truncated")
    assert user_message(UserError("plain message")) == "plain message"


# --- crafted PNGs (issue 20, item 11) ------------------------------------------------------------------------

DECODE_EACH = """
import sys
from pathlib import Path
from resnetlab.data import read_image
from resnetlab.data.decode import BadImage
for name in sys.argv[1:]:
    try:
        print(name, "decoded", tuple(read_image(Path(name), 3).shape))
    except BadImage as bad:
        print(name, "bad", bad.reason)
"""


def test_a_crafted_png_is_a_bad_image_not_a_crash(tmp_path):
    """Each damaged stream is decoded (PIL does not check an IDAT's CRC; the pixels are whole) or refused as a
    BadImage; before, the first one killed the process (exit -11, "libpng error: Not enough image data").
    Run in a child process so that a crash fails this test and not the whole session."""
    paths = [str(crafted_png(tmp_path / f"{damage}.png", damage)) for damage in CRAFTED_PNGS]
    proc = subprocess.run([sys.executable, "-c", DECODE_EACH, *paths], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    outcome = dict(line.split(" ", 2)[:2] for line in proc.stdout.splitlines())
    assert outcome == {
        paths[0]: "bad",  # short IDAT
        paths[1]: "decoded",  # a wrong IDAT CRC alone: the image data is complete
        paths[2]: "bad",
        paths[3]: "bad",
    }, proc.stdout
    assert "truncated or corrupt" in proc.stdout


def test_a_png_with_a_short_idat_is_refused_or_skipped_like_any_bad_image(cifar_folder):
    """``data`` (and ``train``, which decodes the same way) on a class folder holding the crafted file: exit 2
    with one line naming it, or under --skip-bad-images the file is counted and left out (before: exit 139)."""
    bad = crafted_png(cifar_folder / "train" / "k3" / "0002.png", "short-idat")
    run = [sys.executable, "-m", "resnetlab", "data", "cifar10", "--data-dir", str(cifar_folder), "--no-download"]
    proc = subprocess.run(run, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith(f"resnetlab data: error: {bad}: truncated or corrupt")
    proc = subprocess.run([*run, "--skip-bad-images"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "splits: train 29, test 10; 1 bad image(s) skipped" in proc.stdout  # 0002.png was replaced


def test_a_png_decodes_to_the_same_pixels_through_pil(tmp_path):
    """PNG goes through PIL now: an RGB and a grayscale PNG give their exact pixels, in both channel counts
    (grayscale from RGB by ITU-R 601-2 luma, as for every other format)."""
    rng = np.random.default_rng(3)
    rgb, gray = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8), rng.integers(0, 256, (5, 7), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(gray).save(tmp_path / "gray.png")
    assert torch.equal(read_image(tmp_path / "rgb.png", 3), torch.from_numpy(rgb).permute(2, 0, 1))
    assert torch.equal(read_image(tmp_path / "gray.png", 1), torch.from_numpy(gray)[None])
    assert torch.equal(read_image(tmp_path / "gray.png", 3), torch.from_numpy(gray)[None].expand(3, 5, 7))
    luma = np.asarray(Image.fromarray(rgb).convert("L"))
    assert torch.equal(read_image(tmp_path / "rgb.png", 1), torch.from_numpy(luma)[None])
