"""parse_farm on randomly mutated Farm documents: it either refuses the document with a
FarmSpecError or returns a Farm that keeps every invariant the agent relies on (names safe in
paths and compiler macros, unicast member and virtual addresses, a name the kernel accepts as
an interface, ...). Never any other exception, and never a change to the input.

The invariants are checked by code of their own here, not by calling the validator's helpers,
so a hole in a helper shows up as a broken invariant.
"""
from __future__ import annotations

import copy
import ipaddress
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.support.farm_mutations import VALID_FARM, all_paths, get, mutate
from vipfarm.spec import AFFINITIES, PROTOCOLS, VMAC_MODES, XDP_MODES, Farm, FarmSpecError, parse_farm

_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*")
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_MAC = re.compile(r"[0-9a-f]{2}(:[0-9a-f]{2}){5}")
# dev_valid_name(): '/', ':', NUL, isspace(); and '"', '\\' that a C string (the pin path macro) cannot hold
_IFNAME_BAD = set(b"/:\x00 \t\n\r\x0b\x0c\xa0\"\\")
_NOT_UNICAST = [ipaddress.ip_network(n) for n in
                ("0.0.0.0/32", "255.255.255.255/32", "224.0.0.0/4", "127.0.0.0/8", "::/128", "::1/128", "ff00::/8")]
def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


_LINK_LOCAL = [ipaddress.ip_network(n) for n in ("169.254.0.0/16", "fe80::/10")]


def _is_plain_int(v, low, high) -> bool:
    return type(v) is int and low <= v <= high


def _plain_address(ip) -> bool:
    """An IPv4Address or IPv6Address without zone and not IPv4-mapped."""
    if isinstance(ip, ipaddress.IPv4Address):
        return True
    return isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is None and ip.ipv4_mapped is None


def _in_any(ip, networks) -> bool:
    return any(ip.version == n.version and ip in n for n in networks)


def assert_farm_invariants(farm: Farm) -> None:
    assert isinstance(farm, Farm)
    assert isinstance(farm.name, str) and len(farm.name) <= 63 and _LABEL.fullmatch(farm.name), farm.name

    assert 1 <= len(farm.virtual_ips) <= 16
    assert len(set(farm.virtual_ips)) == len(farm.virtual_ips)
    for ip in farm.virtual_ips:
        assert _plain_address(ip), ip
        assert not _in_any(ip, _NOT_UNICAST) and not _in_any(ip, _LINK_LOCAL), ip

    raw = farm.interface.encode("utf-8")
    assert 1 <= len(raw) <= 15 and farm.interface not in (".", "..") and not set(raw) & _IFNAME_BAD, farm.interface
    assert not any(ch.isspace() for ch in farm.interface)

    assert _is_plain_int(farm.buckets, 1, 65536) and farm.buckets & (farm.buckets - 1) == 0
    assert farm.vmac_mode in VMAC_MODES and farm.xdp_mode in XDP_MODES

    assert len(farm.rules) <= 8
    for rule in farm.rules:
        assert rule.protocol in PROTOCOLS and rule.affinity in AFFINITIES
        assert _is_plain_int(rule.ports.low, 1, 65535) and _is_plain_int(rule.ports.high, 1, 65535)
        assert rule.ports.low <= rule.ports.high

    assert len(farm.nodes) <= 64
    names = [n.name for n in farm.nodes]
    addrs = [n.address for n in farm.nodes]
    assert len(set(names)) == len(names) and len(set(addrs)) == len(addrs)
    for node in farm.nodes:
        assert isinstance(node.name, str) and len(node.name) <= 253 and _SUBDOMAIN.fullmatch(node.name), node.name
        assert "/" not in node.name and "\x00" not in node.name and ".." not in node.name
        assert not _is_ip(node.name), node.name
        assert _plain_address(node.address) and not _in_any(node.address, _NOT_UNICAST), node.address
        assert node.address not in farm.virtual_ips, node.address
        assert _is_plain_int(node.weight, 0, 1000), node.weight
        assert type(node.drain) is bool, node.drain

    assert isinstance(farm.node_selector, dict)
    assert all(type(k) is str and type(v) is str for k, v in farm.node_selector.items())
    assert _is_plain_int(farm.seed, 0, 2**32 - 1)
    assert _MAC.fullmatch(farm.virtual_mac), farm.virtual_mac
    group = int(farm.virtual_mac[:2], 16) & 1
    assert group == (1 if farm.vmac_mode == "multicast" else 0), (farm.vmac_mode, farm.virtual_mac)
    hb = farm.heartbeat
    assert _is_plain_int(hb.port, 1, 65535) and _is_plain_int(hb.interval_ms, 10, 60000)
    assert _is_plain_int(hb.timeout_ms, 30, 600000) and hb.timeout_ms >= 3 * hb.interval_ms
    assert hb.key_file == "" or (hb.key_file.startswith("/") and "\x00" not in hb.key_file), hb.key_file
    assert _is_plain_int(farm.handover.drain_timeout_seconds, 1, 86400), farm.handover
    assert _is_plain_int(farm.handover.udp_idle_seconds, 1, 3600), farm.handover
    assert_checker_invariants(farm)


_TYPE_FIELDS = {"tcp": {"port", "host"}, "http": {"port", "host", "path", "expect_status"}, "exec": {"command"},
                "interface": {"interface"}}
_EMPTY = {"port": 0, "host": "", "path": "", "expect_status": (), "command": (), "interface": ""}


def _command_ok(command) -> bool:
    return (type(command) is tuple and 1 <= len(command) <= 64 and bool(command[0])
            and all(type(a) is str and "\x00" not in a for a in command))


def assert_checker_invariants(farm: Farm) -> None:
    assert len(farm.checkers) <= 16
    names = [c.name for c in farm.checkers]
    assert len(set(names)) == len(names), names
    for c in farm.checkers:
        assert _LABEL.fullmatch(c.name) and len(c.name) <= 63, c.name
        assert c.type in _TYPE_FIELDS, c.type
        for fname, empty in _EMPTY.items():     # a field of another type is never set
            if fname not in _TYPE_FIELDS[c.type]:
                assert getattr(c, fname) == empty, (c.type, fname, getattr(c, fname))
        if c.type in ("tcp", "http"):
            assert _is_plain_int(c.port, 1, 65535) and _is_ip(c.host), (c.port, c.host)
        if c.type == "http":
            assert re.fullmatch(r"/[!-~]*", c.path), c.path
            assert 1 <= len(c.expect_status) <= 16 and all(_is_plain_int(s, 100, 599) for s in c.expect_status)
        if c.type == "exec":
            assert _command_ok(c.command), c.command
        if c.type == "interface":
            raw = c.interface.encode("utf-8")
            assert 1 <= len(raw) <= 15 and not set(raw) & _IFNAME_BAD and c.interface not in (".", "..")
        assert _is_plain_int(c.interval_ms, 50, 3600000) and _is_plain_int(c.timeout_ms, 10, c.interval_ms)
        assert _is_plain_int(c.failure_threshold, 1, 100) and _is_plain_int(c.success_threshold, 1, 100)
    r = farm.recovery
    if r is not None:
        assert _command_ok(r.command), r.command
        assert _is_plain_int(r.timeout_seconds, 1, 3600) and _is_plain_int(r.max_restarts, 0, 1000)
        assert _is_plain_int(r.window_seconds, 1, 31536000)


def check_document(doc) -> Farm | None:
    """parse_farm's contract on one document, in both modes."""
    before = copy.deepcopy(doc)
    result = None
    for require_nodes in (False, True):
        try:
            result = parse_farm(doc, require_nodes=require_nodes)
        except FarmSpecError as e:
            assert e.problems and all(isinstance(p, str) and p for p in e.problems), e.problems
            assert isinstance(e.farm, str)
            continue
        assert_farm_invariants(result)
    assert repr(doc) == repr(before), "parse_farm changed its input"
    return result


def test_the_unmutated_document_is_accepted_and_keeps_the_invariants():
    farm = check_document(copy.deepcopy(VALID_FARM))
    assert farm is not None and len(farm.nodes) == 2 and len(farm.checkers) == 4 and farm.recovery is not None


@settings(max_examples=4000, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rng=st.randoms(use_true_random=False))
def test_a_mutated_farm_is_refused_or_keeps_every_invariant(rng):
    check_document(mutate(VALID_FARM, rng))


@settings(max_examples=500, derandomize=True, deadline=None)
@given(rng=st.randoms(use_true_random=False), value=st.one_of(
    st.text(max_size=20), st.integers(), st.booleans(), st.none(), st.floats(),
    st.lists(st.text(max_size=3), max_size=3), st.dictionaries(st.text(max_size=3), st.integers(), max_size=2)))
def test_any_value_at_any_path_is_refused_or_keeps_every_invariant(rng, value):
    doc = copy.deepcopy(VALID_FARM)
    path = rng.choice(all_paths(doc))
    get(doc, path[:-1])[path[-1]] = value
    check_document(doc)
