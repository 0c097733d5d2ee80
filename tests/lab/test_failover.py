"""Lab tier: failover, seen from the clients. One failure kind per test.

A 3-node farm `fo` (203.0.113.50, TCP 8080 ClientIP; default heartbeats, 100/300 ms) and 30
client addresses. A prober in the client namespace keeps one TCP attempt in flight per client
(80 ms timeout) and records who answered; an ownership watcher reads every node's pinned maps
every ~2 ms. Each test injects one failure, asserts what the clients saw (the lost node's
clients served again, everyone else never failed) and what the filters held (no bucket with
two acceptors longer than the bound, none with zero longer than the bound), then repairs the
node and waits for the farm to converge on three nodes again, so the next test starts whole.

Bounds asserted (README, "Failures and failover"): a bucket has two acceptors for at most one
heartbeat interval plus 50 ms, and none for at most timeoutMs + intervalMs + 100 ms.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from nodeagent.lab import faults
from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml, node_ip
from nodeagent.lab.ownership_watch import OwnershipWatcher
from nodeagent.lab.prober import clients_of, failed_attempts, recovery_time, spawn_probe, wait_for
from vipfarm.spec import DEFAULT_HEARTBEAT_INTERVAL_MS as INTERVAL_MS
from vipfarm.spec import DEFAULT_HEARTBEAT_PORT as HB_PORT
from vipfarm.spec import DEFAULT_HEARTBEAT_TIMEOUT_MS as TIMEOUT_MS

pytestmark = pytest.mark.lab
FARM, VIP, PORT = "fo", "203.0.113.50", 8080
CLIENTS = client_ips(30)
RULES = '    - {protocol: TCP, ports: "8080", affinity: ClientIP}\n'
MS = 1_000_000
DOUBLE_BOUND_MS = INTERVAL_MS + 50
ZERO_BOUND_MS = TIMEOUT_MS + INTERVAL_MS + 100


class FailoverLab:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.weights = {"n1": 1, "n2": 1, "n3": 1}
        self.file = lab.write_farm(FARM, self.farm_text(self.weights))
        self.agents: dict[int, subprocess.Popen] = {}

    def farm_text(self, weights) -> str:
        return farm_yaml(FARM, [VIP], weights, rules=RULES, key_file=self.lab.key_file)

    def start_agent(self, k: int) -> subprocess.Popen:
        before = self.lab.agent_log(k).count("event=agent_ready")
        self.agents[k] = self.lab.start_agent(k, [self.file])
        self.lab.wait_agent_ready(k, self.agents[k], timeout=180, after=before)
        return self.agents[k]

    def start_server(self, k: int) -> None:
        self.lab.spawn(self.lab.node(k), [sys.executable, "-m", "nodeagent.lab.traffic", "serve", "--name",
                                          f"n{k}", "--tcp", str(PORT)], log_name=f"server-n{k}-again.log")

    def converged(self, nodes=(1, 2, 3)) -> dict[int, set[int]]:
        return self.lab.wait_converged(FARM, list(nodes), timeout=60)

    def watch(self) -> OwnershipWatcher:
        return OwnershipWatcher.for_lab(self.lab, FARM).start()


@pytest.fixture(scope="module")
def fo_lab():
    with Lab(nodes=3, clients=len(CLIENTS)) as lab:
        fl = FailoverLab(lab)
        lab.start_servers(tcp_ports=(PORT,), udp_ports=())
        for k in (1, 2, 3):
            fl.agents[k] = lab.start_agent(k, [fl.file])
        for k in (1, 2, 3):
            lab.wait_agent_ready(k, fl.agents[k], timeout=180)
        fl.converged()
        yield fl


def lose_and_recover(fo_lab, k: int, fault, repair, exclude: bool = True, probe_timeout_ms: float = 80):
    """Probe, inject `fault` on node k, wait for its clients to be served again, repair it.
    Returns (recovery ns, the watcher's report, the records, node k's clients, the fault time)."""
    shares = fo_lab.converged()
    probe = spawn_probe(fo_lab.lab, VIP, PORT, CLIENTS, seconds=60, timeout_ms=probe_timeout_ms)
    probe.wait_all_served()
    w = fo_lab.watch()
    wait_for(lambda: w.unowned_now() is not None, 5, "the watcher's first sample")
    t_fault = time.monotonic_ns()
    mine = clients_of(probe.records(), f"n{k}", until=t_fault)
    assert mine, f"n{k} served no client before the fault"
    try:
        fault()
        if exclude:
            w.exclude(f"n{k}")
        wait_for(lambda: recovery_time(probe.records(), mine, t_fault) is not None
                 and not (shares[k] & (w.unowned_now() or set())), 15, f"n{k}'s clients to be served again")
        time.sleep(0.5)     # a tail of attempts after the recovery: "never failed again" must mean something
        report = w.stop()
        records = probe.stop()
    finally:
        repair()
    recovered = recovery_time(records, mine, t_fault)
    return recovered, report, records, mine, t_fault, shares


def assert_failover(fo_lab, k, recovered, report, records, mine, t_fault, shares):
    others = sorted(set(CLIENTS) - set(mine))
    assert recovered is not None
    # Every other client was served throughout: nothing but the lost node's buckets moved.
    bad = failed_attempts(records, t_fault, 2**63, clients=others)
    assert bad == [], "a client of a healthy node failed: " + ", ".join(
        f"{r.client} {r.outcome} at +{(r.t_ns - t_fault) / 1e6:.0f} ms for {(r.end_ns - r.t_ns) / 1e6:.0f} ms" for r in bad[:10])
    # The lost node's clients were served again, by the survivors only, and keep being served.
    after = [r for r in records if r.t_ns > t_fault + recovered and r.client in mine]
    assert after and all(r.ok for r in after), [r for r in after if not r.ok][:5]
    assert {r.node for r in after} <= {f"n{j}" for j in (1, 2, 3) if j != k}
    assert report.max_double_ms <= DOUBLE_BOUND_MS, report.summary()
    assert report.max_zero_ms <= ZERO_BOUND_MS, report.summary()
    covered = report.covered_at(shares[k], t_fault)
    assert covered is not None, report.summary()
    print(f"failover n{k}: clients {recovered / MS:.0f} ms, buckets {(covered - t_fault) / MS:.0f} ms; "
          f"{report.summary()}")


def test_a_crashed_nodes_clients_are_served_again_by_the_survivors(fo_lab):
    lab = fo_lab.lab

    def repair():
        faults.link_up(lab, 3)
        fo_lab.start_server(3)
        fo_lab.start_agent(3)
    result = lose_and_recover(fo_lab, 3, lambda: faults.crash(lab, 3), repair)
    assert_failover(fo_lab, 3, *result)
    fo_lab.converged()          # the restarted node rejoins: one owner per bucket on three nodes


def test_a_node_whose_link_goes_down_is_replaced_and_rejoins_when_it_comes_back(fo_lab):
    lab = fo_lab.lab
    result = lose_and_recover(fo_lab, 2, lambda: faults.link_down(lab, 2), lambda: faults.link_up(lab, 2))
    assert_failover(fo_lab, 2, *result)
    # Cut off, n2 had no quorum and served nothing by itself (its own view was empty).
    assert re.search(r"event=view_changed node=n2 farm=fo view=- ", lab.agent_log(2)), lab.agent_log(2)
    shares = fo_lab.converged()        # back up, n2 rejoins: its share again, one owner per bucket
    assert shares[2] == result[5][2]


def test_a_frozen_node_stops_taking_new_flows_by_itself_and_is_replaced(fo_lab):
    """SIGSTOP of every process in n1's namespace: its kernel and XDP still run, its agent
    does not. The lease in its filter lapses, so it stops taking new flows before its peers
    take its buckets; the watcher (lease-aware) sees those buckets move, not doubled."""
    lab = fo_lab.lab
    result = lose_and_recover(fo_lab, 1, lambda: faults.freeze(lab, 1), lambda: faults.thaw(lab, 1),
                              exclude=False)
    assert_failover(fo_lab, 1, *result)
    fo_lab.converged()


def test_an_agent_killed_for_good_is_failed_over_and_its_orphaned_filter_resets_nobody(fo_lab):
    """Only the agent dies; n3's server and kernel keep running and its filter still holds
    its buckets. Past its lease the filter gives them up entirely, so the survivors' new
    connections for those buckets are not reset by n3's kernel."""
    def kill():
        fo_lab.agents[3].send_signal(signal.SIGKILL)
        fo_lab.agents[3].wait(10)
    recovered, report, records, mine, t_fault, shares = lose_and_recover(
        fo_lab, 3, kill, lambda: fo_lab.start_agent(3), exclude=False)
    assert_failover(fo_lab, 3, recovered, report, records, mine, t_fault, shares)
    late = [r for r in records if r.t_ns > t_fault + recovered and r.outcome == "reset"]
    assert late == [], late[:5]
    fo_lab.converged()


def _heartbeat_datagrams(lab: Lab, k: int, seconds: float) -> list[bytes]:
    """UDP payloads to node k's heartbeat port, captured inside its namespace."""
    script = (
        "import socket, sys, time, json, base64\n"
        "s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(0x0800))\n"
        "s.settimeout(0.2)\n"
        "out, end = [], time.time() + float(sys.argv[2])\n"
        "while time.time() < end:\n"
        "    try:\n"
        "        pkt = s.recv(65535)\n"
        "    except socket.timeout:\n"
        "        continue\n"
        "    ihl = (pkt[0] & 15) * 4\n"
        "    if pkt[9] == 17 and int.from_bytes(pkt[ihl + 2:ihl + 4], 'big') == int(sys.argv[1]):\n"
        "        out.append(base64.b64encode(pkt[ihl + 8:]).decode())\n"
        "print(json.dumps(out))\n")
    res = lab.run(lab.node(k), [sys.executable, "-c", script, str(HB_PORT), str(seconds)], timeout=30)
    import base64
    return [base64.b64decode(d) for d in json.loads(res.stdout)]


def test_forged_replayed_and_garbage_heartbeats_change_nothing_and_harm_no_agent(fo_lab):
    lab = fo_lab.lab
    captured = _heartbeat_datagrams(lab, 1, 2.0)     # n2's and n3's heartbeats to n1, as an attacker would
    assert len(captured) >= 20, len(captured)
    from vipfarm.heartbeat_keys import Key
    from vipfarm.heartbeat_wire import Heartbeat, Row, encode, node_id
    forged = [encode(Heartbeat(FARM, node_id("n3"), 99, 10**9 + i, 1, b"\0" * 8, (),
                               (Row(node_id("n3"), 99, 10**9 + i, 0, frozenset({node_id("n3")}), b"\0" * 8),)),
                     Key(b"not-the-farm-key-" * 3)) for i in range(50)]
    garbage = [os.urandom(n) for n in (0, 1, 7, 80, 200, 1400)] + [b"VFH1" + os.urandom(300), captured[0][:-3]]
    blob = json.dumps([d.hex() for d in captured + forged + garbage])
    sender = (
        "import socket, sys, json, time\n"
        "data = [bytes.fromhex(h) for h in json.loads(sys.stdin.read())]\n"
        "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "end = time.time() + float(sys.argv[3])\n"
        "while time.time() < end:\n"
        "    for d in data:\n"
        "        for dst in sys.argv[1].split(','):\n"
        "            s.sendto(d, (dst, int(sys.argv[2])))\n"
        "    time.sleep(0.2)\n")

    def flood(seconds: float, dests: str):
        return subprocess.Popen(lab.command(lab.client, [sys.executable, "-c", sender, dests, str(HB_PORT),
                                                         str(seconds)]), stdin=subprocess.PIPE, text=True)
    # 1. While all three are healthy: ownership does not move at all.
    w = fo_lab.watch()
    f = flood(3, f"{node_ip(1)},{node_ip(2)},{node_ip(3)}")
    f.communicate(blob, timeout=30)
    report = w.stop()
    assert report.max_double_ms == 0 and report.max_zero_ms == 0, report.summary() + "".join(
        f"\nn{k}: " + "\n".join(line for line in lab.agent_log(k).splitlines()[-30:]
                                 if "view_changed" in line or "buckets_programmed" in line or "lease" in line
                                 or "counters" in line) for k in (1, 2, 3))
    # 2. n3 crashes while the attacker replays its captured heartbeats (and the forgeries,
    #    and garbage) to n1 and n2: they must fail over anyway.
    f = flood(8, f"{node_ip(1)},{node_ip(2)}")
    f.stdin.write(blob)
    f.stdin.close()

    def repair():
        f.wait(30)
        faults.link_up(lab, 3)
        fo_lab.start_server(3)
        fo_lab.start_agent(3)
    # (the flood shares the CPUs with the prober: a slow attempt here is the test's own load)
    result = lose_and_recover(fo_lab, 3, lambda: faults.crash(lab, 3), repair, probe_timeout_ms=300)
    assert_failover(fo_lab, 3, *result)
    for k in (1, 2):
        assert fo_lab.agents[k].poll() is None, lab.agent_log(k)
    fo_lab.converged()


def test_a_heartbeat_partition_leaves_only_the_majority_serving_and_heals_without_two_owners(fo_lab):
    """Only the heartbeats are cut (UDP to the heartbeat port, nftables in the nodes): the
    data path still reaches every node, so both sides could answer. Quorum: n3 alone has no
    view and gives its buckets up; n1+n2 take them. Healing gives them back."""
    lab = fo_lab.lab
    shares = fo_lab.converged()
    probe = spawn_probe(lab, VIP, PORT, CLIENTS, seconds=60)
    probe.wait_all_served()
    w = fo_lab.watch()
    wait_for(lambda: w.unowned_now() is not None, 5, "the watcher's first sample")
    t_cut = time.monotonic_ns()
    try:
        faults.partition(lab, [[3], [1, 2]], HB_PORT)
        wait_for(lambda: lab.owned(3, FARM) == set(), 10, "n3 to give its buckets up")
        wait_for(lambda: not (w.unowned_now() or set()), 10, "n1 and n2 to cover every bucket")
        time.sleep(0.5)
    finally:
        faults.heal_all(lab)
    t_heal = time.monotonic_ns()
    wait_for(lambda: lab.owned(3, FARM) == shares[3], 15, "n3 to get its buckets back after the heal")
    time.sleep(0.5)
    report = w.stop()
    records = probe.stop()
    assert report.max_double_ms <= DOUBLE_BOUND_MS, report.summary()
    assert report.max_zero_ms <= ZERO_BOUND_MS, report.summary()
    mine = clients_of(records, "n3", until=t_cut)
    others = sorted(set(CLIENTS) - set(mine))
    assert failed_attempts(records, t_cut, 2**63, clients=others) == []
    assert recovery_time(records, mine, t_heal) is not None
    print(f"partition: {report.summary()}")


def test_one_way_heartbeat_loss_moves_no_bucket(fo_lab):
    """n1 stops hearing n2 (and only that direction); n3 hears both. Both keep a quorum of
    two-way links, so the agreed view does not change: nothing moves, nobody is cut off."""
    lab = fo_lab.lab
    before = fo_lab.converged()
    probe = spawn_probe(lab, VIP, PORT, CLIENTS, seconds=30)
    probe.wait_all_served()
    w = fo_lab.watch()
    t = time.monotonic_ns()
    try:
        faults.drop_heartbeats(lab, 2, 1, HB_PORT)
        time.sleep(3 * TIMEOUT_MS / 1000 + 1)      # the observation window: well past the timeout
        report = w.stop()
    finally:
        faults.heal(lab, 1)
    records = probe.stop()
    assert report.max_double_ms == 0 and report.max_zero_ms == 0, report.summary()
    assert failed_attempts(records, t, 2**63) == []
    assert {k: lab.owned(k, FARM) for k in (1, 2, 3)} == before
    print(f"one-way loss: {report.summary()}")


def test_a_3_to_2_change_by_sighup_then_an_agent_restart_leaves_every_bucket_one_owner(fo_lab):
    """The restart-consistency case: the survivors of a 3 -> 2 reconfiguration carry the base
    chain on, and a restarted agent continues it (persisted) instead of computing its own."""
    lab = fo_lab.lab
    fo_lab.converged()
    two = {"n1": 1, "n2": 1}
    with open(fo_lab.file, "w") as f:
        f.write(fo_lab.farm_text(two))
    try:
        for k in (1, 2, 3):
            fo_lab.agents[k].send_signal(signal.SIGHUP)
        # n3 is no longer a member: its peers ignore it, it has no quorum and serves nothing.
        wait_for(lambda: lab.owned(3, FARM) == set(), 15, "n3 to serve nothing")
        fo_lab.converged((1, 2))
        fo_lab.agents[2].send_signal(signal.SIGKILL)
        fo_lab.agents[2].wait(10)
        fo_lab.start_agent(2)
        time.sleep(1)
        shares = fo_lab.converged((1, 2))
        owned = [lab.owned(k, FARM) for k in (1, 2)]
        assert sum(map(len, owned)) == 1024 and not owned[0] & owned[1], [len(o) for o in owned]
        assert abs(len(shares[1]) - len(shares[2])) <= 1
        # And without its state (a reboot clears /run): it asks its peers for the chain.
        fo_lab.agents[2].send_signal(signal.SIGKILL)
        fo_lab.agents[2].wait(10)
        os.unlink(os.path.join(lab.state_root, "n2", "bases", f"{FARM}.json"))
        fo_lab.start_agent(2)
        assert fo_lab.converged((1, 2)) == shares
        assert "event=base_adopted node=n2 farm=fo" in lab.agent_log(2)
    finally:
        with open(fo_lab.file, "w") as f:
            f.write(fo_lab.farm_text(fo_lab.weights))
        for k in (1, 2, 3):
            fo_lab.agents[k].send_signal(signal.SIGHUP)
    fo_lab.converged()


def test_sigterm_tells_the_peers_at_once(fo_lab):
    """A graceful leave sends a goodbye: the peers take the node's buckets without waiting
    for the timeout."""
    shares = fo_lab.converged()
    w = fo_lab.watch()
    wait_for(lambda: w.unowned_now() is not None, 5, "the watcher's first sample")
    t = time.monotonic_ns()
    fo_lab.agents[1].send_signal(signal.SIGTERM)
    assert fo_lab.agents[1].wait(30) == 0
    wait_for(lambda: not (shares[1] & (w.unowned_now() or set())), 10, "n2 and n3 to take n1's buckets")
    report = w.stop()
    covered = report.covered_at(shares[1], t)
    assert covered is not None and report.max_double_ms <= DOUBLE_BOUND_MS, report.summary()
    fo_lab.start_agent(1)
    fo_lab.converged()
