"""Lab tier: the failover tooling (faults, prober, ownership watcher) proven against today's agents.

Today's agents do not fail over, which is itself a check of the tools: after a node's link goes
down, the prober must report that node's clients as never served again, and the ownership
watcher must report that node's buckets as owned by nobody. One farm `tools` (203.0.113.40,
ClientIP affinity on 8080, weights 1/1/1) on 3 nodes, 30 client addresses. Tests run in file
order; the last one on this farm crashes n3, and the two after it build labs of their own.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import pytest

from nodeagent.lab import faults
from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml, node_ip, node_ip6
from nodeagent.lab.ownership_watch import OwnershipWatcher
from nodeagent.lab.prober import (clients_of, failed_attempts, finished, load_records, outcome_counts,
                                  recovery_time, serving_nodes)
from nodeagent.pinned_maps import read_owned

pytestmark = pytest.mark.lab
VIP, PORT = "203.0.113.40", 8080
CLIENTS = client_ips(30)
UDP_PORT, OTHER_UDP_PORT = 5000, 5001
RULES = '    - {protocol: TCP, ports: "8080", affinity: ClientIP}\n'


def wait_for(cond, timeout: float, what: str, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Probe:
    lab: Lab
    path: str
    stop_file: str
    proc: subprocess.Popen

    def records(self):
        return load_records(self.path) if os.path.exists(self.path) else []

    def wait_all_served(self, clients=CLIENTS, timeout: float = 10):
        wait_for(lambda: set(clients) <= set(serving_nodes(self.records())), timeout,
                 f"every client to be served once (prober output {self.path})")

    def stop(self, timeout: float = 15):
        open(self.stop_file, "w").close()
        self.proc.wait(timeout=timeout)
        assert finished(self.path), f"prober did not write its end line:\n{self.lab.log(os.path.basename(self.path) + '.log')}"
        return self.records()


class ToolLab:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.file = lab.write_farm("tools", farm_yaml("tools", [VIP], {"n1": 1, "n2": 1, "n3": 1}, rules=RULES))
        self.agents: dict[int, subprocess.Popen] = {}
        self.runs = 0

    def probe(self, seconds: float = 20, clients=CLIENTS) -> Probe:
        self.runs += 1
        path = os.path.join(self.lab.workdir, f"probe{self.runs}.jsonl")
        stop = path + ".stop"
        args = [sys.executable, "-m", "nodeagent.lab.prober", "--vip", VIP, "--port", str(PORT),
                "--out", path, "--stop-file", stop, "--seconds", str(seconds),
                "--interval-ms", "20", "--timeout-ms", "80"]
        for c in clients:
            args += ["--src", c]
        proc = self.lab.spawn(self.lab.client, args, log_name=f"probe{self.runs}.jsonl.log")
        return Probe(self.lab, path, stop, proc)

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


def test_ownership_watcher_counts_a_node_whose_lease_has_passed_as_accepting_nothing(tool_lab):
    """n1's lease (array vf_lease, u32 farm slot -> u64 CLOCK_MONOTONIC deadline, 0 = no lease):
    the filter's own pin when it has one (today's agents never renew it, so it stays 0), else
    one this test pins in n1's folder. Set valid, passed, then none."""
    import ctypes
    from nodeagent.bpf_program import import_bcc
    lab = tool_lab.lab
    pin = os.path.join(lab.pin_root, "n1", "eth0", "vf_lease")
    created = not os.path.exists(pin)
    with open(os.path.join(lab.state_root, "n1", "eth0.json")) as f:
        slot = json.load(f)["slots"]["tools"]
    bpf = import_bcc().BPF(text=f'BPF_TABLE_PINNED("array", u32, u64, vf_lease, 64, "{pin}");'.encode())
    lease = bpf[b"vf_lease"]
    if lease[ctypes.c_uint32(slot)].value != 0:
        pytest.skip(f"n1's agent renews its lease in {pin}; its renewals would overwrite this test's deadlines")
    n1 = tool_lab.owned(1)

    def watch(deadline: int):
        lease[ctypes.c_uint32(slot)] = ctypes.c_uint64(deadline)
        w = OwnershipWatcher.for_lab(lab, "tools").start()
        wait_for(lambda: w.unowned_now() is not None, 5, "the watcher's first sample")
        time.sleep(0.3)      # the observation window itself
        return w.stop()
    try:
        valid = watch(time.monotonic_ns() + 60 * 10**9)
        assert valid.max_zero_ms == 0, valid.summary()
        passed = watch(1)
        assert passed.buckets("zero") == n1, passed.summary()
        assert all(s.open_at_stop for s in passed.spells), passed.summary()
        none = watch(0)
        assert none.max_zero_ms == 0, none.summary()
    finally:
        lease[ctypes.c_uint32(slot)] = ctypes.c_uint64(0)
        bpf.cleanup()
        if created:
            os.unlink(pin)


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


def test_link_down_leaves_the_nodes_clients_unserved_and_its_buckets_unowned(tool_lab):
    lab = tool_lab.lab
    lost = tool_lab.owned(3)
    probe = tool_lab.probe()
    probe.wait_all_served()
    w = OwnershipWatcher.for_lab(lab, "tools").start()
    t_fault = time.monotonic_ns()
    mine = clients_of(probe.records(), "n3", until=t_fault)
    others = sorted(set(CLIENTS) - set(mine))
    assert mine and others
    try:
        faults.link_down(lab, 3)
        w.exclude("n3")
        t_excluded = time.monotonic_ns()
        assert not faults.link_is_up(lab, 3)
        wait_for(lambda: all(outcome_counts(probe.records(), since=t_fault + 200_000_000).get(c, {})
                             .get("ok", 0) >= 10 for c in others), 15, "10 successes for every other client")
        report = w.stop()
        recs = probe.stop()
    finally:
        faults.link_up(lab, 3)
    t_end = recs[-1].t_ns
    assert recovery_time(recs, mine, t_fault) is None
    for c in mine:      # not one success after the fault (an attempt in flight may finish)
        assert outcome_counts(recs, since=t_fault + 100_000_000).get(c, {}).get("ok", 0) == 0, c
    assert recovery_time(recs, others, t_fault) is not None
    assert failed_attempts(recs, t_fault, t_end, clients=others) == []
    # The watcher: n3's buckets, and only those, had no acceptor from the fault to the stop.
    assert report.buckets("zero", since_ns=t_fault) == lost, report.summary()
    assert report.covered_at(lost, t_fault) is None
    # Each spell starts at the first sample after the exclusion (one ~2 ms period, 20 ms of slack).
    assert t_fault <= report.worst_zero.start_ns <= t_excluded + 20_000_000, report.summary()
    assert report.max_zero_ms >= (report.stopped_ns - t_excluded) / 1e6 - 20, report.summary()
    assert report.max_double_ms == 0, report.summary()
    # Link back up: n3's clients are served again (and the next tests start from a whole farm).
    again = tool_lab.probe()
    again.wait_all_served()
    t_up = time.monotonic_ns()
    wait_for(lambda: recovery_time(again.records(), CLIENTS, t_up) is not None, 10, "all clients served after link_up")
    again.stop()


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


def test_prober_and_watcher_time_a_recovery_that_starts_at_the_survivors_reload(tool_lab):
    """The positive path, with the failover done by hand: n3's link goes down, then n1 and n2
    reload a farm file without n3 (SIGHUP) and take its buckets. Both tools must see the
    recovery, and no earlier than the reload that caused it."""
    lab = tool_lab.lab
    lost = tool_lab.owned(3)
    probe = tool_lab.probe()
    probe.wait_all_served()
    w = OwnershipWatcher.for_lab(lab, "tools").start()
    t_fault = time.monotonic_ns()
    mine = clients_of(probe.records(), "n3", until=t_fault)
    whole = open(tool_lab.file).read()
    try:
        faults.link_down(lab, 3)
        w.exclude("n3")
        wait_for(lambda: all(outcome_counts(probe.records(), since=t_fault).get(c, {}).get("timeout", 0) >= 2
                             for c in mine), 10, "2 timeouts for each of n3's clients")
        with open(tool_lab.file, "w") as f:
            f.write(farm_yaml("tools", [VIP], {"n1": 1, "n2": 1}, rules=RULES))
        t_reload = time.monotonic_ns()
        for k in (1, 2):
            tool_lab.agents[k].send_signal(signal.SIGHUP)
        wait_for(lambda: recovery_time(probe.records(), mine, t_fault) is not None
                 and not lost & (w.unowned_now() or set()), 20, "n1 and n2 to take n3's buckets over")
        time.sleep(0.3)      # a tail of attempts, so "never failed again" means something
        report = w.stop()
        recs = probe.stop()
    finally:
        with open(tool_lab.file, "w") as f:
            f.write(whole)
        for k in (1, 2):
            tool_lab.agents[k].send_signal(signal.SIGHUP)
        faults.link_up(lab, 3)
    client_ns = recovery_time(recs, mine, t_fault)
    covered = report.covered_at(lost, t_fault)
    assert client_ns is not None and covered is not None, report.summary()
    assert t_reload - t_fault <= client_ns <= t_reload - t_fault + 10e9
    assert t_reload <= covered <= t_reload + 10e9, report.summary()
    assert failed_attempts(recs, t_fault, t_reload, clients=mine), "n3's clients never failed before the reload"
    # Back to three nodes: n3 serves its clients again before the last test crashes it.
    again = tool_lab.probe()
    t_back = time.monotonic_ns()
    wait_for(lambda: clients_of(again.records(), "n3", until=2**63) and
             recovery_time(again.records(), CLIENTS, t_back) is not None, 30, "the three-node farm back")
    again.stop()


def test_crash_kills_every_process_of_the_node_and_takes_its_link_down(tool_lab):
    lab = tool_lab.lab
    probe = tool_lab.probe()
    probe.wait_all_served()
    t_fault = time.monotonic_ns()
    mine = clients_of(probe.records(), "n3", until=t_fault)
    killed = faults.crash(lab, 3)
    assert tool_lab.agents[3].pid in killed
    assert tool_lab.agents[3].poll() == -9
    assert faults.ns_pids(lab.node(3)) == []
    assert not faults.link_is_up(lab, 3)
    assert "xdp" in lab.run(lab.node(3), ["ip", "link", "show", "dev", "eth0"]).stdout   # still attached
    wait_for(lambda: len(outcome_counts(probe.records(), since=t_fault + 500_000_000)) == len(CLIENTS), 10,
             "an attempt by every client 0.5 s after the crash")
    recs = probe.stop()
    assert recovery_time(recs, mine, t_fault) is None
    assert recovery_time(recs, sorted(set(CLIENTS) - set(mine)), t_fault) is not None


def test_lab_teardown_leaves_no_process_of_a_frozen_node_stopped():
    lab = Lab(nodes=1, clients=1).build()
    outsider = None
    try:
        # A process the lab did not start (so its teardown does not kill it) in node n1's namespace.
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
