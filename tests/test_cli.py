"""The command line: tables, exit codes, and one-line errors for user mistakes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from resnetlab.cli import main


def test_models_table(capsys):
    assert main(["models", "--family", "cifar", "--check"]) == 0
    out = capsys.readouterr().out
    assert "resnet1202" in out and "19,421,274" in out and "2.829G" in out
    assert "11 networks; 11 of the 11 with a figure in the paper agree" in out


def test_models_json(capsys):
    assert main(["models", "--json", "--no-variants"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 21
    resnet50 = next(r for r in rows if r["name"] == "resnet50")
    assert resnet50["parameters"] == 25_557_032 and resnet50["stride"] == "v1" and resnet50["matches_paper"]
    assert all(r["matches_paper"] for r in rows)


def test_models_markdown(capsys):
    assert main(["models", "--markdown", "--family", "imagenet"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| model |") and lines[1].startswith("|---|")
    assert any(line.startswith("| resnet152 | imagenet | 152 | bottleneck | B | v1.5 |") for line in lines)


@pytest.mark.parametrize(
    "argv", [["models", "--family", "svhn"], ["frobnicate"], [], ["models", "--json", "--markdown"]]
)
def test_wrong_options_exit_2_with_one_line(argv):
    proc = subprocess.run([sys.executable, "-m", "resnetlab", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "error:" in proc.stderr.splitlines()[-1]


def test_help_for_every_command():
    for argv in (["--help"], ["models", "--help"]):
        proc = subprocess.run([sys.executable, "-m", "resnetlab", *argv], capture_output=True, text=True)
        assert proc.returncode == 0 and "usage: resnetlab" in proc.stdout


def test_readme_shows_the_current_models_table(capsys):
    from pathlib import Path

    readme = (Path(__file__).parents[1] / "README.md").read_text()
    shown = readme.split("<!-- models-table:begin -->\n")[1].split("\n<!-- models-table:end -->")[0]
    assert main(["models", "--markdown"]) == 0
    assert capsys.readouterr().out.split("\n\n")[0].strip() == shown.strip()


def test_output_into_a_closed_pipe_is_quiet(monkeypatch):
    import os

    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader (`| head`) has gone: every write now fails with EPIPE
    stdout = os.fdopen(write_end, "w", buffering=1)
    monkeypatch.setattr(sys, "stdout", stdout)
    assert main(["models", "--family", "cifar", "--no-variants"]) == 141
    monkeypatch.undo()
    stdout.close()
