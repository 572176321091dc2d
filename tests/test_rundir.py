"""env.json names the code the process loaded: its package directory, that checkout's git state, a hash; and
``RunDir`` names a run directory's files, read without creating anything."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

import resnetlab
from resnetlab.engine.rundir import RunDir, _code_sha256, _git_commit, environment_record
from resnetlab.files import write_json

PACKAGE = Path(resnetlab.__file__).resolve().parent
needs_git = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


def _copy_package(root: Path) -> Path:
    shutil.copytree(PACKAGE, root / "resnetlab", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    return root / "resnetlab"


def _git(repo: Path, *args: str) -> str:
    identity = ["-c", "user.name=test", "-c", "user.email=test@example.com"]
    return subprocess.run(["git", *identity, *args], cwd=repo, capture_output=True, text=True, check=True).stdout


def test_environment_record_names_the_loaded_package():
    env = environment_record(torch.device("cpu"), 1)
    assert env["package_dir"] == str(PACKAGE)
    assert (env["code_sha256"], env["code_files"]) == _code_sha256(PACKAGE)
    assert env["code_files"] == len(list(PACKAGE.rglob("*.py")))
    assert {"git_commit", "git_dirty", "git_dirty_files"} <= set(env)
    if env["git_commit"] is not None:  # a source checkout: the HEAD of the tree the package came from
        assert env["git_commit"] == _git(PACKAGE, "rev-parse", "HEAD").strip()


def test_code_hash_follows_the_content_not_the_location(tmp_path):
    a, b = _copy_package(tmp_path / "a"), _copy_package(tmp_path / "b")
    assert _code_sha256(a) == _code_sha256(b) == _code_sha256(PACKAGE)
    (b / "engine" / "schedule.py").write_text((b / "engine" / "schedule.py").read_text() + "# edited\n")
    assert _code_sha256(b)[0] != _code_sha256(a)[0]
    (a / "engine" / "extra.py").write_text("")  # an added module changes the hash and the count
    assert _code_sha256(a)[1] == _code_sha256(PACKAGE)[1] + 1
    assert _code_sha256(a)[0] != _code_sha256(PACKAGE)[0]


@needs_git
def test_git_state_of_a_clean_then_dirty_checkout(tmp_path):
    repo = tmp_path / "repo"
    package = _copy_package(repo)
    (repo / "README.md").write_text("readme\n")
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "snapshot")
    head = _git(repo, "rev-parse", "HEAD").strip()
    assert _git_commit(package) == {"git_commit": head, "git_dirty": False, "git_dirty_files": []}

    (repo / "README.md").write_text("edited\n")  # dirty, but not the package's code
    assert _git_commit(package) == {"git_commit": head, "git_dirty": True, "git_dirty_files": []}
    schedule = package / "engine" / "schedule.py"
    schedule.write_text(schedule.read_text() + "# edited\n")
    (package / "untracked.py").write_text("")  # not tracked: not listed, but in the hash
    assert _git_commit(package) == {
        "git_commit": head,
        "git_dirty": True,
        "git_dirty_files": ["resnetlab/engine/schedule.py"],
    }
    _git(repo, "add", "resnetlab/engine/schedule.py")  # staged changes differ from HEAD as well
    assert _git_commit(package)["git_dirty_files"] == ["resnetlab/engine/schedule.py"]


@needs_git
def test_no_git_state_for_an_untracked_copy(tmp_path):
    # An installed wheel: no checkout at all, or site-packages inside a checkout that does not track it
    # (a .venv in a repository). The hash still names the code.
    wheel = _copy_package(tmp_path / "site-packages")
    none = {"git_commit": None, "git_dirty": None, "git_dirty_files": None}
    assert _git_commit(wheel) == none
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "README.md").write_text("readme\n")
    _git(repo, "init", "-q")
    _git(repo, "add", "README.md")
    _git(repo, "commit", "-qm", "another project")
    venv_copy = _copy_package(repo / ".venv" / "site-packages")
    assert _git_commit(venv_copy) == none
    assert _code_sha256(venv_copy) == _code_sha256(wheel) == _code_sha256(PACKAGE)


@needs_git
def test_a_copied_tree_takes_the_commit_that_travelled_with_it(tmp_path, monkeypatch):
    """A GPU window's machine gets the tree without .git: the commit comes from $RESNETLAB_GIT_COMMIT
    (scripts/gpu_campaign.sh exports .gpu/commit's); a real checkout's own state wins over it."""
    monkeypatch.setenv("RESNETLAB_GIT_COMMIT", "f" * 40)
    monkeypatch.setenv("RESNETLAB_GIT_DIRTY", "false")
    copied = _copy_package(tmp_path / "copied")
    assert _git_commit(copied) == {"git_commit": "f" * 40, "git_dirty": False, "git_dirty_files": None}
    repo = tmp_path / "repo"
    package = _copy_package(repo)
    _git(repo, "init", "-q")
    _git(repo, "add", ".")
    _git(repo, "commit", "-qm", "snapshot")
    assert _git_commit(package)["git_commit"] == _git(repo, "rev-parse", "HEAD").strip()


def test_reading_a_run_directory_creates_nothing(tmp_path):
    run = RunDir(tmp_path / "runs" / "a")
    assert not run.has_record() and run.read_env() == {} and RunDir.under(tmp_path / "runs") == []
    assert [p.name for p in run.record_files] == ["config.json", "env.json", "metrics.jsonl", "windows.jsonl"]
    assert not (tmp_path / "runs").exists()
    run.path.mkdir(parents=True)
    write_json(run.config, {"train": {"seed": 3}})
    assert not run.has_record()  # a record needs metrics.jsonl too
    run.log({"iteration": 1})
    assert run.has_record() and run.read_config() == {"train": {"seed": 3}}
    (tmp_path / "runs" / "no-record").mkdir()
    assert [r.path for r in RunDir.under(tmp_path / "runs")] == [run.path]
