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
                   "re", "sys", "typing", "zlib", "yaml", "collections", "itertools", "functools", "enum"}


# The two core modules that may do more, and why: vipfarm_bpf names its own folder (os.path);
# vipfarm.kubeconfig is the one loader of API credentials that the agent and the operator share.
CORE_EXCEPTIONS = {"vipfarm_bpf": {"os"}, "vipfarm.kubeconfig": {"kubernetes", "os"}}


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
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
                out.update([mod] if node.module else [f"{mod}.{a.name}" for a in node.names])
            else:
                out.add(node.module)
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
    mine = layer(name)
    bad = {i for i in imported_ours(name) if layer(i) not in ("core", mine)}
    assert not bad, f"{name} ({mine}) imports {sorted(bad)}: adapters never import each other, the lab or an entry point"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if layer(n) == "lab"))
def test_the_lab_uses_the_agent_and_the_core_but_not_the_operator(name):
    bad = {i for i in imported_ours(name) if layer(i) in ("vipfarm_operator", "entry")}
    assert not bad, f"{name} (lab) imports {sorted(bad)}"


def imported_ours(name: str) -> set[str]:
    """Our modules a module imports, as module names (a `from pkg import mod` names the module)."""
    out = set()
    for i in imports_of(name):
        if top(i) not in OURS:
            continue
        out.add(i if i in MODULES or top(i) in ("tests", "bench") else i.rpartition(".")[0] or i)
    return out
