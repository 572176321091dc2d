"""A run directory is its own record: resolved config, environment, metrics (JSON lines), checkpoints.

``RunDir`` names its files and writes them (rank 0 only); ``read_record`` is how everything else (``plot``,
the experiments, the results page) reads a run back. Figures and tables are drawn from these records only
(never from numbers typed in), and a reported test error is the final iteration's: no model is selected
on the test set.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..files import FolderInUse, atomic_write, lock_folder, read_jsonl, write_json
from .tensorboard import TensorBoardMirror

__all__ = ["RunDir", "RunRecord", "environment_record", "read_record"]


def _git_commit(package: Path) -> dict[str, Any]:
    """The git state of the checkout ``package`` was loaded from: the HEAD commit, whether any tracked file
    differs from it, and which tracked files under the package do (paths from the checkout's root). Where git
    does not track it (an installed wheel, a copied tree), what ``$RESNETLAB_GIT_COMMIT`` and
    ``$RESNETLAB_GIT_DIRTY`` (``true``/``false``) say: a tree copied onto a GPU window's machine has no .git,
    and scripts/gpu_campaign.sh exports the commit that travelled with it; else all None."""
    commit = os.environ.get("RESNETLAB_GIT_COMMIT") or None
    dirty = {"true": True, "false": False}.get(os.environ.get("RESNETLAB_GIT_DIRTY", "").lower())
    state: dict[str, Any] = {"git_commit": commit, "git_dirty": dirty if commit else None, "git_dirty_files": None}
    # ls-files: a package inside an unrelated checkout (site-packages in a repo's .venv) is not tracked there
    if _git(package, "ls-files", "--error-unmatch", "--", "__init__.py") is None:
        return state
    head = _git(package, "rev-parse", "HEAD")
    status = _git(package, "status", "--porcelain", "--untracked-files=no")
    changed = _git(package, "diff", "--name-only", "-z", "HEAD", "--", ".")
    if head is None or status is None or changed is None:
        return state
    files = [name for name in changed.split("\0") if name]
    return {"git_commit": head.strip(), "git_dirty": bool(status.strip()), "git_dirty_files": files}


def environment_record(device: torch.device, world_size: int) -> dict[str, Any]:
    import torchvision

    from .. import __version__

    # The code this process imported: its package directory (not the working directory), that tree's git
    # state, and a hash of the files, which identifies the code even where git cannot.
    package = Path(__file__).resolve().parents[1]
    code_sha256, code_files = _code_sha256(package)
    record = {
        "resnetlab": __version__,
        "package_dir": str(package),
        **_git_commit(package),
        "code_sha256": code_sha256,
        "code_files": code_files,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "world_size": world_size,
        "argv": sys.argv,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        record["gpu"] = torch.cuda.get_device_name(device)
        record["cuda"] = torch.version.cuda
    return record


def _git(package: Path, *args: str) -> str | None:
    """``git args`` run in ``package``'s directory; its output, or None if git is missing or fails."""
    try:
        out = subprocess.run(["git", *args], cwd=package, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def _code_sha256(package: Path) -> tuple[str, int]:
    """sha256 over the package's .py files (relative path, size and content of each, in path order) and their
    number: names the code a run loaded whether it came from a clean commit, a dirty tree or an installed wheel."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted(package.rglob("*.py"), key=lambda p: p.relative_to(package).as_posix())
    for path in files:
        data = path.read_bytes()
        digest.update(f"{path.relative_to(package).as_posix()}\0{len(data)}\0".encode() + data)
    return digest.hexdigest(), len(files)


class RunDir:
    """The files of one run. Only rank 0 writes (the trainer makes sure of that), and only while it holds the
    directory's lock (``acquire``): one writer at a time."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.config = self.path / "config.json"
        self.env = self.path / "env.json"
        self.metrics = self.path / "metrics.jsonl"
        self.checkpoints = self.path / "checkpoints"
        self.last = self.checkpoints / "last.pt"
        self.best = self.checkpoints / "best.pt"
        self.previous = self.checkpoints / "previous.pt"  # the last.pt before the newest: a fallback
        self._lock: Any = None
        self.curves = self.path / "curves.png"
        self.tensorboard = self.path / "tensorboard"
        self.mirror: TensorBoardMirror | None = None  # the trainer's rank 0 opens one when train.tensorboard says so

    def periodic(self, iteration: int) -> Path:
        return self.checkpoints / f"iter_{iteration:07d}.pt"

    def holds_run(self) -> bool:
        return any(p.exists() for p in (self.last, self.config, self.metrics))

    def acquire(self) -> None:
        """Create the directory and take its lock: an OS lock (``flock``) that dies with this process, so a
        kill -9 never leaves the directory locked. A second writer gets one line naming the holder."""
        try:
            if self.path.exists() and not self.path.is_dir():
                raise UserError(f"--out {self.path} is a file, not a run directory; choose another --out")
            self.checkpoints.mkdir(parents=True, exist_ok=True)
            self._lock = lock_folder(self.path, "resnetlab train")
        except FolderInUse as err:
            raise UserError(
                f"{self.path} is in use by {err.holder}; wait for it to finish, or choose another --out"
            ) from None
        except OSError as err:
            raise UserError(f"cannot create the run directory {self.path} ({err.strerror or err})") from None

    def release(self) -> None:
        if self.mirror is not None:
            self.mirror.close()
            self.mirror = None
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    def remove_orphans(self) -> list[Path]:
        """Temporary files a killed process left beside its checkpoints (``.last.pt.*.tmp``); only the holder
        of the lock may call this, so no live writer owns them."""
        orphans = sorted(self.checkpoints.glob(".*.tmp")) if self.checkpoints.is_dir() else []
        for path in orphans:
            path.unlink(missing_ok=True)
        return orphans

    def resume_candidates(self) -> list[Path]:
        """The checkpoints a ``--resume auto`` may continue from, newest first: last, previous, periodic ones."""
        periodic = sorted(self.checkpoints.glob("iter_*.pt"), reverse=True) if self.checkpoints.is_dir() else []
        return [p for p in (self.last, self.previous, *periodic) if p.is_file()]

    def keep_previous(self) -> None:
        """Before last.pt is replaced: keep it as previous.pt (a hard link; no copy), atomically."""
        if self.last.is_file():
            _link(self.last, self.previous)

    def make_last(self, checkpoint: Path) -> None:
        """Make ``checkpoint`` (an older one of this run) its last.pt (a hard link; no copy), atomically."""
        _link(checkpoint, self.last)

    def write_json(self, path: Path, data: dict[str, Any]) -> None:
        write_json(path, data)

    def log(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with self.metrics.open("a") as f:
            f.write(json.dumps(record) + "\n")
        if self.mirror is not None:
            self.mirror.record(record)

    def log_progress(self, iteration: int, values: dict[str, float]) -> None:
        """The progress bar's numbers at a log_every step: to the TensorBoard mirror only (metrics.jsonl keeps
        evaluations and events)."""
        if self.mirror is not None:
            self.mirror.progress(iteration, values)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The records of metrics.jsonl; a torn last line is dropped with a warning (``files.read_jsonl``)."""
        if not self.metrics.exists():
            return []
        return read_jsonl(self.metrics)

    def last_evaluation(self) -> dict[str, Any]:
        """The last record of metrics.jsonl with a test error ({} when there is none): what a resumed run that
        had already finished reports, since it evaluates nothing itself."""
        return next((r for r in reversed(self.read_metrics()) if "test_top1_error" in r), {})

    def truncate_metrics(self, iteration: int) -> None:
        """Drop records written after ``iteration`` (the checkpoint a resumed run starts from), and a torn
        last line, atomically."""
        kept = [r for r in self.read_metrics() if r.get("iteration", 0) <= iteration]
        atomic_write(self.metrics, lambda f: f.write("".join(json.dumps(r) + "\n" for r in kept)), text=True)

    # -- read by any process: nothing below creates a folder or takes the lock ------------------------

    @property
    def windows(self) -> Path:
        """windows.jsonl: a line per campaign window that advanced the run (``experiments/windows.py``)."""
        return self.path / "windows.jsonl"

    @property
    def record_files(self) -> tuple[Path, ...]:
        """The files of the run's record, checkpoints aside: what the campaign carries between windows."""
        return (self.config, self.env, self.metrics, self.windows)

    def has_record(self) -> bool:
        """Whether the record ``read_record`` reads is here (config.json and metrics.jsonl)."""
        return self.config.is_file() and self.metrics.is_file()

    def read_config(self) -> dict[str, Any]:
        """config.json as written (a one-line UserError if it cannot be read)."""
        return _read_json(self.config)

    def read_env(self) -> dict[str, Any]:
        """env.json as written; {} before the trainer wrote one."""
        return _read_json(self.env) if self.env.is_file() else {}

    @staticmethod
    def under(root: str | Path) -> list[RunDir]:
        """The run directories directly under ``root`` that hold metrics.jsonl, by name."""
        return [RunDir(metrics.parent) for metrics in sorted(Path(root).glob("*/metrics.jsonl"))]


@dataclass
class RunRecord:
    path: Path
    config: dict[str, Any]
    evals: list[dict[str, Any]]  # evaluation lines of metrics.jsonl, by iteration
    env: dict[str, Any]  # env.json: versions, device, the data source

    @property
    def model(self) -> str:
        return self.config["model"]["name"]

    @property
    def iterations(self) -> int:
        return int(self.config["train"]["iterations"])

    @property
    def seed(self) -> int:
        return int(self.config["train"]["seed"])

    @property
    def data(self) -> str:
        return str(self.env.get("data_source") or self.config["data"].get("data_dir") or self.config["data"]["dataset"])

    @property
    def reached(self) -> int:
        """The iteration of the last evaluation (0 before the first)."""
        return int(self.evals[-1]["iteration"]) if self.evals else 0

    @property
    def finished(self) -> bool:
        return self.reached >= self.iterations

    @property
    def final(self) -> dict[str, Any]:
        """The last evaluation: the reported number (no selection on the test set)."""
        return self.evals[-1]

    def series(self, key: str) -> tuple[list[int], list[float]]:
        points = [(r["iteration"], r[key]) for r in self.evals if key in r]
        return [p[0] for p in points], [p[1] for p in points]


def read_record(path: str | Path) -> RunRecord:
    """A run directory's record, as ``plot``, the experiments and the results page read it. A torn last line
    of metrics.jsonl (a write cut short) is left out with a warning; the run's next resume rewrites it."""
    run = RunDir(path)
    if not run.config.is_file() or not run.metrics.is_file():
        raise UserError(f"{run.path} is not a run directory (needs config.json and metrics.jsonl)")
    evals = sorted((r for r in run.read_metrics() if "test_top1_error" in r), key=lambda r: r["iteration"])
    return RunRecord(run.path, _read_json(run.config), evals, _read_json(run.env) if run.env.is_file() else {})


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise UserError(f"cannot read {path}: {err}") from None


def _link(source: Path, target: Path) -> None:
    """Make ``target`` the file ``source`` is (a hard link, or a copy on a file system without them), atomically."""
    tmp = target.parent / f".{target.name}.{os.getpid()}.tmp"
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:  # a file system without hard links: copy
        shutil.copyfile(source, tmp)
    os.replace(tmp, target)
