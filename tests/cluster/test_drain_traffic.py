"""Cluster tier, drain under traffic (issue 9): `kubectl cordon` / `kubectl uncordon` and
`vipfarm drain` / `vipfarm undrain` of one member of a 3-node Farm with handover on, through
the real API server, the real operator and real cluster-mode agents in lab namespaces, while
200 long-lived connections exchange a line every 100 ms and 50 new connections a second come.

The clients' side is measured with the lab tier's tools and judged by its assertions
(tests/lab/test_handover.py: the holder, the SYN-ACK watch in the client namespace, each
node's `serve --echo`): 0 reset, 0 stalled, 0 moved to another node, 0 failed new
connections, no handshake answered twice; from the drained node's filter flip on, no new
connection lands on it. The user's side is what kubectl shows: the member's entry in the
Farm's status.members says Draining with flowsLeft (its FarmNode reports the same count)
for as long as its held connections stay open, then Cordoned (a cordon) or Drained (the
vipfarm.io/drain annotation) once the clients closed them (vipfarm/decisions.py); after the
undrain it serves again and takes its share of the new connections.

Heartbeats at 200/2000 ms. A node that takes a bucket keeps it on the slow path for a guard
of timeoutMs and after that only while a peer says it still hands flows over; the drained
node's held connections are kept open for HOLD_GUARDS x timeoutMs after the flip, so a
drain whose old owner the takers no longer hear would reset them inside the test.

One lab, operator and agents for the module (the chart once, as test_failover.py installs it);
each test starts from, and leaves, the undrained farm.
"""
from __future__ import annotations

import json
import os
import sys
import time

import pytest

from nodeagent.lab.namespaces import Lab
from tests.cluster.test_control_plane import NS, start_cluster_agent, wait_for
from tests.cluster.test_drain_cli import vipfarm
from tests.cluster.test_failover import FailoverCluster, chart  # noqa: F401 (chart: the module's fixture)
from tests.lab.test_handover import CLIENTS, ECHO, NAME, VIP, Traffic, assert_nothing_broke
from tests.support.apiserver import token_id
from vipfarm.membership import DRAIN_KEY

pytestmark = pytest.mark.cluster
FARM = "dt"
NODES = (1, 2, 3)
BUCKETS = 1024
HEARTBEAT = {"intervalMs": 200, "timeoutMs": 2000}
HOLD_GUARDS = 3          # the drained node's held connections stay open this many timeoutMs past the flip


def farm_body() -> dict:
    return {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": FARM},
            "spec": {"virtualIPs": [VIP], "interface": "eth0", "buckets": BUCKETS, "heartbeat": dict(HEARTBEAT),
                     "nodeSelector": {"vipfarm.io/member": "true"},
                     "handover": {"drainTimeoutSeconds": 300},
                     "rules": [{"protocol": "TCP", "ports": str(ECHO), "affinity": "ClientIPPort"},
                               {"protocol": "TCP", "ports": str(NAME), "affinity": "ClientIPPort"}]}}


class DrainCluster(FailoverCluster):
    """The module's cluster, with what these tests read of it."""

    def __init__(self, api, lab: Lab):
        super().__init__(api, lab, FARM)
        self.traffics: list[Traffic] = []

    def traffic(self) -> Traffic:
        """200 held connections, 50 new/s and the SYN-ACK watch (stopped at the test's end if still running)."""
        t = Traffic(self.lab)
        self.traffics.append(t)
        return t

    def member(self, node: str) -> dict:
        """The node's entry in the Farm's status.members, as `kubectl get farm -o json` shows it."""
        return next(m for m in self.status().get("members") or [] if m["node"] == node)

    def wait_member(self, node: str, what: str, ok, timeout: float = 30) -> dict:
        return wait_for(f"Farm {FARM}'s member {node} {what}",
                        lambda: (lambda m: m if ok(m) else None)(self.member(node)), timeout=timeout, interval=0.2)

    def shares(self, without: int | None = None) -> dict[int, set[int]]:
        """Until the filters partition the buckets evenly over the serving nodes (each share
        within 3 of its part; `without` holding none): the move just asked for is done. Returns
        each node's share; the caller's clock after it is the move's time."""
        serving = [k for k in NODES if k != without]

        def even():
            owned = {k: self.lab.owned(k, FARM) for k in NODES}
            return all(o is not None and (abs(len(o) - BUCKETS / len(serving)) <= 3 if k in serving else not o)
                       for k, o in owned.items())
        wait_for(f"the filters to share the buckets evenly over n{', n'.join(map(str, serving))}", even,
                 timeout=60, interval=0.02)
        return self.lab.wait_converged(FARM, list(NODES), BUCKETS, timeout=10,
                                       idle=(without,) if without else ())

    def undrained(self) -> None:
        """Every Node uncordoned and without the drain annotation, every member serving."""
        for k in NODES:
            self.kubectl("uncordon", f"n{k}")
            self.kubectl("annotate", "node", f"n{k}", f"{DRAIN_KEY}-", check=False)
        wait_for(f"Farm {FARM} 3/3 with every member ready", lambda: self.status().get("readyText") == "3/3"
                 and all(m.get("ready") for m in self.status()["members"]), timeout=60)
        self.shares()

    def stop_traffic(self) -> None:
        for t in self.traffics:
            for proc, stop_file in ((t.holder.proc, t.holder.stop_file), (t.watch.proc, t.watch.stop_file)):
                if proc.poll() is None:
                    open(stop_file, "w").close()
                    proc.wait(30)
        self.traffics.clear()


@pytest.fixture(scope="module")
def drain_cluster(chart):  # noqa: F811 (the chart fixture imported above)
    api = chart
    lab = Lab(nodes=len(NODES), clients=len(CLIENTS)).build()
    c = DrainCluster(api, lab)
    try:
        for k in NODES:
            node = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": f"n{k}", "labels": {"vipfarm.io/member": "true"},
                                 "annotations": {"vipfarm.io/weight": "1"}}}
            api.kubectl("apply", "-f", "-", input=json.dumps(node))
            c.set_ready(f"n{k}", True)
            api.kubectl("uncordon", f"n{k}")        # an earlier module may have left it cordoned
            api.kubectl("annotate", "node", f"n{k}", f"{DRAIN_KEY}-", check=False)
        op_token = api.mint_token(NS, "vipfarm-operator")
        c.operator_ids = [token_id(op_token)]
        c.operators = [c.start_operator(0, api.kubeconfig_for_token(
            op_token, os.path.join(lab.workdir, "operator-0.kubeconfig")))]
        for k in NODES:
            log = f"echo-n{k}.log"
            lab.spawn(lab.node(k), [sys.executable, "-m", "nodeagent.lab.traffic", "serve", "--name", f"n{k}",
                                    "--echo", str(ECHO), "--tcp", str(NAME)], log_name=log)
            wait_for(f"n{k}'s echo server", lambda log=log: "serving" in lab.log(log), timeout=10, interval=0.1)
        for k in NODES:
            token = api.mint_token(NS, "vipfarm-agent", node=f"n{k}")
            url = api.forward_into(lab.node(k), 6443)
            cfg = api.kubeconfig_for_token(token, os.path.join(lab.workdir, f"agent-n{k}.kubeconfig"), server=url)
            c.agents[k] = start_cluster_agent(lab, k, cfg)
        api.kubectl("apply", "-f", "-", input=json.dumps(farm_body()))
        wait_for(f"Farm {FARM} 3/3 and every agent agreeing on the view n1,n2,n3",
                 lambda: c.status().get("readyText") == "3/3" and c.all_agree({"n1", "n2", "n3"}), timeout=240)
        c.shares()
        yield c
    finally:
        c.stop_traffic()
        # The agents release the Farm (the operator's finalizer waits for them); a broken start
        # may have no agents, so the finalizer is let go after a while.
        api.kubectl("delete", "farm", FARM, "--ignore-not-found", "--timeout=60s", check=False)
        api.kubectl("patch", "farm", FARM, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
        for k in NODES:
            api.stop_forward(lab.node(k))
        for p in c.operators:
            p.kill()
        for k in NODES:
            api.kubectl("uncordon", f"n{k}", check=False)
            api.kubectl("annotate", "node", f"n{k}", f"{DRAIN_KEY}-", check=False)
        lab.close()


@pytest.fixture
def dc(drain_cluster):
    """Every test starts from (and leaves) the undrained farm, with no traffic running."""
    drain_cluster.undrained()
    yield drain_cluster
    drain_cluster.stop_traffic()
    drain_cluster.undrained()


def _handover_lines(c: DrainCluster, k: int) -> str:
    return "\n".join(line for line in c.lab.agent_log(k).splitlines() if "event=handover_" in line)[-3000:]


def _drain_under_traffic(c: DrainCluster, k: int, drain, farmnode_too: bool) -> None:
    """Drain node k (`drain()` asks for it) with the traffic running: no new connection on it
    from its filter's flip on, the new ones shared by the others; its member Draining with
    flowsLeft = its held connections (and its FarmNode saying so, with farmnode_too) for
    HOLD_GUARDS x timeoutMs, while those connections keep exchanging data; then the clients
    close them, and nothing broke."""
    node = f"n{k}"
    traffic = c.traffic()
    held = traffic.up.nodes[node]
    assert held > 20, traffic.up.describe()
    drain()
    c.shares(without=k)
    t_flip = time.monotonic_ns()
    traffic.run_until(150, t_flip)
    after = traffic.holder.summary(t_flip).new_nodes_after
    assert after[node] == 0, f"new connections on the drained {node} after its flip: {dict(after)}"
    others = [f"n{j}" for j in NODES if j != k]
    assert all(after[o] > 0.3 * sum(after.values()) for o in others), f"the new balance is not even: {dict(after)}"

    m = c.wait_member(node, f"Draining with flowsLeft {held} (its held connections)",
                      lambda m: m.get("reason") == "Draining" and m.get("flowsLeft") == held)
    assert (m["ready"], m["buckets"]) == (False, 0), m
    if farmnode_too:
        assert c.report(node, FARM).get("flowsLeft") == held, c.report(node, FARM)
    # It stays so, and its connections keep flowing both ways, well past the takers' guard time.
    hold_until = t_flip + HOLD_GUARDS * HEARTBEAT["timeoutMs"] * 1_000_000
    while time.monotonic_ns() < hold_until:
        m = c.member(node)
        assert (m.get("reason"), m.get("flowsLeft")) == ("Draining", held), m
        s = traffic.holder.summary(t_flip)
        assert (s.reset, s.stalled, s.node_changes) == (0, 0, 0), s.describe() + "\n" + _handover_lines(c, k)
        time.sleep(0.5)
    s = traffic.holder.summary(t_flip)
    assert s.nodes[node] == held, s.describe()
    assert f"event=handover_started node={node} farm={FARM}" in c.lab.agent_log(k), _handover_lines(c, k)

    s, end = traffic.stop(t_flip)              # the clients close every held connection (FIN)
    assert_nothing_broke(s, end, c.lab)
    assert s.new_nodes_after[node] == 0, dict(s.new_nodes_after)


def _undrain_under_traffic(c: DrainCluster, k: int, undrain) -> None:
    """Undrain node k with new traffic running (held on the others only): it takes its share
    of the new connections again, and nothing broke."""
    node = f"n{k}"
    traffic = c.traffic()
    assert node not in traffic.up.nodes, traffic.up.describe()
    undrain()
    c.shares()
    t_back = time.monotonic_ns()
    traffic.run_until(200, t_back)
    s, end = traffic.stop(t_back)
    assert_nothing_broke(s, end, c.lab)
    after = s.new_nodes_after
    assert after[node] > 0.2 * sum(after.values()), f"{node} took too few new connections: {dict(after)}"
    m = c.wait_member(node, "serving again", lambda m: m.get("ready") is True)
    assert "reason" not in m and "flowsLeft" not in m, m


def test_a_cordon_keeps_the_held_connections_until_they_end_and_an_uncordon_takes_new_ones_again(dc):
    k = 3
    _drain_under_traffic(dc, k, lambda: dc.kubectl("cordon", "n3"), farmnode_too=True)
    m = dc.wait_member("n3", "Cordoned once its connections ended",
                       lambda m: m.get("reason") == "Cordoned" and "flowsLeft" not in m)
    assert (m["ready"], m["buckets"]) == (False, 0), m
    assert "flowsLeft" not in dc.report("n3", FARM), dc.report("n3", FARM)
    assert f"event=handover_finished node=n3 farm={FARM}" in dc.lab.agent_log(k), _handover_lines(dc, k)
    _undrain_under_traffic(dc, k, lambda: dc.kubectl("uncordon", "n3"))


def test_vipfarm_drain_and_undrain_under_traffic_reset_nothing(dc):
    """The same drain by the CLI (it sets vipfarm.io/drain=true on the Node), run as a user runs it."""
    k = 2
    cfg = dc.api.admin_kubeconfig

    def cli(*args: str) -> None:
        res = vipfarm(*args, kubeconfig=cfg)
        assert res.returncode == 0, res.stdout + res.stderr

    _drain_under_traffic(dc, k, lambda: cli("drain", "n2"), farmnode_too=False)
    dc.wait_member("n2", "Drained once its connections ended",
                   lambda m: m.get("reason") == "Drained" and "flowsLeft" not in m)
    _undrain_under_traffic(dc, k, lambda: cli("undrain", "n2"))
