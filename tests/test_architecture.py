"""The layering rules of design.md, enforced on the syntax tree of every module of fixproxy.

A rule counts once a test enforces it. The checks read source (``ast``), never import it, so a
module that would pull trio into the protocol layer is caught even on a code path no test runs.
Each checker is first tried on small sources that break the rule, so a checker that silently
stopped finding anything fails here too.

Ranks (lower never imports higher): errors (0)
< fix/*, kalshi, schedule, backoff, config, signing, sequence (10) < session, metrics (20)
< tls, manager (30) < relay (40) < server (50) < preflight (55) < sim/* and demo (58)
< cli (60). Rank 10 modules may import one another (config builds a
LogonPolicy from fix/logon and kalshi); elsewhere an import between modules of the same rank
is refused, except inside the simulator. Imports under ``if TYPE_CHECKING:`` count too: a type
that lives in a higher layer is still a dependency on it. A module that has no rank fails the
test until it is given one, so the rules cannot silently lapse.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

import fixproxy

PACKAGE: Final = "fixproxy"
PACKAGE_DIR: Final = Path(fixproxy.__file__).resolve().parent

RANKS: Final[dict[str, int]] = {
    "fixproxy": 0,  # the package __init__: runs before every submodule, so it must stay at 0
    "fixproxy.errors": 0,
    "fixproxy.fix": 10,
    "fixproxy.kalshi": 10,
    "fixproxy.schedule": 10,
    "fixproxy.backoff": 10,  # Logon retry waits: pure, the manager passes the time in
    "fixproxy.config": 10,
    "fixproxy.signing": 10,
    "fixproxy.sequence": 10,  # sequence translation: pure, below the session that drives it
    "fixproxy.seqstore": 10,  # sequence numbers kept between connections: file I/O, no trio
    "fixproxy.access": 10,  # which engine addresses may connect: pure
    "fixproxy.logs": 10,  # log formatting and redaction: no trio
    "fixproxy.journal": 15,  # per-session message journal files: file I/O, no trio
    "fixproxy.session": 20,
    "fixproxy.metrics": 20,
    "fixproxy.status": 15,  # what each session is doing, for /status and scrape-time metrics
    "fixproxy.streams": 25,  # trio streams over raw sockets, for the relay's hot path
    "fixproxy.tls": 30,
    "fixproxy.manager": 30,
    "fixproxy.relay": 40,
    "fixproxy.health": 45,  # readiness probes and the /readyz and /status answers
    "fixproxy.reload": 45,  # re-reading the configuration while sessions keep trading
    "fixproxy.server": 50,
    "fixproxy.preflight": 55,  # `fixproxy check`: builds the server's runtime and probes it
    "fixproxy.sim": 58,
    "fixproxy.demo": 58,
    "fixproxy.cli": 60,
    "fixproxy.__main__": 61,  # `python3 -m fixproxy`: runs the command line
}
"""Rank of each module; a package's entry covers everything under it (fix/*, sim/*)."""

MUTUAL_RANKS: Final = frozenset({0, 10, 58})
"""Ranks whose modules may import one another."""

PURE: Final = ("fixproxy.errors", "fixproxy.fix", "fixproxy.kalshi", "fixproxy.schedule",
               "fixproxy.backoff",
               "fixproxy.session", "fixproxy.sequence", "fixproxy.config", "fixproxy.signing")
"""The protocol layer: synchronous, no trio."""

NO_TRIO: Final = (*PURE, "fixproxy.metrics", "fixproxy.status", "fixproxy.journal",
                   "fixproxy.access", "fixproxy.logs")
"""Modules that must not import trio (design.md: only the I/O layer, sim and cli do)."""

CLI: Final = "fixproxy.cli"


# --------------------------------------------------------------------------- the checkers

@dataclass(frozen=True, slots=True)
class Module:
    name: str
    """Dotted name; a package's ``__init__.py`` has the package's name."""
    is_package: bool
    tree: ast.Module
    path: str = "<source>"

    def where(self, node: ast.AST) -> str:
        return f"{self.path}:{getattr(node, 'lineno', 0)}"


def parse(name: str, source: str, *, is_package: bool = False) -> Module:
    return Module(name, is_package, ast.parse(source))


def within(name: str, prefix: str) -> bool:
    """True if ``name`` is ``prefix`` or a module under it."""
    return name == prefix or name.startswith(prefix + ".")


def rank_of(name: str) -> int | None:
    """The rank of a fixproxy module, from the longest matching entry of RANKS."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        rank = RANKS.get(".".join(parts[:end]))
        if rank is not None and (end > 1 or name == PACKAGE):
            return rank
    return None


def _absolute(module: Module, node: ast.ImportFrom) -> str:
    """The absolute module named by a (possibly relative) ``from ... import``."""
    if node.level == 0:
        return node.module or ""
    package = module.name.split(".") if module.is_package else module.name.split(".")[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, node.module] if node.module else base)


def imports(module: Module) -> Iterator[tuple[str, ast.AST]]:
    """Every absolute dotted name the module imports, with the node that imports it.

    ``from a import b`` yields ``a.b`` (b may be a submodule) and ``a``.
    """
    for node in ast.walk(module.tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(module, node)
            yield base, node
            for alias in node.names:
                if alias.name != "*":
                    yield f"{base}.{alias.name}", node


def fixproxy_imports(module: Module, known: set[str]) -> Iterator[tuple[str, ast.AST]]:
    """The fixproxy modules ``module`` depends on (an imported name resolves to its module)."""
    for name, node in imports(module):
        if not within(name, PACKAGE):
            continue
        # `from fixproxy.fix import tags` names a module; `from fixproxy import __version__`
        # names an attribute of the package, so walk up to the nearest real module.
        target = name
        while target not in known and "." in target:
            target = target.rsplit(".", 1)[0]
        yield target, node


def imports_top_level(module: Module, top: str) -> list[str]:
    return [module.where(node) for name, node in imports(module) if within(name, top)]


def async_constructs(module: Module) -> list[str]:
    kinds = (ast.AsyncFunctionDef, ast.Await, ast.AsyncFor, ast.AsyncWith)
    return [f"{module.where(node)} {type(node).__name__}"
            for node in ast.walk(module.tree) if isinstance(node, kinds)]


def trio_run_uses(module: Module) -> list[str]:
    """References to ``trio.run`` however trio was imported or aliased."""
    trio_names = {alias.asname or alias.name for node in ast.walk(module.tree)
                  if isinstance(node, ast.Import) for alias in node.names
                  if alias.name == "trio"}

    def is_trio_run(node: ast.AST) -> bool:
        if isinstance(node, ast.ImportFrom):
            return node.level == 0 and node.module == "trio" \
                and any(alias.name == "run" for alias in node.names)
        return isinstance(node, ast.Attribute) and node.attr == "run" \
            and isinstance(node.value, ast.Name) and node.value.id in trio_names

    return [module.where(node) for node in ast.walk(module.tree) if is_trio_run(node)]


def _docstrings(tree: ast.Module) -> set[int]:
    ids: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                ids.add(id(body[0].value))
    return ids


def wildcard_addresses(module: Module) -> list[str]:
    """String literals (docstrings aside) that name the all-interfaces address."""
    docstrings = _docstrings(module.tree)
    return [module.where(node) for node in ast.walk(module.tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str | bytes)
            and id(node) not in docstrings
            and ("0.0.0.0" in node.value if isinstance(node.value, str)
                 else b"0.0.0.0" in node.value)]


def layer_violations(module: Module, known: set[str]) -> list[str]:
    """Imports that reach up (or sideways outside a mutual rank), and unranked modules."""
    own = rank_of(module.name)
    if own is None:
        return [f"{module.path}: {module.name} has no rank; add it to RANKS in "
                f"tests/test_architecture.py"]
    found: list[str] = []
    for target, node in fixproxy_imports(module, known):
        if module.is_package and module.name != PACKAGE and within(target, module.name):
            continue  # a subpackage importing its own submodules (sim/__init__)
        rank = rank_of(target)
        if rank is None:
            found.append(f"{module.where(node)} imports {target}, which has no rank")
        elif rank > own or (rank == own and own not in MUTUAL_RANKS):
            found.append(f"{module.where(node)} {module.name} (rank {own}) imports {target} "
                         f"(rank {rank})")
    return found


# --------------------------------------------------------------------------- the real tree

def _module_name(path: Path) -> str:
    parts = [PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _load_tree() -> list[Module]:
    modules: list[Module] = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        modules.append(Module(_module_name(path), path.name == "__init__.py",
                              ast.parse(source, filename=str(path)),
                              str(path.relative_to(PACKAGE_DIR.parent))))
    return modules


MODULES: Final = _load_tree()
KNOWN: Final = {module.name for module in MODULES}


def _of(prefixes: tuple[str, ...]) -> list[Module]:
    return [m for m in MODULES if any(within(m.name, prefix) for prefix in prefixes)]


def test_the_walk_sees_the_package() -> None:
    for name in ("fixproxy", "fixproxy.errors", "fixproxy.fix.framer", "fixproxy.fix.logon",
                 "fixproxy.kalshi", "fixproxy.signing", "fixproxy.config"):
        assert name in KNOWN
    assert len(_of(PURE)) >= 8


def test_every_module_has_a_rank_and_imports_only_downward() -> None:
    found = [v for module in MODULES for v in layer_violations(module, KNOWN)]
    assert found == []


def test_protocol_layer_never_imports_trio() -> None:
    found = [where for module in _of(NO_TRIO) for where in imports_top_level(module, "trio")]
    assert found == []


def test_protocol_layer_never_awaits() -> None:
    found = [where for module in _of(PURE) for where in async_constructs(module)]
    assert found == []


def test_only_the_cli_imports_click() -> None:
    found = [where for module in MODULES if module.name != CLI
             for where in imports_top_level(module, "click")]
    assert found == []


def test_only_the_cli_calls_trio_run() -> None:
    found = [where for module in MODULES if module.name != CLI
             for where in trio_run_uses(module)]
    assert found == []


def test_errors_imports_nothing_from_fixproxy() -> None:
    (errors,) = [module for module in MODULES if module.name == "fixproxy.errors"]
    assert list(fixproxy_imports(errors, KNOWN)) == []


def test_no_wildcard_bind_address_anywhere() -> None:
    found = [where for module in MODULES for where in wildcard_addresses(module)]
    assert found == []


# --------------------------------------------------------------------------- the checkers work

SYNTHETIC_KNOWN: Final = {
    "fixproxy", "fixproxy.errors", "fixproxy.fix", "fixproxy.fix.tags", "fixproxy.fix.codec",
    "fixproxy.kalshi", "fixproxy.config", "fixproxy.session", "fixproxy.metrics",
    "fixproxy.tls", "fixproxy.manager", "fixproxy.relay", "fixproxy.server", "fixproxy.cli",
    "fixproxy.sim", "fixproxy.sim.gateway", "fixproxy.sim.demo", "fixproxy.unranked",
}


@pytest.mark.parametrize("source", [
    "import trio",
    "import trio.lowlevel as ll",
    "from trio import sleep",
    "from trio.abc import Stream",
    "def f():\n    import trio\n",
    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import trio\n",
])
def test_checker_finds_trio_imports(source: str) -> None:
    assert imports_top_level(parse("fixproxy.session", source), "trio")


@pytest.mark.parametrize("source", ["import trio_websocket", "import triopy", "x = 'trio'"])
def test_checker_ignores_names_that_only_look_like_trio(source: str) -> None:
    assert imports_top_level(parse("fixproxy.session", source), "trio") == []


@pytest.mark.parametrize("source", [
    "async def f():\n    pass\n",
    "def f(x):\n    async def g():\n        await x\n",
    "async def f(x):\n    async for _ in x:\n        pass\n",
    "async def f(x):\n    async with x:\n        pass\n",
])
def test_checker_finds_async_code(source: str) -> None:
    assert async_constructs(parse("fixproxy.fix.codec", source))


@pytest.mark.parametrize("source", [
    "import trio\ntrio.run(main)\n",
    "import trio as t\nt.run(main)\n",
    "import trio\nrunner = trio.run\n",
    "from trio import run\n",
    "from trio import sleep, run as go\n",
])
def test_checker_finds_trio_run(source: str) -> None:
    assert trio_run_uses(parse("fixproxy.server", source))


@pytest.mark.parametrize("source", [
    "import trio\ntrio.from_thread.run(f)\n",
    "import trio\ntrio.run_process(['x'])\n",
    "import other\nother.run()\n",
])
def test_checker_ignores_other_runs(source: str) -> None:
    assert trio_run_uses(parse("fixproxy.server", source)) == []


@pytest.mark.parametrize(("name", "source", "is_package"), [
    ("fixproxy.session", "from fixproxy.relay import x", False),
    ("fixproxy.session", "from .relay import x", False),
    ("fixproxy.session", "import fixproxy.server", False),
    ("fixproxy.fix.codec", "from fixproxy import metrics", False),
    ("fixproxy.fix.codec", "from ..session import S", False),
    ("fixproxy.fix", "from ..tls import T", True),
    ("fixproxy.errors", "from fixproxy.fix import tags", False),
    ("fixproxy", "from fixproxy.config import load", True),
    ("fixproxy.tls", "from fixproxy.manager import M", False),
    ("fixproxy.relay", "from fixproxy.server import serve", False),
    ("fixproxy.server", "from fixproxy.sim.gateway import SimGateway", False),
    ("fixproxy.sim.demo", "from fixproxy.cli import main", False),
    ("fixproxy.sim", "from fixproxy.cli import main", True),
    ("fixproxy.kalshi", "from fixproxy.unranked import x", False),
    ("fixproxy.unranked", "", False),
    ("fixproxy.fixtures", "", False),
])
def test_checker_finds_layer_violations(name: str, source: str, is_package: bool) -> None:
    module = parse(name, source, is_package=is_package)
    assert layer_violations(module, SYNTHETIC_KNOWN | {name})


@pytest.mark.parametrize(("name", "source", "is_package"), [
    ("fixproxy.config", "from fixproxy.fix.logon import LogonPolicy\nimport fixproxy.kalshi",
     False),
    ("fixproxy.fix.codec", "from . import tags\nfrom fixproxy.errors import FramingError", False),
    ("fixproxy.metrics", "from fixproxy import __version__\nfrom fixproxy.kalshi import K", False),
    ("fixproxy.relay", "from fixproxy.tls import T\nfrom fixproxy.session import S", False),
    ("fixproxy.cli", "from fixproxy.server import s\nfrom fixproxy.sim.demo import d", False),
    ("fixproxy.sim.demo", "from fixproxy.server import s\nfrom .gateway import G", False),
    ("fixproxy.sim", "from fixproxy.sim.gateway import SimGateway", True),
    ("fixproxy.fix.newcodec", "import os\nimport fixproxy.fix.tags", False),
    ("fixproxy.sim.newpart", "from fixproxy.relay import r", False),
])
def test_checker_allows_downward_imports(name: str, source: str, is_package: bool) -> None:
    module = parse(name, source, is_package=is_package)
    assert layer_violations(module, SYNTHETIC_KNOWN | {name}) == []


@pytest.mark.parametrize("source", [
    "HOST = '0.0.0.0'",
    "HOST = b'0.0.0.0'",
    "def f(port):\n    return f'0.0.0.0:{port}'\n",
    "def f():\n    '''doc'''\n    return '0.0.0.0'\n",
])
def test_checker_finds_wildcard_address(source: str) -> None:
    assert wildcard_addresses(parse("fixproxy.server", source))


def test_checker_allows_wildcard_address_in_docstrings() -> None:
    source = '"""We never bind 0.0.0.0."""\ndef f():\n    """Not 0.0.0.0."""\n    return 1\n'
    assert wildcard_addresses(parse("fixproxy.server", source)) == []
