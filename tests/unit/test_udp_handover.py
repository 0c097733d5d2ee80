"""UDP handover's user-space side without a kernel: the flow lists' text and chunks
(vipfarm/udp_flows.py), conntrack ages (nodeagent/conntrack.py), the agent's flow table
bookkeeping (nodeagent/udp_handover.py) over a fake dataplane, and the heartbeat thread's
ask/answer exchange (nodeagent/udp_list_exchange.py). The filter's rules are the BPF tier's;
the lab tier (tests/lab/test_udp_handover.py) checks what clients see."""
from __future__ import annotations

import ipaddress

import pytest

from nodeagent.conntrack import IPS_ASSURED, entry_age_s
from nodeagent.udp_handover import UdpHandover, hold_ns
from nodeagent.udp_list_exchange import UdpListExchange
from vipfarm.heartbeat_wire import MAX_CHUNK_DATA, FlowChunk, FlowRequest
from vipfarm.spec import parse_farm
from vipfarm.udp_flows import (UdpFlow, UdpRecord, decode_list, encode_list, flows_per_bucket, fresh, split_chunks,
                               udp_bucket, udp_handover_on)

S = 1_000_000_000
VIP = ipaddress.ip_address("203.0.113.10")


def farm(udp=True, drain_timeout=300, idle=30):
    rules = [{"protocol": "UDP", "ports": "5000", "affinity": "ClientIPPort"}] if udp else []
    rules.append({"protocol": "TCP", "ports": "80", "affinity": "ClientIP"})
    return parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "web"},
                       "spec": {"virtualIPs": [str(VIP)], "rules": rules, "buckets": 64,
                                "handover": {"drainTimeoutSeconds": drain_timeout, "udpIdleSeconds": idle},
                                "nodes": [{"name": "n1", "address": "198.51.100.1"},
                                          {"name": "n2", "address": "198.51.100.2"}]}})


def flow(client="198.51.100.50", port=40000, vip=VIP, vport=5000):
    return UdpFlow(ipaddress.ip_address(client), port, vip, vport)


# -- the pure part ------------------------------------------------------------------------------

def test_udp_handover_is_on_only_for_a_farm_with_a_udp_rule_and_handover_on():
    assert udp_handover_on(farm())
    assert not udp_handover_on(farm(udp=False))
    assert not udp_handover_on(farm(drain_timeout=0))


def test_a_flow_list_round_trips_with_ages_and_splits_into_whole_lines():
    records = [UdpRecord(flow(port=40000 + i), 10 * S - i * 1_000_000, True, 1) for i in range(200)]
    data = encode_list(records, 10 * S)
    assert decode_list(data) == sorted((r.flow, i) for i, r in enumerate(records))
    pieces = split_chunks(data, MAX_CHUNK_DATA)
    assert len(pieces) > 1 and all(len(p) <= MAX_CHUNK_DATA and p.endswith(b"\n") for p in pieces)
    assert b"".join(pieces) == data
    assert split_chunks(b"", MAX_CHUNK_DATA) == [b""]


@pytest.mark.parametrize("bad", [b"198.51.100.1 5 203.0.113.10\n", b"198.51.100.1 5 2001:db8::1 53 0\n",
                                 b"198.51.100.1 70000 203.0.113.10 53 0\n", b"x 1 203.0.113.10 53 0\n",
                                 b"198.51.100.1 5 203.0.113.10 53 -1\n"])
def test_a_malformed_flow_list_line_is_refused_with_its_line_number(bad):
    with pytest.raises(ValueError, match="line 1"):
        decode_list(bad)


def test_freshness_is_the_filters_rule_and_counts_are_per_bucket():
    r = UdpRecord(flow(), 10 * S, True, 3)
    assert fresh(r, 13 * S, 3 * S) and not fresh(r, 13 * S + 1, 3 * S)
    other = UdpRecord(flow(port=1), 10 * S, False, 3)
    assert flows_per_bucket([r, other], 11 * S, 3 * S) == {3: 1}
    assert flows_per_bucket([r, other], 11 * S, 3 * S, mine=False) == {3: 1}


def test_a_conntrack_entrys_age_is_its_full_timeout_minus_what_is_left():
    # The kernel rounds the time left down: the age taken is the lower end of what it can be.
    assert entry_age_s(28, 0, (30, 120)) == 1
    assert entry_age_s(100, IPS_ASSURED, (30, 120)) == 19
    assert entry_age_s(40, 0, (30, 120)) == 0          # never negative


# -- the agent's bookkeeping over a fake dataplane ------------------------------------------------

class FakeTables:
    def __init__(self):
        self.config = {}
        self.records: dict[UdpFlow, UdpRecord] = {}

    def write_udp_config(self, slot, idle_ns, hold_until_ns):
        self.config[slot] = (idle_ns, hold_until_ns)

    def put_udp_records(self, slot, records):
        for r in records:
            self.records[r.flow] = r

    def udp_records(self, slot):
        return list(self.records.values())

    def delete_udp_flows(self, slot, flows):
        for f in flows:
            self.records.pop(f, None)


class FakeDataplanes:
    def __init__(self):
        self.tables = FakeTables()
        self.has_slot = True

    def with_farm_tables(self, name, use):
        if not self.has_slot:
            return False, None
        return True, use(self.tables, 0)


class Clock:
    def __init__(self):
        self.now = 1000 * S

    def __call__(self):
        return self.now


class FakeEngine:
    def __init__(self):
        self.wanted = {}

    def want_udp_lists(self, farm, until):
        self.wanted[farm] = until


def handover(conntrack):
    dp, clock = FakeDataplanes(), Clock()
    calls = []
    u = UdpHandover("n1", dp, clock=clock, read_flows=lambda vips: list(conntrack),
                    ensure_tracking=lambda: calls.append("on"), remove_tracking=lambda: calls.append("off"))
    return u, dp, clock, calls


def test_a_release_writes_the_flows_this_node_served_within_udp_idle_seconds_as_its_own():
    f = farm()
    flows = [flow(port=40000 + i) for i in range(40)]
    released_bucket = udp_bucket(f, flows[0])
    u, dp, clock, calls = handover([(fl, 2) for fl in flows] + [(flows[1], 31)])
    everything = frozenset(range(64))
    u.before_flip([f], {"web": everything}, {"web": everything - {released_bucket}}, {"web": frozenset({released_bucket})})
    assert calls == ["on"]
    kept = dp.tables.records
    assert kept and all(r.mine and r.bucket == released_bucket for r in kept.values())
    assert {fl for fl in flows if udp_bucket(f, fl) == released_bucket} == set(kept)
    assert all(r.last_ns == clock.now - 2 * S for r in kept.values())
    assert dp.tables.config[0] == (30 * S, 0)            # no hold: nothing acquired
    # What the peers get asked for: the same flows, with their ages.
    assert {fl for fl, _ in decode_list(u.own_list("web"))} == set(kept)
    # The census counts them in their bucket until they go stale, then deletes them.
    assert u.census([f]) == {"web": {released_bucket: len(kept)}}
    clock.now += 31 * S
    assert u.census([f]) == {"web": {}}
    assert not dp.tables.records


def test_an_acquisition_of_moving_buckets_holds_new_udp_flows_until_the_peers_lists_are_in():
    f = farm()
    u, dp, clock, _ = handover([])
    engine = FakeEngine()
    holds = u.before_flip([f], {"web": frozenset()}, {"web": frozenset({1, 2})}, {"web": frozenset({1})})
    assert holds == {"web": clock.now + hold_ns(f)}
    assert dp.tables.config[0] == (30 * S, clock.now + hold_ns(f))
    u.after_flip([f], holds, engine)
    assert engine.wanted == {"web": clock.now + hold_ns(f)}
    theirs = [flow(port=1), flow(port=2)]
    u.take_list("web", "n2", [(theirs[0], 500), (theirs[1], 0)])
    assert {fl: (r.mine, r.last_ns) for fl, r in dp.tables.records.items()} == {
        theirs[0]: (False, clock.now - 500_000_000), theirs[1]: (False, clock.now)}
    u.end_hold("web", frozenset())
    assert dp.tables.config[0] == (30 * S, 0)
    # A newer list from n2 replaces its older one; a member that leaves has its flows forgotten.
    u.take_list("web", "n2", [(theirs[1], 0)])
    assert set(dp.tables.records) == {theirs[1]}
    u.forget("web", "n2")
    assert not dp.tables.records


def test_a_peers_list_never_overwrites_this_nodes_own_flows():
    f = farm()
    mine = flow(port=40001)
    b = udp_bucket(f, mine)
    u, dp, clock, _ = handover([(mine, 1)])
    everything = frozenset(range(64))
    u.before_flip([f], {"web": everything}, {"web": everything - {b}}, {"web": frozenset({b})})
    u.take_list("web", "n2", [(mine, 0)])
    assert dp.tables.records[mine].mine


def test_a_farm_without_udp_handover_touches_nothing_and_tracking_goes_off_with_the_last_udp_farm():
    u, dp, clock, calls = handover([(flow(), 1)])
    tcp_only = farm(udp=False)
    everything = frozenset(range(64))
    assert u.before_flip([tcp_only], {"web": everything}, {"web": frozenset()}, {"web": everything}) == {}
    assert calls == [] and not dp.tables.records and not dp.tables.config
    u.before_flip([farm()], {"web": everything}, {"web": everything}, {"web": frozenset()})
    assert calls == ["on"] and dp.tables.config[0] == (30 * S, 0)
    u.before_flip([farm(drain_timeout=0)], {"web": everything}, {"web": everything}, {"web": frozenset()})
    assert calls == ["on", "off"] and dp.tables.config[0] == (0, 0)


# -- the exchange on the heartbeat thread ---------------------------------------------------------

class Port:
    def __init__(self, listing=b""):
        self.listing = listing
        self.taken, self.ended, self.forgotten = [], [], []

    def own_list(self, farm):
        return self.listing

    def take_list(self, farm, sender, flows):
        self.taken.append((sender, flows))

    def end_hold(self, farm, missing):
        self.ended.append(missing)

    def forget(self, farm, sender):
        self.forgotten.append(sender)


def chunk(seq, index, count, data, boot=7):
    return FlowChunk("web", 2, 99, 1, 0, b"\0" * 8, boot, seq, index, count, data)


def test_an_ask_ends_its_hold_once_every_peer_answered_whole_and_only_answers_to_it_count():
    port, counts = Port(), []
    x = UdpListExchange("n1", port, counts.append)
    x.want("web", frozenset({"n2", "n3"}), until_ns=10 * S)
    sent = []
    x.tick("web", 1 * S, 100_000_000, lambda who: sent.append(who) or 41)
    assert sent == [frozenset({"n2", "n3"})]
    line = b"198.51.100.50 40000 203.0.113.10 5000 120\n"
    x.take("web", "n2", chunk(40, 0, 1, line), boot=7)                # an older ask's answer
    x.take("web", "n2", chunk(41, 0, 1, line, boot=6), boot=7)        # an earlier agent's ask
    assert port.taken == [] and counts.count("udp_list_chunk_unasked") == 2
    x.take("web", "n2", chunk(41, 0, 2, line), boot=7)
    assert port.taken == []                                           # half an answer
    x.take("web", "n2", chunk(41, 1, 2, b""), boot=7)
    assert port.taken == [("n2", [(flow(), 120)])] and port.ended == []
    x.tick("web", 1 * S + 100_000_000, 100_000_000, lambda who: sent.append(who) or 42)
    assert sent[-1] == frozenset({"n3"})                              # asked again: only who has not answered
    x.take("web", "n3", chunk(42, 0, 1, b""), boot=7)
    assert port.ended == [frozenset()]
    assert x.due_ns("web", 100_000_000) is None


def test_an_ask_ends_at_its_deadline_with_the_missing_members_and_a_member_out_of_the_view_is_forgotten():
    port = Port()
    x = UdpListExchange("n1", port, lambda what: None)
    x.want("web", frozenset({"n2", "n3"}), until_ns=2 * S)
    x.tick("web", 1 * S, 100_000_000, lambda who: 5)
    x.take("web", "n2", chunk(5, 0, 1, b"198.51.100.50 40000 203.0.113.10 5000 1\n"), boot=7)
    x.view_changed("web", frozenset({"n1", "n3"}))
    assert port.forgotten == ["n2"]
    x.tick("web", 2 * S, 100_000_000, lambda who: 6)
    assert port.ended == [frozenset({"n3"})]


def test_an_answer_is_the_ports_list_in_whole_line_chunks():
    lines = b"".join(f"198.51.100.50 {40000 + i} 203.0.113.10 5000 1\n".encode() for i in range(100))
    x = UdpListExchange("n1", Port(lines), lambda what: None)
    out = []
    x.answer("web", FlowRequest("web", 2, 99, 5, 0, b"\0" * 8), lambda k, n, piece: out.append((k, n, piece)))
    assert len(out) > 1 and b"".join(p for _, _, p in out) == lines and {n for _, n, _ in out} == {len(out)}
