"""Lab tier: real agents in network namespaces, real TCP/UDP/ICMP traffic to the VIPs.

Tests run in file order; the last ones restart and stop agents.
"""
from __future__ import annotations

import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from vipfarm.spec import default_virtual_mac

pytestmark = pytest.mark.lab
WEB = "203.0.113.10"
WEB6 = "2001:db8::10"
MC = "203.0.113.20"
W0 = "203.0.113.30"


def nodes_of(results) -> Counter:
    return Counter(r["node"] for r in results)


def failures(results) -> list[dict]:
    return [r for r in results if r.get("error")]


def test_600_tcp_connections_are_each_answered_by_exactly_one_node(farm_lab):
    before = {k: farm_lab.counters(k, "web") for k in (1, 2, 3)}
    results = farm_lab.traffic("tcp", WEB, 80, farm_lab.sources(60), per_src=10)
    after = {k: farm_lab.counters(k, "web") for k in (1, 2, 3)}
    assert len(results) == 600
    assert failures(results) == []
    # A bucket still on the handover slow path (moving: just after the agents started, a node's
    # buckets are pending for a guard time) counts what it takes by state as handover_kept and
    # what it drops as handover_unknown_dropped, instead of accepted/dropped.
    taken_keys, dropped_keys = ("accepted", "handover_kept"), ("dropped", "handover_unknown_dropped")
    delta = {k: {c: after[k][c] - before[k][c] for c in taken_keys + dropped_keys} for k in (1, 2, 3)}
    seen = {k: sum(delta[k].values()) for k in (1, 2, 3)}
    accepted = sum(delta[k][c] for k in (1, 2, 3) for c in taken_keys)
    # Every node's filter saw every packet to the VIP, and exactly one of them took each.
    assert seen[1] == seen[2] == seen[3] == accepted, (seen, accepted)
    assert accepted >= 600 * 3   # at least SYN, ACK, FIN-ish per connection
    farm_lab.last_web_results = results


def test_node_shares_follow_the_weights_within_binomial_tolerance(farm_lab):
    results = getattr(farm_lab, "last_web_results", None) or farm_lab.traffic(
        "tcp", WEB, 80, farm_lab.sources(60), per_src=10)
    n = len(results)
    counts = nodes_of(results)
    owned = {k: len(farm_lab.owned(k, "web")) for k in (1, 2, 3)}
    weights = {1: 1, 2: 2, 3: 1}
    assert sum(owned.values()) == 1024
    for k in (1, 2, 3):
        share = 1024 * weights[k] / 4
        assert abs(owned[k] - share) <= 1, f"n{k} owns {owned[k]} buckets, weighted share {share}"
    for k in (1, 2, 3):
        p = owned[k] / 1024
        sd = math.sqrt(n * p * (1 - p))
        tolerance = 4.5 * sd     # 4.5 sigma: a false alarm about once in 150,000 runs
        got = counts[f"n{k}"]
        assert abs(got - n * p) <= tolerance, (
            f"n{k} answered {got} of {n} connections; expected {n * p:.0f} +- {tolerance:.0f} "
            f"(p={p:.3f} from {owned[k]} of 1024 buckets, 4.5 sigma of a binomial)")


def test_client_ip_affinity_keeps_each_client_on_one_node(farm_lab):
    results = farm_lab.traffic("tcp", WEB, 8080, farm_lab.sources(60), per_src=5)
    assert failures(results) == []
    by_src: dict[str, set[str]] = {}
    for r in results:
        by_src.setdefault(r["src"], set()).add(r["node"])
    assert all(len(nodes) == 1 for nodes in by_src.values()), by_src
    assert len({next(iter(v)) for v in by_src.values()}) == 3   # and clients still spread


def test_udp_datagrams_are_answered_exactly_once(farm_lab):
    results = farm_lab.traffic("udp", WEB, 5000, farm_lab.sources(60), per_src=4, timeout=1.5)
    assert len(results) == 240
    assert [r for r in results if len(r["replies"]) != 1] == []
    assert len(Counter(r["replies"][0] for r in results)) == 3


def test_a_ping_to_the_vip_gets_exactly_one_reply(farm_lab):
    for src in farm_lab.sources(12):
        res = farm_lab.lab.run(farm_lab.lab.client, ["ping", "-n", "-c", "3", "-i", "0.2", "-W", "1",
                                                     "-I", src, WEB], check=False)
        assert "3 received" in res.stdout and "DUP" not in res.stdout, res.stdout


@pytest.mark.parametrize("vip", [WEB, WEB6])
def test_arp_and_ns_for_the_vip_return_the_virtual_mac_and_nothing_else(farm_lab, vip):
    res = farm_lab.lab.python(farm_lab.lab.client, "nodeagent.lab.traffic", "neigh", "--vip", vip)
    import json
    answers = json.loads(res.stdout)["answers"]
    vmac = default_virtual_mac("web", "unicast-flood")
    assert len(answers) == 3, answers                       # every node answers...
    assert {a["mac"] for a in answers} == {vmac}            # ...with the virtual MAC only
    assert vmac not in {a["eth_src"] for a in answers}      # switches never learn it
    assert all(a.get("checksum_ok", True) for a in answers)


def test_an_ipv6_vip_spreads_tcp_over_the_nodes(farm_lab):
    from nodeagent.lab.namespaces import client_ips6
    results = farm_lab.traffic("tcp", WEB6, 80, client_ips6(60), per_src=3)
    assert failures(results) == []
    assert set(nodes_of(results)) == {"n1", "n2", "n3"}


def test_a_weight_zero_node_gets_nothing(farm_lab):
    results = farm_lab.traffic("tcp", W0, 80, farm_lab.sources(60), per_src=3)
    assert failures(results) == []
    counts = nodes_of(results)
    assert counts["n3"] == 0 and counts["n1"] > 0 and counts["n2"] > 0
    assert farm_lab.owned(3, "w0") == set()


def test_multicast_mode_joins_the_group_mac_and_spreads_traffic(farm_lab):
    vmac = default_virtual_mac("mc", "multicast")
    assert int(vmac[:2], 16) & 1
    for k in (1, 2, 3):
        mcast = farm_lab.lab.run(farm_lab.lab.node(k), ["cat", "/proc/net/dev_mcast"]).stdout
        assert vmac.replace(":", "") in mcast, f"n{k} did not join {vmac}:\n{mcast}"
    results = farm_lab.traffic("tcp", MC, 80, farm_lab.sources(60), per_src=3)
    assert failures(results) == []
    assert set(nodes_of(results)) == {"n1", "n2", "n3"}


def test_a_bad_farm_file_is_rejected_with_the_field_and_nothing_changes(farm_lab):
    lab = farm_lab.lab
    with open(farm_lab.files[0]) as f:
        bad = lab.write_farm("bad", f.read().replace("buckets: 1024", "buckets: 1000"))
    lo_before = lab.run(lab.node(1), ["ip", "-o", "addr", "show", "dev", "lo"]).stdout
    res = lab.run(lab.node(1), [sys.executable, "-m", "nodeagent.main", "--node", "n1", "--farm-file", bad,
                                "--pin-root", lab.pin_root + "-bad", "--state-root", lab.state_root + "-bad"],
                  check=False)
    assert res.returncode == 2
    assert "spec.buckets=1000" in res.stderr and "power of two" in res.stderr
    assert "Nothing was changed" in res.stderr
    assert lab.run(lab.node(1), ["ip", "-o", "addr", "show", "dev", "lo"]).stdout == lo_before
    assert not os.path.exists(lab.pin_root + "-bad")


def test_sigkill_and_restart_under_steady_load_fails_no_connection(farm_lab):
    """Connections keep being served before the kill, while no agent runs, and after the new
    agent adopted the dataplane; the load outlasts the restart, and no connection fails."""
    lab = farm_lab.lab
    owned_before = farm_lab.owned(1, "web")
    t0 = time.time()
    load = subprocess.Popen(
        lab.command(lab.client, [sys.executable, "-m", "nodeagent.lab.traffic", "steady", "--vip", WEB,
                                 "--port", "80", "--seconds", "40", "--rate", "40", "--timeout", "3"]
                    + sum((["--src", s] for s in farm_lab.sources(60)), [])),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(2)                      # some load before the kill
    t_kill = time.time() - t0
    logs_before = {k: len(lab.agent_log(k)) for k in (2, 3)}
    farm_lab.agents[1].send_signal(signal.SIGKILL)
    farm_lab.agents[1].wait(10)
    # The dataplane survives its agent: XDP stays attached and the maps stay pinned.
    link = lab.run(lab.node(1), ["ip", "-o", "link", "show", "dev", "eth0"]).stdout
    assert "xdp" in link
    time.sleep(1)                      # load while no agent runs at all (n1 serves ~25% of it),
    #                                    well inside the farm's heartbeat timeout: no failover
    t_restart = time.time() - t0
    farm_lab.start_agent(1, after=1)
    t_ready = time.time() - t0
    out, err = load.communicate(timeout=120)
    import json
    results = json.loads(out)
    assert failures(results) == [], failures(results)[:5]
    # The load's clock starts a little after t0, so its t is at most ours: compare with margins.
    phases = {"before the kill": [r for r in results if r["t"] < t_kill - 0.5],
              "without an agent": [r for r in results if t_kill + 0.2 < r["t"] < t_restart - 0.5],
              "after the restart": [r for r in results if r["t"] > t_ready + 0.5]}
    assert all(phases.values()), ({k: len(v) for k, v in phases.items()},
                                  f"kill {t_kill:.1f}s, restart {t_restart:.1f}s, ready {t_ready:.1f}s; "
                                  f"the 40 s load must outlast the restart")
    assert {r["node"] for r in phases["without an agent"]} >= {"n1"}, "n1 served nothing while its agent was down"
    assert re.search(r"event=xdp_attached .*adopted=True", lab.agent_log(1))
    assert farm_lab.owned(1, "web") == owned_before
    for k in (2, 3):   # the peers never saw n1 leave: the new agent took over its heartbeats in time
        since_kill = lab.agent_log(k)[logs_before[k]:]     # (the views of the agents' own start-up aside)
        assert not re.search(r"event=view_changed node=n\d farm=web view=n2,n3 ", since_kill), since_kill


def test_sigterm_is_a_graceful_leave_that_restores_the_node(farm_lab):
    lab = farm_lab.lab
    k = 3
    farm_lab.agents[k].send_signal(signal.SIGTERM)
    assert farm_lab.agents[k].wait(30) == 0
    lo = lab.run(lab.node(k), ["ip", "-o", "addr", "show", "dev", "lo"]).stdout
    assert "203.0.113." not in lo and "2001:db8::" not in lo
    link = lab.run(lab.node(k), ["ip", "-o", "link", "show", "dev", "eth0"]).stdout
    assert "xdp" not in link
    ignore = lab.run(lab.node(k), ["cat", "/proc/sys/net/ipv4/conf/eth0/arp_ignore"]).stdout.strip()
    assert ignore == "0"
    assert not os.path.exists(farm_lab.pin_dir(k))
    mcast = lab.run(lab.node(k), ["cat", "/proc/net/dev_mcast"]).stdout
    assert default_virtual_mac("mc", "multicast").replace(":", "") not in mcast
