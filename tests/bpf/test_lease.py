"""BPF tier: the lease in the data plane (vf_lease), on the real program via BPF_PROG_TEST_RUN.

Past its farm's deadline, the filter drops new TCP flows (SYN without ACK) to the buckets this
node owns and counts them as lease_expired; everything else is decided as without a lease.
"""
from __future__ import annotations

import ipaddress
import random
import time

import pytest

from nodeagent.bpf_consts import (CNT_ACCEPTED, CNT_DROPPED, CNT_LEASE_EXPIRED, XDP_DROP, XDP_PASS,
                                  XDP_TX)
from nodeagent.filter_plan import FarmOwnership, build_plan
from tests.bpf.test_filter_vs_model import OWN_MAC, VIP4, VIP6, Loaded, farm_doc, make_plan
from tests.support import framegen
from vipfarm.hashing import bucket_of
from vipfarm.spec import parse_farm

SYN, SYN_ACK, ACK, PSH_ACK, FIN_ACK, RST = 0x02, 0x12, 0x10, 0x18, 0x11, 0x04
EXPIRED = 1                       # 1 ns after boot: long past
HOUR_NS = 3600 * 10**9
WEB, DNS = 0, 5                   # the farm slots of make_plan


@pytest.fixture(scope="module")
def filt():
    return Loaded(True, make_plan(random.Random(7)))


@pytest.fixture
def lease(filt):
    """Set leases for one test; no lease on any slot after it."""
    yield filt.set_leases
    filt.set_leases({WEB: 0, DNS: 0})


def tcp_frame(family: int, client: bytes, sport: int, flags: int, dport: int = 80) -> bytes:
    l4 = framegen.tcp(sport, dport, flags=flags)
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


def counter_delta(filt, before, slot: int, counter: int) -> int:
    return filt.counters()[(slot, counter)] - before[(slot, counter)]


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_expired_lease_drops_syns_to_owned_buckets_and_counts_them_lease_expired(filt, lease, family):
    lease({WEB: EXPIRED})
    client, sport = client_of(filt, family, owned=True)
    before = filt.counters()
    got, _ = filt.run(tcp_frame(family, client, sport, SYN))
    assert got.verdict == XDP_DROP, f"a SYN to an owned bucket passed with the lease expired (IPv{family})"
    assert counter_delta(filt, before, WEB, CNT_LEASE_EXPIRED) == 1
    assert counter_delta(filt, before, WEB, CNT_ACCEPTED) == 0
    assert counter_delta(filt, before, WEB, CNT_DROPPED) == 0


@pytest.mark.parametrize("flags", [SYN_ACK, ACK, PSH_ACK, FIN_ACK, RST],
                         ids=["syn-ack", "ack", "psh-ack", "fin-ack", "rst"])
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_expired_lease_still_accepts_established_segments_of_owned_buckets(filt, lease, family, flags):
    lease({WEB: EXPIRED})
    client, sport = client_of(filt, family, owned=True)
    frame = tcp_frame(family, client, sport, flags)
    before = filt.counters()
    got, _ = filt.run(frame)
    assert got.verdict == XDP_PASS and got.frame == OWN_MAC + frame[6:], (
        f"TCP flags 0x{flags:02x} to an owned bucket were not accepted with the lease expired")
    assert counter_delta(filt, before, WEB, CNT_ACCEPTED) == 1
    assert counter_delta(filt, before, WEB, CNT_LEASE_EXPIRED) == 0


def test_expired_lease_still_accepts_udp_and_ping_and_answers_arp(filt, lease):
    lease({WEB: EXPIRED})
    client, sport = client_of(filt, 4, owned=True)
    got, _ = filt.run(udp_frame(client, sport))
    assert got.verdict == XDP_PASS, "UDP to an owned bucket was dropped with the lease expired"
    # A ping hashes the client address only: find one that this node takes.
    rng = random.Random(5)
    for _ in range(1000):
        ping = framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(
            bytes([198, 51, 100, rng.randrange(1, 255)]), VIP4, 1, framegen.icmp_echo(1))
        if filt.model.decide(ping).verdict == XDP_PASS:
            break
    got, _ = filt.run(ping)
    assert got.verdict == XDP_PASS, "a ping to an owned bucket was dropped with the lease expired"
    got, _ = filt.run(framegen.arp_request(framegen.CLIENT_MAC, bytes([198, 51, 100, 7]), VIP4))
    assert got.verdict == XDP_TX, "the ARP request for a VIP was not answered with the lease expired"


@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_expired_lease_leaves_unowned_buckets_dropped_and_counted_as_dropped(filt, lease, family):
    lease({WEB: EXPIRED})
    client, sport = client_of(filt, family, owned=False)
    before = filt.counters()
    got, _ = filt.run(tcp_frame(family, client, sport, SYN))
    assert got.verdict == XDP_DROP
    assert counter_delta(filt, before, WEB, CNT_DROPPED) == 1
    assert counter_delta(filt, before, WEB, CNT_LEASE_EXPIRED) == 0


@pytest.mark.parametrize("deadline", ["none", "an-hour-ahead"])
@pytest.mark.parametrize("family", [4, 6], ids=["ipv4", "ipv6"])
def test_no_lease_or_a_future_deadline_accepts_syns_to_owned_buckets(filt, lease, family, deadline):
    lease({WEB: 0 if deadline == "none" else time.monotonic_ns() + HOUR_NS})
    client, sport = client_of(filt, family, owned=True)
    before = filt.counters()
    got, _ = filt.run(tcp_frame(family, client, sport, SYN))
    assert got.verdict == XDP_PASS, f"a SYN to an owned bucket was dropped with lease={deadline}"
    assert counter_delta(filt, before, WEB, CNT_ACCEPTED) == 1
    assert counter_delta(filt, before, WEB, CNT_LEASE_EXPIRED) == 0


def test_a_deadline_passing_while_loaded_turns_syns_away_from_then_on(filt, lease):
    """The kernel's clock is the agent's time.monotonic_ns(): a deadline 50 ms ahead holds now
    and has passed once that clock says so."""
    client, sport = client_of(filt, 4, owned=True)
    deadline = time.monotonic_ns() + 50 * 10**6
    lease({WEB: deadline})
    assert filt.run(tcp_frame(4, client, sport, SYN))[0].verdict == XDP_PASS
    limit = time.monotonic() + 5
    while time.monotonic_ns() <= deadline:
        assert time.monotonic() < limit, "time.monotonic_ns() did not pass a deadline 50 ms ahead in 5 s"
        time.sleep(0.005)         # waiting for the clock itself, not for another thread
    assert filt.run(tcp_frame(4, client, sport, SYN))[0].verdict == XDP_DROP, (
        "the filter's clock (bpf_ktime_get_ns) is behind time.monotonic_ns(): a deadline the agent "
        "saw pass still holds in the kernel")


def test_a_lease_belongs_to_its_farm_slot_only(filt, lease):
    lease({DNS: EXPIRED})
    client, sport = client_of(filt, 4, owned=True)
    assert filt.run(tcp_frame(4, client, sport, SYN))[0].verdict == XDP_PASS, (
        "dns's expired lease (slot 5) turned away a SYN for web (slot 0)")


def test_write_lease_reads_back_and_clear_farm_resets_it(filt, lease):
    t = filt.tables
    lease({WEB: 123_456_789, DNS: 0})
    assert t.read_lease(WEB) == 123_456_789 and t.read_lease(DNS) == 0
    t.write_lease(WEB, (1 << 64) - 1)
    assert t.read_lease(WEB) == (1 << 64) - 1
    with pytest.raises(ValueError, match="lease deadline -1 for farm slot 0"):
        t.write_lease(WEB, -1)
    with pytest.raises(ValueError, match="farm slot 32 out of range"):
        t.write_lease(32, 1)


def test_a_farm_removed_from_the_plan_leaves_its_slot_without_a_lease():
    """The next farm given the slot must not inherit an expired deadline."""
    web = parse_farm(farm_doc("web", ["203.0.113.10"], 64))
    other = parse_farm(farm_doc("other", ["203.0.113.30"], 64))
    everything = frozenset(range(64))
    filt = Loaded(True, build_plan([FarmOwnership(web, everything)], {"web": 0}))
    filt.tables.write_lease(0, EXPIRED)
    filt.tables.apply(build_plan([FarmOwnership(other, everything)], {"other": 1}), previous_slots={0})
    assert filt.tables.read_lease(0) == 0
    filt.tables.apply(build_plan([FarmOwnership(web, everything)], {"web": 0}), previous_slots={1})
    syn = framegen.eth(OWN_MAC, framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(
        bytes([198, 51, 100, 9]), VIP4, 6, framegen.tcp(1234, 80))
    assert filt.run(syn)[0].verdict == XDP_PASS
