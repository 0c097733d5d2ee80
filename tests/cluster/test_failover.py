"""Cluster tier, failover: real agents in lab namespaces heartbeat each other with the key from
the chart's Secret, a crashed node's buckets are taken over by the survivors on their own
(with its Node still Ready, and with the API server stopped), and the operator then writes
the assignment the agents already serve, so no bucket moves a second time.

"Programmed" below is what each agent's filter really holds: its pinned ownership table.
Each test gets its own lab, operator and agents (it crashes a node); the chart is installed
once per module.
"""
from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import pytest
from pyroute2 import IPRoute

from nodeagent.lab.namespaces import Lab, client_ips
from nodeagent.node_dataplanes import read_local_records
from nodeagent.pinned_maps import read_owned
from tests.cluster.test_control_plane import NS, Cluster, start_cluster_agent, wait_for
from tests.support.apiserver import token_id
from vipfarm.assignment import Assignment

pytestmark = pytest.mark.cluster
VIP = "203.0.113.20"
BUCKETS = 1024
HEARTBEAT = {"intervalMs": 100, "timeoutMs": 500}


def farm_body(name: str) -> dict:
    return {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": name},
            "spec": {"virtualIPs": [VIP], "interface": "eth0", "buckets": BUCKETS, "heartbeat": dict(HEARTBEAT),
                     "nodeSelector": {"vipfarm.io/member": "true"},
                     "rules": [{"protocol": "TCP", "ports": "80", "affinity": "ClientIPPort"}]}}


class FailoverCluster(Cluster):
    def __init__(self, api, lab: Lab, farm: str):
        super().__init__(api, lab)
        self.farm = farm

    def status(self) -> dict:
        return self.get_farm(self.farm).get("status") or {}

    def stored(self) -> tuple[Assignment, int]:
        return self.assignment(self.farm)

    def programmed(self, k: int) -> frozenset[int]:
        """The buckets node k's filter holds now (its pinned tables)."""
        lab = self.lab
        state = read_local_records(f"n{k}", lab.pin_root, lab.state_root).states["eth0"]
        return frozenset(read_owned(os.path.join(lab.pin_root, f"n{k}", "eth0"), state.slots[self.farm]))

    def served(self, nodes=(1, 2, 3)) -> dict[str, frozenset[int]]:
        return {f"n{k}": self.programmed(k) for k in nodes}

    def clients_served(self, by: set[str]) -> list[dict] | None:
        """One connection per client; the results when every one was answered, by `by` only."""
        args = ["tcp", "--vip", VIP, "--port", "80", "--per-src", "1", "--timeout", "1"]
        for s in client_ips(self.lab.clients):
            args += ["--src", s]
        results = json.loads(self.lab.python(self.lab.client, "nodeagent.lab.traffic", *args, timeout=120).stdout)
        ok = not [r for r in results if r["error"]] and set(r["node"] for r in results) <= by
        return results if ok else None

    def crash(self, k: int) -> None:
        """Node k dies: its link goes down (no goodbye can leave), then its agent is killed."""
        with IPRoute(netns=self.lab.node(k)) as h:
            h.link("set", index=h.link_lookup(ifname="eth0")[0], state="down")
        self.agents[k].send_signal(signal.SIGKILL)
        self.agents[k].wait(10)

    def all_agree(self, view: set[str]) -> bool:
        for k in (1, 2, 3):
            m = self.report(f"n{k}", self.farm).get("membership") or {}
            if not (m.get("agreed") and set(m.get("view") or []) == view):
                return False
        return True


@pytest.fixture(scope="module")
def chart(apiserver):
    res = apiserver.helm("install", "vipfarm", "charts/vipfarm", "--namespace", NS, "--create-namespace",
                         "--wait=false")
    assert "STATUS: deployed" in res.stdout, res.stdout + res.stderr
    apiserver.kubectl("wait", "--for=condition=Established", "crd/farms.vipfarm.io", "crd/farmnodes.vipfarm.io",
                      "--timeout=60s")
    try:
        yield apiserver
    finally:
        apiserver.helm("uninstall", "vipfarm", "--namespace", NS, check=False)


def _start(api, name: str):
    """A lab of 3 nodes and 30 clients, Nodes n1..n3 (n2 weight 2), one operator, three agents
    with node-bound agent tokens, and the Farm; returns once all three agree on one view."""
    lab = Lab(nodes=3, clients=30).build()
    c = FailoverCluster(api, lab, name)
    try:
        for k in (1, 2, 3):
            node = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": f"n{k}", "labels": {"vipfarm.io/member": "true"},
                                 "annotations": {"vipfarm.io/weight": "2" if k == 2 else "1"}}}
            api.kubectl("apply", "-f", "-", input=json.dumps(node))
            api.kubectl("uncordon", f"n{k}")
            c.set_ready(f"n{k}", True)
        op_token = api.mint_token(NS, "vipfarm-operator")
        c.operator_ids = [token_id(op_token)]
        c.operators = [c.start_operator(0, api.kubeconfig_for_token(
            op_token, os.path.join(lab.workdir, "operator-0.kubeconfig")))]
        lab.start_servers(tcp_ports=(80,), udp_ports=())
        for k in (1, 2, 3):
            token = api.mint_token(NS, "vipfarm-agent", node=f"n{k}")
            url = api.forward_into(lab.node(k), 6443)
            cfg = api.kubeconfig_for_token(token, os.path.join(lab.workdir, f"agent-n{k}.kubeconfig"), server=url)
            c.agents[k] = start_cluster_agent(lab, k, cfg)
        api.kubectl("apply", "-f", "-", input=json.dumps(farm_body(name)))
        wait_for(f"Farm {name} 3/3 and every agent agreeing on the view n1,n2,n3",
                 lambda: c.status().get("readyText") == "3/3" and c.all_agree({"n1", "n2", "n3"}), timeout=180)
        a, _ = c.stored()
        wait_for("the filters to hold the stored assignment", lambda: c.served() == {
            f"n{k}": frozenset(a.owned_by(f"n{k}")) for k in (1, 2, 3)}, timeout=60)
    except BaseException:
        _say_logs(c)
        _stop(api, c)
        raise
    return c


def _say_logs(c: FailoverCluster) -> None:
    """On a failure: the Farm status, the reports and the last lines each process logged."""
    try:
        print("status:", json.dumps(c.status(), indent=1)[:4000])
        for k in (1, 2, 3):
            print(f"report n{k}:", c.report(f"n{k}", c.farm))
    except Exception as e:       # the API server may be the problem
        print("status unavailable:", e)
    for name in ["operator-0.log"] + [f"agent-n{k}.log" for k in (1, 2, 3)]:
        print(f"--- {name} (tail)\n" + "\n".join(c.lab.log(name).splitlines()[-40:]))


def _stop(api, c: FailoverCluster) -> None:
    if not api.running:
        api.start_apiserver()
    for k in (1, 2, 3):
        api.stop_forward(c.lab.node(k))
    for p in c.operators:
        p.kill()
    # The Farm's finalizer waits for every agent's release, and one agent is dead: let it go.
    api.kubectl("patch", "farm", c.farm, "--type=merge", "-p", '{"metadata":{"finalizers":null}}', check=False)
    api.kubectl("delete", "farm", c.farm, "--wait=false", check=False)
    c.lab.close()


def _wait_taken_over(c: FailoverCluster, before: dict[str, frozenset[int]], what: str) -> dict[str, frozenset[int]]:
    """Until n1 and n2 hold every bucket between them, each keeping its own (only n3's move)."""
    def done():
        now = c.served((1, 2))
        whole = now["n1"] | now["n2"] == frozenset(range(BUCKETS)) and not now["n1"] & now["n2"]
        return now if whole else None
    now = wait_for(what, done, timeout=20, interval=0.05)
    for n in ("n1", "n2"):
        assert before[n] <= now[n], f"{n} lost buckets it held: {sorted(before[n] - now[n])[:10]}"
    return now


def _assert_operator_writes_what_the_agents_serve(c: FailoverCluster, taken: dict[str, frozenset[int]],
                                                  epoch: int) -> None:
    """The operator's next assignment leaves n3 out and gives n1 and n2 exactly what their
    filters already hold; while it comes, and after, no filter changes."""
    moves = []

    def written():
        now = c.served((1, 2))
        if now != taken:
            moves.append(now)
        st = c.status()
        a = Assignment.decode(st["assignment"]["members"], st["assignment"]["data"])
        return (st, a) if st["assignment"]["epoch"] > epoch and a.counts().get("n3") == 0 else None

    st, a = wait_for("the operator to write an assignment without n3", written, timeout=120, interval=0.2)
    n3 = next(m for m in st["members"] if m["node"] == "n3")
    assert (n3["ready"], n3.get("reason")) == (False, "HeartbeatLost"), n3
    assert {n: frozenset(a.owned_by(n)) for n in ("n1", "n2")} == taken, \
        f"the operator's assignment differs from what the agents serve: {a.counts()}"
    assert moves == [], f"a filter changed while the operator caught up: {[len(m['n1']) for m in moves]}"
    # and it stays so: the agents' next base is the operator's assignment, which they already serve
    wait_for("the agents to report the operator's epoch", lambda: all(
        c.report(f"n{k}", c.farm).get("appliedEpoch") == st["epoch"] for k in (1, 2)), timeout=60)
    assert c.served((1, 2)) == taken


def test_a_crashed_node_is_taken_over_by_heartbeats_and_the_operator_then_writes_the_same(chart):
    c = _start(chart, "fo-crash")
    try:
        before = c.served()
        a0, epoch = c.stored()
        t0 = time.monotonic()
        c.crash(3)
        taken = _wait_taken_over(c, before, "n1 and n2 to take over n3's buckets")
        took = time.monotonic() - t0
        results = wait_for("every client answered again by n1 or n2", lambda: c.clients_served({"n1", "n2"}),
                           timeout=20, interval=0.2)
        assert set(Counter(r["node"] for r in results)) == {"n1", "n2"}
        # Nothing told the API server n3 was gone: its Node is Ready all along.
        node = json.loads(c.kubectl("get", "node", "n3", "-o", "json").stdout)
        assert any(x["type"] == "Ready" and x["status"] == "True" for x in node["status"]["conditions"])
        _assert_operator_writes_what_the_agents_serve(c, taken, epoch)
        print(f"failover: the filters of n1 and n2 held all {BUCKETS} buckets {took:.2f}s after the crash "
              f"(timeoutMs {HEARTBEAT['timeoutMs']}, intervalMs {HEARTBEAT['intervalMs']})")
    finally:
        _stop(chart, c)


def test_with_the_api_server_stopped_a_crash_still_fails_over_and_the_operator_agrees_after(chart):
    c = _start(chart, "fo-noapi")
    try:
        before = c.served()
        _, epoch = c.stored()
        chart.stop_apiserver()
        c.crash(3)
        taken = _wait_taken_over(c, before, "n1 and n2 to take over n3's buckets with the API server stopped")
        wait_for("every client answered again by n1 or n2", lambda: c.clients_served({"n1", "n2"}),
                 timeout=20, interval=0.2)
        for k in (1, 2):
            assert c.agents[k].poll() is None, c.lab.agent_log(k)
        chart.start_apiserver()
        _assert_operator_writes_what_the_agents_serve(c, taken, epoch)
    finally:
        _stop(chart, c)
