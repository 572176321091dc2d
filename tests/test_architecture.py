"""The import order of docs/architecture.md, checked on the source: no part of resnetlab imports a part above it.

Every import counts, the ones inside functions too (an import deferred into a function hides a cycle; it
does not remove it). Parts on one line of ``LAYERS`` are peers and import neither each other nor anything
above them; a part imports its own modules freely.
"""

from __future__ import annotations

import ast
from pathlib import Path

import resnetlab

PACKAGE = Path(resnetlab.__file__).parent

# Bottom to top, as docs/architecture.md draws it.
LAYERS = [
    ("errors",),
    ("paper", "files", "runtime"),
    ("models", "data"),
    ("config",),
    ("presets",),
    ("checkpoint",),
    ("deploy",),
    ("evaluation",),
    ("engine",),
    ("experiments",),
    ("cli",),
    ("__main__",),
]
RANK = {part: i for i, parts in enumerate(LAYERS) for part in parts}


def _part(module: str) -> str | None:
    """``resnetlab.data.fast`` -> ``data``; None for what is not resnetlab's, or the package itself."""
    names = module.split(".")
    return names[1] if names[0] == "resnetlab" and len(names) > 1 else None


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of ``path``; ``from X import name`` also yields X.name, since
    the name may be a module (``from .. import runtime``)."""
    relative = path.relative_to(PACKAGE.parent).with_suffix("")
    package = list(relative.parts[:-1])  # a module's package; an __init__'s own package
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{alias.name}") for alias in node.names]
    return found


def _violations() -> list[str]:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        own = _part("resnetlab." + ".".join(path.relative_to(PACKAGE).with_suffix("").parts))
        if own is None or own == "__init__":  # the package's facade re-exports from below it
            continue
        assert own in RANK, f"{path}: the part {own!r} is in no layer of docs/architecture.md"
        seen = set()
        for line, module in _imports(path):
            other = _part(module)
            if other is None or other == own or other not in RANK or (line, other) in seen:
                continue  # not ours, its own part, a name imported from a module, or said already
            seen.add((line, other))
            if RANK[other] >= RANK[own]:
                problems.append(f"{path.relative_to(PACKAGE.parent)}:{line} ({own}) imports {module} ({other})")
    return problems


def test_no_part_imports_a_part_above_it_or_a_peer():
    assert _violations() == []


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    fake = tmp_path / "resnetlab"
    (fake / "evaluation").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "evaluation" / "__init__.py").write_text("")
    (fake / "evaluation" / "bad.py").write_text("def f():\n    from ..engine.trainer import train\n")
    (fake / "evaluation" / "peer.py").write_text("from .. import runtime\nfrom . import metrics\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert _violations() == ["resnetlab/evaluation/bad.py:2 (evaluation) imports resnetlab.engine.trainer (engine)"]


def test_every_part_is_in_the_documented_order():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    parts -= {"__init__", "__pycache__"}
    assert parts <= set(RANK), f"not in docs/architecture.md: {sorted(parts - set(RANK))}"
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for parts_of_layer in LAYERS:
        for part in parts_of_layer:
            assert f"`{part}" in text, f"docs/architecture.md does not name {part}"
