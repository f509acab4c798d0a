"""The layer rules of docs/architecture.md, checked on the source: each layer
imports only from the layers below it (imports under TYPE_CHECKING and inside
functions count too), and the message layer imports no Twisted.

Every package and module under sipshield/ must be placed in ``FORBIDDEN``:
a new one fails here until someone decides where it stands.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent.parent / "sipshield"

_ABOVE_PROXY = {"routing", "auth", "security", "ops", "plugins", "service", "workers", "tap", "cli"}
_WIRING = {"service", "workers", "tap", "cli"}

FORBIDDEN: dict[str, set[str]] = {
    # the sans-IO message layer: nothing from sipshield outside message, and no Twisted
    "message": {"*"},
    "transport": {"transaction", "proxy", "state"} | _ABOVE_PROXY,
    "transaction": {"proxy", "state"} | _ABOVE_PROXY,
    "proxy": {"state"} | _ABOVE_PROXY,
    "routing": {"auth", "security", "ops"} | _WIRING,
    "auth": {"security", "ops"} | _WIRING,
    "security": {"ops"} | _WIRING,
    "state": {"transport", "transaction", "proxy"} | _ABOVE_PROXY,
    "plugins": {"ops"} | _WIRING,
    "ops": {"plugins"} | _WIRING,
    # modules beside the layers, that any layer may use
    "config": {"message", "transport", "transaction", "proxy", "state"} | _ABOVE_PROXY,
    "interfaces": {"transport", "transaction", "proxy"} | _ABOVE_PROXY,
    "events": {"message", "transport", "transaction", "proxy", "state", "config", "interfaces", "environment"} | _ABOVE_PROXY,
    "environment": {"ops"} | _WIRING,
    "_ratelog": {"*"},
    "_tally": {"*"},
    # wiring, at the top
    "service": {"workers", "tap", "cli"},
    "workers": {"service", "tap", "cli"},  # the supervisor: config and the transports' listener only
    "tap": {"cli"},
    "cli": set(),
    "__init__": {"*"},
}
NO_TWISTED = {"message"}


def _layer(path: Path) -> str:
    parts = path.relative_to(PACKAGE).with_suffix("").parts
    return parts[0]


def _imported(tree: ast.AST, module: str, is_package: bool) -> list[tuple[int, str]]:
    """Every module name imported anywhere in ``tree`` (relative ones resolved)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            name = node.module or ""
            if node.level:
                base = module.split(".")
                base = base[: len(base) - node.level + (1 if is_package else 0)]
                name = ".".join(base + ([name] if name else []))
            found.append((node.lineno, name))
            # ``from sipshield import routing`` imports the subpackage
            if name == "sipshield":
                found += [(node.lineno, f"sipshield.{alias.name}") for alias in node.names]
    return found


def violations(layer: str, module: str, source: str, is_package: bool = False) -> list[str]:
    """What ``source`` (module ``module`` of ``layer``) imports against the rules."""
    forbidden = FORBIDDEN[layer]
    wrong = []
    for line, name in _imported(ast.parse(source), module, is_package):
        parts = name.split(".")
        if parts[0] in ("twisted", "zope") and layer in NO_TWISTED:
            wrong.append(f"{module}:{line} imports {name} (no Twisted in {layer})")
        if parts[0] != "sipshield" or len(parts) < 2 or parts[1] == layer:
            continue
        if "*" in forbidden or parts[1] in forbidden:
            wrong.append(f"{module}:{line} imports {name} ({layer} may not import {parts[1]})")
    return wrong


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_place_in_the_layers() -> None:
    unplaced = sorted({_layer(path) for path in _modules()} - set(FORBIDDEN))
    assert not unplaced, f"add these to FORBIDDEN in {__file__}: {unplaced}"


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_module_imports_only_from_layers_below(path: Path) -> None:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    is_package = parts[-1] == "__init__"
    module = ".".join(parts[:-1] if is_package else parts)
    assert violations(_layer(path), module, path.read_text(), is_package) == []


@pytest.mark.parametrize(
    ("layer", "module", "source"),
    [
        ("proxy", "sipshield.proxy._core", "from sipshield.routing import Decision"),
        ("proxy", "sipshield.proxy._core", "if TYPE_CHECKING:\n    from sipshield.auth import x"),
        ("proxy", "sipshield.proxy._core", "def f():\n    import sipshield.plugins"),
        ("proxy", "sipshield.proxy._core", "from ..routing import Pipeline"),
        ("proxy", "sipshield.proxy._core", "from sipshield import routing"),
        ("message", "sipshield.message._uri", "from twisted.internet import reactor"),
        ("message", "sipshield.message._uri", "from sipshield.config import Config"),
        ("transaction", "sipshield.transaction._layer", "from sipshield.proxy import ProxyCore"),
        ("transport", "sipshield.transport._udp", "from sipshield.routing._stages import X"),
    ],
)
def test_the_check_catches_an_upward_import(layer: str, module: str, source: str) -> None:
    assert violations(layer, module, source)


def test_the_check_allows_imports_from_below_and_within() -> None:
    source = "from sipshield.message import Request\nfrom sipshield.proxy._forward import x\nfrom ._branch import y\nfrom twisted.logger import Logger"
    assert violations("proxy", "sipshield.proxy._core", source) == []
