"""The layering rules of design.md, enforced on the syntax tree of every module of fixproxy.

A rule counts once a test enforces it. The checks read source (``ast``), never import it, so a
module that would pull trio into the protocol layer is caught even on a code path no test runs.
Each checker is first tried on small sources that break the rule, so a checker that silently
stopped finding anything fails here too.

One rule per folder. The layers, lowest first; a module imports only from its own folder or from
a lower layer, never upward and never sideways into another folder of the same layer:

    errors, kalshi  <-  fix/, signing  <-  session/  <-  config/  <-  ops/  <-  net/
    <-  proxy/, sim/  <-  cli/ (and ``python3 -m fixproxy``)

and, on top of the order:

* the pure folders (errors, kalshi, fix/, signing, session/) never import trio, socket or ssl
  and never await, and neither do the simulator's venue rules (sim/venue); config/ and ops/
  never import trio;
* net/ knows no FIX: it never imports fix/, session/ or proxy/;
* sim/ never imports session/ or proxy/: the simulated Kalshi must not share our mistakes;
* only cli/ imports click or calls ``trio.run``;
* the session relay (proxy/relay.py, legs.py, handover.py), which runs in a thread of its own,
  never imports trio.

Imports under ``if TYPE_CHECKING:`` count too: a type that lives in a higher layer is still a
dependency on it. A module outside every listed folder fails the test until it is placed, so
the rules cannot silently lapse.
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

LAYERS: Final[dict[str, int]] = {
    "fixproxy": 0,  # the package __init__: runs before every submodule, so it must stay at 0
    "fixproxy.errors": 0,
    "fixproxy.kalshi": 0,
    "fixproxy.fix": 1,
    "fixproxy.signing": 1,
    "fixproxy.session": 2,
    "fixproxy.config": 3,
    "fixproxy.ops": 4,
    "fixproxy.net": 5,
    "fixproxy.proxy": 6,
    "fixproxy.sim": 6,
    "fixproxy.cli": 7,
    "fixproxy.__main__": 8,  # `python3 -m fixproxy`: runs the command line
}
"""The layer of each top-level module or folder; a folder's entry covers everything in it."""

PURE: Final = ("fixproxy.errors", "fixproxy.kalshi", "fixproxy.fix", "fixproxy.signing",
               "fixproxy.session", "fixproxy.sim.venue", "fixproxy.sim.account")
"""The protocol layer: synchronous, no trio, no sockets, no TLS. The simulator's venue rules
are held to it too, so what the simulated Kalshi decides is tested without sockets."""

DATA_PLANE: Final = ("fixproxy.proxy.relay", "fixproxy.proxy.legs", "fixproxy.proxy.handover",
                      "fixproxy.proxy.dataplane")
"""The session relay and what it exchanges with admission: they run in a session's own thread
and must never call trio (design.md: the planes meet only through the handover)."""

NO_TRIO: Final = (*PURE, "fixproxy.config", "fixproxy.ops", *DATA_PLANE)
"""Folders and modules that must not import trio (only the I/O layers, sim and cli do)."""

FORBIDDEN: Final[dict[str, tuple[str, ...]]] = {
    "fixproxy.net": ("fixproxy.fix", "fixproxy.session", "fixproxy.proxy"),
    "fixproxy.sim": ("fixproxy.session", "fixproxy.proxy"),
}
"""Imports refused although the layer order would allow them."""

PURE_BANNED: Final = ("trio", "socket", "ssl")

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


def home_of(name: str) -> str | None:
    """The entry of LAYERS a fixproxy module belongs to (its folder or itself)."""
    parts = name.split(".")
    for end in range(min(len(parts), 2), 0, -1):
        home = ".".join(parts[:end])
        if home in LAYERS and (end > 1 or name == PACKAGE):
            return home
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
    """Imports that reach up, sideways into another folder, or across a forbidden edge; and
    modules outside every folder of LAYERS."""
    home = home_of(module.name)
    if home is None:
        return [f"{module.path}: {module.name} is in no layer; place it in a folder of "
                f"LAYERS in tests/test_architecture.py"]
    own = LAYERS[home]
    found: list[str] = []
    for target, node in fixproxy_imports(module, known):
        target_home = home_of(target)
        if target_home is None:
            found.append(f"{module.where(node)} imports {target}, which is in no layer")
            continue
        if target_home == home and home != PACKAGE:
            continue  # within one folder
        layer = LAYERS[target_home]
        if layer > own or (layer == own and target_home != home):
            found.append(f"{module.where(node)} {module.name} (layer {own}) imports {target} "
                         f"(layer {layer})")
        elif any(within(target, banned) for banned in FORBIDDEN.get(home, ())):
            found.append(f"{module.where(node)} {home} must never import {target_home}")
    return found


def forbidden_imports(module: Module, tops: tuple[str, ...]) -> list[str]:
    return [where for top in tops for where in imports_top_level(module, top)]


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
                 "fixproxy.kalshi", "fixproxy.signing", "fixproxy.session.machine",
                 "fixproxy.config.loader", "fixproxy.proxy.relay", "fixproxy.cli.main",
                 "fixproxy.sim.venue"):
        assert name in KNOWN
    assert len(_of(PURE)) >= 12


def test_every_module_is_in_a_layer_and_imports_only_downward() -> None:
    found = [v for module in MODULES for v in layer_violations(module, KNOWN)]
    assert found == []


def test_at_most_six_modules_sit_directly_in_the_package() -> None:
    top = [m.name for m in MODULES if m.name.count(".") == 1 and not m.is_package]
    assert len(top) <= 6, top


def test_the_data_plane_is_checked() -> None:
    assert {m.name for m in _of(DATA_PLANE)} == set(DATA_PLANE)


def test_pure_and_edge_folders_never_import_trio() -> None:
    found = [where for module in _of(NO_TRIO) for where in imports_top_level(module, "trio")]
    assert found == []


def test_pure_folders_never_touch_sockets_or_tls() -> None:
    found = [where for module in _of(PURE) for where in forbidden_imports(module, PURE_BANNED)]
    assert found == []


def test_pure_folders_never_await() -> None:
    found = [where for module in _of(PURE) for where in async_constructs(module)]
    assert found == []


def test_only_the_cli_imports_click() -> None:
    found = [where for module in MODULES if not within(module.name, CLI)
             for where in imports_top_level(module, "click")]
    assert found == []


def test_only_the_cli_calls_trio_run() -> None:
    found = [where for module in MODULES if not within(module.name, CLI)
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
    "fixproxy.kalshi", "fixproxy.config", "fixproxy.config.loader", "fixproxy.session",
    "fixproxy.session.machine", "fixproxy.ops", "fixproxy.ops.metrics", "fixproxy.net",
    "fixproxy.net.tls", "fixproxy.proxy", "fixproxy.proxy.manager", "fixproxy.proxy.relay",
    "fixproxy.proxy.server", "fixproxy.cli", "fixproxy.cli.main", "fixproxy.sim",
    "fixproxy.sim.gateway", "fixproxy.unplaced",
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
    assert imports_top_level(parse("fixproxy.session.machine", source), "trio")


@pytest.mark.parametrize("source", ["import trio_websocket", "import triopy", "x = 'trio'"])
def test_checker_ignores_names_that_only_look_like_trio(source: str) -> None:
    assert imports_top_level(parse("fixproxy.session.machine", source), "trio") == []


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
    assert trio_run_uses(parse("fixproxy.proxy.server", source))


@pytest.mark.parametrize("source", [
    "import trio\ntrio.from_thread.run(f)\n",
    "import trio\ntrio.run_process(['x'])\n",
    "import other\nother.run()\n",
])
def test_checker_ignores_other_runs(source: str) -> None:
    assert trio_run_uses(parse("fixproxy.proxy.server", source)) == []


@pytest.mark.parametrize("source", ["import socket", "import ssl", "from socket import socket",
                                    "import trio.socket"])
def test_checker_finds_socket_imports(source: str) -> None:
    assert forbidden_imports(parse("fixproxy.session.peers", source), PURE_BANNED)


@pytest.mark.parametrize(("name", "source", "is_package"), [
    ("fixproxy.session.machine", "from fixproxy.proxy.admit import x", False),
    ("fixproxy.session.machine", "from ..proxy import relay", False),
    ("fixproxy.session.machine", "import fixproxy.proxy.server", False),
    ("fixproxy.fix.codec", "from fixproxy.ops import metrics", False),
    ("fixproxy.fix.codec", "from ..session import machine", False),
    ("fixproxy.fix", "from ..net import tls", True),
    ("fixproxy.errors", "from fixproxy.fix import tags", False),
    ("fixproxy.kalshi", "from fixproxy.errors import ConfigError", False),
    ("fixproxy", "from fixproxy.config import loader", True),
    ("fixproxy.net.tls", "from fixproxy.proxy.manager import M", False),
    ("fixproxy.net.tls", "from fixproxy.fix import tags", False),
    ("fixproxy.net.tls", "from fixproxy.session.machine import State", False),
    ("fixproxy.proxy.relay", "from fixproxy.cli.main import main", False),
    ("fixproxy.proxy.server", "from fixproxy.sim.gateway import SimGateway", False),
    ("fixproxy.sim.gateway", "from fixproxy.proxy.admit import r", False),
    ("fixproxy.sim.gateway", "from fixproxy.session.machine import State", False),
    ("fixproxy.sim", "from fixproxy.cli import main", True),
    ("fixproxy.config.loader", "from fixproxy.ops.metrics import M", False),
    ("fixproxy.kalshi", "from fixproxy.unplaced import x", False),
    ("fixproxy.unplaced", "", False),
    ("fixproxy.fixtures", "", False),
])
def test_checker_finds_layer_violations(name: str, source: str, is_package: bool) -> None:
    module = parse(name, source, is_package=is_package)
    assert layer_violations(module, SYNTHETIC_KNOWN | {name})


@pytest.mark.parametrize(("name", "source", "is_package"), [
    ("fixproxy.config.loader", "from fixproxy.fix.logon import LogonPolicy\n"
     "import fixproxy.kalshi\nfrom fixproxy.session.machine import S", False),
    ("fixproxy.fix.codec", "from . import tags\nfrom fixproxy.errors import FramingError", False),
    ("fixproxy.ops.metrics", "from fixproxy import __version__\nfrom fixproxy.kalshi import K",
     False),
    ("fixproxy.proxy.relay", "from fixproxy.net.tls import T\n"
     "from fixproxy.session.machine import S\nfrom .manager import M", False),
    ("fixproxy.cli.main", "from fixproxy.proxy.server import s\nfrom fixproxy.sim import d",
     False),
    ("fixproxy.sim.gateway", "from fixproxy.fix.codec import c\nfrom .certs import C", False),
    ("fixproxy.sim", "from fixproxy.sim.gateway import SimGateway", True),
    ("fixproxy.fix.newcodec", "import os\nimport fixproxy.fix.tags", False),
    ("fixproxy.net.streams", "from fixproxy.config.loader import TLSPolicy", False),
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
    assert wildcard_addresses(parse("fixproxy.proxy.server", source))


def test_checker_allows_wildcard_address_in_docstrings() -> None:
    source = '"""We never bind 0.0.0.0."""\ndef f():\n    """Not 0.0.0.0."""\n    return 1\n'
    assert wildcard_addresses(parse("fixproxy.proxy.server", source)) == []
