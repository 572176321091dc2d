"""The wheel and the sdist: `python -m build` makes both, and the wheel installed outside the repository
runs the CLI (models --check, presets through the console script, a tiny training run), which shows that
everything resnetlab reads at run time is in the package.

Nothing is downloaded: the build uses this environment's setuptools (``--no-isolation``, the test extra
has ``build`` and ``setuptools``) and the install is ``pip --no-deps --no-index`` into a folder that
PYTHONPATH puts first, beside this environment's torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import resnetlab

REPO = Path(__file__).resolve().parents[1]
# cifar_resnet8 (the smallest net) for 2 steps of 8 synthetic images; the end-of-run evaluation over the
# synthetic test split (10,000 images, fixed) is most of its time.
TINY_TRAIN = [
    "train",
    "--preset",
    "cifar10-resnet20",
    "--set",
    "data.dataset=synthetic",
    "--set",
    "model.name=cifar_resnet8",
    "--iterations",
    "2",
    "--batch-size",
    "8",
    "--eval-every",
    "2",
    "--checkpoint-every",
    "2",
    "--device",
    "cpu",
]


def run(args: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    done = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done.stdout


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> tuple[Path, Path]:
    """The wheel and the sdist of this checkout; the wheel is built from the sdist, as `python -m build` does."""
    dist = tmp_path_factory.mktemp("dist")
    run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(dist), str(REPO)], dist, dict(os.environ))
    (wheel,), (sdist,) = dist.glob("*.whl"), dist.glob("*.tar.gz")
    return wheel, sdist


def test_the_wheel_holds_the_package_its_version_and_the_console_script(built):
    wheel, sdist = built
    version = resnetlab.__version__
    assert wheel.name == f"resnetlab-{version}-py3-none-any.whl" and sdist.name == f"resnetlab-{version}.tar.gz"
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        info = f"resnetlab-{version}.dist-info"
        entry_points = archive.read(f"{info}/entry_points.txt").decode()
        metadata = archive.read(f"{info}/METADATA").decode()
    assert "[console_scripts]" in entry_points and "resnetlab = resnetlab.cli:main" in entry_points
    assert f"\nVersion: {version}\n" in metadata
    assert {name.split("/")[0] for name in names} == {"resnetlab", info}  # no tests, hubconf or docs
    assert "resnetlab/cli.py" in names and "resnetlab/models/registry.py" in names
    with tarfile.open(sdist) as archive:
        members = {name.split("/", 1)[1] for name in archive.getnames() if "/" in name}
    assert {"pyproject.toml", "README.md", "hubconf.py", "tests/conftest.py", "docs/inference.md"} <= members


def test_the_installed_wheel_runs_the_cli_outside_the_repository(built, tmp_path):
    wheel, _ = built
    site = tmp_path / "site"
    run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-index",
            "--target",
            str(site),
            str(wheel),
        ],
        tmp_path,
        dict(os.environ),
    )
    work = tmp_path / "work"  # the working directory: no resnetlab/ in it, the repository not on the path
    work.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site), "RESNETLAB_CACHE": str(tmp_path / "cache")}
    where = run([sys.executable, "-c", "import resnetlab; print(resnetlab.__file__)"], work, env).strip()
    assert Path(where).resolve().is_relative_to(site.resolve()), where

    out = run([sys.executable, "-m", "resnetlab", "models", "--check"], work, env)
    assert "agree with it" in out
    out = run([str(site / "bin" / "resnetlab"), "presets"], work, env)  # the console script pip wrote
    assert "cifar10-resnet20" in out
    out = run([sys.executable, "-m", "resnetlab", *TINY_TRAIN, "--out", "run"], work, env)
    assert "final test error" in out
    assert (work / "run" / "checkpoints" / "last.pt").is_file() and (work / "run" / "curves.png").is_file()
    env_record = json.loads((work / "run" / "env.json").read_text())
    assert Path(env_record["package_dir"]).is_relative_to(site.resolve())  # the run records the installed package
