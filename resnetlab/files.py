"""Files written so that a crash never leaves half of one: ``atomic_write``; JSON lines read so that a torn
last line (power lost mid-write, a full disk) costs that line and not the run: ``read_jsonl``; one writer at a
time in a folder (a run directory, the campaign's carry): ``lock_folder``.

Every file resnetlab writes for a user to keep (checkpoints, exports, run records, cached decodes) goes
through ``atomic_write``. This module imports nothing of resnetlab's but ``errors``.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import tempfile
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from .errors import UserError

__all__ = [
    "FolderInUse",
    "atomic_path",
    "atomic_write",
    "lock_folder",
    "write_json",
    "read_jsonl",
    "replace_section",
    "sha256_file",
]

LOCK_FILE = ".lock"


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


def replace_section(path: str | Path, text: str, begin: str, end: str, *, before: str) -> Path:
    """Put ``text`` (which starts with the marker ``begin`` and ends with ``end``) into the page at ``path`` in
    place of the section between those markers, or, the first time, before the heading ``before`` (at the end
    without it); written atomically. The results page's generated sections are drawn this way."""
    page = Path(path).read_text()
    if begin in page and end in page:
        page = page[: page.index(begin)] + text + page[page.index(end) + len(end) :]
    else:
        at = page.index(before) if before in page else len(page)
        page = page[:at] + text + "\n\n" + page[at:]
    return atomic_write(path, lambda f: f.write(page), text=True)


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


class FolderInUse(UserError):
    """Another process holds the folder's lock; ``holder`` is the line it wrote into the lock file."""

    def __init__(self, folder: Path, holder: str) -> None:
        super().__init__(f"{folder} is in use by {holder}")
        self.folder, self.holder = folder, holder


def lock_folder(folder: str | Path, holder: str) -> IO[str]:
    """Take ``folder``'s lock, ``folder/.lock`` (the folder made if need be): an OS lock (``flock``) held as long
    as the returned handle is open, and dropped when this process dies, so a kill -9 never leaves the folder
    locked. ``holder`` (what the process is) goes into the file with its pid, for the next one to be told who.
    Another holder, in this process or another: ``FolderInUse``; a folder that cannot be made: ``OSError``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    handle = open(folder / LOCK_FILE, "a+")  # held open: the lock lives as long as the handle
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        found = handle.read().strip() or "another process"
        handle.close()
        raise FolderInUse(folder, found) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{holder} (pid {os.getpid()} on {platform.node()})\n")
    handle.flush()
    return handle
