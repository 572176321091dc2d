"""The on-disk cache: where it lives, how an entry is keyed to its source, and atomic tensor files.

Layout under ``$RESNETLAB_CACHE`` (default ``~/.cache/resnetlab``)::

    decoded/<dataset>-<where8>/<split>-<key16>.safetensors   uint8 images (N, C, H, W), int64 labels
    extracted/<archive stem>-<sha12>/                         archives, verified and unpacked once
    downloads/                                                torchvision's download root
    stats/<what>-<key16>.safetensors                          mean images and colour statistics

Every entry's key hashes the source files' relative paths, sizes and modification times together with the
options that change the content, so an edited, added or removed source file gives a new key (a stale entry
is simply never read again, and is removed when its replacement is written). Files hold plain tensors
(safetensors) plus string metadata: reading the cache never unpickles anything.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..errors import UserError
from ..files import atomic_path

__all__ = ["cache_root", "fingerprint", "file_key", "save_tensors", "load_tensors", "sha256_of"]

# Bump when the decoded content for the same source changes (a new conversion rule, a new layout).
CACHE_VERSION = 1


def cache_root() -> Path:
    """``$RESNETLAB_CACHE`` if set, else ``~/.cache/resnetlab``; created on first use."""
    root = Path(os.environ.get("RESNETLAB_CACHE") or Path.home() / ".cache" / "resnetlab").expanduser()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"cannot create the cache folder {root} ({err.strerror}); set RESNETLAB_CACHE") from err
    return root


def file_key(files: Iterable[Path], base: Path | None = None) -> list[str]:
    """One ``relpath<TAB>size<TAB>mtime_ns`` line per file: what the cache key is computed from."""
    lines = []
    for path in files:
        name = path.relative_to(base).as_posix() if base is not None else path.name
        try:
            st = path.stat()
        except OSError as err:  # a dangling link or a link loop: decoding reports (or skips) the file itself
            lines.append(f"{name}\tunreadable ({err.strerror})")
            continue
        lines.append(f"{name}\t{st.st_size}\t{st.st_mtime_ns}")
    return lines


def fingerprint(lines: Iterable[str], **options: object) -> str:
    """The sha256 (hex) of the source description and the options that change the cached content."""
    h = hashlib.sha256()
    h.update(json.dumps({"version": CACHE_VERSION, **options}, sort_keys=True, default=str).encode())
    for line in lines:
        h.update(line.encode("utf-8", "surrogateescape"))
        h.update(b"\n")
    return h.hexdigest()


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def save_tensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, object]) -> None:
    """Write ``tensors`` atomically (temp file + rename) and remove older entries of the same stem.

    ``path`` is named ``<stem>-<key16>.safetensors``; siblings ``<stem>-*.safetensors`` are stale versions.
    Metadata values are stored as JSON strings.
    """
    contiguous = {k: v.contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        save_file(contiguous, str(tmp), metadata={k: json.dumps(v) for k, v in metadata.items()})
    stem = path.name.rsplit("-", 1)[0]
    stale = re.compile(re.escape(stem) + r"-[0-9a-f]{16}\.safetensors")
    for old in path.parent.iterdir():
        if old != path and stale.fullmatch(old.name):
            old.unlink(missing_ok=True)


def load_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
    """The tensors and metadata of a cache file, or None when it is missing or unreadable (then rebuilt)."""
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = {k: json.loads(v) for k, v in (f.metadata() or {}).items()}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception:  # a truncated or foreign file in the cache is rebuilt, never trusted
        return None
    return tensors, metadata
