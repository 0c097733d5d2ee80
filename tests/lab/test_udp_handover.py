"""Lab tier: UDP flows through a planned move (issue 9, "a UDP flow active within
udpIdleSeconds keeps going to the node that served it").

One farm `uh` (203.0.113.72, UDP 5000 ClientIPPort) on 3 nodes, each with `serve --udp 5000`
(every datagram answered with the node's name), udpIdleSeconds 3. A client namespace process
(nodeagent/lab/udp_sessions.py) runs 120 UDP flows, each its own socket sending every 100 ms
while active; 5 s in, a weight change (n1 1 -> 3, SIGHUP) moves about a quarter of the buckets:

  steady      active throughout                  -> the node that served it before, to the end
  short idle  silent 4.0-5.8 s (1.8 s < 3 s)     -> the same: the gap spans the move
  long idle   silent 3.5-9.0 s (5.5 s > 3 s)     -> after the gap, the bucket's new owner
  new         from 8 s                           -> the bucket's owner after the move

The assertions are on what the clients saw (which node answered each datagram, and how many
went unanswered), with the owners read from the filters. The same move with handover off
(drainTimeoutSeconds 0, a plain rehash) moves the steady flows of the moved buckets: the
control that shows the first test can fail.
"""
from __future__ import annotations

import ipaddress
import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter

import pytest

from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml
from nodeagent.lab.prober import wait_for
from vipfarm.spec import load_farm_file
from vipfarm.udp_flows import UdpFlow, udp_bucket

pytestmark = pytest.mark.lab
FARM, VIP, PORT = "uh", "203.0.113.72", 5000
CLIENTS = client_ips(24)
RULES = f'    - {{protocol: UDP, ports: "{PORT}", affinity: ClientIPPort}}\n'
EVEN = {"n1": 1, "n2": 1, "n3": 1}
HEAVY = {"n1": 3, "n2": 1, "n3": 1}
IDLE_S = 3
MOVE_AT_S = 5.0
KINDS = {"steady": [[0, 16]], "short": [[0, 4.0], [5.8, 16]], "long": [[0, 3.5], [9.0, 16]], "new": [[8.0, 16]]}
PER_KIND = {"steady": 48, "short": 24, "long": 24, "new": 24}


class UdpLab:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.weights = dict(EVEN)
        self.drain_timeout = 60
        self.file = lab.write_farm(FARM, self.text())
        self.agents: dict[int, subprocess.Popen] = {}

    def text(self) -> str:
        return farm_yaml(FARM, [VIP], self.weights, rules=RULES, key_file=self.lab.key_file, interval_ms=200,
                         timeout_ms=30000,
                         extra=f"  handover: {{drainTimeoutSeconds: {self.drain_timeout}, udpIdleSeconds: {IDLE_S}}}\n")

    def reconfigure(self, weights: dict[str, int], drain_timeout: int | None = None) -> None:
        self.weights = dict(weights)
        if drain_timeout is not None:
            self.drain_timeout = drain_timeout
        with open(self.file, "w") as f:
            f.write(self.text())
        for p in self.agents.values():
            p.send_signal(signal.SIGHUP)

    def owners(self) -> dict[int, str]:
        """bucket -> the node whose filter owns it, once the shares match the weights."""
        total = sum(self.weights.values())

        def by_weights():
            owned = {k: self.lab.owned(k, FARM) for k in (1, 2, 3)}
            return all(o is not None and abs(len(o) - 1024 * self.weights[f"n{k}"] / total) <= 3
                       for k, o in owned.items())
        wait_for(by_weights, 60, f"the filters to hold shares by the weights {self.weights}")
        self.lab.wait_converged(FARM, [1, 2, 3], timeout=60)
        return {b: f"n{k}" for k in (1, 2, 3) for b in self.lab.owned(k, FARM)}


@pytest.fixture(scope="module")
def udp_lab():
    with Lab(nodes=3, clients=len(CLIENTS)) as lab:
        ul = UdpLab(lab)
        for k in (1, 2, 3):
            log = f"udp-n{k}.log"
            lab.spawn(lab.node(k), [sys.executable, "-m", "nodeagent.lab.traffic", "serve", "--name", f"n{k}",
                                    "--udp", str(PORT)], log_name=log)
            wait_for(lambda log=log: "serving" in lab.log(log), 10, f"n{k}'s UDP server")
        for k in (1, 2, 3):
            ul.agents[k] = lab.start_agent(k, [ul.file])
        for k in (1, 2, 3):
            lab.wait_agent_ready(k, ul.agents[k], timeout=180)
        ul.owners()
        yield ul


def run_sessions(ul: UdpLab, move) -> tuple[list[dict], dict[int, str], dict[int, str]]:
    """The plan above around `move()` (called MOVE_AT_S into it); returns the flows' results
    and the owners before and after the move."""
    lab = ul.lab
    before = ul.owners()
    flows, n = [], 0
    for kind, active in KINDS.items():
        for i in range(PER_KIND[kind]):
            flows.append({"id": f"{kind}-{i}", "src": CLIENTS[n % len(CLIENTS)], "active": active})
            n += 1
    plan = os.path.join(lab.workdir, f"udp-plan-{time.monotonic_ns()}.json")
    out = plan.replace("plan", "out")
    with open(plan, "w") as f:
        json.dump({"seconds": 16, "interval_ms": 100, "flows": flows}, f)
    log = os.path.basename(out) + ".log"
    proc = lab.spawn(lab.client, [sys.executable, "-m", "nodeagent.lab.udp_sessions", "--vip", VIP, "--port",
                                  str(PORT), "--plan", plan, "--out", out], log_name=log)
    wait_for(lambda: "started" in lab.log(log), 20, "the UDP sessions to start")
    start_ns = int(lab.log(log).split("started", 1)[1].split()[0])
    time.sleep(max(0.0, start_ns / 1e9 + MOVE_AT_S - time.monotonic()))
    move()
    after = ul.owners()
    proc.wait(timeout=60)
    with open(out) as f:
        result = json.load(f)
    farm = load_farm_file(ul.file, require_nodes=True)
    for fl in result["flows"]:
        fl["bucket"] = udp_bucket(farm, UdpFlow(ipaddress.ip_address(fl["src"]), fl["sport"],
                                                ipaddress.ip_address(VIP), PORT))
        fl["rel"] = [((t - result["start_ns"]) / 1e9, node) for t, node in fl["answers"]]
    return result["flows"], before, after


def by_kind(flows: list[dict], kind: str) -> list[dict]:
    return [f for f in flows if f["id"].startswith(kind + "-")]


def describe(f: dict, before: dict, after: dict) -> str:
    nodes = Counter(node for _, node in f["rel"])
    return (f"{f['id']} src={f['src']}:{f['sport']} bucket={f['bucket']} owner {before[f['bucket']]}->"
            f"{after[f['bucket']]} sent={len(f['sent'])} answered={len(f['answers'])} by={dict(nodes)}")


def agent_lines(lab: Lab, *words: str) -> str:
    return "\n".join(line for k in (1, 2, 3) for line in lab.agent_log(k).splitlines()
                     if any(w in line for w in words))[-5000:]


def test_udp_flows_active_within_udp_idle_seconds_stay_with_their_node_and_the_rest_follow_the_move(udp_lab):
    ul = udp_lab
    flows, before, after = run_sessions(ul, lambda: ul.reconfigure(HEAVY))
    try:
        logs = agent_lines(ul.lab, "udp_", "handover")
        moved = {b for b in before if before[b] != after[b]}
        assert 150 < len(moved) < 350, (len(moved), logs)
        kept = [f for f in by_kind(flows, "steady") + by_kind(flows, "short")]
        changed = [describe(f, before, after) for f in kept if len({n for _, n in f["rel"]}) != 1]
        assert not changed, "\n".join(changed) + "\n" + logs
        wrong_node = [describe(f, before, after) for f in kept if f["rel"] and f["rel"][0][1] != before[f["bucket"]]]
        assert not wrong_node, "\n".join(wrong_node)
        # Not vacuous: flows of moved buckets kept going to their old owner after the move.
        kept_moved = [f for f in kept if f["bucket"] in moved]
        assert len(kept_moved) >= 5, [describe(f, before, after) for f in kept]
        lost = sum(len(f["sent"]) - len(f["answers"]) for f in kept)
        sent = sum(len(f["sent"]) for f in kept)
        assert lost <= sent // 200, (lost, sent, [describe(f, before, after) for f in kept
                                                  if len(f["sent"]) != len(f["answers"])], logs)
        for f in by_kind(flows, "long"):       # idle longer than udpIdleSeconds: the new owner after the gap
            late = {n for t, n in f["rel"] if t >= 9.0}
            assert late == {after[f["bucket"]]}, describe(f, before, after) + "\n" + logs
        for f in by_kind(flows, "new"):
            assert f["rel"] and {n for _, n in f["rel"]} == {after[f["bucket"]]}, describe(f, before, after)
        assert any(f["bucket"] in moved for f in by_kind(flows, "new") + by_kind(flows, "long")), \
            "no new or long-idle flow fell in a moved bucket: the new-owner half proves nothing"
        # The old owners' handovers end by themselves once their UDP flows are idle past 3 s.
        wait_for(lambda: all(agent_lines(ul.lab, "handover_started").count(f"node=n{k} ") <=
                             agent_lines(ul.lab, "handover_finished").count(f"node=n{k} ") for k in (1, 2, 3)),
                 30, "every handover to finish once the flows went idle\n" + agent_lines(ul.lab, "handover"))
    finally:
        ul.reconfigure(EVEN)
        ul.owners()


def test_with_handover_off_the_same_move_sends_the_moved_buckets_udp_flows_to_the_new_owner(udp_lab):
    ul = udp_lab
    ul.reconfigure(EVEN, drain_timeout=0)
    try:
        flows, before, after = run_sessions(ul, lambda: ul.reconfigure(HEAVY))
        moved_steady = [f for f in by_kind(flows, "steady") if before[f["bucket"]] != after[f["bucket"]]]
        assert len(moved_steady) >= 5, len(moved_steady)
        for f in moved_steady:
            late = {n for t, n in f["rel"] if t >= MOVE_AT_S + 2}
            assert late == {after[f["bucket"]]}, describe(f, before, after)
    finally:
        ul.reconfigure(EVEN, drain_timeout=60)
        ul.owners()
