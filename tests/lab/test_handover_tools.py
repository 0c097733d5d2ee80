"""Lab tier: the handover measuring tools (holder, SYN-ACK watch, echo server) proven against
real agents, on a plain 3-node farm where nothing moves, and proven able to fail.

One farm `hold` (203.0.113.50; TCP 9100 = the echo port and 80 = the name port, ClientIPPort
affinity; weights 1/1/1) heartbeating slowly (200/5000 ms) to keep CPU low. Each node runs
its own `serve --echo 9100 --tcp 80`, so a test can kill or stop one node's server alone.
The handover tests proper (issue 9: join, drain, weight change, ... with 0 reset) use these
same tools.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
from pyroute2 import IPRoute

from nodeagent.lab.holder import connections_of, spawn_holder, summarize
from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml
from nodeagent.lab.prober import wait_for
from nodeagent.lab.synack_watch import spawn_watch

pytestmark = pytest.mark.lab
VIP, ECHO, NAME = "203.0.113.50", 9100, 80
CLIENTS = client_ips(30)
RULES = (f'    - {{protocol: TCP, ports: "{ECHO}", affinity: ClientIPPort}}\n'
         f'    - {{protocol: TCP, ports: "{NAME}", affinity: ClientIPPort}}\n')


class HoldLab:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.file = lab.write_farm("hold", farm_yaml("hold", [VIP], {"n1": 1, "n2": 1, "n3": 1}, rules=RULES,
                                                     key_file=lab.key_file, interval_ms=200, timeout_ms=5000))
        self.agents: dict[int, subprocess.Popen] = {}
        self.servers: dict[int, subprocess.Popen] = {}
        self.starts = 0

    def start_server(self, k: int) -> subprocess.Popen:
        self.starts += 1
        log = f"echo-n{k}-{self.starts}.log"
        p = self.lab.spawn(self.lab.node(k), [sys.executable, "-m", "nodeagent.lab.traffic", "serve",
                                              "--name", f"n{k}", "--echo", str(ECHO), "--tcp", str(NAME)],
                           log_name=log)
        wait_for(lambda: "serving" in self.lab.log(log) or p.poll() is not None, 10, f"n{k}'s echo server")
        assert p.poll() is None, self.lab.log(log)
        self.servers[k] = p
        return p

    def ensure_servers(self) -> None:
        for k in (1, 2, 3):
            p = self.servers.get(k)
            if p is None or p.poll() is not None:
                self.start_server(k)
            else:      # a test may have left it stopped
                os.kill(p.pid, signal.SIGCONT)

    def client_mac(self) -> str:
        with IPRoute(netns=self.lab.client) as ipr:
            return ipr.get_links(ipr.link_lookup(ifname="eth0")[0])[0].get("IFLA_ADDRESS")


@pytest.fixture(scope="module")
def hold_lab():
    with Lab(nodes=3, clients=len(CLIENTS)) as lab:
        hl = HoldLab(lab)
        for k in (1, 2, 3):
            hl.start_server(k)
            hl.agents[k] = lab.start_agent(k, [hl.file])
        for k in (1, 2, 3):
            lab.wait_agent_ready(k, hl.agents[k], timeout=180)
        lab.wait_converged("hold", [1, 2, 3])
        yield hl


@pytest.fixture
def farm(hold_lab):
    hold_lab.ensure_servers()
    yield hold_lab
    hold_lab.ensure_servers()


def test_steady_farm_holds_200_connections_and_serves_50_new_per_second_with_no_reset_stall_or_duplicate_synack(farm):
    lab = farm.lab
    watch = spawn_watch(lab, [VIP], seconds=60)
    watch.wait_started()
    holder = spawn_holder(lab, VIP, ECHO, CLIENTS, 200, seconds=60, new_rate=50, new_port=NAME, new_kind="name")
    try:
        up = holder.wait_established(timeout=30)
        # The observation window: ~10 s of 50 new connections/s on top of the held ones.
        wait_for(lambda: holder.summary().new_total >= up.new_total + 450, 40,
                 f"450 more new connections (holder output {holder.path})", step=0.2)
        s = holder.stop()
    finally:
        end = watch.stop()
    assert s.clean, s.describe()
    assert (s.connections, s.served, s.reset, s.stalled, s.node_changes) == (200, 200, 0, 0, 0), s.describe()
    assert s.failed_new == 0 and s.new_ok >= 450, s.describe()
    assert s.max_gap_ns < 1_000_000_000, s.describe()
    assert set(s.nodes) == {"n1", "n2", "n3"}, s.describe()
    assert set(s.new_nodes) == {"n1", "n2", "n3"}, s.describe()
    # The watch saw the handshakes it vouches for: every held connection's SYN-ACK, and as many as
    # the new connections made, and dropped none; and no tuple was answered twice.
    assert end["kernel_drops"] == 0 and end["duplicates"] == 0, end
    flows = {(x.dst, x.dport) for x in watch.synacks() if x.sport == ECHO}
    held = {(r["src"], r["sport"]) for r in holder.records() if r["type"] == "open"}
    assert held <= flows, f"{len(held - flows)} held connections' SYN-ACKs not captured"
    assert sum(1 for x in watch.synacks() if x.sport == NAME) >= s.new_total, end
    assert watch.duplicates() == []


def test_holder_reports_the_connections_of_a_killed_server_reset_and_of_a_stopped_one_stalled(farm):
    lab = farm.lab
    holder = spawn_holder(lab, VIP, ECHO, CLIENTS, 90, seconds=60, new_rate=20, new_port=ECHO, new_kind="echo")
    try:
        up = holder.wait_established(timeout=30)
        n2, n3 = connections_of(holder.records(), "n2"), connections_of(holder.records(), "n3")
        assert n2 and n3, up.describe()
        farm.servers[2].kill()                         # its sockets die with it: FIN/RST to the clients
        farm.servers[2].wait(timeout=5)
        t_kill = time.monotonic_ns()
        wait_for(lambda: holder.summary().reset_ids >= n2, 10, f"n2's {len(n2)} connections reported reset")
        os.kill(farm.servers[3].pid, signal.SIGSTOP)    # its kernel still ACKs, nothing echoes
        try:
            wait_for(lambda: holder.summary().stalled_ids >= n3, 10,
                     f"n3's {len(n3)} connections reported stalled")
        finally:
            os.kill(farm.servers[3].pid, signal.SIGCONT)
        wait_for(lambda: sum(1 for r in holder.records() if r["type"] == "stall_end") >= len(n3), 10,
                 "n3's connections to get their echoes again")
        s = holder.stop()
    finally:
        if holder.proc.poll() is None:
            holder.proc.kill()
    assert s.reset_ids == n2, s.describe()              # exactly n2's, no other node's
    assert s.stalled_ids == n3, s.describe()
    assert s.max_gap_ns > 1_000_000_000, s.describe()
    assert s.failed_new > 0 and "refused" in s.new_outcomes, s.describe()   # new ones landing on n2
    assert "n2" not in summarize(holder.records(), t_ns=t_kill).new_nodes_after, s.describe()
    assert not s.clean


def test_synack_watch_reports_a_second_synack_with_another_isn_for_a_held_connection(farm):
    lab = farm.lab
    watch = spawn_watch(lab, [VIP], seconds=60)
    watch.wait_started()
    holder = spawn_holder(lab, VIP, ECHO, CLIENTS[:1], 1, seconds=60, new_rate=0)
    try:
        holder.wait_established(timeout=20)
        [opened] = [r for r in holder.records() if r["type"] == "open"]
        [served] = [r for r in holder.records() if r["type"] == "served"]
        [real] = wait_for(lambda: [x for x in watch.synacks() if (x.dst, x.dport) == (opened["src"], opened["sport"])],
                          5, "the held connection's SYN-ACK in the capture")
        other = next(k for k in (1, 2, 3) if f"n{k}" != served["node"])
        code = ("import sys; from nodeagent.lab.synack_watch import inject_synack; "
                "inject_synack('eth0', sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5]), "
                "int(sys.argv[6]), int(sys.argv[7]))")

        def inject(isn: int, ack: int) -> None:
            lab.run(lab.node(other), [sys.executable, "-c", code, farm.client_mac(), VIP, str(ECHO), opened["src"],
                                      str(opened["sport"]), str(isn), str(ack)])
        # Another attempt on the same 4-tuple (another client ISN acknowledged): not a duplicate.
        inject((real.isn + 0x20000000) & 0xFFFFFFFF, (real.ack + 0x01000000) & 0xFFFFFFFF)
        fake_isn = (real.isn + 0x10000000) & 0xFFFFFFFF
        inject(fake_isn, real.ack)                   # a second answer to the held connection's SYN
        [dup] = wait_for(lambda: watch.duplicates(), 5, "the watch to report the duplicate SYN-ACK")
        s = holder.stop()
    finally:
        end = watch.stop()
    assert dup.flow == (VIP, ECHO, opened["src"], opened["sport"]) and dup.ack == real.ack
    assert dup.isns == (real.isn, fake_isn)
    assert len(dup.macs) == 2 and dup.macs[0] == real.mac, dup
    assert end["duplicates"] == 1, end               # the watch itself said so, live
    assert s.reset == 0, s.describe()                # a stray SYN-ACK does not break the connection
