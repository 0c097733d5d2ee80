"""BPF tier: UDP handover (vf_udp_flows, vf_udp_farm) of the real program, against the model.

In a bucket whose moving bit is set, for a farm whose UDP idle time is set, a UDP packet is
decided by its flow's entry first: a fresh entry (now - last <= idle, a `last` ahead of now
included) takes the packet if it is this node's (udp_kept, whoever owns the bucket and whatever
the lease) and drops it if it is another node's (udp_elsewhere), and either way moves `last`
to now; with no fresh entry, the farm's hold (now < hold_until) drops it (udp_held), else it
goes to the owner with the lease. Buckets not moving, idle 0 and TCP never read the table.

The filter's clock is bpf_ktime_get_ns at the test run, CLOCK_MONOTONIC, time.monotonic_ns():
every state is built relative to it with wide margins (fresh = 1 s old, stale = idle + 5 s
old, holds 60 s ahead or past), so nothing depends on timing. A refreshed `last` is the
kernel's clock at the run: it is checked to lie between the clock read before and after the
run, then copied into the model. Everything runs on a thread in a namespace of its own with no
socket (tests/support/netns_thread.py), so the TCP segments of moving buckets, looked up in
the socket table, find exactly what the model's default says: nothing.
"""
from __future__ import annotations

import ipaddress
import random
import time
from collections import Counter
from dataclasses import replace

import pytest

from nodeagent.bpf_consts import (CNT_ACCEPTED, CNT_DROPPED, CNT_HANDOVER_UNKNOWN_DROPPED, CNT_LEASE_LAPSED,
                                  CNT_UDP_ELSEWHERE, CNT_UDP_HELD, CNT_UDP_KEPT, NCOUNTERS, XDP_DROP, XDP_PASS,
                                  XDP_TX)
from nodeagent.bpf_program import compile_filter, load_filter
from nodeagent.filter_plan import FarmOwnership, build_plan
from nodeagent.filter_tables import FilterTables
from tests.bpf.test_filter_vs_model import OWN_MAC, TCP_FLAG_MIX, Loaded, farm_doc
from tests.support import framegen
from tests.support.bpf_testrun import run_xdp
from tests.support.filter_model import FilterModel
from tests.support.netns_thread import NetnsThread
from vipfarm.spec import parse_farm
from vipfarm.udp_flows import UdpFlow, UdpRecord, flow_order, udp_bucket

WEB, DNS = 0, 5
SECOND = 10**9
IDLE_NS = 30 * SECOND
HOLD_NS = 60 * SECOND
EXPIRED_LEASE = (1, 1 + 100 * 10**6)        # both stages long past
WEB_VIPS = ("203.0.113.10", "203.0.113.11", "2001:db8::10")
DNS_VIPS = ("203.0.113.20", "2001:db8::20")
# Rule ports of both farms, and ports no rule names (UDP there hashes on the client address).
PORTS = (53, 80, 443, 5000, 5050, 5100, 6000, 6005, 7000, 9999)


def web_farm():
    return parse_farm(farm_doc("web", WEB_VIPS, 1024, [
        {"protocol": "TCP", "ports": "80", "affinity": "ClientIPPort"},
        {"protocol": "UDP", "ports": "5000-5100", "affinity": "ClientIPPort"},
        {"protocol": "TCP", "ports": "443", "affinity": "ClientIP"},
        {"protocol": "UDP", "ports": "6000-6010", "affinity": "ClientIP"},
    ]))


def dns_farm():
    return parse_farm(farm_doc("dns", DNS_VIPS, 16, [
        {"protocol": "UDP", "ports": "53", "affinity": "ClientIPPort"},
    ]))


def udp_frame(flow: UdpFlow, data: bytes = b"x") -> bytes:
    l4 = framegen.udp(flow.client_port, flow.vip_port, data)
    if flow.client.version == 4:
        return framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(flow.client.packed, flow.vip.packed, 17, l4)
    return framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x86DD) + framegen.ipv6(flow.client.packed, flow.vip.packed, 17, l4)


def tcp_frame(flow: UdpFlow, flags: int) -> bytes:
    """A TCP segment with the UDP flow's addresses and ports: the UDP table must not decide it."""
    l4 = framegen.tcp(flow.client_port, flow.vip_port, flags=flags)
    if flow.client.version == 4:
        return framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(flow.client.packed, flow.vip.packed, 6, l4)
    return framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x86DD) + framegen.ipv6(flow.client.packed, flow.vip.packed, 6, l4)


def random_flow(rng: random.Random, vips: tuple[str, ...], ports: tuple[int, ...] = PORTS,
                any_port: float = 0.15) -> UdpFlow:
    """A flow from a lab client to one of `vips`, to one of `ports` (or, with probability
    `any_port`, to any port)."""
    vip = ipaddress.ip_address(rng.choice(vips))
    if vip.version == 4:
        client = ipaddress.IPv4Address(bytes([198, 51, 100, rng.randrange(1, 255)]))
    else:
        client = ipaddress.IPv6Address(ipaddress.ip_address("2001:db8:1::").packed[:12] + rng.randbytes(4))
    port = rng.randrange(1, 65536) if rng.random() < any_port else rng.choice(ports)
    return UdpFlow(client, rng.randrange(1024, 65536), vip, port)


class Node:
    """The filter and its model, programmed together; test runs from a namespace of its own."""

    def __init__(self, ns: NetnsThread):
        self.ns = ns
        self.farms = {WEB: web_farm(), DNS: dns_farm()}
        self.loaded = Loaded(True, build_plan([], {}))

    def program(self, owned=None, moving=None, udp=None, records=None, leases=None) -> None:
        """Ownership and moving buckets, UDP settings and records, leases: each a dict by slot
        (absent = none), written to the kernel's maps and to a fresh model alike. The UDP
        tables are emptied first."""
        owned, moving, udp, records = owned or {}, moving or {}, udp or {}, records or {}
        leases = leases or {}
        plan = build_plan([FarmOwnership(f, frozenset(owned.get(s, ())), frozenset(moving.get(s, ())))
                           for s, f in self.farms.items()], {f.name: s for s, f in self.farms.items()})
        t = self.loaded.tables
        t.apply(plan)
        model = FilterModel(plan, OWN_MAC, True)
        for slot in self.farms:
            t.delete_udp_flows(slot, [r.flow for r in t.udp_records(slot)])
            t.write_udp_config(slot, *udp.get(slot, (0, 0)))
            model.write_udp_config(slot, *udp.get(slot, (0, 0)))
            t.put_udp_records(slot, records.get(slot, ()))
            model.put_udp_records(slot, records.get(slot, ()))
            t.write_lease(slot, *leases.get(slot, (0, 0)))
        model.leases = dict(leases)
        self.loaded.model = model

    def bucket(self, slot: int, flow: UdpFlow) -> int:
        return udp_bucket(self.farms[slot], flow)

    def run(self, frame: bytes):
        return self.ns.call(self.loaded.run, frame)

    def counters(self, slot: int) -> Counter:
        c = self.loaded.counters()
        return Counter({k: c[(slot, k)] for k in range(NCOUNTERS)})


@pytest.fixture(scope="module")
def node():
    with NetnsThread(prefix="vfudp") as ns:
        yield Node(ns)


def flow_in(node, slot: int, seed: int, ports=(5000,)) -> UdpFlow:
    """A flow to one of the slot's VIPs (either family, by seed) and one of `ports`."""
    vips = WEB_VIPS if slot == WEB else DNS_VIPS
    return random_flow(random.Random(seed), vips, ports, any_port=0)


def record(node, slot: int, flow: UdpFlow, age_ns: int, mine: bool) -> UdpRecord:
    return UdpRecord(flow, time.monotonic_ns() - age_ns, mine, node.bucket(slot, flow))


def check_one(node, slot: int, flow: UdpFlow, counter: int, verdict: int) -> None:
    """One UDP packet of `flow`: the kernel's verdict, counter and bucket are the expected ones
    and the model's; the flow's record (if any) is the model's, a refresh within the run."""
    frame = udp_frame(flow)
    before_counters = node.counters(slot)
    t0 = time.monotonic_ns()
    want = node.loaded.model.decide(frame, now_ns=t0)
    got, bucket = node.run(frame)
    t1 = time.monotonic_ns()
    assert (want.verdict, want.counter) == (verdict, counter), f"the model disagrees with the test: {want}"
    assert (got.verdict, bucket) == (verdict, node.bucket(slot, flow))
    if verdict == XDP_PASS:
        assert got.frame == want.frame and got.frame[:6] == OWN_MAC
    delta = node.counters(slot) - before_counters
    assert delta == Counter({counter: 1})
    sync_record(node, slot, flow, t0, t1)


def sync_record(node, slot: int, flow: UdpFlow, t0: int, t1: int) -> None:
    """The kernel's record of `flow` after a run between t0 and t1 is the model's: unchanged
    where the model left it, else refreshed to a clock read within the run (then copied into
    the model, whose own refresh used t0)."""
    model = node.loaded.model
    want = model.udp_flows.get((slot, flow))
    got = node.loaded.tables.udp_record(slot, flow)
    if want is None:
        assert got is None
        return
    if want.last_ns == t0 and got != want:
        assert t0 <= got.last_ns <= t1, f"{flow}: last {got.last_ns} not refreshed within the run [{t0}, {t1}]"
        assert replace(got, last_ns=t0) == want
        model.udp_flows[(slot, flow)] = got
    else:
        assert got == want


# -- named cases ---------------------------------------------------------------------------

def test_a_fresh_entry_of_mine_is_taken_in_a_moving_bucket_not_owned_and_with_the_lease_lapsed(node):
    """The old owner keeps its UDP flow: neither ownership nor the lease decides it."""
    # A ClientIPPort rule, a ClientIP rule, no rule (ClientIP); IPv4 and IPv6 by seed.
    for seed, ports in ((1, (5000,)), (10, (5000,)), (2, (6000,)), (5, (6000,)), (3, (7000,)), (6, (7000,))):
        flow = flow_in(node, WEB, seed, ports)
        b = node.bucket(WEB, flow)
        rec = record(node, WEB, flow, SECOND, mine=True)
        node.program(owned={WEB: set()}, moving={WEB: {b}}, udp={WEB: (IDLE_NS, 0)},
                     records={WEB: [rec]}, leases={WEB: EXPIRED_LEASE})
        check_one(node, WEB, flow, CNT_UDP_KEPT, XDP_PASS)
        assert node.loaded.tables.udp_record(WEB, flow).last_ns > rec.last_ns, "last was not moved forward"
        # Owned too, the same (no lease check).
        node.program(owned={WEB: {b}}, moving={WEB: {b}}, udp={WEB: (IDLE_NS, 0)},
                     records={WEB: [rec]}, leases={WEB: EXPIRED_LEASE})
        check_one(node, WEB, flow, CNT_UDP_KEPT, XDP_PASS)


def test_a_fresh_entry_of_another_node_is_dropped_in_a_moving_bucket_this_node_owns(node):
    """The new owner leaves the old owner's flow alone, and still refreshes its entry."""
    flow = flow_in(node, WEB, 5)            # IPv6
    b = node.bucket(WEB, flow)
    rec = record(node, WEB, flow, SECOND, mine=False)
    node.program(owned={WEB: {b}}, moving={WEB: {b}}, udp={WEB: (IDLE_NS, 0)}, records={WEB: [rec]})
    check_one(node, WEB, flow, CNT_UDP_ELSEWHERE, XDP_DROP)
    assert node.loaded.tables.udp_record(WEB, flow).last_ns > rec.last_ns, "last was not moved forward"


def test_a_stale_entry_falls_to_the_owner_and_keeps_its_last(node):
    flow = flow_in(node, WEB, 5)
    b = node.bucket(WEB, flow)
    for mine in (True, False):
        rec = record(node, WEB, flow, IDLE_NS + 5 * SECOND, mine=mine)
        node.program(owned={WEB: {b}}, moving={WEB: {b}}, udp={WEB: (IDLE_NS, 0)}, records={WEB: [rec]})
        check_one(node, WEB, flow, CNT_ACCEPTED, XDP_PASS)
        node.program(owned={WEB: set()}, moving={WEB: {b}}, udp={WEB: (IDLE_NS, 0)}, records={WEB: [rec]})
        check_one(node, WEB, flow, CNT_DROPPED, XDP_DROP)
        assert node.loaded.tables.udp_record(WEB, flow) == rec


def test_the_hold_drops_unknown_udp_in_a_moving_bucket_but_not_in_a_bucket_not_moving(node):
    """A new owner waiting for its peers' lists takes no unknown UDP flow of a moving bucket;
    its other buckets, and a hold that has passed, are decided by ownership."""
    flow = flow_in(node, WEB, 6)
    b = node.bucket(WEB, flow)
    stale = record(node, WEB, flow, IDLE_NS + 5 * SECOND, mine=True)
    for records in ([], [stale]):                   # no entry, or only a stale one
        node.program(owned={WEB: {b}}, moving={WEB: {b}}, udp={WEB: (IDLE_NS, time.monotonic_ns() + HOLD_NS)},
                     records={WEB: records})
        check_one(node, WEB, flow, CNT_UDP_HELD, XDP_DROP)
        node.program(owned={WEB: {b}}, moving={WEB: set()}, udp={WEB: (IDLE_NS, time.monotonic_ns() + HOLD_NS)},
                     records={WEB: records})
        check_one(node, WEB, flow, CNT_ACCEPTED, XDP_PASS)
        node.program(owned={WEB: {b}}, moving={WEB: {b}}, udp={WEB: (IDLE_NS, time.monotonic_ns() - HOLD_NS)},
                     records={WEB: records})
        check_one(node, WEB, flow, CNT_ACCEPTED, XDP_PASS)


def test_idle_0_ignores_the_table_and_the_hold(node):
    flow = flow_in(node, WEB, 7)
    b = node.bucket(WEB, flow)
    rec = record(node, WEB, flow, SECOND, mine=True)
    node.program(owned={WEB: set()}, moving={WEB: {b}}, udp={WEB: (0, time.monotonic_ns() + HOLD_NS)},
                 records={WEB: [rec]})
    check_one(node, WEB, flow, CNT_DROPPED, XDP_DROP)
    node.program(owned={WEB: {b}}, moving={WEB: {b}}, udp={WEB: (0, time.monotonic_ns() + HOLD_NS)},
                 records={WEB: [replace(rec, mine=False)]})
    check_one(node, WEB, flow, CNT_ACCEPTED, XDP_PASS)
    assert node.loaded.tables.udp_record(WEB, flow) == replace(rec, mine=False), "idle 0 refreshed an entry"


def test_an_entry_in_a_bucket_not_moving_is_neither_read_nor_refreshed(node):
    """The fast path: a bucket not moving is decided by ownership alone."""
    flow = flow_in(node, WEB, 8)
    b = node.bucket(WEB, flow)
    rec = record(node, WEB, flow, SECOND, mine=True)
    node.program(owned={WEB: set()}, moving={WEB: set()}, udp={WEB: (IDLE_NS, 0)}, records={WEB: [rec]})
    check_one(node, WEB, flow, CNT_DROPPED, XDP_DROP)
    node.program(owned={WEB: {b}}, moving={WEB: set()}, udp={WEB: (IDLE_NS, 0)},
                 records={WEB: [replace(rec, mine=False)]})
    check_one(node, WEB, flow, CNT_ACCEPTED, XDP_PASS)
    assert node.loaded.tables.udp_record(WEB, flow) == replace(rec, mine=False)


def test_an_entry_whose_last_is_ahead_of_now_is_fresh_and_not_moved_back(node):
    flow = flow_in(node, WEB, 9)
    b = node.bucket(WEB, flow)
    ahead = record(node, WEB, flow, -HOLD_NS, mine=True)
    node.program(owned={WEB: set()}, moving={WEB: {b}}, udp={WEB: (IDLE_NS, 0)}, records={WEB: [ahead]})
    check_one(node, WEB, flow, CNT_UDP_KEPT, XDP_PASS)
    assert node.loaded.tables.udp_record(WEB, flow) == ahead


def test_tcp_and_other_farms_never_read_the_udp_table(node):
    """A TCP segment with a UDP entry's addresses and ports is a TCP segment; an entry under
    another farm slot is not this farm's. (Port 6000: UDP there is ClientIP, as TCP to a port
    no rule names, so the segment falls in the same moving bucket.)"""
    flow = flow_in(node, WEB, 10, ports=(6000,))
    b = node.bucket(WEB, flow)
    mine = record(node, WEB, flow, SECOND, mine=True)
    node.program(owned={WEB: set()}, moving={WEB: {b}}, udp={WEB: (IDLE_NS, 0), DNS: (IDLE_NS, 0)},
                 records={WEB: [mine]})
    for flags, counter in ((0x10, CNT_HANDOVER_UNKNOWN_DROPPED), (0x02, CNT_DROPPED)):
        before = node.counters(WEB)
        got, _ = node.run(tcp_frame(flow, flags))
        assert got.verdict == XDP_DROP and node.counters(WEB) - before == Counter({counter: 1})
    assert node.loaded.tables.udp_record(WEB, flow) == mine
    node.program(owned={WEB: set()}, moving={WEB: {b}}, udp={WEB: (IDLE_NS, 0), DNS: (IDLE_NS, 0)},
                 records={DNS: [mine]})
    check_one(node, WEB, flow, CNT_DROPPED, XDP_DROP)


def test_the_build_without_handover_compiles_the_udp_rules_out(node):
    """-DVF_NO_HANDOVER (the benchmarks' baseline): the same state, decided by ownership."""
    flow = flow_in(node, WEB, 11)
    b = node.bucket(WEB, flow)
    plan = build_plan([FarmOwnership(node.farms[WEB], frozenset(), frozenset({b}))], {"web": WEB})
    bpf = compile_filter(OWN_MAC, True, handover=False)
    try:
        fn = load_filter(bpf)
        t = FilterTables(bpf)
        t.apply(plan)
        t.write_udp_config(WEB, IDLE_NS, time.monotonic_ns() + HOLD_NS)
        t.put_udp_records(WEB, [record(node, WEB, flow, SECOND, mine=True)])
        assert node.ns.call(run_xdp, fn.fd, udp_frame(flow)).verdict == XDP_DROP
        t.swap_ownership(WEB, node.farms[WEB].seed, node.farms[WEB].buckets, frozenset({b}), frozenset({b}))
        assert node.ns.call(run_xdp, fn.fd, udp_frame(flow)).verdict == XDP_PASS
    finally:
        bpf.cleanup()


# -- the FilterTables API ------------------------------------------------------------------

def test_records_round_trip_overwrite_delete_and_clear_by_slot(node):
    node.program()
    t = node.loaded.tables
    rng = random.Random(12)
    web = sorted({random_flow(rng, WEB_VIPS) for _ in range(40)}, key=flow_order)
    dns = sorted({random_flow(rng, DNS_VIPS) for _ in range(10)}, key=flow_order)
    web_recs = [UdpRecord(f, 10**12 + i, i % 2 == 0, node.bucket(WEB, f)) for i, f in enumerate(web)]
    dns_recs = [UdpRecord(f, 2**64 - 1 - i, True, node.bucket(DNS, f)) for i, f in enumerate(dns)]
    t.put_udp_records(WEB, web_recs)
    t.put_udp_records(DNS, dns_recs)
    t.put_udp_records(DNS, [])
    assert t.udp_records(WEB) == sorted(web_recs, key=lambda r: flow_order(r.flow))
    assert t.udp_records(DNS) == sorted(dns_recs, key=lambda r: flow_order(r.flow))
    assert t.udp_records(3) == []
    # Overwrite: the same flow's new record replaces the old.
    t.put_udp_records(WEB, [replace(web_recs[0], last_ns=5, mine=not web_recs[0].mine)])
    assert t.udp_record(WEB, web[0]) == replace(web_recs[0], last_ns=5, mine=not web_recs[0].mine)
    # Delete: missing flows (and the other slot's flows) are ignored.
    t.delete_udp_flows(WEB, [web[1], web[1], dns[0], random_flow(rng, WEB_VIPS)])
    assert t.udp_record(WEB, web[1]) is None and t.udp_record(DNS, dns[0]) is not None
    assert len(t.udp_records(WEB)) == len(web) - 1
    t.delete_udp_flows(WEB, [])
    # clear_farm: that slot's records and settings go, the other slot keeps its own.
    t.write_udp_config(WEB, IDLE_NS, 123)
    t.write_udp_config(DNS, IDLE_NS, 456)
    assert t.read_udp_config(WEB) == (IDLE_NS, 123)
    t.clear_farm(WEB)
    assert t.udp_records(WEB) == [] and t.read_udp_config(WEB) == (0, 0)
    assert t.udp_records(DNS) == sorted(dns_recs, key=lambda r: flow_order(r.flow)) and t.read_udp_config(DNS) == (IDLE_NS, 456)
    t.clear_farm(DNS)
    assert t.udp_records(DNS) == []


def test_bad_udp_input_writes_nothing(node):
    """Every record is checked before the first is written (the checks themselves:
    tests/unit/test_filter_tables_udp.py)."""
    node.program()
    t = node.loaded.tables
    flow, other = flow_in(node, WEB, 13), flow_in(node, WEB, 14)
    with pytest.raises(ValueError, match="bucket -1 is outside"):
        t.put_udp_records(1, [UdpRecord(flow, 7, True, 0), UdpRecord(other, 7, True, -1)])
    with pytest.raises(ValueError, match="idle_ns -1"):
        t.write_udp_config(1, -1, 5)
    with pytest.raises(ValueError, match="is not a UdpFlow"):
        t.delete_udp_flows(1, [flow, "198.51.100.7"])
    for call in (lambda: t.write_udp_config(32, 0, 0), lambda: t.udp_records(-1),
                 lambda: t.put_udp_records(32, []), lambda: t.read_udp_config(32)):
        with pytest.raises(ValueError, match="out of range 0..31"):
            call()
    assert t.udp_records(1) == [] and t.read_udp_config(1) == (0, 0)


# -- random frames against random states ---------------------------------------------------

UDP_STATES = {
    "on-hold": lambda now: (IDLE_NS, now + HOLD_NS),
    "on-hold-past": lambda now: (IDLE_NS, now - HOLD_NS),
    "on-no-hold": lambda now: (IDLE_NS, 0),
    "off": lambda now: (0, now + HOLD_NS),
}
AGES = {"fresh": SECOND, "stale": IDLE_NS + 5 * SECOND, "ahead": -HOLD_NS}


@pytest.mark.parametrize("seed,web_udp,dns_udp", [
    (21, "on-hold", "off"), (22, "on-hold-past", "on-hold"), (23, "on-no-hold", "on-hold-past"),
    (24, "off", "on-no-hold"),
])
def test_random_frames_under_random_bucket_and_udp_states_agree_with_the_model(node, seed, web_udp, dns_udp):
    """UDP (ClientIP and ClientIPPort rules, ports no rule names) and TCP frames, IPv4 and IPv6,
    of flows with fresh, stale or future entries, mine or not, some under the other farm's slot,
    plus random frames of every kind, with random owned and moving buckets and a valid lease:
    verdict, counter, bucket, bytes and every entry's `last` as the model says."""
    rng = random.Random(seed)
    now = time.monotonic_ns()
    pool = {WEB: [random_flow(rng, WEB_VIPS) for _ in range(150)], DNS: [random_flow(rng, DNS_VIPS) for _ in range(60)]}
    records: dict[int, list[UdpRecord]] = {WEB: [], DNS: []}
    for slot, flows in pool.items():
        for flow in flows:
            if rng.random() < 0.75:
                age = AGES[rng.choice(("fresh", "fresh", "stale", "ahead"))]
                rec = UdpRecord(flow, now - age, rng.random() < 0.5, node.bucket(slot, flow))
                other = DNS if slot == WEB and rng.random() < 0.1 else slot   # under the wrong slot, sometimes
                records[other].append(rec)
    ahead = now + 3600 * SECOND
    node.program(owned={s: {b for b in range(f.buckets) if rng.random() < 0.5} for s, f in node.farms.items()},
                 moving={s: {b for b in range(f.buckets) if rng.random() < 0.6} for s, f in node.farms.items()},
                 udp={WEB: UDP_STATES[web_udp](now), DNS: UDP_STATES[dns_udp](now)},
                 records=records, leases={WEB: (ahead, ahead + 10**8), DNS: (ahead, ahead + 10**8)})
    gen = framegen.FrameGen(rng, [ipaddress.ip_address(v).packed for v in WEB_VIPS + DNS_VIPS if ":" not in v],
                            [ipaddress.ip_address(v).packed for v in WEB_VIPS + DNS_VIPS if ":" in v],
                            list(PORTS), OWN_MAC, TCP_FLAG_MIX)
    model = node.loaded.model
    before = node.loaded.counters()
    expected = Counter()
    for i in range(3000):
        pick = rng.random()
        slot = rng.choice((WEB, WEB, DNS))
        flow = rng.choice(pool[slot])
        if pick < 0.6:
            frame = udp_frame(flow, rng.randbytes(rng.randrange(0, 30)))
        elif pick < 0.75:
            frame = tcp_frame(flow, rng.choice(TCP_FLAG_MIX))
        else:
            frame, flow = gen.frame(), None
        t0 = time.monotonic_ns()
        want = model.decide(frame, now_ns=t0)
        got, bucket = node.run(frame)
        t1 = time.monotonic_ns()
        ctx = f"seed={seed} frame #{i}: {frame.hex()}"
        assert (got.verdict, bucket) == (want.verdict, want.bucket), ctx
        if want.verdict in (XDP_PASS, XDP_TX):
            assert got.frame == want.frame, ctx
        if flow is not None:
            for s in (WEB, DNS):
                sync_record(node, s, flow, t0, t1)
        expected[(want.slot, want.counter)] += 1
    after = node.loaded.counters()
    assert {k: after[k] - before[k] for k in after} == {k: expected[k] for k in after}
    for slot in (WEB, DNS):
        assert node.loaded.tables.udp_records(slot) == model.udp_records(slot)
    seen = Counter({c: n for (_, c), n in expected.items()})
    on = {s for s, state in ((WEB, web_udp), (DNS, dns_udp)) if state != "off"}
    # The random mix really exercised the paths its states allow.
    assert seen[CNT_UDP_KEPT] > 20 and seen[CNT_UDP_ELSEWHERE] > 20, seen
    assert seen[CNT_ACCEPTED] > 100 and seen[CNT_DROPPED] > 100, seen
    holding = {WEB: web_udp, DNS: dns_udp}
    if any(holding[s] == "on-hold" for s in on):
        assert seen[CNT_UDP_HELD] > 10, seen
    else:
        assert seen[CNT_UDP_HELD] == 0, seen
    assert seen[CNT_LEASE_LAPSED] == 0
    for s in set(node.farms) - on:
        assert expected[(s, CNT_UDP_KEPT)] == expected[(s, CNT_UDP_ELSEWHERE)] == expected[(s, CNT_UDP_HELD)] == 0
