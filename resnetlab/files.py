"""Files written so that a crash never leaves half of one: ``atomic_write``; JSON lines read so that a torn
last line (power lost mid-write, a full disk) costs that line and not the run: ``read_jsonl``.

Every file resnetlab writes for a user to keep (checkpoints, exports, run records, cached decodes) goes
through ``atomic_write``. This module imports nothing of resnetlab's but ``errors``.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import UserError

__all__ = ["atomic_path", "atomic_write", "write_json", "read_jsonl", "sha256_file"]


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # a platform or file system without directory handles: the rename is all there is
        return
    try:
        os.fsync(fd)  # make the rename itself durable
    except OSError:
        pass
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` for a writer that wants a file name (safetensors, ONNX); when the
    block succeeds it is fsynced and renamed onto ``path``, otherwise removed.

    A crash or a kill at any moment leaves either the old file or the new one, never a torn one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(name)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(fd, 0o666 & ~umask)  # mkstemp makes 0600; the file gets what open() would have given
        os.close(fd)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    _fsync_dir(path.parent)


def atomic_write(path: str | Path, write: Callable[[Any], None], *, text: bool = False) -> Path:
    """Write ``path`` atomically: ``write(f)`` fills a temporary file beside it (binary, or text when
    ``text``), which is then fsynced and renamed onto ``path``."""
    with atomic_path(path) as tmp, open(tmp, "w" if text else "wb") as f:
        write(f)
    return Path(path)


def write_json(path: str | Path, data: Any, *, indent: int | None = 2) -> Path:
    """``data`` as JSON (one object, with a final newline), atomically."""
    return atomic_write(path, lambda f: f.write(json.dumps(data, indent=indent) + "\n"), text=True)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    """The records of a JSON-lines file. A last line that does not parse (a write cut short) is dropped with
    a warning; a bad line before the last is damage that is not ours to repair: a UserError."""
    path = Path(path)
    lines = [line for line in path.read_text(errors="replace").splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines):
                raise UserError(f"{path}: line {number} is not JSON; the file is damaged") from None
            warnings.warn(f"{path}: dropped a torn last line (a write cut short)", stacklevel=2)
    return records


def sha256_file(path: str | Path) -> str:
    """The SHA-256 of a file's bytes, read in 4 MiB blocks (a checkpoint need not fit in memory twice)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()
