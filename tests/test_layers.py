"""The folder layout is the data flow: every package of munet_server imports only packages below it
(upload -> store -> learn -> commit -> serve), no module imports itself back through others, and the
server uses the client package only where it says so.

Imports are read from the source (TYPE_CHECKING ones included: a cycle of types is a cycle of
design) and resolved to the module they name: `from munet_server.store import snapshot` is an import
of `munet_server.store.snapshot`, `from munet_server import tokens` one of `munet_server.tokens`."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SERVER = ROOT / "server" / "munet_server"

# Lower numbers sit lower; an import must point strictly down (or within its own package).
RANK = {
    "__init__": 0, "errors": 0, "faults": 0, "metrics": 0, "logs": 0, "tokens": 0, "priority": 0,
    "allocator": 0, "config_file": 0,
    "data": 1,
    "store": 2, "model": 2,
    "ingest": 3, "evolve": 3, "residency": 3,
    "spec": 4, "system": 4, "config": 4,
    "learn": 5, "serve": 5,
    "operations": 6,
    "service": 7,
    "oip": 8,
    "rpc": 9, "replica": 9, "rest": 10, "preflight": 10,
    "app": 11,
    "__main__": 12,
}  # fmt: skip

# The client modules the server shares code with (torch-free helpers), and who may use them: the
# preprocessing an exported model needs (decoding is the server's too), what an ImageFolder is, and
# the system picture the dashboard and `munet graph` both draw.
CLIENT_USES = {
    "munet_client.preprocess": {"data"},
    "munet_client.images": {"ingest"},
    "munet_client.graph": {"rest"},
    "munet_client.types": {"rest"},
}
PROTO_USERS = {"rpc", "rest", "app"}  # the generated protocol stays at the transport


def _module_name(path: Path, base: Path, package: str) -> str:
    return ".".join((package, *path.relative_to(base).with_suffix("").parts)).removesuffix(".__init__")


def _modules() -> set[str]:
    out = set()
    for base, package in ((SERVER, "munet_server"), (ROOT / "client" / "munet_client", "munet_client")):
        out |= {_module_name(p, base, package) for p in base.rglob("*.py")}
    return out | {"munet_server", "munet_client"}


def _resolve(node: ast.AST, known: set[str]) -> set[str]:
    """The modules an import statement names (a from-import of a submodule names the submodule)."""
    if isinstance(node, ast.Import):
        return {a.name for a in node.names}
    if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
        subs = {f"{node.module}.{a.name}" for a in node.names}
        return {s for s in subs if s in known} | ({node.module} if subs - known else set())
    return set()


def _imports() -> dict[str, set[str]]:
    known = _modules()
    out = {}
    for p in SERVER.rglob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(p.read_text())):
            deps |= {d for d in _resolve(node, known) if d.split(".")[0] in ("munet_server", "munet_client", "munet_proto")}
        out[_module_name(p, SERVER, "munet_server")] = deps
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
        if d.startswith("munet_server") and _package(d) != _package(m) and RANK[_package(d)] >= RANK[_package(m)]
    ]
    assert not upward, upward


def test_the_server_uses_only_the_client_modules_it_shares():
    wrong = [
        (m, d)
        for m, deps in _imports().items()
        for d in deps
        if d.startswith("munet_client") and _package(m) not in CLIENT_USES.get(d, set())
    ]
    assert not wrong, wrong
    proto = [(m, d) for m, deps in _imports().items() for d in deps if d.startswith("munet_proto") and _package(m) not in PROTO_USERS]
    assert not proto, proto


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


def test_the_guard_sees_what_it_claims():
    """The resolution itself: a from-import of a submodule is that submodule, of a name is the module."""
    known = _modules()
    submodule = ast.parse("from munet_server.store import snapshot").body[0]
    name = ast.parse("from munet_server.store.store import Store").body[0]
    package = ast.parse("from munet_server import tokens, __version__").body[0]
    assert _resolve(submodule, known) == {"munet_server.store.snapshot"}
    assert _resolve(name, known) == {"munet_server.store.store"}
    assert _resolve(package, known) == {"munet_server.tokens", "munet_server"}


def test_modules_and_functions_stay_small():
    """A module a newcomer can read in one sitting (500 lines), a function on one screen (80)."""
    too_long = []
    for base in (SERVER, ROOT / "client" / "munet_client"):
        for p in base.rglob("*.py"):
            source = p.read_text()
            if source.count("\n") > 500:
                too_long.append(f"{p.relative_to(ROOT)}: {source.count(chr(10))} lines")
            for node in ast.walk(ast.parse(source)):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 80:
                    too_long.append(f"{p.relative_to(ROOT)}:{node.lineno} {node.name}: {node.end_lineno - node.lineno + 1} lines")
    assert not too_long, too_long
