"""The import order of docs/architecture.md, checked on the source: no part of resnetlab imports a part above it,
and no part's modules import one another in a ring.

Every import counts, the ones inside functions too (an import deferred into a function hides a cycle; it
does not remove it). Parts on one line of ``LAYERS`` are peers and import neither each other nor anything
above them; a part imports its own modules in one direction.
"""

from __future__ import annotations

import ast
from collections import deque
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


def _is_module(module: str) -> bool:
    path = PACKAGE.parent.joinpath(*module.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every import of ``path``; ``from X import name`` yields X.name, since the name
    may be a module (``from .. import runtime``), and X unless every name is one (``from . import packed``
    imports the module packed, not the names of X's ``__init__``)."""
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
            names = [f"{module}.{alias.name}" for alias in node.names]
            if not all(_is_module(name) for name in names):
                found.append((node.lineno, module))
            found += [(node.lineno, name) for name in names]
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


def _module(path: Path) -> str:
    """``resnetlab/engine/trainer.py`` -> ``resnetlab.engine.trainer``; an ``__init__.py``: its package."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _ring(graph: dict[str, set[str]], start: str) -> list[str] | None:
    """The shortest chain of imports from ``start`` back to it (breadth first), or None."""
    previous: dict[str, str] = {}
    queue = deque([start])
    while queue:
        module = queue.popleft()
        for other in sorted(graph[module]):
            if other == start:
                chain = [module]
                while chain[-1] != start:
                    chain.append(previous[chain[-1]])
                return [*reversed(chain), start]
            if other not in previous:
                previous[other] = module
                queue.append(other)
    return None


def _cycles() -> list[str]:
    """Each ring of imports among the modules of one part (a package's ``__init__`` is its package's name), as
    ``engine.a -> engine.b -> engine.a``: the shortest ring through each module on one, each ring once."""
    modules = {_module(path): path for path in sorted(PACKAGE.rglob("*.py"))}
    graph = {
        name: {m for _, m in _imports(path) if m in modules and m != name and _part(m) == _part(name)}
        for name, path in modules.items()
    }
    rings = []
    for start in sorted(graph):
        ring = _ring(graph, start)
        if ring is None:
            continue
        first = ring.index(min(ring[:-1]))
        ring = ring[first:-1] + ring[: first + 1]  # begun at its least module, so each ring is seen once
        text = " -> ".join(m.removeprefix("resnetlab.") for m in ring)
        if text not in rings:
            rings.append(text)
    return rings


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


def test_no_part_imports_its_own_modules_in_a_ring():
    assert _cycles() == []


def test_the_cycle_checker_sees_rings_through_functions_and_facades(tmp_path, monkeypatch):
    fake = tmp_path / "resnetlab"
    for part in ("engine", "data", "deploy"):
        (fake / part).mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "engine" / "__init__.py").write_text("from .a import f\n")
    (fake / "engine" / "a.py").write_text("from .b import g\n\ndef f():\n    pass\n")
    (fake / "engine" / "b.py").write_text("def g():\n    from . import c\n")  # deferred: still a ring
    (fake / "engine" / "c.py").write_text("from .a import f\n")
    (fake / "data" / "__init__.py").write_text("from .x import y\n\nz = 1\n")
    (fake / "data" / "x.py").write_text("from . import z\n\ny = z\n")  # a name of the facade: through it
    (fake / "deploy" / "__init__.py").write_text("")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert _cycles() == ["data -> data.x -> data", "engine.a -> engine.b -> engine.c -> engine.a"]


def test_the_cycle_checker_passes_imports_in_one_direction(tmp_path, monkeypatch):
    fake = tmp_path / "resnetlab"
    (fake / "engine").mkdir(parents=True)
    (fake / "deploy").mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "engine" / "__init__.py").write_text("from .a import f\n")
    (fake / "engine" / "a.py").write_text("from . import b\nfrom ..deploy import d\n\ndef f():\n    from .b import g\n")
    (fake / "engine" / "b.py").write_text("import resnetlab.engine.c\n")  # a module of the part, not its facade
    (fake / "engine" / "c.py").write_text("")
    (fake / "deploy" / "__init__.py").write_text("")
    (fake / "deploy" / "d.py").write_text("def h():\n    from ..engine import a\n")  # another part: the layers' test
    monkeypatch.setattr(__import__(__name__), "PACKAGE", fake)
    assert _cycles() == []


def test_every_part_is_in_the_documented_order():
    parts = {p.stem if p.is_file() else p.name for p in PACKAGE.iterdir() if p.suffix == ".py" or p.is_dir()}
    parts -= {"__init__", "__pycache__"}
    assert parts <= set(RANK), f"not in docs/architecture.md: {sorted(parts - set(RANK))}"
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    for parts_of_layer in LAYERS:
        for part in parts_of_layer:
            assert f"`{part}" in text, f"docs/architecture.md does not name {part}"
