"""BPF tier: the real XDP program, run by the kernel (BPF_PROG_TEST_RUN), against the model."""
from __future__ import annotations

import ctypes
import ipaddress
import random
import time
from collections import Counter

import pytest

from nodeagent import neighbour
from nodeagent.bpf_consts import (CNT_ACCEPTED, CNT_LEASE_EXPIRED, CNT_LEASE_LAPSED, CNT_MALFORMED,
                                  GLOBAL_SLOT, NCOUNTERS, XDP_DROP, XDP_PASS, XDP_TX)
from nodeagent.bpf_program import compile_filter, load_filter
from tests.support.filter_model import FilterModel
from nodeagent.filter_tables import FilterTables
from nodeagent.filter_plan import FarmOwnership, build_plan
from tests.support.bpf_testrun import run_xdp
from tests.support import framegen
from vipfarm.spec import parse_farm

OWN_MAC = bytes.fromhex("02aa00000001")
VIP4 = ipaddress.ip_address("203.0.113.10").packed
VIP6 = ipaddress.ip_address("2001:db8::10").packed
# TCP flag bytes for the lease runs: SYN, SYN+ACK, ACK, PSH+ACK, FIN+ACK, RST, SYN+FIN, SYN+RST,
# none, SYN+ECE+CWR, everything.
TCP_FLAG_MIX = (0x02, 0x12, 0x10, 0x18, 0x11, 0x04, 0x03, 0x06, 0x00, 0xC2, 0xFF)
HOUR_NS = 3600 * 10**9
INTERVAL_NS = 100 * 10**6         # deadline = syn_deadline + one heartbeat interval, as the agent writes


def lease_deadlines(state: str) -> tuple[int, int]:
    """(syn_deadline, deadline) for slots 0 and 5: none, both an hour ahead, the SYN stage long
    past (1 ns after boot) with the deadline an hour ahead, or both long past."""
    ahead = time.monotonic_ns() + HOUR_NS
    return {"none": (0, 0), "valid": (ahead, ahead + INTERVAL_NS), "syn-expired": (1, ahead),
            "lapsed": (1, 1 + INTERVAL_NS)}[state]


def farm_doc(name, vips, buckets, rules=()):
    return {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": name},
            "spec": {"virtualIPs": list(vips), "buckets": buckets, "rules": list(rules)}}


def make_plan(rng: random.Random):
    web = parse_farm(farm_doc("web", ["203.0.113.10", "2001:db8::10", "203.0.113.11"], 1024, [
        {"protocol": "TCP", "ports": "80", "affinity": "ClientIPPort"},
        {"protocol": "UDP", "ports": "5000-5100", "affinity": "ClientIPPort"},
        {"protocol": "TCP", "ports": "443", "affinity": "ClientIP"},
    ]))
    dns = parse_farm(farm_doc("dns", ["203.0.113.20", "2001:db8::20"], 16, [
        {"protocol": "UDP", "ports": "53", "affinity": "ClientIPPort"},
    ]))
    items = [FarmOwnership(web, frozenset(b for b in range(1024) if rng.random() < 0.5)),
             FarmOwnership(dns, frozenset(b for b in range(16) if rng.random() < 0.4))]
    return build_plan(items, {"web": 0, "dns": 5})


class Loaded:
    def __init__(self, answer_neigh: bool, plan):
        self.bpf = compile_filter(OWN_MAC, answer_neigh, trace_bucket=True)
        self.fn = load_filter(self.bpf)
        self.tables = FilterTables(self.bpf)
        self.tables.apply(plan)
        self.trace = self.bpf[b"vf_trace"]
        self.model = FilterModel(plan, OWN_MAC, answer_neigh)

    def set_leases(self, leases: dict[int, tuple[int, int]]) -> None:
        """The same leases, (syn_deadline, deadline), in the kernel's map and in the model."""
        for slot, (syn_deadline, deadline) in leases.items():
            self.tables.write_lease(slot, syn_deadline, deadline)
        self.model.leases = dict(leases)

    def counters(self) -> Counter:
        out = Counter()
        stats = self.tables.stats
        for slot in (0, 5, GLOBAL_SLOT):
            for c in range(NCOUNTERS):
                out[(slot, c)] = sum(int(v) for v in stats[ctypes.c_uint32(slot * NCOUNTERS + c)])
        return out

    def run(self, frame: bytes):
        self.trace[ctypes.c_uint32(0)] = self.trace.Leaf(*([0] * len(self.trace[ctypes.c_uint32(0)])))
        res = run_xdp(self.fn.fd, frame)
        traced = max(int(v) for v in self.trace[ctypes.c_uint32(0)])
        return res, (traced - 1 if traced else None)


@pytest.fixture(scope="module", params=[True, False], ids=["answer-in-xdp", "punt-to-agent"])
def loaded(request):
    rng = random.Random(7)
    return Loaded(request.param, make_plan(rng))


def frames(seed: int, n: int, tcp_flags: tuple[int, ...] = ()):
    gen = framegen.FrameGen(random.Random(seed), [VIP4, ipaddress.ip_address("203.0.113.20").packed,
                                                  ipaddress.ip_address("203.0.113.11").packed],
                            [VIP6, ipaddress.ip_address("2001:db8::20").packed],
                            [80, 443, 53, 5000, 5050, 5100], OWN_MAC, tcp_flags)
    for i in range(n):
        yield i, gen.frame()


@pytest.mark.parametrize("seed,count", [(1, 6000), (2, 6000)])
def test_random_frames_get_the_verdict_bucket_and_bytes_of_the_model(loaded, seed, count):
    compare_random_frames(loaded, seed, count)


@pytest.fixture(params=["none", "valid", "syn-expired", "lapsed"])
def lease_state(loaded, request):
    """Both farms' leases in one state for the test, and no lease again after it."""
    lease = lease_deadlines(request.param)
    loaded.set_leases({0: lease, 5: lease})
    yield request.param
    loaded.set_leases({0: (0, 0), 5: (0, 0)})


def test_random_frames_with_every_tcp_flag_mix_agree_with_the_model_under_a_lease(loaded, lease_state):
    """SYNs, SYN-ACKs, ACKs, RSTs, odd mixes, UDP, ICMP and fragments, with no lease, a valid
    one, one past its SYN stage only, and one past both stages."""
    seen = compare_random_frames(loaded, 3, 5000, TCP_FLAG_MIX)
    if lease_state in ("syn-expired", "lapsed"):
        assert seen[CNT_LEASE_EXPIRED] > 50, f"no random SYN hit an owned bucket with the lease {lease_state}"
    else:
        assert seen[CNT_LEASE_EXPIRED] == 0
    if lease_state == "lapsed":
        assert seen[CNT_LEASE_LAPSED] > 200, "few random non-SYN packets hit an owned bucket with the lease lapsed"
        assert seen[CNT_ACCEPTED] == 0, "the model accepted a packet to an owned bucket with the lease lapsed"
    else:
        assert seen[CNT_LEASE_LAPSED] == 0


def compare_random_frames(loaded, seed: int, count: int, tcp_flags: tuple[int, ...] = ()) -> Counter:
    """Run `count` random frames through the kernel and the model; returns the model's counters."""
    before = loaded.counters()
    expected = Counter()
    verdicts = Counter()
    for i, frame in frames(seed, count, tcp_flags):
        want = loaded.model.decide(frame)
        got, bucket = loaded.run(frame)
        ctx = f"seed={seed} frame #{i}: {frame.hex()}"
        assert got.verdict == want.verdict, ctx
        assert bucket == want.bucket, ctx
        if want.verdict in (XDP_PASS, XDP_TX):
            assert got.frame == want.frame, ctx
        if want.counter == CNT_MALFORMED:
            # A malformed frame is never accepted as a VIP packet.
            assert got.verdict == XDP_DROP or got.frame == frame, ctx
        expected[(want.slot, want.counter)] += 1
        verdicts[want.verdict] += 1
    after = loaded.counters()
    assert {k: after[k] - before[k] for k in after} == {k: expected[k] for k in after}
    # The random mix really exercised every path.
    assert verdicts[XDP_PASS] > 100 and verdicts[XDP_DROP] > 100
    if loaded.model.answer_neigh:
        assert verdicts[XDP_TX] > 50
    return Counter({c: n for (_, c), n in expected.items()})


def test_arp_request_for_a_vip_is_answered_with_the_virtual_mac(loaded):
    req = framegen.arp_request(framegen.CLIENT_MAC, bytes([198, 51, 100, 7]), VIP4)
    got, _ = loaded.run(req)
    vmac = loaded.model.farms[0].vmac
    if loaded.model.answer_neigh:
        assert got.verdict == XDP_TX
        assert got.frame[0:6] == framegen.CLIENT_MAC          # back to the asker
        assert got.frame[6:12] == OWN_MAC                       # switches learn the node MAC
        assert got.frame[20:22] == b"\x00\x02"                  # op = reply
        assert got.frame[22:28] == vmac and got.frame[28:32] == VIP4
        assert got.frame[32:38] == framegen.CLIENT_MAC and got.frame[38:42] == bytes([198, 51, 100, 7])
    else:
        assert got.verdict == XDP_PASS and got.frame == req


def test_neighbour_solicitation_for_a_vip_gets_an_na_with_a_valid_checksum(loaded):
    src = ipaddress.ip_address("2001:db8:1::7").packed
    for slla in (True, False):
        ns = framegen.neighbour_solicitation(src, VIP6, framegen.CLIENT_MAC, with_slla=slla)
        got, _ = loaded.run(ns)
        if not loaded.model.answer_neigh:
            assert got.verdict == XDP_PASS and got.frame == ns
            continue
        assert got.verdict == XDP_TX and len(got.frame) == 86
        f = got.frame
        assert f[0:6] == framegen.CLIENT_MAC and f[6:12] == OWN_MAC
        assert f[22:38] == VIP6 and f[38:54] == src
        icmp = f[54:]
        assert icmp[0] == 136 and icmp[4] == 0x60                  # NA, solicited + override
        assert icmp[8:24] == VIP6 and icmp[24:26] == b"\x02\x01"
        assert icmp[26:32] == loaded.model.farms[0].vmac
        # An independent check: the checksum over pseudo-header + message is zero.
        assert neighbour.icmpv6_checksum(f[22:38], f[38:54], icmp) == 0


def test_vlan_tagged_frames_pass_untouched(loaded):
    inner = framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(
        bytes([198, 51, 100, 9]), VIP4, 6, framegen.tcp(1234, 80))
    tagged = inner[:12] + b"\x81\x00\x00\x05" + inner[12:]
    got, bucket = loaded.run(tagged)
    assert got.verdict == XDP_PASS and got.frame == tagged and bucket is None


def test_truncated_tcp_to_a_vip_is_dropped_as_malformed(loaded):
    full = framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(
        bytes([198, 51, 100, 9]), VIP4, 6, framegen.tcp(1234, 80))
    before = loaded.counters()[(0, CNT_MALFORMED)]
    for cut in (34, 40, 53):
        got, _ = loaded.run(full[:cut])
        assert got.verdict == XDP_DROP
    assert loaded.counters()[(0, CNT_MALFORMED)] - before == 3


def test_a_ping_to_the_vip_is_accepted_by_exactly_one_of_three_owners():
    """Three filters with complementary ownership: each echo request is taken once."""
    from vipfarm.assignment import Member, assign
    rng = random.Random(3)
    web = parse_farm(farm_doc("web", ["203.0.113.10"], 64))
    a = assign(None, [Member("n1"), Member("n2"), Member("n3")], 64)
    nodes = []
    for name in ("n1", "n2", "n3"):
        plan = build_plan([FarmOwnership(web, frozenset(a.owned_by(name)))], {"web": 0})
        nodes.append(Loaded(True, plan))
    for _ in range(300):
        ping = framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(
            bytes([198, 51, 100, rng.randrange(256)]), VIP4, 1, framegen.icmp_echo(rng.randrange(65536)))
        verdicts = [n.run(ping)[0].verdict for n in nodes]
        assert sorted(verdicts) == [XDP_DROP, XDP_DROP, XDP_PASS]


def test_ownership_swap_flips_halves_and_is_idempotent(loaded):
    t = loaded.tables
    farm = loaded.model.farms[5]
    half = t.active_half(5)
    assert t.swap_ownership(5, farm.seed, farm.buckets, farm.owned) is False
    assert t.active_half(5) == half
    new = frozenset(range(8))
    assert t.swap_ownership(5, farm.seed, farm.buckets, new) is True
    assert t.active_half(5) == 1 - half and t.owned_buckets(5) == set(new)
    assert t.swap_ownership(5, farm.seed, farm.buckets, farm.owned) is True
    assert t.owned_buckets(5) == set(farm.owned)
