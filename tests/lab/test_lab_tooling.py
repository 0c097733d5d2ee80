"""Lab tier: the failover tooling (faults, prober, ownership watcher) proven against real agents.

One farm `tools` (203.0.113.40, ClientIP affinity on 8080, weights 1/1/1) on 3 nodes, 30
client addresses: the prober sees every client served once, the watcher sees one acceptor per
bucket, freeze/thaw really stop and resume a node's processes, nftables drops exactly the
heartbeats named. Its farm heartbeats slowly (200/5000 ms), so a short freeze is not a
failover. The failure tests proper (crash, link down, frozen node, partitions, with
the agents failing over) are tests/lab/test_failover.py, which uses the same tools.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

from nodeagent.lab import faults
from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml, node_ip, node_ip6
from nodeagent.lab.ownership_watch import OwnershipWatcher
from nodeagent.lab.prober import (RunningProbe, clients_of, failed_attempts, outcome_counts, recovery_time,
                                  serving_nodes, spawn_probe, wait_for)
from nodeagent.pinned_maps import read_owned

pytestmark = pytest.mark.lab
VIP, PORT = "203.0.113.40", 8080
CLIENTS = client_ips(30)
UDP_PORT, OTHER_UDP_PORT = 5000, 5001
RULES = '    - {protocol: TCP, ports: "8080", affinity: ClientIP}\n'


class ToolLab:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.file = lab.write_farm("tools", farm_yaml("tools", [VIP], {"n1": 1, "n2": 1, "n3": 1}, rules=RULES,
                                                      key_file=lab.key_file, interval_ms=200, timeout_ms=5000))
        self.agents: dict[int, subprocess.Popen] = {}
        self.runs = 0

    def probe(self, seconds: float = 20, clients=CLIENTS) -> RunningProbe:
        return spawn_probe(self.lab, VIP, PORT, list(clients), seconds)

    def owned(self, k: int) -> set[int]:
        with open(os.path.join(self.lab.state_root, f"n{k}", "eth0.json")) as f:
            slot = json.load(f)["slots"]["tools"]
        return read_owned(os.path.join(self.lab.pin_root, f"n{k}", "eth0"), slot)

    def udp_replies(self, from_k: int, to_k: int, port: int, v6: bool = False) -> int:
        """Datagrams from node from_k to node to_k's echo server on `port`: how many came back."""
        dst, src = (node_ip6(to_k), node_ip6(from_k)) if v6 else (node_ip(to_k), node_ip(from_k))
        res = self.lab.python(self.lab.node(from_k), "nodeagent.lab.traffic", "udp", "--vip", dst,
                              "--port", str(port), "--src", src, "--per-src", "3", "--timeout", "0.5")
        return sum(len(r["replies"]) for r in json.loads(res.stdout))


@pytest.fixture(scope="module")
def tool_lab():
    with Lab(nodes=3, clients=len(CLIENTS)) as lab:
        tl = ToolLab(lab)
        lab.start_servers(tcp_ports=(PORT,), udp_ports=(UDP_PORT, OTHER_UDP_PORT))
        for k in (1, 2, 3):
            tl.agents[k] = lab.start_agent(k, [tl.file])
        for k in (1, 2, 3):
            lab.wait_agent_ready(k, tl.agents[k], timeout=180)
        lab.wait_converged("tools", [1, 2, 3])
        yield tl


def test_prober_sees_every_client_served_by_one_node_with_three_healthy_nodes(tool_lab):
    probe = tool_lab.probe()
    probe.wait_all_served()
    t = time.monotonic_ns()
    wait_for(lambda: all(c.get("ok", 0) >= 5 for c in outcome_counts(probe.records(), since=t).values())
             and len(outcome_counts(probe.records(), since=t)) == len(CLIENTS), 10,
             "5 more successes for every client")
    recs = probe.stop()
    assert failed_attempts(recs, 0, 2**63) == []
    nodes = serving_nodes(recs)
    assert set(nodes) == set(CLIENTS)
    assert all(len(v) == 1 for v in nodes.values()), nodes          # ClientIP affinity
    assert set().union(*nodes.values()) == {"n1", "n2", "n3"}
    assert recovery_time(recs, CLIENTS, recs[0].t_ns) is not None


def test_ownership_watcher_sees_one_acceptor_for_every_bucket_in_steady_state(tool_lab):
    w = OwnershipWatcher.for_lab(tool_lab.lab, "tools").start()
    time.sleep(1.0)      # the observation window itself, not a synchronisation
    report = w.stop()
    assert report.samples >= 100, report.summary()
    assert report.read_errors == 0, report.summary()
    assert report.max_double_ms == 0 and report.max_zero_ms == 0, report.summary()
    assert sum(len(tool_lab.owned(k)) for k in (1, 2, 3)) == 1024


def test_freeze_stops_every_process_of_the_node_and_thaw_resumes_them(tool_lab):
    lab = tool_lab.lab
    probe = tool_lab.probe()
    probe.wait_all_served()
    before = time.monotonic_ns()
    mine = clients_of(probe.records(), "n2", until=before)
    assert mine, "n2 serves no client; the farm's buckets are not spread"
    pids = faults.ns_pids(lab.node(2))
    assert tool_lab.agents[2].pid in pids
    try:
        stopped = faults.freeze(lab, 2)
        t_freeze = time.monotonic_ns()
        assert sorted(stopped) == pids
        assert {p: faults.process_state(p) for p in pids} == {p: "T" for p in pids}
        wait_for(lambda: all(outcome_counts(probe.records(), since=t_freeze).get(c, {}).get("timeout", 0) >= 3
                             for c in mine), 10, "3 timeouts for each of n2's clients while n2 is frozen")
    finally:
        faults.thaw(lab, 2)
    t_thaw = time.monotonic_ns()
    assert all(faults.process_state(p) not in ("T", None) for p in pids), \
        {p: faults.process_state(p) for p in pids}
    wait_for(lambda: recovery_time(probe.records(), mine, t_thaw) is not None, 10,
             "n2's clients to be served again after thaw")
    recs = probe.stop()
    others = sorted(set(CLIENTS) - set(mine))
    assert failed_attempts(recs, before, t_thaw, clients=mine), "freezing n2 failed none of its clients"
    assert failed_attempts(recs, before, 2**63, clients=others) == []
    assert tool_lab.agents[2].poll() is None


def test_drop_heartbeats_drops_only_udp_from_the_named_peer_to_the_named_port(tool_lab):
    lab = tool_lab.lab
    assert tool_lab.udp_replies(1, 2, UDP_PORT) == 3
    try:
        faults.drop_heartbeats(lab, 1, 2, UDP_PORT)
        assert tool_lab.udp_replies(1, 2, UDP_PORT) == 0
        assert tool_lab.udp_replies(1, 2, UDP_PORT, v6=True) == 0
        assert tool_lab.udp_replies(3, 2, UDP_PORT) == 3           # another sender
        assert tool_lab.udp_replies(2, 1, UDP_PORT) == 3           # the other direction
        assert tool_lab.udp_replies(1, 2, OTHER_UDP_PORT) == 3     # another port
    finally:
        faults.heal(lab, 2)
    assert tool_lab.udp_replies(1, 2, UDP_PORT) == 3
    assert tool_lab.udp_replies(1, 2, UDP_PORT, v6=True) == 3


def test_partition_cuts_udp_both_ways_between_groups_only(tool_lab):
    lab = tool_lab.lab
    try:
        faults.partition(lab, [[1], [2, 3]], UDP_PORT)
        assert tool_lab.udp_replies(1, 2, UDP_PORT) == 0
        assert tool_lab.udp_replies(2, 1, UDP_PORT) == 0
        assert tool_lab.udp_replies(3, 1, UDP_PORT) == 0
        assert tool_lab.udp_replies(2, 3, UDP_PORT) == 3
    finally:
        faults.heal_all(lab)
    assert tool_lab.udp_replies(2, 1, UDP_PORT) == 3


def test_lab_teardown_leaves_no_process_of_a_frozen_node_stopped():
    lab = Lab(nodes=1, clients=1).build()
    outsider = None
    try:
        # A process the lab did not start in node n1's namespace: teardown must not leave it
        # stopped (it kills what still runs in its namespaces; a stopped process ignores SIGKILL
        # only until SIGCONT, which teardown sends first).
        outsider = subprocess.Popen(lab.command(lab.node(1), ["sleep", "60"]))
        wait_for(lambda: outsider.pid in faults.ns_pids(lab.node(1)), 5, "the sleep to enter n1's namespace")
        faults.freeze(lab, 1)
        assert faults.process_state(outsider.pid) == "T"
        lab.close()
        assert faults.process_state(outsider.pid) not in ("T", None)
    finally:
        lab.close()
        if outsider is not None:
            outsider.kill()
            outsider.wait(timeout=5)


def test_lab_server_keeps_serving_after_a_client_reset_its_connection_before_the_reply():
    """A client that gives up (RST) while the server is frozen must not kill the server: after
    thaw, accept() hands it the dead connection, and the reply to it fails."""
    with Lab(nodes=1, clients=1) as lab:
        lab.start_servers(tcp_ports=(PORT,), udp_ports=())
        server = lab.procs[-1]
        src = client_ips(1)[0]
        script = ("import socket, struct, sys\n"
                  "s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=2, source_address=(sys.argv[3], 0))\n"
                  "s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack('ii', 1, 0))\n"
                  "s.close()\n")
        wait_for(lambda: faults.ns_pids(lab.node(1)), 5, "the server to start")
        faults.freeze(lab, 1)
        try:    # the kernel completes the handshake for the stopped server; the client resets
            lab.run(lab.client, [sys.executable, "-c", script, node_ip(1), str(PORT), src])
        finally:
            faults.thaw(lab, 1)
        res = lab.python(lab.client, "nodeagent.lab.traffic", "tcp", "--vip", node_ip(1), "--port", str(PORT),
                         "--src", src, "--per-src", "3", "--timeout", "2")
        assert [r["node"] for r in json.loads(res.stdout)] == ["n1"] * 3, res.stdout
        assert server.poll() is None, lab.log("server-n1.log")
