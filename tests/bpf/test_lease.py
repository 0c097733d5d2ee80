"""BPF tier: the lease in the data plane (vf_lease), on the real program via BPF_PROG_TEST_RUN.

The lease has two stages per farm, (syn_deadline, deadline). Past syn_deadline the filter drops
new TCP flows (SYN without ACK) to the buckets this node owns and counts them as lease_expired;
everything else is decided as without a lease. Past deadline it drops every packet to those
buckets (ACKs, data, FINs, RSTs, UDP, ICMP, fragments) and counts them as lease_lapsed, so a node
whose agent is gone does not RST its successor's flows; SYNs stay lease_expired. Other nodes'
buckets and ARP/NS answers are decided as without a lease.
"""
from __future__ import annotations

import ipaddress
import random
import struct
import time

import pytest

from nodeagent.bpf_consts import (CNT_ACCEPTED, CNT_DROPPED, CNT_LEASE_EXPIRED, CNT_LEASE_LAPSED,
                                  CNT_NEIGH_REPLIED, XDP_DROP, XDP_PASS, XDP_TX)
from nodeagent.filter_plan import FarmOwnership, build_plan
from tests.bpf.test_filter_vs_model import OWN_MAC, VIP4, VIP6, Loaded, farm_doc, make_plan
from tests.support import framegen
from tests.support.filter_model import CLOCK_MONOTONIC_COARSE
from vipfarm.hashing import bucket_of
from vipfarm.spec import parse_farm

SYN, SYN_ACK, ACK, PSH_ACK, FIN_ACK, RST = 0x02, 0x12, 0x10, 0x18, 0x11, 0x04
EXPIRED = 1                       # 1 ns after boot: long past
HOUR_NS = 3600 * 10**9
INTERVAL_NS = 100 * 10**6
WEB, DNS = 0, 5                   # the farm slots of make_plan
NO_LEASE = (0, 0)
LAPSED = (EXPIRED, EXPIRED + INTERVAL_NS)          # both stages long past


def syn_expired() -> tuple[int, int]:
    """Between the stages: the SYN stage long past, the deadline an hour ahead."""
    return EXPIRED, time.monotonic_ns() + HOUR_NS


def valid() -> tuple[int, int]:
    ahead = time.monotonic_ns() + HOUR_NS
    return ahead, ahead + INTERVAL_NS


@pytest.fixture(scope="module")
def filt():
    return Loaded(True, make_plan(random.Random(7)))


@pytest.fixture
def lease(filt):
    """Set leases for one test; no lease on any slot after it."""
    yield filt.set_leases
    filt.set_leases({WEB: NO_LEASE, DNS: NO_LEASE})


def tcp_frame(family: int, client: bytes, sport: int, flags: int, dport: int = 80, extra: int = 0) -> bytes:
    l4 = framegen.tcp(sport, dport, extra=extra, flags=flags)
    if family == 4:
        return framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(client, VIP4, 6, l4)
    return framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x86DD) + framegen.ipv6(client, VIP6, 6, l4)


def udp_frame(client: bytes, sport: int) -> bytes:
    return framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(
        client, VIP4, 17, framegen.udp(sport, 5000))


def client_of(filt, family: int, owned: bool, seed: int = 1) -> tuple[bytes, int]:
    """A client address and source port whose web bucket (TCP/80 and UDP/5000 are both
    ClientIPPort, so the bucket is the same for either) is owned, or not, by this filter."""
    rng = random.Random(seed)
    farm = filt.model.farms[WEB]
    for _ in range(10_000):
        if family == 4:
            client = bytes([198, 51, 100, rng.randrange(1, 255)])
        else:
            client = ipaddress.ip_address("2001:db8:1::").packed[:12] + rng.randbytes(4)
        sport = rng.randrange(1024, 65536)
        if (bucket_of(client, sport, farm.seed, farm.buckets) in farm.owned) == owned:
            return client, sport
    raise AssertionError(f"no client with an {'owned' if owned else 'unowned'} bucket in 10000 tries")


# Every kind of packet an established flow (or a connectionless client) sends, by name.
PACKET_KINDS = ("syn-ack", "ack", "data", "fin-ack", "rst", "udp", "icmp", "fragment")


def packet(kind: str, family: int, client: bytes, sport: int) -> bytes:
    if kind in ("syn-ack", "ack", "data", "fin-ack", "rst"):
        flags = {"syn-ack": SYN_ACK, "ack": ACK, "data": PSH_ACK, "fin-ack": FIN_ACK, "rst": RST}[kind]
        return tcp_frame(family, client, sport, flags, extra=200 if kind == "data" else 0)
    vip, ethertype = (VIP4, 0x0800) if family == 4 else (VIP6, 0x86DD)
    head = framegen.eth(OWN_MAC, framegen.CLIENT_MAC, ethertype)
    if kind == "udp":
        l4 = framegen.udp(sport, 5000)
        return head + (framegen.ipv4(client, vip, 17, l4) if family == 4 else framegen.ipv6(client, vip, 17, l4))
    if kind == "icmp":
        if family == 4:
            return head + framegen.ipv4(client, vip, 1, framegen.icmp_echo(sport))
        return head + framegen.ipv6(client, vip, 58, struct.pack("!BBHHH", 128, 0, 0, sport, 1) + b"ping")
    # A first fragment (MF set) of a TCP segment: hashed on the address alone.
    l4 = framegen.tcp(sport, 80, extra=64, flags=ACK)
    if family == 4:
        return head + framegen.ipv4(client, vip, 6, l4, frag=0x2000)
    return head + framegen.ipv6(client, vip, 44, struct.pack("!BBHI", 6, 0, 1, 7) + l4)


def owned_packet(filt, kind: str, family: int) -> bytes:
    """A packet of `kind` that this filter accepts without a lease (the model says so)."""
    rng = random.Random(11)
    for _ in range(10_000):
        if family == 4:
            client = bytes([198, 51, 100, rng.randrange(1, 255)])
        else:
            client = ipaddress.ip_address("2001:db8:1::").packed[:12] + rng.randbytes(4)
        frame = packet(kind, family, client, rng.randrange(1024, 65536))
        if filt.model.decide(frame, now_ns=0).counter == CNT_ACCEPTED:   # at time 0 no lease stage has passed
            return frame
    raise AssertionError(f"no owned {kind} packet over IPv{family} in 10000 tries")


def counter_delta(filt, before, slot: int, counter: int) -> int:
    return filt.counters()[(slot, counter)] - before[(slot, counter)]


# -- the first stage: past syn_deadline, before deadline ------------------------------------

@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_expired_lease_drops_syns_to_owned_buckets_and_counts_them_lease_expired(filt, lease, family):
    lease({WEB: syn_expired()})
    client, sport = client_of(filt, family, owned=True)
    before = filt.counters()
    got, _ = filt.run(tcp_frame(family, client, sport, SYN))
    assert got.verdict == XDP_DROP, f"a SYN to an owned bucket passed with the lease expired (IPv{family})"
    assert counter_delta(filt, before, WEB, CNT_LEASE_EXPIRED) == 1
    assert counter_delta(filt, before, WEB, CNT_LEASE_LAPSED) == 0
    assert counter_delta(filt, before, WEB, CNT_ACCEPTED) == 0
    assert counter_delta(filt, before, WEB, CNT_DROPPED) == 0


@pytest.mark.parametrize("kind", PACKET_KINDS)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_between_the_stages_every_packet_but_a_syn_to_owned_buckets_is_still_accepted(filt, lease, family, kind):
    lease({WEB: syn_expired()})
    frame = owned_packet(filt, kind, family)
    before = filt.counters()
    got, _ = filt.run(frame)
    assert got.verdict == XDP_PASS and got.frame == OWN_MAC + frame[6:], (
        f"an owned {kind} over IPv{family} was not accepted past syn_deadline but before deadline")
    assert counter_delta(filt, before, WEB, CNT_ACCEPTED) == 1
    assert counter_delta(filt, before, WEB, CNT_LEASE_EXPIRED) == 0
    assert counter_delta(filt, before, WEB, CNT_LEASE_LAPSED) == 0


def test_expired_lease_still_answers_arp(filt, lease):
    lease({WEB: syn_expired()})
    got, _ = filt.run(framegen.arp_request(framegen.CLIENT_MAC, bytes([198, 51, 100, 7]), VIP4))
    assert got.verdict == XDP_TX, "the ARP request for a VIP was not answered with the lease expired"


# -- the second stage: past deadline --------------------------------------------------------

@pytest.mark.parametrize("kind", PACKET_KINDS)
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_lapsed_lease_drops_every_packet_to_owned_buckets_and_counts_it_lease_lapsed(filt, lease, family, kind):
    """The node is out: its stack must not see (and RST) the segments of flows its successor
    now serves."""
    lease({WEB: LAPSED})
    frame = owned_packet(filt, kind, family)
    before = filt.counters()
    got, _ = filt.run(frame)
    assert got.verdict == XDP_DROP, f"an owned {kind} over IPv{family} passed with the lease lapsed"
    assert counter_delta(filt, before, WEB, CNT_LEASE_LAPSED) == 1
    assert counter_delta(filt, before, WEB, CNT_ACCEPTED) == 0
    assert counter_delta(filt, before, WEB, CNT_LEASE_EXPIRED) == 0


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_lapsed_lease_still_counts_syns_as_lease_expired(filt, lease, family):
    lease({WEB: LAPSED})
    client, sport = client_of(filt, family, owned=True)
    before = filt.counters()
    assert filt.run(tcp_frame(family, client, sport, SYN))[0].verdict == XDP_DROP
    assert counter_delta(filt, before, WEB, CNT_LEASE_EXPIRED) == 1
    assert counter_delta(filt, before, WEB, CNT_LEASE_LAPSED) == 0


def test_a_lapsed_deadline_without_a_syn_stage_drops_syns_too_as_lease_lapsed(filt, lease):
    lease({WEB: (0, EXPIRED)})
    client, sport = client_of(filt, 4, owned=True)
    before = filt.counters()
    assert filt.run(tcp_frame(4, client, sport, SYN))[0].verdict == XDP_DROP
    assert filt.run(tcp_frame(4, client, sport, ACK))[0].verdict == XDP_DROP
    assert counter_delta(filt, before, WEB, CNT_LEASE_LAPSED) == 2
    assert counter_delta(filt, before, WEB, CNT_LEASE_EXPIRED) == 0


@pytest.mark.parametrize("state", ["syn-expired", "lapsed"])
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_a_past_lease_leaves_unowned_buckets_dropped_and_counted_as_dropped(filt, lease, family, state):
    lease({WEB: syn_expired() if state == "syn-expired" else LAPSED})
    client, sport = client_of(filt, family, owned=False)
    before = filt.counters()
    for flags in (SYN, ACK):
        got, _ = filt.run(tcp_frame(family, client, sport, flags))
        assert got.verdict == XDP_DROP
    assert counter_delta(filt, before, WEB, CNT_DROPPED) == 2
    assert counter_delta(filt, before, WEB, CNT_LEASE_EXPIRED) == 0
    assert counter_delta(filt, before, WEB, CNT_LEASE_LAPSED) == 0


def test_lapsed_lease_still_answers_arp_and_neighbour_solicitations(filt, lease):
    """Every node answers with the same virtual MAC; the lapsed node's answer is harmless and
    the farm needs someone to answer."""
    lease({WEB: LAPSED})
    before = filt.counters()
    got, _ = filt.run(framegen.arp_request(framegen.CLIENT_MAC, bytes([198, 51, 100, 7]), VIP4))
    assert got.verdict == XDP_TX and got.frame[22:28] == filt.model.farms[WEB].vmac, (
        "the ARP request for a VIP was not answered with the virtual MAC with the lease lapsed")
    ns = framegen.neighbour_solicitation(ipaddress.ip_address("2001:db8:1::7").packed, VIP6, framegen.CLIENT_MAC)
    assert filt.run(ns)[0].verdict == XDP_TX, "the NS for a VIP was not answered with the lease lapsed"
    assert counter_delta(filt, before, WEB, CNT_NEIGH_REPLIED) == 2
    assert counter_delta(filt, before, WEB, CNT_LEASE_LAPSED) == 0


# -- no lease, valid lease, clocks, slots ---------------------------------------------------

@pytest.mark.parametrize("state", ["none", "an-hour-ahead"])
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_no_lease_or_a_future_deadline_accepts_syns_and_acks_to_owned_buckets(filt, lease, family, state):
    lease({WEB: NO_LEASE if state == "none" else valid()})
    client, sport = client_of(filt, family, owned=True)
    before = filt.counters()
    for flags in (SYN, ACK):
        got, _ = filt.run(tcp_frame(family, client, sport, flags))
        assert got.verdict == XDP_PASS, f"TCP flags 0x{flags:02x} to an owned bucket were dropped with lease={state}"
    assert counter_delta(filt, before, WEB, CNT_ACCEPTED) == 2
    assert counter_delta(filt, before, WEB, CNT_LEASE_EXPIRED) == 0
    assert counter_delta(filt, before, WEB, CNT_LEASE_LAPSED) == 0


def wait_for_clock(clock: int, deadline: int, what: str) -> None:
    limit = time.monotonic() + 5
    while time.clock_gettime_ns(clock) <= deadline:
        assert time.monotonic() < limit, f"{what} did not pass a deadline 50 ms ahead in 5 s"
        time.sleep(0.005)         # waiting for the clock itself, not for another thread


def test_a_syn_deadline_passing_while_loaded_turns_syns_away_from_then_on(filt, lease):
    """The kernel's exact clock is the agent's time.monotonic_ns(): a deadline 50 ms ahead holds
    now and has passed once that clock says so."""
    client, sport = client_of(filt, 4, owned=True)
    syn_deadline = time.monotonic_ns() + 50 * 10**6
    lease({WEB: (syn_deadline, syn_deadline + HOUR_NS)})
    assert filt.run(tcp_frame(4, client, sport, SYN))[0].verdict == XDP_PASS
    wait_for_clock(time.CLOCK_MONOTONIC, syn_deadline, "time.monotonic_ns()")
    assert filt.run(tcp_frame(4, client, sport, SYN))[0].verdict == XDP_DROP, (
        "the filter's clock (bpf_ktime_get_ns) is behind time.monotonic_ns(): a deadline the agent "
        "saw pass still holds in the kernel")
    assert filt.run(tcp_frame(4, client, sport, ACK))[0].verdict == XDP_PASS


def test_a_deadline_passing_while_loaded_drops_established_segments_once_the_coarse_clock_passes_it(filt, lease):
    """The second stage reads bpf_ktime_get_coarse_ns, which is CLOCK_MONOTONIC_COARSE."""
    client, sport = client_of(filt, 4, owned=True)
    deadline = time.monotonic_ns() + 50 * 10**6
    lease({WEB: (deadline - INTERVAL_NS // 2, deadline)})
    assert filt.run(tcp_frame(4, client, sport, ACK))[0].verdict == XDP_PASS
    wait_for_clock(CLOCK_MONOTONIC_COARSE, deadline, "CLOCK_MONOTONIC_COARSE")
    before = filt.counters()
    assert filt.run(tcp_frame(4, client, sport, ACK))[0].verdict == XDP_DROP, (
        "an ACK to an owned bucket passed after CLOCK_MONOTONIC_COARSE passed the lease's deadline")
    assert counter_delta(filt, before, WEB, CNT_LEASE_LAPSED) == 1


@pytest.mark.parametrize("state", ["syn-expired", "lapsed"])
def test_a_lease_belongs_to_its_farm_slot_only(filt, lease, state):
    lease({DNS: syn_expired() if state == "syn-expired" else LAPSED})
    client, sport = client_of(filt, 4, owned=True)
    for flags in (SYN, ACK):
        assert filt.run(tcp_frame(4, client, sport, flags))[0].verdict == XDP_PASS, (
            f"dns's {state} lease (slot 5) turned away TCP flags 0x{flags:02x} for web (slot 0)")


def test_write_lease_reads_back_both_stages_and_refuses_bad_values(filt, lease):
    t = filt.tables
    lease({WEB: (123_456_789, 223_456_789), DNS: NO_LEASE})
    assert t.read_lease(WEB) == (123_456_789, 223_456_789) and t.read_lease(DNS) == (0, 0)
    t.write_lease(WEB, (1 << 64) - 2, (1 << 64) - 1)
    assert t.read_lease(WEB) == ((1 << 64) - 2, (1 << 64) - 1)
    t.write_lease(WEB, 0, 5)
    assert t.read_lease(WEB) == (0, 5)
    with pytest.raises(ValueError, match="lease syn_deadline -1 for farm slot 0"):
        t.write_lease(WEB, -1, 0)
    with pytest.raises(ValueError, match="lease deadline 18446744073709551616 for farm slot 0"):
        t.write_lease(WEB, 0, 1 << 64)
    with pytest.raises(ValueError, match="syn_deadline 20 is after deadline 10.*syn_deadline \\+ the heartbeat"):
        t.write_lease(WEB, 20, 10)
    with pytest.raises(ValueError, match="farm slot 32 out of range"):
        t.write_lease(32, 1, 2)
    assert t.read_lease(WEB) == (0, 5), "a refused write changed the lease"


def test_a_farm_removed_from_the_plan_leaves_its_slot_without_a_lease():
    """The next farm given the slot must not inherit a past deadline of either stage."""
    web = parse_farm(farm_doc("web", ["203.0.113.10"], 64))
    other = parse_farm(farm_doc("other", ["203.0.113.30"], 64))
    everything = frozenset(range(64))
    filt = Loaded(True, build_plan([FarmOwnership(web, everything)], {"web": 0}))
    filt.tables.write_lease(0, *LAPSED)
    filt.tables.apply(build_plan([FarmOwnership(other, everything)], {"other": 1}), previous_slots={0})
    assert filt.tables.read_lease(0) == (0, 0)
    filt.tables.apply(build_plan([FarmOwnership(web, everything)], {"web": 0}), previous_slots={1})
    for flags in (SYN, ACK):
        frame = framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(
            bytes([198, 51, 100, 9]), VIP4, 6, framegen.tcp(1234, 80, flags=flags))
        assert filt.run(frame)[0].verdict == XDP_PASS
