"""The layers of docs/architecture.md, enforced: imports point down only (cli -> services ->
adapters -> core), pure modules import no IO, and quick commands import nothing heavy."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "p2pmodel"

# Which of our layers each layer may import.
ALLOWED = {
    "core": {"core"},
    "adapters": {"core", "adapters", "root"},
    "services": {"core", "adapters", "services", "root"},
    "cli": {"core", "adapters", "services", "root", "cli"},
    "testing": {"core", "adapters", "services", "root", "testing"},
    "root": {"root"},
}
# What a pure module must not import: IO, clocks, threads, and the IO libraries of the stack.
IMPURE = {
    "os", "io", "sys", "time", "socket", "select", "selectors", "signal", "threading",
    "asyncio", "subprocess", "shutil", "tempfile", "fcntl", "mmap", "ctypes", "importlib",
    "glob", "urllib.request", "http.client", "http.server", "logging", "random", "secrets",
    "uuid", "datetime", "builtins",
    "trio", "httpx", "h11", "libtorrent", "zeroconf", "ifaddr", "rich", "platformdirs",
    "hypercorn", "prometheus_client", "ssl", "cryptography",
}  # fmt: skip
PURE_PATHLIB = {"PurePosixPath", "PurePath"}
HEAVY = ("trio", "httpx", "libtorrent", "zeroconf", "rich", "h11", "platformdirs")
# The adapters others build on (docs/architecture.md); any other adapter owns its outside
# thing alone. A type-only import (under ``if TYPE_CHECKING:``) names a type, nothing more.
ADAPTER_BASES = {"store", "hashing"}
# Services, lowest first: a service imports only services before it (no circle).
SERVICES = [
    "link", "limits", "download", "publish", "peers", "tracker", "swarm", "sharing", "get", "names",
    "keeper", "scrub", "hfendpoint", "control", "dashboard", "metrics", "agent",
]  # fmt: skip


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts in (["p2pmodel"], ["p2pmodel", "__version__"]):
        return "root"
    sub = parts[1]
    if sub in ("core", "adapters", "services", "testing"):
        return sub
    if sub in ("cli", "__main__"):
        return "cli"
    raise AssertionError(f"{module} is in no layer: put it in core/, adapters/ or services/")


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_only(tree: ast.AST) -> set[int]:
    """Lines of the imports under ``if TYPE_CHECKING:``."""
    lines = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                for sub in ast.walk(inner):
                    if isinstance(sub, ast.Import | ast.ImportFrom):
                        lines.add(sub.lineno)
    return lines


def dynamic_imports(source: str) -> list[int]:
    """Lines that import by name at run time (``__import__``, ``import_module``)."""
    out = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call):
            name = ast.unparse(node.func)
            if name.split(".")[-1] in ("__import__", "import_module"):
                out.append(node.lineno)
    return out


def imports(
    source: str, module: str, is_package: bool, *, typed: bool = True
) -> list[tuple[int, str, list[str]]]:
    """(line, imported module, names) for every import, relative ones made absolute;
    ``typed=False`` leaves out type-only imports."""
    out = []
    package = module if is_package else module.rpartition(".")[0]
    tree = ast.parse(source)
    skip = set() if typed else _type_only(tree)
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            names = [a.name for a in node.names]
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
                if node.module is None:  # from . import x: x may be a module
                    out += [(node.lineno, f"{target}.{n}", []) for n in names]
                    continue
                out.append((node.lineno, target, names))
            else:
                out.append((node.lineno, node.module or "", names))
    return out


def _part(module: str, layer: str) -> str:
    parts = module.split(".")
    return parts[2] if len(parts) > 2 and parts[1] == layer else ""


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    layer = layer_of(module)
    found = []
    if layer == "core":
        found += [f"{module}:{n} imports by name at run time" for n in dynamic_imports(source)]
    runtime = {line for line, _, _ in imports(source, module, is_package, typed=False)}
    for line, target, names in imports(source, module, is_package):
        where = f"{module}:{line} imports {target}"
        if target == "p2pmodel" or target.startswith("p2pmodel."):
            to = layer_of(target)
            if to not in ALLOWED[layer]:
                found.append(f"{where}: {layer} may not import {to}")
            mine, theirs = _part(module, layer), _part(target, to)
            if line not in runtime or to != layer or not theirs or mine == theirs:
                continue
            if layer == "adapters" and theirs not in ADAPTER_BASES:
                found.append(f"{where}: an adapter builds only on {sorted(ADAPTER_BASES)}")
            if layer == "services":
                below = SERVICES[: SERVICES.index(mine)] if mine in SERVICES else []
                if theirs not in below:
                    found.append(f"{where}: services import only those before them in SERVICES")
        elif layer == "core":
            top = target.split(".")[0]
            if target in IMPURE or top in IMPURE:
                found.append(f"{where}: core is pure (no IO, clock or IO libraries)")
            if top == "pathlib" and (not names or set(names) - PURE_PATHLIB):
                found.append(f"{where}: core may use only pure paths")
    return found


def sources() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_import_points_down_the_layers() -> None:
    """No module imports a layer above its own, and core imports no IO."""
    found = []
    for path in sources():
        found += violations(path.read_text(), module_name(path), path.name == "__init__.py")
    assert not found, "\n".join(found)


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("p2pmodel.core.peers", "import trio\n"),
        ("p2pmodel.core.peers", "from time import monotonic\n"),
        ("p2pmodel.core.peers", "from pathlib import Path\n"),
        ("p2pmodel.core.peers", "from ..adapters.store import Store\n"),
        ("p2pmodel.adapters.store", "from ..services.agent import Agent\n"),
        ("p2pmodel.services.agent", "def f():\n    from ..cli import main\n"),
        ("p2pmodel.core.wire", "from p2pmodel.services import link\n"),
        ("p2pmodel.core.peers", "import pathlib\n"),
        ("p2pmodel.core.peers", "from datetime import datetime\n"),
        ("p2pmodel.core.peers", "def f():\n    return __import__('os')\n"),
        ("p2pmodel.core.peers", "import importlib\nimportlib.import_module('os')\n"),
        ("p2pmodel.adapters.swarm", "from .discovery import Discovery\n"),
        ("p2pmodel.services.peers", "from .swarm import SwarmService\n"),
        ("p2pmodel.services.get.flow", "from ..agent import Agent\n"),
    ],
)
def test_the_checker_catches_a_wrong_import(module: str, source: str) -> None:
    """Each kind of wrong import, even one inside a function, is reported."""
    assert violations(source, module)


def test_the_checker_accepts_imports_that_point_down() -> None:
    """Imports downwards, pure paths and same-layer imports pass."""
    ok = "from pathlib import PurePosixPath\nfrom .rangeset import RangeSet\nimport hashlib\n"
    assert violations(ok, "p2pmodel.core.fetchplan") == []
    assert violations("from ..core.wire import Hello\n", "p2pmodel.services.link") == []
    assert violations("from .store import Store\n", "p2pmodel.adapters.swarm") == []
    assert violations("from .peers import PeerService\n", "p2pmodel.services.swarm") == []
    typed = "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .agent import Agent\n"
    assert violations(typed, "p2pmodel.services.dashboard") == []
    assert violations("from .reader import BlobReader\n", "p2pmodel.services.get.service") == []


QUICK = """
import json, sys
from p2pmodel import cli
cli.main(sys.argv[1:])
print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in {heavy})), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "--json"],
        ["ls", "--catalog"],
        ["--version"],
        ["rm", "name:tag"],
        ["pin", "name:tag"],
        ["unpin", "name:tag"],
        ["gc"],
        ["mirrors"],
        ["mirrors", "--git-config"],
        ["service", "status"],
        ["key", "new"],
        ["git", "setup", "--print"],
        ["tracker", "whitelist"],
    ],
)
def test_quick_commands_import_nothing_heavy(tmp_path: Path, argv: list[str]) -> None:
    """``ls``, the store and service commands, ``mirrors`` without an agent and ``git setup``
    answer without
    importing trio, httpx, libtorrent, zeroconf or rich."""
    code = QUICK.replace("{heavy}", repr(set(HEAVY)))
    r = subprocess.run(
        [sys.executable, "-c", code, *argv],
        env={"P2PMODEL_HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    last = r.stderr.strip().splitlines()[-1] if r.stderr.strip() else "[]"
    assert json.loads(last) == [], r.stderr
