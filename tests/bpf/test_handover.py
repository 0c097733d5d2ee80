"""BPF tier: the handover verdicts (moving buckets) of the real program, against the model.

In a bucket whose moving bit is set, a TCP packet whose 4-tuple this node's kernel knows is
taken by state whoever owns the bucket; a SYN (no ACK) goes to the owner (a SYN meeting only a
TIME_WAIT socket too); an unknown non-SYN is dropped by every node. bpf_skc_lookup_tcp searches
the namespace of the BPF_PROG_TEST_RUN caller, so everything here runs on a thread inside a
namespace of its own (tests/support/netns_thread.py) holding a real listener on the VIP, real
established connections to it and real TIME_WAIT sockets; the model is told exactly those.
"""
from __future__ import annotations

import ipaddress
import random
from collections import Counter

import pytest

from nodeagent.bpf_consts import (CNT_ACCEPTED, CNT_DROPPED, CNT_HANDOVER_KEPT, CNT_HANDOVER_UNKNOWN_DROPPED,
                                  FAMILY_V4, XDP_DROP, XDP_PASS)
from nodeagent.filter_plan import FarmOwnership, build_plan
from tests.bpf.test_filter_vs_model import (OWN_MAC, TCP_FLAG_MIX, VIP4, Loaded, compare_random_frames,
                                            farm_doc)
from tests.support import framegen
from tests.support.filter_model import TCP_ESTABLISHED, TCP_TIME_WAIT, FilterModel, SocketQuery
from tests.support.netns_thread import NetnsThread
from tests.support.real_flows import CLIENT4, RealFlows
from vipfarm.hashing import bucket_of
from vipfarm.spec import parse_farm

SYN, ACK, PSH_ACK, FIN_ACK, RST, SYN_ACK = 0x02, 0x10, 0x18, 0x11, 0x04, 0x12
NON_SYN = (ACK, PSH_ACK, FIN_ACK, RST, SYN_ACK, 0x00)


WEB, BUCKETS = 0, 1024


def web_farm():
    return parse_farm(farm_doc("web", ["203.0.113.10", "2001:db8::10", "203.0.113.11"], BUCKETS, [
        {"protocol": "TCP", "ports": "80", "affinity": "ClientIPPort"},
        {"protocol": "UDP", "ports": "5000-5100", "affinity": "ClientIPPort"},
        {"protocol": "TCP", "ports": "443", "affinity": "ClientIP"},
    ]))


class Node:
    """The filter, its model and the real sockets, all in one namespace of their own."""

    def __init__(self, ns: NetnsThread):
        self.ns = ns
        self.farm = web_farm()
        self.sockets = ns.call(lambda: RealFlows(est4=24, est6=12, tw4=6, tw6=4).build())
        self.loaded = Loaded(True, build_plan([FarmOwnership(self.farm, frozenset())], {"web": WEB}))

    def program(self, owned, moving) -> None:
        plan = build_plan([FarmOwnership(self.farm, frozenset(owned), frozenset(moving))], {"web": WEB})
        self.loaded.tables.apply(plan)
        self.loaded.model = FilterModel(plan, OWN_MAC, True, sockets=self.sockets.lookup)

    def bucket(self, q: SocketQuery) -> int:
        return bucket_of(q.client, q.sport, self.farm.seed, BUCKETS)

    def run(self, frame: bytes):
        return self.ns.call(self.loaded.run, frame)


@pytest.fixture(scope="module")
def node():
    with NetnsThread() as ns:
        n = Node(ns)
        try:
            yield n
        finally:
            ns.call(n.sockets.close)


def tcp_frame(q: SocketQuery, flags: int) -> bytes:
    l4 = framegen.tcp(q.sport, q.dport, flags=flags)
    if q.family == FAMILY_V4:
        return framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(q.client, q.local, 6, l4)
    return framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x86DD) + framegen.ipv6(q.client, q.local, 6, l4)


def of_state(node, state):
    return [q for q, st in node.sockets.known.items() if st == state]


def unknown_queries(node, n: int, seed: int) -> list[SocketQuery]:
    """4-tuples to the VIP's listening port that no socket of the namespace has."""
    rng = random.Random(seed)
    out = []
    while len(out) < n:
        q = SocketQuery(FAMILY_V4, ipaddress.ip_address(CLIENT4).packed, rng.randrange(1024, 65536), VIP4, 80)
        if q not in node.sockets.known:
            out.append(q)
    return out


def test_segments_of_established_flows_in_a_moving_bucket_are_taken_by_state_on_a_node_that_does_not_own_it(node):
    """The old owner keeps its flows: every non-SYN segment of its established connections
    (v4 and v6), in buckets now moving and owned by another node, is passed up with our MAC."""
    est = of_state(node, TCP_ESTABLISHED)
    node.program(owned=(), moving={node.bucket(q) for q in est})
    before = node.loaded.counters()
    for q in est:
        for flags in NON_SYN:
            got, _ = node.run(tcp_frame(q, flags))
            assert got.verdict == XDP_PASS, f"{q} flags={flags:#x}: the old owner's flow was dropped"
            assert got.frame[:6] == OWN_MAC
    after = node.loaded.counters()
    assert after[(WEB, CNT_HANDOVER_KEPT)] - before[(WEB, CNT_HANDOVER_KEPT)] == len(est) * len(NON_SYN)


def test_without_the_moving_bit_the_same_segments_go_to_the_owner_only(node):
    est = of_state(node, TCP_ESTABLISHED)
    node.program(owned=(), moving=())
    assert all(node.run(tcp_frame(q, ACK))[0].verdict == XDP_DROP for q in est)
    node.program(owned={node.bucket(q) for q in est}, moving=())
    assert all(node.run(tcp_frame(q, ACK))[0].verdict == XDP_PASS for q in est)


def test_an_unknown_non_syn_in_a_moving_bucket_is_dropped_even_by_its_owner(node):
    """No node answers another node's flow with a RST while the bucket moves; the owner still
    takes the SYN of a new connection in it."""
    unknown = unknown_queries(node, 40, seed=1)
    buckets = {node.bucket(q) for q in unknown}
    node.program(owned=buckets, moving=buckets)
    before = node.loaded.counters()
    for q in unknown:
        assert node.run(tcp_frame(q, ACK))[0].verdict == XDP_DROP, q
        assert node.run(tcp_frame(q, SYN))[0].verdict == XDP_PASS, q
    after = node.loaded.counters()
    assert after[(WEB, CNT_HANDOVER_UNKNOWN_DROPPED)] - before[(WEB, CNT_HANDOVER_UNKNOWN_DROPPED)] == len(unknown)
    assert after[(WEB, CNT_ACCEPTED)] - before[(WEB, CNT_ACCEPTED)] == len(unknown)


def test_a_syn_meeting_a_time_wait_socket_in_a_moving_bucket_goes_to_the_owner_not_by_state(node):
    """A new connection reusing a 4-tuple the old owner holds in TIME_WAIT must be answered
    once, by the owner; the TIME_WAIT's other segments (a late FIN's ACK) are still taken by state."""
    tw = of_state(node, TCP_TIME_WAIT)
    assert tw, "no TIME_WAIT socket was made"
    buckets = {node.bucket(q) for q in tw}
    node.program(owned=(), moving=buckets)
    for q in tw:
        assert node.run(tcp_frame(q, SYN))[0].verdict == XDP_DROP, q
        assert node.run(tcp_frame(q, ACK))[0].verdict == XDP_PASS, q
    node.program(owned=buckets, moving=buckets)
    before = node.loaded.counters()
    for q in tw:
        assert node.run(tcp_frame(q, SYN))[0].verdict == XDP_PASS, q
    after = node.loaded.counters()
    assert after[(WEB, CNT_ACCEPTED)] - before[(WEB, CNT_ACCEPTED)] == len(tw)


def test_a_listener_alone_does_not_keep_a_segment(node):
    """Every 4-tuple to VIP:80 matches the listener; only a real flow's socket counts."""
    unknown = unknown_queries(node, 20, seed=2)
    node.program(owned=(), moving={node.bucket(q) for q in unknown})
    assert all(node.run(tcp_frame(q, ACK))[0].verdict == XDP_DROP for q in unknown)
    assert all(node.run(tcp_frame(q, SYN))[0].verdict == XDP_DROP for q in unknown)


@pytest.mark.parametrize("seed", [11, 12, 13, 14])
def test_random_frames_and_real_flows_under_random_owned_and_moving_buckets_agree_with_the_model(node, seed):
    """Random frames of every kind plus every flag mix on the real sockets' 4-tuples, with a
    random half of the buckets owned and a random part moving (all the known flows' buckets
    in some rounds): verdict, counter, bucket and bytes as the model says."""
    rng = random.Random(seed)
    known_buckets = {node.bucket(q) for q in node.sockets.known}
    moving = {b for b in range(BUCKETS) if rng.random() < 0.3}
    if seed % 2:
        moving |= known_buckets
    node.program(owned={b for b in range(BUCKETS) if rng.random() < 0.5}, moving=moving)
    seen = node.ns.call(compare_random_frames, node.loaded, seed, 5000, TCP_FLAG_MIX)
    assert seen[CNT_HANDOVER_UNKNOWN_DROPPED] > 30, "few random non-SYNs hit a moving bucket"
    # The real flows, every flag mix, through the same comparison.
    expected, got_counters = Counter(), node.loaded.counters()
    for q in node.sockets.known:
        for flags in TCP_FLAG_MIX:
            frame = tcp_frame(q, flags)
            want = node.loaded.model.decide(frame)
            got, bucket = node.run(frame)
            assert (got.verdict, bucket) == (want.verdict, want.bucket), f"{q} flags={flags:#x}: {frame.hex()}"
            if want.verdict == XDP_PASS:
                assert got.frame == want.frame
            expected[want.counter] += 1
    after = node.loaded.counters()
    assert {c: after[(WEB, c)] - got_counters[(WEB, c)] for c in (CNT_ACCEPTED, CNT_DROPPED, CNT_HANDOVER_KEPT,
                                                                  CNT_HANDOVER_UNKNOWN_DROPPED)} == \
        {c: expected[c] for c in (CNT_ACCEPTED, CNT_DROPPED, CNT_HANDOVER_KEPT, CNT_HANDOVER_UNKNOWN_DROPPED)}
    if seed % 2:
        assert expected[CNT_HANDOVER_KEPT] > 100, "the real flows were not taken by state"
