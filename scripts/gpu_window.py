"""What a GPU window sends and gives back, in bytes, and how its carry comes home (``scripts/gpu_campaign.sh``).

A window's machine receives the working tree (tracked and untracked-not-ignored files) and the carried
``.gpu`` folder, at most ``SEND_LIMIT``; it gives back at most ``RETURN_FILES`` files from its output folder,
each at most ``RETURN_FILE_BYTES``, ``RETURN_LIMIT`` in all. The window packs its carry there after every
carry of the campaign: ``campaign/`` whole (records, the unfinished runs' checkpoints) and only the files of
``weights/`` it wrote (the rest is here already), as tar parts and a ``manifest.json`` naming each part's
bytes and sha256, the window and its commit, and the ``campaign/`` it started from. The manifest is renamed
into place last, so a window killed at any moment leaves the last complete pack beside it.

Landing checks everything before it touches anything: the manifest, every part's sha256, that this
repository's ``campaign/`` is the one the window started from, and every member of the tar (regular files
and folders under ``campaign/`` and ``weights/`` only: no links, devices, absolute or ``..`` paths). The
members are written into a folder under ``.gpu/`` and swapped in with two renames; on any error the old
state stays and one line says why (exit 2).

    python scripts/gpu_window.py sent                 here: what the window would receive; exit 2 over the limit
    python scripts/gpu_window.py start                on the machine: note the window and its starting state
    python scripts/gpu_window.py pack OUT             on the machine: the carry into OUT, within the limits
    python scripts/gpu_window.py land DIR             here: check DIR's pack, then swap campaign/ and weights/

Only the standard library: it runs before anything is installed on the machine.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import secrets
import shutil
import stat
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

MiB = 2**20
SEND_LIMIT = 64 * MiB  # the working tree and the carried paths, together
RETURN_FILES = 8  # files that come back from the output folder ...
RETURN_FILE_BYTES = 16 * MiB  # ... each at most this ...
RETURN_LIMIT = 64 * MiB  # ... and this in all
PART_BYTES = 15 * MiB  # a tar part: a margin under RETURN_FILE_BYTES
LOG_ROOM = 1 * MiB  # kept for window.log, which grows after the pack (progress every 15 s: a few kB)
MANIFEST_ROOM = 64 * 1024
FORMAT = "resnetlab-gpu-window-1"
MANIFEST, LOG = "manifest.json", "window.log"
CARRIED = ("campaign", "weights")  # the only folders a pack may hold
STATE = Path(".gpu/window.json")  # on the machine: the window's identity and the state it started from


class WindowError(Exception):
    """A refusal: one line, exit 2, nothing touched."""


@dataclass(frozen=True)
class Budget:
    """What may come back from the output folder (the device tool's limits)."""

    files: int = RETURN_FILES
    file_bytes: int = RETURN_FILE_BYTES
    total: int = RETURN_LIMIT
    part_bytes: int = PART_BYTES


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(MiB), b""):
            digest.update(block)
    return digest.hexdigest()


def _files(folder: Path) -> list[Path]:
    """The regular files under ``folder`` (links and anything else skipped), sorted."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if stat.S_ISREG(p.lstat().st_mode))


def tree_digest(folder: Path) -> str:
    """One sha256 over the relative paths and contents of ``folder``'s regular files."""
    digest = hashlib.sha256()
    for path in _files(folder):
        digest.update(f"{path.relative_to(folder).as_posix()}\0{sha256(path)}\n".encode())
    return digest.hexdigest()


def _mib(n: int) -> str:
    return f"{n / MiB:.1f} MiB" if n >= MiB // 10 else f"{n:,} bytes"


# -- sent: what the window's machine receives -------------------------------------------------------------


def sent_bytes(root: Path, carry: list[str]) -> dict[str, int]:
    """Bytes the device tool sends, by top-level folder: the files git tracks or would track (ignored ones
    stay here) and the carried paths."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    sizes: dict[str, int] = {}
    paths = [root / name for name in listed.split("\0") if name]
    for name in carry:
        paths += _files(root / name) if (root / name).is_dir() else [root / name]
    for path in set(paths):
        try:
            size = path.lstat().st_size
        except FileNotFoundError:  # tracked, deleted here: not sent
            continue
        top = path.relative_to(root).parts[0]
        top = f"{top}/" if (root / top).is_dir() else "files at the top"
        sizes[top] = sizes.get(top, 0) + size
    return dict(sorted(sizes.items(), key=lambda kv: -kv[1]))


def check_sent(root: Path, carry: list[str], limit: int = SEND_LIMIT) -> str:
    sizes = sent_bytes(root, carry)
    total = sum(sizes.values())
    parts = ", ".join(f"{name} {_mib(n)}" for name, n in list(sizes.items())[:5])
    line = f"the window receives {_mib(total)} of {_mib(limit)}: {parts}"
    if total > limit:
        raise WindowError(f"{line}; over the limit, the call would be refused: commit less or carry less")
    return line


# -- on the machine: start and pack -----------------------------------------------------------------------


def start(root: Path, commit: str | None) -> dict:
    """Note the window's identity, its commit and the state it starts from (``STATE``)."""
    weights = root / "weights"
    state = {
        "window": time.strftime("%Y%m%dT%H%M%SZ", time.gmtime()) + "-" + secrets.token_hex(4),
        "commit": commit,
        "base": tree_digest(root / "campaign"),
        "weights": {p.name: sha256(p) for p in _files(weights) if p.parent == weights},
    }
    (root / STATE).parent.mkdir(parents=True, exist_ok=True)
    (root / STATE).write_text(json.dumps(state, indent=2))
    return state


def _snapshot(root: Path, state: dict) -> list[Path]:
    """What a pack holds: campaign/'s files, and the files of weights/ that differ from the window's start."""
    weights = root / "weights"
    changed = [p for p in _files(weights) if p.parent == weights and state["weights"].get(p.name) != sha256(p)]
    return _files(root / "campaign") + changed


def _signature(root: Path, files: list[Path]) -> list[tuple[str, int, int]]:
    return [(str(p.relative_to(root)), p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def _write_tar(root: Path, files: list[Path], target: Path) -> None:
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for path in files:
            info = tar.gettarinfo(path, arcname=path.relative_to(root).as_posix())
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mode = 0o644
            with path.open("rb") as f:
                tar.addfile(info, f)


def pack(root: Path, out: Path, budget: Budget = Budget()) -> dict:
    """Pack the carry into ``out`` (see the module's docstring); returns the manifest. Refused (the previous
    pack kept) when it would not come back whole."""
    state = json.loads((root / STATE).read_text())
    previous = _read_manifest(out) if (out / MANIFEST).is_file() else None
    with tempfile.TemporaryDirectory(prefix="gpu-pack-") as staging:
        whole = Path(staging) / "carry.tar"
        for _ in range(3):  # the campaign carries at its own moments: a snapshot that changed under us is retried
            files = _snapshot(root, state)
            before = _signature(root, files)
            _write_tar(root, files, whole)
            if _signature(root, _snapshot(root, state)) == before:
                break
        else:
            raise WindowError("campaign/ kept changing while it was packed; the previous pack stays")
        content = sha256(whole)
        if previous and previous.get("content") == content:
            return previous  # nothing carried since
        size, log = whole.stat().st_size, (out / LOG).stat().st_size if (out / LOG).is_file() else 0
        n_parts = max(1, -(-size // budget.part_bytes))
        room = budget.total - LOG_ROOM - log - MANIFEST_ROOM
        if n_parts > budget.files - 2 or size > room or budget.part_bytes > budget.file_bytes:
            raise WindowError(
                f"the carry is {_mib(size)} ({len(files)} files), {n_parts} parts of {_mib(budget.part_bytes)}: "
                f"more than comes back ({budget.files} files beside {LOG} and {MANIFEST}, {_mib(room)} in all); "
                "the previous pack stays"
            )
        number = (previous or {}).get("pack", 0) + 1
        parts = []
        with whole.open("rb") as f:
            for i in range(n_parts):
                name = f"carry-{number}.tar.part-{i}"
                data = f.read(budget.part_bytes)
                local = Path(staging) / name
                local.write_bytes(data)
                parts.append({"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})
                shutil.move(local, out / name)  # new names: the previous pack stays whole meanwhile
    manifest = {
        "format": FORMAT,
        "window": state["window"],
        "commit": state["commit"],
        "base": state["base"],
        "pack": number,
        "packed": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "content": content,
        "parts": parts,
        "files": [p.relative_to(root).as_posix() for p in files],
    }
    text = json.dumps(manifest, indent=1)
    with (out / (MANIFEST + ".new")).open("w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(out / (MANIFEST + ".new"), out / MANIFEST)  # the pack is complete from here on
    keep = {p["name"] for p in parts}
    for old in out.glob("carry-*.tar.part-*"):
        if old.name not in keep:
            old.unlink()
    return manifest


# -- here: land ------------------------------------------------------------------------------------------


def _regular(path: Path, what: str) -> None:
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        raise WindowError(f"{what} {path} is missing") from None
    if not stat.S_ISREG(mode):
        raise WindowError(f"{what} {path} is not a regular file")


def _read_manifest(folder: Path) -> dict:
    _regular(folder / MANIFEST, "the manifest")
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
    except (ValueError, UnicodeDecodeError):
        raise WindowError(f"{folder / MANIFEST} is not a window's manifest (not JSON)") from None
    keys = {"window": str, "base": str, "pack": int, "content": str, "parts": list, "files": list}
    shaped = isinstance(manifest, dict) and manifest.get("format") == FORMAT
    shaped = shaped and all(isinstance(manifest.get(k), t) for k, t in keys.items()) and bool(manifest["parts"])
    part = {"name": str, "bytes": int, "sha256": str}
    if not shaped or not all(isinstance(p, dict) and all(isinstance(p.get(k), t) for k, t in part.items())
                             for p in manifest["parts"]):  # fmt: skip
        raise WindowError(f"{folder / MANIFEST} is not a window's manifest ({FORMAT})")
    return manifest


def verify(folder: Path) -> dict:
    """The manifest, once every part it names is here with its bytes and sha256."""
    manifest = _read_manifest(folder)
    for part in manifest["parts"]:
        name = part["name"]
        if PurePosixPath(name).name != name or not name.startswith("carry-"):
            raise WindowError(f"the manifest names a part {name!r} outside {folder}")
        _regular(folder / name, "the part")
        if (folder / name).stat().st_size != part["bytes"] or sha256(folder / name) != part["sha256"]:
            raise WindowError(
                f"{folder / name} is not the part window {manifest['window']} packed (its sha256 differs); "
                "nothing landed"
            )
    whole = hashlib.sha256()
    for part in manifest["parts"]:
        whole.update((folder / part["name"]).read_bytes())
    if whole.hexdigest() != manifest["content"]:
        raise WindowError(
            f"the parts in {folder} are not the whole pack window {manifest['window']} made; nothing landed"
        )
    return manifest


class _Parts(io.RawIOBase):
    """The parts read one after another as one stream."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths, self.f = list(paths), None

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        while True:
            if self.f is None:
                if not self.paths:
                    return 0
                self.f = self.paths.pop(0).open("rb")
            n = self.f.readinto(buffer)
            if n:
                return n
            self.f.close()
            self.f = None


def member_path(member: tarfile.TarInfo) -> PurePosixPath:
    """The member's path if a pack may hold it: a regular file or folder under campaign/ or weights/ (a file
    of weights/ at its top), relative, without ``..``; else a WindowError naming it."""
    name = member.name
    path = PurePosixPath(name)
    kind = "file" if member.isreg() else "folder" if member.isdir() else None
    if kind is None:
        what = "link" if member.issym() or member.islnk() else "device or special file"
        raise WindowError(f"the pack holds a {what} {name!r}; a pack holds regular files only; nothing landed")
    if path.is_absolute() or "\\" in name or any(part in ("", ".", "..") for part in name.rstrip("/").split("/")):
        raise WindowError(f"the pack holds a path {name!r} that is not plainly inside the repository; nothing landed")
    top_file = member.isreg() and len(path.parts) < 2
    if path.parts[0] not in CARRIED or top_file or (path.parts[0] == "weights" and len(path.parts) > 2):
        raise WindowError(f"the pack holds {name!r}, outside campaign/ and weights/; nothing landed")
    return path


def land(root: Path, folder: Path, *, any_base: bool = False) -> str:
    """Check ``folder``'s pack, then make it this repository's campaign/ and add its files to weights/."""
    manifest = verify(folder)
    base = tree_digest(root / "campaign")
    if manifest["base"] != base and not any_base:
        raise WindowError(
            f"window {manifest['window']} started from another campaign/ than this one (a window or a carry "
            "landed here since): landing it would undo that; nothing landed (GPU_LAND_ANY_BASE=1 lands it anyway)"
        )
    (root / ".gpu").mkdir(exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="landing-", dir=root / ".gpu"))  # beside the repository: renames
    try:
        new = work / "new"
        parts = [folder / p["name"] for p in manifest["parts"]]
        with tarfile.open(fileobj=io.BufferedReader(_Parts(parts)), mode="r|") as tar:
            for member in tar:
                target = new.joinpath(*member_path(member).parts)
                if member.isdir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                if target.exists():
                    raise WindowError(f"the pack holds {member.name!r} twice; nothing landed")
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with target.open("xb") as f:
                    shutil.copyfileobj(source, f)
                    if f.tell() != member.size:  # a stream that ends early reads short, without an error
                        raise tarfile.ReadError(f"{member.name} ends after {f.tell()} of {member.size} bytes")
        if not (new / "campaign").is_dir():
            raise WindowError("the pack holds no campaign/; nothing landed")
        landed = sorted(str(p.relative_to(new)) for p in _files(new))
        if landed != sorted(manifest["files"]):
            raise WindowError("the pack's files are not the ones its manifest lists; nothing landed")
        if (folder / LOG).is_file() and not (folder / LOG).is_symlink():
            shutil.copyfile(folder / LOG, new / "campaign" / "last-window.log")
        (new / "weights").mkdir(exist_ok=True)
        for old in _files(root / "weights"):
            if old.parent == root / "weights" and not (new / "weights" / old.name).exists():
                shutil.copy2(old, new / "weights" / old.name)  # weights/ gains what the window wrote
        before = sum(p.stat().st_size for name in CARRIED for p in _files(root / name))
        _swap(root, new, work / "old")
        after = sum(p.stat().st_size for name in CARRIED for p in _files(root / name))
    except (tarfile.TarError, EOFError) as err:
        raise WindowError(f"the parts in {folder} do not make a whole tar ({err}); nothing landed") from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    weights = [f for f in manifest["files"] if f.startswith("weights/")]
    commit = manifest.get("commit") or "unknown"
    if not _known_commit(root, commit):
        commit += ", a commit this repository does not have"
    return (
        f"landed window {manifest['window']} (commit {commit}, pack {manifest['pack']}): campaign/ "
        f"{'and ' + ', '.join(weights) if weights else '(no new weights)'}; campaign/ and weights/ went from "
        f"{before / 1000:.0f} kB to {after / 1000:.0f} kB"
    )


def _known_commit(root: Path, commit: str) -> bool:
    try:
        found = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=root, capture_output=True)
    except OSError:
        return False
    return found.returncode == 0


def _swap(root: Path, new: Path, old: Path) -> None:
    """campaign/ and weights/ from ``new`` into ``root`` by renames; the old ones back if a rename fails."""
    old.mkdir()
    done = []
    try:
        for name in CARRIED:
            if (root / name).exists():
                os.rename(root / name, old / name)
            done.append(name)
            os.rename(new / name, root / name)
    except OSError:
        for name in reversed(done):
            if (root / name).exists():
                os.rename(root / name, new / name)
            if (old / name).exists():
                os.rename(old / name, root / name)
        raise


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="verb", required=True)
    p = sub.add_parser("sent", help="what the window's machine would receive, against SEND_LIMIT")
    p.add_argument("--carry", nargs="*", default=[".gpu"])
    p = sub.add_parser("start", help="on the machine: note the window and its starting state")
    p.add_argument("--commit", default=None)
    p = sub.add_parser("pack", help="on the machine: the carry into OUT")
    p.add_argument("out", type=Path)
    p = sub.add_parser("land", help="here: check DIR's pack, then swap it in")
    p.add_argument("dir", type=Path)
    args = parser.parse_args(argv)
    root = Path.cwd()
    try:
        if args.verb == "sent":
            print(f"gpu_campaign: {check_sent(root, args.carry)}")
        elif args.verb == "start":
            state = start(root, args.commit)
            print(f"gpu_campaign: window {state['window']}, commit {state['commit']}")
        elif args.verb == "pack":
            manifest = pack(root, args.out)
            size = sum(p["bytes"] for p in manifest["parts"])
            print(f"gpu_campaign: pack {manifest['pack']} in {args.out}: {len(manifest['parts'])} parts, {_mib(size)}")
        else:
            print(f"gpu_campaign: {land(root, args.dir, any_base=os.environ.get('GPU_LAND_ANY_BASE') == '1')}")
    except (WindowError, OSError) as err:
        print(f"gpu_campaign: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
