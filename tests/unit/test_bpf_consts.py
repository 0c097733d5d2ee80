"""nodeagent/bpf_consts.py mirrors bpf/vipfarm_consts.h value for value."""
from __future__ import annotations

import ast
import operator
import os
import re

import pytest

from nodeagent import bpf_consts
from vipfarm_bpf import SOURCE_DIR as BPF_DIR
from vipfarm import spec

HEADER = os.path.join(BPF_DIR, "vipfarm_consts.h")
_DEFINE = re.compile(r"^\s*#\s*define\s+VF_([A-Z0-9_]+)[ \t]+(.+?)\s*$", re.MULTILINE)
_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.floordiv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
           ast.LShift: operator.lshift, ast.RShift: operator.rshift, ast.BitOr: operator.or_,
           ast.BitAnd: operator.and_}


def _c_int_expr(text: str, known: dict[str, int]) -> int:
    """Evaluate a C integer constant expression made of literals, VF_ names and + - * / % << >> | &."""
    text = re.sub(r"(?<=\d)[uUlL]+\b", "", text)

    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, int):
            return node.value
        if isinstance(node, ast.Name) and node.id.startswith("VF_") and node.id[3:] in known:
            return known[node.id[3:]]
        if isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
            return _BINOPS[type(node.op)](ev(node.left), ev(node.right))
        if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
            return -ev(node.operand)
        raise ValueError(f"not a C integer constant expression: {text!r}")

    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"not a C integer constant expression: {text!r}") from e
    return ev(tree)


def header_constants() -> dict[str, int]:
    with open(HEADER, encoding="utf-8") as f:
        source = f.read()
    source = re.sub(r"/\*.*?\*/", " ", source, flags=re.DOTALL)
    source = re.sub(r"//[^\n]*", " ", source)
    out: dict[str, int] = {}
    for name, value in _DEFINE.findall(source):
        out[name] = _c_int_expr(value, out)
    return out


CONSTS = header_constants()
MIRRORED = ["MAX_FARMS", "MAX_VIPS_PER_IFACE", "MAX_RULES", "MAX_BUCKETS", "TABLE_WORDS", "GLOBAL_SLOT",
            "MAX_UDP_FLOWS",
            "NCOUNTERS", "AFF_CLIENTIP", "AFF_CLIENTIPPORT", "FAMILY_V4", "FAMILY_V6",
            "MAX_EXT_HDRS", "MAX_EXT_OFFSET", "NA_FRAME_LEN", "TCP_SYN", "TCP_ACK"] + sorted(n for n in CONSTS if n.startswith("CNT_"))
# Defined in the header but, by design, not a value the agent mirrors.
NOT_MIRRORED = {"ANSWER_NEIGH"}     # a compile-time switch the agent passes with -D


def test_header_parser_reads_literals_and_expressions():
    assert CONSTS["MAX_FARMS"] == 32
    assert CONSTS["TABLE_WORDS"] == CONSTS["MAX_BUCKETS"] // 64
    assert CONSTS["GLOBAL_SLOT"] == CONSTS["MAX_FARMS"]
    assert _c_int_expr("(VF_A * 2 + 1u)", {"A": 5}) == 11
    with pytest.raises(ValueError):
        _c_int_expr("sizeof(struct x)", {})


def test_header_defines_every_counter_index_once_below_ncounters():
    counters = {n: v for n, v in CONSTS.items() if n.startswith("CNT_")}
    assert len(counters) == CONSTS["NCOUNTERS"]
    assert sorted(counters.values()) == list(range(CONSTS["NCOUNTERS"]))


@pytest.mark.parametrize("name", MIRRORED)
def test_python_mirror_equals_the_c_header(name):
    assert name in CONSTS, f"VF_{name} is not defined in {HEADER}"
    assert hasattr(bpf_consts, name), f"nodeagent/bpf_consts.py does not define {name}"
    assert getattr(bpf_consts, name) == CONSTS[name], (
        f"bpf_consts.{name}={getattr(bpf_consts, name)} but VF_{name}={CONSTS[name]} in vipfarm_consts.h")


def test_every_header_constant_has_a_python_mirror():
    missing = sorted(n for n in CONSTS if n not in NOT_MIRRORED and not hasattr(bpf_consts, n))
    assert missing == [], f"constants in vipfarm_consts.h without a mirror in bpf_consts.py: {missing}"


def test_every_python_counter_index_exists_in_the_header():
    py_counters = {n for n in vars(bpf_consts) if n.startswith("CNT_")}
    assert py_counters == {n for n in CONSTS if n.startswith("CNT_")}


def test_counter_names_follow_the_counter_indices():
    assert len(bpf_consts.COUNTER_NAMES) == bpf_consts.NCOUNTERS
    for name, value in CONSTS.items():
        if name.startswith("CNT_"):
            assert bpf_consts.COUNTER_NAMES[value] == name[4:].lower()


def test_na_frame_length_is_ethernet_plus_ipv6_plus_na_plus_option():
    assert bpf_consts.NA_FRAME_LEN == 14 + 40 + 24 + 8


def test_xdp_actions_match_the_kernel_abi():
    # enum xdp_action in linux/bpf.h: a stable kernel ABI
    assert (bpf_consts.XDP_ABORTED, bpf_consts.XDP_DROP, bpf_consts.XDP_PASS, bpf_consts.XDP_TX) == (0, 1, 2, 3)


def test_spec_limits_fit_the_filter():
    assert spec.MAX_RULES == bpf_consts.MAX_RULES
    assert spec.MAX_BUCKETS == bpf_consts.MAX_BUCKETS
    # one farm's VIPs must fit in the per-interface VIP table
    assert spec.MAX_VIPS_PER_FARM <= bpf_consts.MAX_VIPS_PER_IFACE
