"""nodeagent.flow_census, the pure part: which sockets are a farm's flows, and the bucket each
falls in, checked against the hash reference (vipfarm.hashing.client_hash) directly."""
from __future__ import annotations

import ipaddress

import pytest

from nodeagent.flow_census import (FLOW_STATES, TCP_CLOSE, TCP_ESTABLISHED, TCP_LISTEN, TCP_SYN_RECV, TCP_TIME_WAIT,
                                   TcpSocket, count_flows, flow_bucket)
from vipfarm.hashing import client_hash
from vipfarm.spec import parse_farm

BUCKETS = 64
SEED = 0xC0FFEE


def farm(rules=None):
    return parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "web"},
                       "spec": {"virtualIPs": ["203.0.113.10", "2001:db8::10"], "buckets": BUCKETS, "seed": SEED,
                                "rules": rules if rules is not None else [
                                    {"protocol": "TCP", "ports": "80", "affinity": "ClientIPPort"},
                                    {"protocol": "UDP", "ports": "8080", "affinity": "ClientIPPort"},
                                    {"protocol": "TCP", "ports": "8000-8100", "affinity": "ClientIP"}]}})


def sock(remote="198.51.100.100", rport=40000, local="203.0.113.10", lport=80, state=TCP_ESTABLISHED):
    return TcpSocket(ipaddress.ip_address(local), lport, ipaddress.ip_address(remote), rport, state)


def reference(remote: str, port: int | None) -> int:
    return client_hash(ipaddress.ip_address(remote).packed, port, SEED) & (BUCKETS - 1)


def test_a_clientipport_rule_hashes_the_client_address_and_port():
    f = farm()
    for rport in (1024, 40000, 65535):
        assert flow_bucket(f, sock(rport=rport)) == reference("198.51.100.100", rport)


def test_a_clientip_rule_and_a_port_without_rule_hash_the_client_address_only():
    f = farm()
    assert flow_bucket(f, sock(lport=8050, rport=40000)) == reference("198.51.100.100", None)
    assert flow_bucket(f, sock(lport=443, rport=40000)) == reference("198.51.100.100", None)


def test_a_udp_rule_does_not_give_its_affinity_to_tcp_on_the_same_port():
    assert flow_bucket(farm(), sock(lport=8080, rport=40001)) == reference("198.51.100.100", None)


def test_the_first_matching_rule_wins():
    f = farm([{"protocol": "TCP", "ports": "80", "affinity": "ClientIP"},
              {"protocol": "TCP", "ports": "1-65535", "affinity": "ClientIPPort"}])
    assert flow_bucket(f, sock(lport=80, rport=40000)) == reference("198.51.100.100", None)
    assert flow_bucket(f, sock(lport=81, rport=40000)) == reference("198.51.100.100", 40000)


def test_ipv6_and_ipv4_mapped_sockets_hash_as_the_filter_sees_them():
    f = farm()
    assert flow_bucket(f, sock(remote="2001:db8:1::100", local="2001:db8::10", rport=5)) == \
        reference("2001:db8:1::100", 5)
    mapped = sock(remote="::ffff:198.51.100.101", local="::ffff:203.0.113.10", rport=7)
    assert flow_bucket(f, mapped) == reference("198.51.100.101", 7)
    assert count_flows(f, [mapped], [reference("198.51.100.101", 7)]) == {reference("198.51.100.101", 7): 1}


def test_every_flow_state_counts_and_listen_close_and_time_wait_do_not():
    f = farm()
    b = reference("198.51.100.100", 40000)
    assert {TCP_SYN_RECV, TCP_ESTABLISHED} <= FLOW_STATES
    assert not {TCP_LISTEN, TCP_CLOSE, TCP_TIME_WAIT} & FLOW_STATES
    socks = [sock(state=s) for s in FLOW_STATES] + [sock(state=TCP_LISTEN, rport=0), sock(state=TCP_CLOSE),
                                                    sock(state=TCP_TIME_WAIT)]
    assert count_flows(f, socks, [b]) == {b: len(FLOW_STATES)}


def test_sockets_not_on_a_vip_are_not_the_farms_flows():
    f = farm()
    b = reference("198.51.100.100", 40000)
    others = [sock(local="198.51.100.1"),                                # the node's own address
              sock(local="203.0.113.11"),                                # another farm's VIP
              sock(local="198.51.100.100", remote="203.0.113.10", lport=40000, rport=80)]   # a client socket
    assert count_flows(f, others, [b]) == {b: 0}


def test_only_the_asked_buckets_are_returned_with_zero_for_empty_ones():
    f = farm()
    socks = [sock(remote=f"198.51.100.{100 + i}", rport=40000 + i) for i in range(50)]
    want = {reference(f"198.51.100.{100 + i}", 40000 + i) for i in range(50)}
    full = count_flows(f, socks, range(BUCKETS))
    assert sum(full.values()) == 50 and set(full) == set(range(BUCKETS))
    assert {b for b, n in full.items() if n} == want
    some = sorted(want)[:3] + [b for b in range(BUCKETS) if b not in want][:2]
    assert count_flows(f, socks, some) == {b: full[b] for b in some}
    assert count_flows(f, socks, []) == {}


@pytest.mark.parametrize("bad", [-1, BUCKETS, True, "3", 1.0])
def test_a_bucket_outside_the_farm_is_refused_naming_the_farm_and_the_range(bad):
    with pytest.raises(ValueError) as info:
        count_flows(farm(), [], [0, bad])
    assert "Farm 'web'" in str(info.value) and f"bucket {bad!r}" in str(info.value) and "0..63" in str(info.value)
