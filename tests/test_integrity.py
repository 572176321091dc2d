"""Nothing poisoned: damaged, empty or malformed checkpoints and exports, non-finite weights: one line each.

torch.load does not check the CRC-32 of a checkpoint's zip entries and a safetensors file has no checksum
of its own, so a flipped bit in a weight used to give confident nonsense ("100.00% airplane"). Each case
here is refused by the readers (``load_checkpoint``, ``read_bundle``) and by the commands (exit 2, one line
naming the file, no traceback).
"""

from __future__ import annotations

import math
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from resnetlab.checkpoint import (
    NETWORK_KEYS,
    TRAINING_KEYS,
    load_checkpoint,
    nonfinite_tensors,
    read_iteration,
    save_checkpoint,
)
from resnetlab.cli import main
from resnetlab.deploy import export_model, read_bundle
from resnetlab.deploy.export import _runner
from resnetlab.errors import UserError
from resnetlab.files import sha256_file

from test_eval import make_checkpoint, write_val_folder


@pytest.fixture
def checkpoint(tmp_path):
    return make_checkpoint(tmp_path / "ckpt.pt", data_dir=write_val_folder(tmp_path / "imagenet"))


@pytest.fixture
def image(tmp_path, checkpoint):
    return next((tmp_path / "imagenet" / "val" / "cat").iterdir())


def largest_entry(path: Path) -> tuple[str, int, int]:
    """The largest member of a zip archive (a tensor's data in a torch file): name, data offset, size."""
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    with open(path, "rb") as f:
        f.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
        name_len, extra_len = int.from_bytes(f.read(2), "little"), int.from_bytes(f.read(2), "little")
    assert info.compress_type == zipfile.ZIP_STORED  # torch.save stores entries: the bytes are the tensor's
    return info.filename, info.header_offset + 30 + name_len + extra_len, info.file_size


def flip(path: Path, offset: int, mask: int = 0x40) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= mask
    path.write_bytes(bytes(data))


def flip_in_zip(path: Path) -> str:
    """Flip one bit in the middle of the largest data entry; returns the entry's name."""
    name, start, size = largest_entry(path)
    flip(path, start + size // 2 + 1)  # the exponent byte of a float32 is a large change; any bit is damage
    return name


def flip_in_safetensors(path: Path) -> None:
    """Flip one bit in the middle of the tensor data (after the 8-byte length and the JSON header)."""
    data = path.read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")
    flip(path, start + (len(data) - start) // 2 + 1)


def assert_one_line_exit_2(argv: list[str], capsys, *needles: str) -> str:
    assert main(argv) == 2, argv
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    return err


def test_a_flipped_bit_in_a_checkpoint_is_refused(checkpoint, image, tmp_path, capsys):
    entry = flip_in_zip(checkpoint)
    with pytest.raises(UserError, match=rf"{checkpoint}.*damaged.*{entry}") as info:
        load_checkpoint(checkpoint)
    assert "\n" not in str(info.value)
    with pytest.raises(UserError, match="damaged"):
        read_bundle(checkpoint)
    assert_one_line_exit_2(["predict", "--checkpoint", str(checkpoint), str(image)], capsys, str(checkpoint), entry)
    argv = ["eval", "--checkpoint", str(checkpoint), "--workers", "0", "--out", str(tmp_path / "e")]
    assert_one_line_exit_2(argv, capsys, str(checkpoint), "damaged")


def test_a_flipped_bit_in_a_safetensors_export_is_refused(checkpoint, image, tmp_path, capsys):
    out = tmp_path / "model.safetensors"
    export_model(checkpoint, "safetensors", out)
    flip_in_safetensors(out)
    with pytest.raises(UserError, match=rf"{out}.*checksum") as info:
        read_bundle(out)
    assert "\n" not in str(info.value)
    assert_one_line_exit_2(["predict", "--checkpoint", str(out), str(image)], capsys, str(out), "checksum")
    argv = ["eval", "--checkpoint", str(out), "--workers", "0", "--out", str(tmp_path / "e")]
    assert_one_line_exit_2(argv, capsys, str(out), "checksum")


def without_checksum(path: Path, out: Path, edit=None) -> Path:
    """``path`` rewritten as an export written before the checksum existed (optionally with edited tensors)."""
    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.pop("sha256")
    if edit is not None:
        edit(tensors)
    save_file(tensors, str(out), metadata=meta)
    return out


def test_an_export_without_a_checksum_is_still_read(checkpoint, tmp_path):
    new = tmp_path / "model.safetensors"
    export_model(checkpoint, "safetensors", new)
    with safe_open(str(new), framework="pt") as f:
        assert len(f.metadata()["sha256"]) == 64  # a new export carries the checksum
    old = without_checksum(new, tmp_path / "old.safetensors")
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(read_bundle(old).model(x), read_bundle(new).model(x))


def test_a_damaged_torchscript_export_is_refused_by_the_exports_check(checkpoint, tmp_path):
    out = tmp_path / "model.pt"
    export_model(checkpoint, "torchscript", out)
    written = sha256_file(out)  # what export wrote; the damage comes after
    entry = flip_in_zip(out)
    with pytest.raises(UserError, match=rf"{out}.*damaged.*{entry}"):
        _runner("torchscript", out, written)


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_non_finite_weights_are_refused_for_inference(checkpoint, image, tmp_path, capsys, value):
    state = load_checkpoint(checkpoint)
    state["model"]["layer1.0.conv2.weight"][0, 0, 0, 0] = value
    save_checkpoint(state, checkpoint)
    message = "layer1.0.conv2.weight"
    with pytest.raises(UserError, match=rf"{checkpoint}.*non-finite.*{message}"):
        read_bundle(checkpoint)
    assert_one_line_exit_2(["predict", "--checkpoint", str(checkpoint), str(image)], capsys, str(checkpoint), message)
    argv = ["eval", "--checkpoint", str(checkpoint), "--workers", "0", "--out", str(tmp_path / "e")]
    assert_one_line_exit_2(argv, capsys, str(checkpoint), message)
    argv = ["export", "--checkpoint", str(checkpoint), "--format", "safetensors", "--out", str(tmp_path / "m")]
    assert_one_line_exit_2(argv, capsys, message)
    assert not (tmp_path / "m").exists()


def test_finite_weights_whose_scores_overflow_are_refused_for_inference(checkpoint, image, tmp_path, capsys):
    """Every tensor finite, but the fc's weights so large that the logits overflow float32 (what a step at
    lr 1e6 leaves): predict and eval refuse instead of printing nan% with exit 0."""
    state = load_checkpoint(checkpoint)
    state["model"]["fc.weight"].fill_(3e38)
    save_checkpoint(state, checkpoint)
    read_bundle(checkpoint)  # the file itself is sound
    assert_one_line_exit_2(["predict", "--checkpoint", str(checkpoint), str(image)], capsys, "NaN or infinite")
    argv = ["eval", "--checkpoint", str(checkpoint), "--workers", "0", "--out", str(tmp_path / "e")]
    assert_one_line_exit_2(argv, capsys, "NaN or infinite")


def test_non_finite_weights_in_an_export_are_refused(checkpoint, image, tmp_path, capsys):
    good = tmp_path / "model.safetensors"
    export_model(checkpoint, "safetensors", good)

    def poison(tensors: dict[str, torch.Tensor]) -> None:
        tensors["fc.bias"][1] = math.nan

    bad = without_checksum(good, tmp_path / "nan.safetensors", poison)
    assert_one_line_exit_2(["predict", "--checkpoint", str(bad), str(image)], capsys, str(bad), "fc.bias")


def test_nonfinite_tensors_names_every_bad_tensor_of_a_nested_state():
    state = {
        "model": {"a": torch.ones(2), "b": torch.tensor([1.0, math.nan])},
        "optimizer": {"state": {0: {"momentum_buffer": torch.tensor([math.inf])}}, "param_groups": [{"lr": 0.1}]},
        "steps": torch.arange(3),  # integers are always finite
        "iteration": 7,
    }
    assert nonfinite_tensors(state) == ["model.b", "optimizer.state.0.momentum_buffer"]
    assert nonfinite_tensors({"model": {"a": torch.ones(2)}}) == []


HUGE = (1 << 62).to_bytes(8, "little") + b'{"__metadata__": {}}'


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("empty.safetensors", b"", "is empty (0 bytes)"),
        ("empty.pt", b"", "is empty (0 bytes)"),
        ("huge.safetensors", HUGE, "huge.safetensors"),
        ("huge.pt", HUGE, "huge.pt"),
    ],
    ids=["empty.safetensors", "empty.pt", "huge.safetensors", "huge.pt"],
)
def test_empty_or_malformed_files_are_one_line_errors(tmp_path, image, capsys, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    assert_one_line_exit_2(["predict", "--checkpoint", str(path), str(image)], capsys, str(path), message)
    argv = ["eval", "--checkpoint", str(path), "--workers", "0", "--out", str(tmp_path / "e")]
    assert_one_line_exit_2(argv, capsys, str(path), message)


def test_large_finite_values_are_not_mistaken_for_non_finite_ones():
    big = torch.full((4,), 3e38)  # finite, but their float32 sum overflows to inf
    assert nonfinite_tensors({"w": big, "h": big.half().clamp(max=6e4)}) == []


def test_a_checkpoints_iteration_is_read_with_the_same_checks(tmp_path):
    """``read_iteration`` leaves the tensors in the file, not unchecked: a flipped bit in one is refused, and so
    is a checkpoint without what a resume needs."""
    state = {key: {} for key in NETWORK_KEYS + TRAINING_KEYS} | {"model": {"w": torch.ones(4096)}, "iteration": 7}
    last = save_checkpoint(state, tmp_path / "last.pt")
    assert read_iteration(last) == 7
    entry = flip_in_zip(last)
    with pytest.raises(UserError, match=rf"damaged.*{entry}"):
        read_iteration(last)
    partial = save_checkpoint({"model": {}, "iteration": 7}, tmp_path / "partial.pt")
    with pytest.raises(UserError, match="not a resnetlab training checkpoint"):
        read_iteration(partial)
