"""The layout's rules, checked on the source: imports flow one way, and nothing shipped
imports test support.

    entry points   nodeagent.main, nodeagent.cli, vipfarm_operator.main
        |
    adapters       nodeagent (the agent), vipfarm_operator (the operator), nodeagent.lab (the lab)
        |
    core           vipfarm (pure), vipfarm_bpf (the BPF sources, data only)

Every import is checked, including those inside functions.
"""
from __future__ import annotations

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PACKAGES = {"vipfarm": "vipfarm", "nodeagent": "nodeagent", "vipfarm_operator": "operator/vipfarm_operator",
            "vipfarm_bpf": "bpf"}
OURS = set(PACKAGES) | {"tests", "bench"}
ENTRY_POINTS = {"nodeagent.main", "nodeagent.cli", "vipfarm_operator.main"}
# The core computes; it does not touch the network, the kernel, processes or the API server.
# (yaml: spec.load_farm_file parses the one file it is given; sys: assignment's byte order.)
CORE_MAY_IMPORT = {"__future__", "array", "base64", "dataclasses", "datetime", "hashlib", "ipaddress",
                   "re", "sys", "typing", "zlib", "yaml", "collections", "itertools", "functools", "enum",
                   "hmac", "struct", "json"}


# The two core modules that may do more, and why: vipfarm_bpf names its own folder (os.path);
# vipfarm.kubeconfig is the one loader of API credentials that the agent and the operator share;
# vipfarm.heartbeat_keys draws a new key's random bytes (generate_key_text).
CORE_EXCEPTIONS = {"vipfarm_bpf": {"os"}, "vipfarm.kubeconfig": {"kubernetes", "os"}, "vipfarm.heartbeat_keys": {"secrets"}}


def modules() -> dict[str, str]:
    """Every shipped module name -> its file."""
    out = {}
    for pkg, folder in PACKAGES.items():
        root = os.path.join(REPO, folder)
        for dirpath, _, files in os.walk(root):
            for f in files:
                if f.endswith(".py"):
                    rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].replace(os.sep, ".")
                    name = pkg if rel == "__init__" else f"{pkg}.{rel.removesuffix('.__init__')}"
                    out[name] = os.path.join(dirpath, f)
    return out


MODULES = modules()


def imports_of(name: str) -> set[str]:
    """The absolute names a module imports (relative imports resolved)."""
    path = MODULES[name]
    with open(path, encoding="utf-8") as f:
        source = f.read()
    return imports_in(source, name, is_package=path.endswith("__init__.py"))


def imports_in(source: str, name: str, *, is_package: bool = False) -> set[str]:
    """Every name an import statement in `source` may bind: for `from a import b`, both `a`
    and `a.b` (b may be a module), so `from nodeagent import lab` counts as importing the lab."""
    package = name if is_package else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(source, name)):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module
            out.add(base)
            out.update(f"{base}.{a.name}" for a in node.names)
    return out


def top(name: str) -> str:
    return name.split(".")[0]


def layer(name: str) -> str:
    if name in ENTRY_POINTS:
        return "entry"
    if top(name) in ("vipfarm", "vipfarm_bpf"):
        return "core"
    if name.startswith("nodeagent.lab"):
        return "lab"
    return top(name)          # nodeagent or vipfarm_operator: the two adapters


def test_the_layout_finds_every_package():
    assert {"vipfarm.spec", "nodeagent.cluster", "nodeagent.lab.namespaces", "vipfarm_operator.handlers",
            "vipfarm_bpf"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_no_shipped_module_imports_test_support(name):
    assert not {i for i in imports_of(name) if top(i) in ("tests", "bench")}, name


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) == "core"))
def test_the_core_imports_nothing_of_ours_outside_itself_and_does_no_io(name):
    imported = imports_of(name)
    ours = {i for i in imported if top(i) in OURS and top(i) != "vipfarm"}
    assert not ours, f"{name} (core) imports {sorted(ours)}"
    allowed = CORE_MAY_IMPORT | CORE_EXCEPTIONS.get(name, set())
    foreign = {top(i) for i in imported if top(i) not in OURS} - allowed
    assert not foreign, f"{name} (core, pure) imports {sorted(foreign)}"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) in ("nodeagent", "vipfarm_operator")))
def test_an_adapter_imports_the_core_and_itself_only(name):
    bad = adapter_violations(name, imports_of(name))
    assert not bad, f"{name} ({layer(name)}) imports {sorted(bad)}: adapters never import each other, the lab or an entry point"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) == "lab"))
def test_the_lab_uses_the_agent_and_the_core_but_not_the_operator(name):
    bad = {i for i in imported_ours(name) if layer(i) in ("vipfarm_operator", "entry")}
    assert not bad, f"{name} (lab) imports {sorted(bad)}"


def imported_ours(name: str, imported: set[str] | None = None) -> set[str]:
    """Our modules a module imports, as module names (a name bound from a module, such as a
    class, counts as that module)."""
    out = set()
    for i in imports_of(name) if imported is None else imported:
        if top(i) not in OURS:
            continue
        while i not in MODULES and "." in i and top(i) not in ("tests", "bench"):
            i = i.rpartition(".")[0]
        out.add(i)
    return out


def adapter_violations(name: str, imported: set[str]) -> set[str]:
    mine = layer(name)
    return {i for i in imported_ours(name, imported) if layer(i) not in ("core", mine)}


@pytest.mark.parametrize("source", ["from nodeagent import lab", "from nodeagent import main",
                                    "from .lab import namespaces", "from . import cli",
                                    "import vipfarm_operator.kube", "from vipfarm_operator import handlers"])
def test_the_checker_catches_every_spelling_of_a_forbidden_import(source):
    assert adapter_violations("nodeagent.cluster", imports_in(source, "nodeagent.cluster")), source


@pytest.mark.parametrize("source", ["from nodeagent import netconfig", "from . import farmnode_report as pacing",
                                    "from vipfarm.spec import parse_farm", "import vipfarm.assignment"])
def test_the_checker_lets_an_adapter_import_itself_and_the_core(source):
    assert not adapter_violations("nodeagent.cluster", imports_in(source, "nodeagent.cluster")), source


def test_the_tests_run_the_code_of_this_checkout():
    """A shared or stale venv must not make the tests import (or compile) another tree's code."""
    import nodeagent
    import vipfarm
    import vipfarm_bpf
    import vipfarm_operator
    for mod, folder in ((vipfarm, "vipfarm"), (nodeagent, "nodeagent"), (vipfarm_operator, "operator/vipfarm_operator"),
                        (vipfarm_bpf, "bpf")):
        assert os.path.dirname(os.path.realpath(mod.__file__)) == os.path.realpath(os.path.join(REPO, folder)), mod
