"""The folder layout is the data flow: every package of munet_server imports only packages below it
(upload -> store -> learn -> commit -> serve), and no module imports itself back through others."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "server" / "munet_server"

# Lower numbers sit lower; an import must point strictly down (or within its own package).
RANK = {
    "__init__": 0, "errors": 0, "faults": 0, "metrics": 0, "logs": 0, "tokens": 0, "priority": 0,
    "allocator": 0,
    "data": 1,
    "store": 2, "model": 2,
    "ingest": 3, "evolve": 3, "residency": 3,
    "spec": 4, "system": 4, "config": 4,
    "learn": 5, "serve": 5,
    "operations": 6,
    "service": 7,
    "rpc": 8, "replica": 8, "rest": 9, "preflight": 9,
    "app": 10,
    "__main__": 11,
}  # fmt: skip


def _imports() -> dict[str, set[str]]:
    out = {}
    for p in ROOT.rglob("*.py"):
        mod = ".".join(("munet_server", *p.relative_to(ROOT).with_suffix("").parts)).removesuffix(".__init__")
        out[mod] = {
            n.module
            for n in ast.walk(ast.parse(p.read_text()))
            if isinstance(n, ast.ImportFrom) and n.module and n.module.startswith("munet_server")
        }
    return out


def _package(mod: str) -> str:
    parts = mod.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_every_package_has_a_rank():
    assert {_package(m) for m in _imports()} <= set(RANK)


def test_imports_only_look_down():
    upward = [
        (m, d)
        for m, deps in _imports().items()
        for d in deps
        if _package(d) != _package(m) and RANK[_package(d)] >= RANK[_package(m)]
    ]
    assert not upward, upward


def test_no_import_cycles():
    imports = _imports()
    graph = {m: {d for d in deps if d in imports} for m, deps in imports.items()}
    state: dict[str, int] = {}

    def visit(m: str, trail: list[str]) -> None:
        state[m] = 1
        for d in graph[m]:
            assert state.get(d) != 1, " -> ".join([*trail, m, d])
            if d not in state:
                visit(d, [*trail, m])
        state[m] = 2

    for m in graph:
        if m not in state:
            visit(m, [])
