"""Cluster tier: the CRD, the operator and the agents against a real kube-apiserver + etcd.

The chart is installed with the real helm (CRDs, ServiceAccounts, RBAC). Nodes n1..n3 are
Node objects whose Ready condition the test sets, and lab network namespaces where real
agents run with the agent ServiceAccount's token. Two operator processes run with the
operator ServiceAccount, each with its own token, so the API server's audit log says which
process made each request (conftest.py). Tests run in file order and share one cluster.
"""
from __future__ import annotations

import datetime
import json
import os
import re
import signal
import sys
import time
from collections import Counter

import pytest

from vipfarm.assignment import Assignment
from nodeagent.lab.namespaces import Lab, client_ips
from tests.support.apiserver import audit_credential, token_id

pytestmark = pytest.mark.cluster
NS = "vipfarm-system"
VIP = "203.0.113.10"
WRITES = ("create", "update", "patch", "delete", "deletecollection")
FARM = {
    "apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "web"},
    # Heartbeats with a timeout longer than an agent restart takes here (a Python start, the
    # first LIST, the adoption): an agent restarted within the timeout must move nothing
    # (test_an_agent_restart_...); failover itself is tests/cluster/test_failover.py's.
    "spec": {"virtualIPs": [VIP], "interface": "eth0", "buckets": 1024,
             "heartbeat": {"intervalMs": 1000, "timeoutMs": 15000},
             "nodeSelector": {"vipfarm.io/member": "true"},
             "rules": [{"protocol": "TCP", "ports": "80", "affinity": "ClientIPPort"}]},
}


def wait_for(what: str, fn, timeout: float = 60, interval: float = 0.5):
    deadline = time.time() + timeout
    last = None
    while time.time() < deadline:
        try:
            last = fn()
            if last:
                return last
        except Exception as e:   # the API may be restarting
            last = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")


def _utc(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))


def _log_time(line: str) -> datetime.datetime:
    """The time of an operator log line ("2026-12-01 21:00:00,123 ...", the machine's local time;
    bench/control_plane.py reads the same format)."""
    return datetime.datetime.strptime(" ".join(line.split()[:2]), "%Y-%m-%d %H:%M:%S,%f").astimezone(
        datetime.timezone.utc)



def start_cluster_agent(lab: Lab, k: int, kubeconfig: str, refresh: int = 30):
    """A cluster-mode agent in lab node k, with its own kubeconfig, as a DaemonSet pod runs it."""
    args = [sys.executable, "-m", "nodeagent.main", "--cluster", "--refresh", str(refresh),
            "--pin-root", lab.pin_root, "--state-root", lab.state_root]
    return lab.spawn(lab.node(k), args, log_name=f"agent-n{k}.log",
                     extra_env={"NODE_NAME": f"n{k}", "KUBECONFIG": kubeconfig,
                                # as the chart's DaemonSet sets them: the heartbeat key's Secret
                                "VIPFARM_HEARTBEAT_SECRET": "vipfarm-heartbeat",
                                "VIPFARM_HEARTBEAT_SECRET_KEY": "hmac-key", "POD_NAMESPACE": NS})

class Cluster:
    def __init__(self, api, lab: Lab):
        self.api = api
        self.lab = lab
        self.operators: list = []
        self.metrics_ports: dict[int, int] = {}    # operator i -> its --metrics-address port (127.0.0.1)
        self.operator_ids: list[str] = []      # each operator's token's credential id
        self.agents: dict[int, object] = {}
        self.agent_ids: set[str] = set()       # the agents' tokens' (not the kubectl probes')

    def kubectl(self, *args, **kw):
        return self.api.kubectl(*args, **kw)

    def get_farm(self, name="web") -> dict:
        return json.loads(self.kubectl("get", "farm", name, "-o", "json").stdout)

    def report(self, node: str, farm: str = "web") -> dict:
        """The agent's report for a Farm, from the FarmNode named after the node."""
        obj = json.loads(self.kubectl("get", "farmnode", node, "-o", "json").stdout)
        return ((obj.get("status") or {}).get("farms") or {}).get(farm) or {}

    def assignment(self, name="web") -> tuple[Assignment, int]:
        st = self.get_farm(name).get("status") or {}
        a = st.get("assignment") or {}
        return Assignment.decode(a["members"], a["data"]), int(a["epoch"])

    def set_ready(self, node: str, ready: bool) -> None:
        cond = {"type": "Ready", "status": "True" if ready else "False",
                "reason": "KubeletReady" if ready else "KubeletStopped",
                "message": "set by the vipfarm cluster test",
                "lastHeartbeatTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "lastTransitionTime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self.kubectl("patch", "node", node, "--subresource=status", "--type=merge",
                     "-p", json.dumps({"status": {"conditions": [cond]}}))

    def traffic(self, per_src: int = 5) -> list[dict]:
        args = ["tcp", "--vip", VIP, "--port", "80", "--per-src", str(per_src)]
        for s in client_ips(60):
            args += ["--src", s]
        return json.loads(self.lab.python(self.lab.client, "nodeagent.lab.traffic", *args, timeout=300).stdout)

    def operator_logs(self) -> list[str]:
        return [self.lab.log(f"operator-{i}.log") for i in range(len(self.operators))]

    def start_operator(self, i: int, kubeconfig: str):
        """Operator i, its metrics endpoint on a free port of 127.0.0.1 (metrics_ports[i]): two
        operators on one host cannot share the chart's 0.0.0.0:9479."""
        import socket
        import subprocess
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.metrics_ports[i] = s.getsockname()[1]
        with open(os.path.join(self.lab.workdir, f"operator-{i}.log"), "ab") as out:   # the child keeps its copy
            p = subprocess.Popen([sys.executable, "-m", "vipfarm_operator.main"], stdout=out,
                                 stderr=subprocess.STDOUT,
                                 env=dict(os.environ, KUBECONFIG=kubeconfig, PYTHONUNBUFFERED="1",
                                          VIPFARM_PEERING_LIFETIME="10", VIPFARM_RECONCILE_INTERVAL="10",
                                          VIPFARM_RETRY_MAX="2",
                                          VIPFARM_METRICS_ADDRESS=f"127.0.0.1:{self.metrics_ports[i]}"))
        self.lab.procs.append(p)
        return p

    # -- who wrote what: the API server's audit log ---------------------------------------------
    def requests(self, who: set[str] | str, after: datetime.datetime | None = None) -> list[dict]:
        """Audit events of requests made with these tokens' credential ids, received after `after`."""
        ids = {who} if isinstance(who, str) else who
        return [e for e in self.api.audit_events() if audit_credential(e) in ids
                and (after is None or _utc(e["requestReceivedTimestamp"]) > after)]

    def writes_by_operator(self, i: int, after: datetime.datetime | None = None) -> list[dict]:
        """Operator i's writes, leaving out Kopf's peering keep-alives."""
        return [e for e in self.requests(self.operator_ids[i], after) if e["verb"] in WRITES
                and (e.get("objectRef") or {}).get("resource") not in ("clusterkopfpeerings", "kopfpeerings")]

    def status_writes(self, i: int, farm: str, after: datetime.datetime | None = None) -> list[dict]:
        return [e for e in self.writes_by_operator(i, after) if e["objectRef"].get("resource") == "farms"
                and e["objectRef"].get("subresource") == "status" and e["objectRef"].get("name") == farm]

    # -- peering: which operator Kopf made the active one ----------------------------------------
    def operator_priority(self, i: int) -> int:
        m = re.search(r"event=operator_starting .*priority=(\d+)", self.lab.log(f"operator-{i}.log"))
        assert m, f"operator-{i} logged no event=operator_starting"
        return int(m.group(1))

    def kopf_peering_lines(self, i: int) -> list[tuple[datetime.datetime, str]]:
        """(time, "active"|"paused") for each time Kopf resumed or paused operator i (its log)."""
        out = []
        for line in self.lab.log(f"operator-{i}.log").splitlines():
            state = ("active" if "Resuming operations after the pause" in line else
                     "paused" if "Pausing operations in favour of" in line or "Pausing all operators" in line
                     else None)
            if state:
                out.append((_log_time(line), state))
        return out

    def wait_one_active(self, timeout: float = 90) -> tuple[int, int]:
        """(active, standby) once the peering object lists both operators as live and Kopf has
        resumed the one with the higher priority and not the other."""
        prio = [self.operator_priority(i) for i in (0, 1)]
        hi, lo = (0, 1) if prio[0] > prio[1] else (1, 0)

        def settled():
            peers = json.loads(self.kubectl("get", "clusterkopfpeering", "vipfarm", "-o", "json").stdout).get("status") or {}
            now = datetime.datetime.now(datetime.timezone.utc)
            live = {p["priority"] for p in peers.values() if isinstance(p, dict)
                    and _utc(p["lastseen"]) + datetime.timedelta(seconds=p["lifetime"]) > now}
            states = [(self.kopf_peering_lines(i) or [(None, "")])[-1][1] for i in (hi, lo)]
            return (hi, lo) if set(prio) <= live and states[0] == "active" and states[1] != "active" else None

        return wait_for(f"one active operator (priorities {prio}: the peering object lists both as live, "
                        f"Kopf resumed operator-{hi} and not operator-{lo})", settled, timeout=timeout)


@pytest.fixture(scope="module")
def cluster(apiserver):
    api = apiserver
    res = api.helm("install", "vipfarm", "charts/vipfarm", "--namespace", NS, "--create-namespace",
                   "--wait=false")
    assert "STATUS: deployed" in res.stdout, res.stdout + res.stderr
    api.kubectl("wait", "--for=condition=Established", "crd/farms.vipfarm.io", "crd/farmnodes.vipfarm.io",
                "--timeout=60s")
    with Lab(nodes=3, clients=60) as lab:
        c = Cluster(api, lab)
        for k in (1, 2, 3):
            node = {"apiVersion": "v1", "kind": "Node",
                    "metadata": {"name": f"n{k}", "labels": {"vipfarm.io/member": "true"},
                                 "annotations": {"vipfarm.io/weight": "2" if k == 2 else "1"}}}
            api.kubectl("apply", "-f", "-", input=json.dumps(node))
            c.set_ready(f"n{k}", True)
        # One token per operator process (two pods each get their own), so the audit log tells them apart.
        op_tokens = [api.mint_token(NS, "vipfarm-operator") for _ in (0, 1)]
        c.operator_ids = [token_id(t) for t in op_tokens]
        c.operators = [c.start_operator(i, api.kubeconfig_for_token(
            op_tokens[i], os.path.join(lab.workdir, f"operator-{i}.kubeconfig"))) for i in (0, 1)]
        # Each agent's token is bound to its Node, as a DaemonSet pod's token is bound to a pod
        # on it: the API server then names the node in the token's user info, which the chart's
        # admission policy checks. The RBAC probes use another token bound to n1 (so the audit
        # log keeps what the agents themselves did apart), and an unbound one to show it is refused.
        tokens = {k: api.mint_token(NS, "vipfarm-agent", node=f"n{k}") for k in (1, 2, 3)}
        c.agent_ids = {token_id(t) for t in tokens.values()}
        c.agent_kubeconfig_root = api.kubeconfig_for_token(api.mint_token(NS, "vipfarm-agent", node="n1"),
                                                           os.path.join(lab.workdir, "agent-root.kubeconfig"))
        c.unbound_agent_kubeconfig = api.kubeconfig_for_token(api.mint_token(NS, "vipfarm-agent"),
                                                              os.path.join(lab.workdir, "agent-unbound.kubeconfig"))
        lab.start_servers(tcp_ports=(80,), udp_ports=())
        for k in (1, 2, 3):
            url = api.forward_into(lab.node(k), 6443)
            cfg = api.kubeconfig_for_token(tokens[k], os.path.join(lab.workdir, f"agent-n{k}.kubeconfig"), server=url)
            c.agents[k] = start_cluster_agent(lab, k, cfg)
        try:
            yield c
        finally:
            for k in (1, 2, 3):
                api.stop_forward(lab.node(k))
            api.helm("uninstall", "vipfarm", "--namespace", NS, check=False)


BAD_FARMS = [
    ("bad VIP text", {"virtualIPs": ["203.0.113.300"]}, "203.0.113.300"),
    ("duplicate VIP", {"virtualIPs": ["203.0.113.10", "203.0.113.10"]}, "Duplicate value"),
    ("multicast VIP", {"virtualIPs": ["224.0.0.5"]}, "224.0.0.5"),
    ("loopback VIP", {"virtualIPs": ["127.0.0.1"]}, "127.0.0.1"),
    ("buckets not a power of two", {"buckets": 1000}, "power of two"),
    ("buckets too large", {"buckets": 131072}, "buckets"),
    ("reversed port range", {"rules": [{"protocol": "TCP", "ports": "90-80"}]}, "90-80"),
    ("port out of range", {"rules": [{"protocol": "TCP", "ports": "70000"}]}, "65535"),
    ("port text", {"rules": [{"protocol": "TCP", "ports": "http"}]}, "ports"),
    ("bad protocol", {"rules": [{"protocol": "SCTP", "ports": "80"}]}, "SCTP"),
    ("bad affinity", {"rules": [{"protocol": "TCP", "ports": "80", "affinity": "Random"}]}, "Random"),
    ("bad vmacMode", {"vmacMode": "broadcast"}, "broadcast"),
    ("bad xdpMode", {"xdpMode": "offload"}, "offload"),
    ("negative weight", {"nodes": [{"name": "n1", "address": "198.51.100.1", "weight": -1}]}, "weight"),
    ("heartbeat timeout too short", {"heartbeat": {"intervalMs": 500, "timeoutMs": 1000}}, "3"),
    ("unicast MAC in multicast mode", {"vmacMode": "multicast", "virtualMAC": "02:00:00:00:00:01"}, "multicast"),
    ("node name not a DNS-1123 subdomain", {"nodes": [{"name": "ff02::1", "address": "198.51.100.1"}]},
     '"ff02::1": a node name must be a DNS-1123 subdomain'),
    ("node name that is an IP address", {"nodes": [{"name": "0.0.0.0", "address": "198.51.100.1"}]},
     '"0.0.0.0": a node name is a name, not an IP address'),
    ("interface name with NUL", {"interface": "eth\x000"}, '"eth\\x000": an interface name has no whitespace'),
    ("interface name over 15 bytes", {"interface": "\u00fc" * 8}, "at most 15 bytes in UTF-8"),
    ("unspecified node address", {"nodes": [{"name": "n1", "address": "0.0.0.0"}]},
     '"0.0.0.0": a node address must be a unicast address'),
    ("broadcast VIP", {"virtualIPs": ["255.255.255.255"]}, '"255.255.255.255": a virtual IP must be a unicast address'),
    ("node address is a VIP spelled differently",
     {"virtualIPs": ["2001:db8::99"], "nodes": [{"name": "n1", "address": "2001:DB8:0::99"}]},
     "also one of spec.virtualIPs (2001:db8::99"),
]


def test_the_crd_explains_its_fields(cluster):
    out = cluster.kubectl("explain", "farm.spec.rules.affinity").stdout
    assert "ClientIPPort" in out and "ClientIP" in out
    assert "virtualIPs" in cluster.kubectl("explain", "farm.spec").stdout


@pytest.mark.parametrize("what,spec,message", BAD_FARMS, ids=[b[0] for b in BAD_FARMS])
def test_admission_rejects_each_bad_farm_with_a_clear_message(cluster, what, spec, message):
    body = {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "bad"},
            "spec": dict({"virtualIPs": ["203.0.113.99"]}, **spec)}
    res = cluster.kubectl("create", "-f", "-", input=json.dumps(body), check=False)
    assert res.returncode != 0, f"{what}: accepted\n{res.stdout}"
    assert "is invalid" in res.stderr and message in res.stderr, res.stderr


def test_a_farm_gets_status_ready_3_of_3_and_a_weighted_balanced_assignment(cluster):
    cluster.kubectl("apply", "-f", "-", input=json.dumps(FARM))
    wait_for("READY 3/3", lambda: (cluster.get_farm().get("status") or {}).get("readyText") == "3/3", timeout=120)
    st = cluster.get_farm()["status"]
    assert st["phase"] == "Ready" and st["observedGeneration"] == 1
    a, epoch = cluster.assignment()
    assert a.counts() == {"n1": 256, "n2": 512, "n3": 256}      # weights 1:2:1, exact here
    assert {m["node"]: m["buckets"] for m in st["members"]} == {"n1": 256, "n2": 512, "n3": 256}
    conds = {c["type"]: c["status"] for c in st["conditions"]}
    assert conds == {"Ready": "True", "Degraded": "False", "Conflict": "False"}
    wait_for("agents apply the epoch", lambda: all(
        cluster.report(f"n{k}").get("appliedEpoch") == epoch for k in (1, 2, 3)))


def _scrape(url: str) -> dict:
    import urllib.request
    from prometheus_client.parser import text_string_to_metric_families
    with urllib.request.urlopen(url, timeout=10) as r:
        text = r.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def test_the_operator_exports_reconciles_api_writes_and_farms_by_phase(cluster):
    cluster.kubectl("apply", "-f", "-", input=json.dumps(FARM))       # as the test above (run alone with -k)
    wait_for("READY 3/3", lambda: (cluster.get_farm().get("status") or {}).get("readyText") == "3/3", timeout=120)

    def active_metrics():
        for i, port in cluster.metrics_ports.items():
            m = _scrape(f"http://127.0.0.1:{port}/metrics")
            if m.get(("vipfarm_operator_api_writes_total", (("resource", "farms/status"), ("result", "ok"),
                                                            ("verb", "patch")))):
                if m.get(("vipfarm_operator_farm_members", (("farm", "web"), ("state", "Ready")))) == 3:
                    return m
        return None

    m = wait_for("the active operator's metrics to show the Farm Ready with 3 members", active_metrics, timeout=60)
    assert m[("vipfarm_operator_reconcile_seconds_count", (("kind", "farm"),))] > 0
    assert m[("vipfarm_operator_reconcile_seconds_count", (("kind", "farmnode"),))] > 0
    assert m[("vipfarm_operator_reconcile_seconds_count", (("kind", "node"),))] > 0
    assert m[("vipfarm_operator_farms", (("phase", "Ready"),))] == 1
    # a cluster-mode agent's own endpoint, from its node's namespace (the default 127.0.0.1:9478)
    fetch = ("import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:9478/status', "
             "timeout=10).read().decode())")

    def agent_status():
        doc = json.loads(cluster.lab.run(cluster.lab.node(1), [sys.executable, "-c", fetch]).stdout)
        web = [f for f in doc["farms"] if f["name"] == "web"]
        return (doc, web[0]) if web and web[0]["ownedBuckets"] == 256 else None

    doc, farm = wait_for("n1's agent to serve its 256 buckets", agent_status, timeout=60)
    assert doc["mode"] == "cluster" and doc["node"] == "n1"
    assert farm["view"] == ["n1", "n2", "n3"] and farm["agreed"] is True
    assert {m["name"]: m["buckets"] for m in farm["members"]} == {"n1": 256, "n2": 512, "n3": 256}


def test_each_agent_reports_in_the_farmnode_of_its_node_and_the_farm_stays_slim(cluster):
    for k in (1, 2, 3):
        obj = json.loads(cluster.kubectl("get", "farmnode", f"n{k}", "-o", "json").stdout)
        owner = obj["metadata"]["ownerReferences"][0]
        node_uid = cluster.kubectl("get", "node", f"n{k}", "-o", "jsonpath={.metadata.uid}").stdout
        assert (owner["kind"], owner["name"], owner["uid"]) == ("Node", f"n{k}", node_uid)
        web = obj["status"]["farms"]["web"]
        assert web["ready"] is True and web["dataplaneMode"] == "generic", web
        assert obj["status"]["farmCount"] == 1 and obj["status"]["readyCount"] == 1
    assert "agents" not in cluster.get_farm()["status"]
    members = {m["node"]: m for m in cluster.get_farm()["status"]["members"]}
    assert {n: m["dataplaneMode"] for n, m in members.items()} == {"n1": "generic", "n2": "generic", "n3": "generic"}
    header = cluster.kubectl("get", "farmnodes").stdout.splitlines()[0].split()
    assert header == ["NAME", "FARMS", "READY", "REPORTED", "AGE"], header


def test_kubectl_get_farms_shows_the_columns(cluster):
    out = cluster.kubectl("get", "farms").stdout
    header = out.splitlines()[0].split()
    assert header == ["NAME", "VIPS", "READY", "PHASE", "AGE"], out
    row = out.splitlines()[1].split()
    assert row[:4] == ["web", VIP, "3/3", "Ready"], out
    assert cluster.kubectl("get", "farm").returncode == 0     # the short name


def test_traffic_is_spread_over_the_three_nodes_each_connection_answered_once(cluster):
    results = cluster.traffic(per_src=5)
    assert [r for r in results if r["error"]] == []
    counts = Counter(r["node"] for r in results)
    assert set(counts) == {"n1", "n2", "n3"}, counts
    assert counts["n2"] > counts["n1"] and counts["n2"] > counts["n3"]   # weight 2


def test_not_ready_then_cordoned_nodes_lose_only_their_buckets_and_rejoin(cluster):
    before, epoch0 = cluster.assignment()
    cluster.set_ready("n2", False)
    after, epoch1 = wait_for("n2's buckets to move", lambda: (lambda a: a if a[0].counts().get("n2") == 0 else None)(cluster.assignment()))
    moved = [b for b in range(1024) if before.owner_of(b) != after.owner_of(b)]
    assert len(moved) == 512 and all(before.owner_of(b) == "n2" for b in moved)
    assert epoch1 > epoch0 and cluster.get_farm()["status"]["phase"] == "Degraded"
    assert [r for r in cluster.traffic(per_src=2) if r["error"] or r["node"] == "n2"] == []

    cluster.kubectl("cordon", "n3")
    after3, _ = wait_for("n3's buckets to move", lambda: (lambda a: a if a[0].counts().get("n3") == 0 else None)(cluster.assignment()))
    moved3 = [b for b in range(1024) if after.owner_of(b) != after3.owner_of(b)]
    assert len(moved3) == after.counts()["n3"] == 512      # n1 and n3 shared n2's buckets
    assert all(after.owner_of(b) == "n3" for b in moved3)
    assert after3.counts()["n1"] == 1024

    cluster.set_ready("n2", True)
    cluster.kubectl("uncordon", "n3")
    back, _ = wait_for("n2 and n3 to rejoin", lambda: (lambda a: a if a[0].counts() == {"n1": 256, "n2": 512, "n3": 256} else None)(cluster.assignment()))
    # Rejoining moved only what the new balance needs: n1 kept 256 of its 1024.
    assert sum(1 for b in range(1024) if after3.owner_of(b) == "n1" == back.owner_of(b)) == 256
    wait_for("READY 3/3 again", lambda: cluster.get_farm()["status"]["readyText"] == "3/3")
    events = cluster.kubectl("get", "events", "-A", "--field-selector", "involvedObject.name=web").stdout
    assert "MembershipChanged" in events and "buckets moved" in events, events


def test_a_second_farm_claiming_the_same_vip_gets_conflict(cluster):
    other = json.loads(json.dumps(FARM))
    other["metadata"]["name"] = "web-copy"
    cluster.kubectl("apply", "-f", "-", input=json.dumps(other))
    st = wait_for("Conflict", lambda: (lambda s: s if s.get("phase") == "Conflict" else None)(
        cluster.get_farm("web-copy").get("status") or {}))
    cond = next(c for c in st["conditions"] if c["type"] == "Conflict")
    assert cond["status"] == "True" and "Farm web" in cond["message"]
    assert all(m["buckets"] == 0 for m in st["members"])
    assert cluster.get_farm("web")["status"]["phase"] == "Ready"
    events = cluster.kubectl("get", "events", "-A", "--field-selector", "involvedObject.name=web-copy").stdout
    assert "Conflict" in events
    cluster.kubectl("delete", "farm", "web-copy", "--timeout=90s")


def test_the_agent_token_has_what_it_needs_and_is_refused_the_rest(cluster):
    cfg = cluster.agent_kubeconfig_root
    k = lambda *a, **kw: cluster.kubectl(*a, kubeconfig=cfg, check=False, **kw)   # noqa: E731
    assert k("get", "farms").returncode == 0                # list (and watch): how it learns the Farms
    assert k("get", "node", "n1").returncode == 0            # its own Node's labels and weight
    assert k("get", "farmnode", "n1").returncode == 0
    # Its own node's FarmNode: yes. (A field nobody reads, so the agent's state is untouched.)
    # The patch is sent as the agent sends it (the Python client, no GET first: kubectl patch
    # reads the object before patching, which the agent never does and may not).
    def patch(plural: str, name: str, body: dict, status: bool = True, kubeconfig: str = cfg) -> tuple[int, str]:
        from kubernetes import client
        from kubernetes.client.rest import ApiException
        with cluster.api.api_client(kubeconfig) as ac:
            api = client.CustomObjectsApi(ac)
            call = api.patch_cluster_custom_object_status if status else api.patch_cluster_custom_object
            try:
                call("vipfarm.io", "v1alpha1", plural, name, body, _content_type="application/merge-patch+json")
                return 200, ""
            except ApiException as e:
                return e.status, e.body or ""

    def patch_status(node: str, kubeconfig: str = cfg) -> tuple[int, str]:
        return patch("farmnodes", node, {"status": {"agentVersion": "rbac-test"}}, kubeconfig=kubeconfig)

    assert patch_status("n1") == (200, "")
    # Another node's, or a new one: the chart's admission policy says no, and says why.
    code, body = patch_status("n2")
    created = k("create", "-f", "-", input=json.dumps({"apiVersion": "vipfarm.io/v1alpha1", "kind": "FarmNode",
                                                        "metadata": {"name": "n9"}}))
    for ok, text in ((code == 200, body), (created.returncode == 0, created.stderr)):
        assert not ok and "vipfarm-agent on node n1 may only write FarmNode n1" in text, text
    # A token that names no node may read but not write.
    code, body = patch_status("n1", cluster.unbound_agent_kubeconfig)
    assert code != 200 and "not bound to a node" in body, body
    # No Farm write of any kind, sent as a client would (no GET first).
    for code, body in (patch("farms", "web", {"status": {"phase": "Ready"}}),
                       patch("farms", "web", {"spec": {"buckets": 512}}, status=False)):
        assert code == 403 and "forbidden" in body.lower(), (code, body)
    event = {"apiVersion": "v1", "kind": "Event", "metadata": {"generateName": "web.", "namespace": "default"},
             "involvedObject": {"kind": "Farm", "name": "web"}, "reason": "Test", "message": "rbac probe"}
    new_event = {"apiVersion": "events.k8s.io/v1", "kind": "Event",
                 "metadata": {"name": "web.rbac-probe", "namespace": "default"},
                 "regarding": event["involvedObject"], "reason": "Test", "note": "rbac probe", "action": "Probe",
                 "type": "Normal", "reportingController": "vipfarm.io/test", "reportingInstance": "n1",
                 "eventTime": "2026-01-01T00:00:00.000000Z"}
    # events.k8s.io Events about Farms, in default (where a cluster-scoped object's go): yes, create only.
    r = k("create", "-f", "-", "--dry-run=server", input=json.dumps(new_event))
    assert r.returncode == 0, r.stderr
    refused = [
        k("get", "nodes"),                                   # no list/watch of the other nodes
        k("get", "farmnodes"),                               # no list of the other nodes' reports
        k("create", "-f", "-", "--dry-run=server", input=json.dumps(event)),           # no core/v1 Events
        k("create", "-f", "-", "--dry-run=server", input=json.dumps(                    # nor outside default
            dict(new_event, metadata=dict(new_event["metadata"], namespace="kube-system")))),
        k("patch", "farm", "web", "--subresource=status", "--type=merge", "-p", '{"status":{"phase":"Ready"}}'),
        k("patch", "farm", "web", "--type=merge", "-p", '{"spec":{"buckets":512}}'),
        k("delete", "farmnode", "n1", "--dry-run=server"),
        k("delete", "farm", "web", "--dry-run=server"),
        k("delete", "node", "n1", "--dry-run=server"),
        k("get", "secrets", "-n", "kube-system"),
        k("get", "secrets", "-n", NS),                       # no list of the Secrets
        k("get", "secret", "vipfarm-operator-token", "-n", NS),   # nor another Secret by name
        k("create", "configmap", "x", "-n", NS, "--dry-run=server"),
    ]
    for r in refused:
        assert r.returncode != 0 and "forbidden" in r.stderr.lower(), r.stderr
    # The heartbeat Secret, by its name: yes (the agents read the key from it every 30 s).
    r = k("get", "secret", "vipfarm-heartbeat", "-n", NS, "-o", "jsonpath={.data.hmac-key}")
    assert r.returncode == 0 and r.stdout, r.stderr


def test_with_the_api_server_down_traffic_flows_and_status_catches_up_after(cluster):
    before, epoch = cluster.assignment()
    cluster.api.stop_apiserver()
    try:
        results = cluster.traffic(per_src=2)
        assert [r for r in results if r["error"]] == []
        assert set(Counter(r["node"] for r in results)) == {"n1", "n2", "n3"}
    finally:
        cluster.api.start_apiserver()
    cluster.kubectl("cordon", "n1")
    after, _ = wait_for("status to catch up after the restart",
                        lambda: (lambda a: a if a[0].counts().get("n1") == 0 else None)(cluster.assignment()),
                        timeout=120)
    cluster.kubectl("uncordon", "n1")
    wait_for("n1 back", lambda: cluster.assignment()[0].counts().get("n1") == 256, timeout=120)
    for k in (1, 2, 3):
        assert cluster.agents[k].poll() is None, cluster.lab.agent_log(k)


REFUSE_STUCK_STATUS = [
    {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicy",
     "metadata": {"name": "vipfarm-test-refuse-stuck-status"},
     "spec": {"failurePolicy": "Fail",
              "matchConstraints": {"resourceRules": [{"apiGroups": ["vipfarm.io"], "apiVersions": ["*"],
                                                      "operations": ["CREATE", "UPDATE"],
                                                      "resources": ["farms", "farms/status"]}]},
              "validations": [{"expression": "!(object.metadata.name == 'stuck' && has(request.subResource) && request.subResource == 'status')"
                                             " && object.metadata.name != 'policy-probe'",
                               "message": "test policy: status writes to Farm stuck are refused"}]}},
    {"apiVersion": "admissionregistration.k8s.io/v1", "kind": "ValidatingAdmissionPolicyBinding",
     "metadata": {"name": "vipfarm-test-refuse-stuck-status"},
     "spec": {"policyName": "vipfarm-test-refuse-stuck-status", "validationActions": ["Deny"]}},
]


def _farm(name: str, vip: str) -> dict:
    body = json.loads(json.dumps(FARM))
    body["metadata"]["name"] = name
    body["spec"]["virtualIPs"] = [vip]
    return body


def test_a_standby_writes_nothing_even_when_demoted_while_a_write_keeps_failing(cluster):
    """The standby's writes (audit log, by its token) are zero while nodes and Farms change,
    also right after a demotion with a failing write queued for retry; the active one writes."""
    c = cluster
    active, standby = c.wait_one_active()
    for doc in REFUSE_STUCK_STATUS:
        c.kubectl("apply", "-f", "-", input=json.dumps(doc))
    try:
        wait_for("the test admission policy to refuse", lambda: "test policy" in c.kubectl(
            "create", "--dry-run=server", "-f", "-", input=json.dumps(_farm("policy-probe", "203.0.113.31")),
            check=False).stderr)
        c.kubectl("apply", "-f", "-", input=json.dumps(_farm("stuck", "203.0.113.30")))
        wait_for(f"operator-{active} to retry the refused status of Farm stuck",
                 lambda: len(c.status_writes(active, "stuck")) >= 2)
        # Freeze the active one: its keep-alive lapses, the standby takes over, and it too
        # fails on Farm stuck and queues retries.
        c.operators[active].send_signal(signal.SIGSTOP)
        try:
            wait_for(f"operator-{standby} to take over and retry Farm stuck",
                     lambda: len(c.status_writes(standby, "stuck")) >= 2, timeout=90)
        finally:
            c.operators[active].send_signal(signal.SIGCONT)
        # Back with its higher priority: the other is demoted with its retry still queued. (Kopf
        # may resume it once more on the way, when its cleanup of the frozen peer's entry races
        # that peer's new keep-alive; the window starts at the last pause.)
        assert c.wait_one_active() == (active, standby)
        demoted = c.kopf_peering_lines(standby)[-1][0]
        # Churn: Node changes and a Farm's life, each waited for as the API shows it.
        c.kubectl("cordon", "n3")
        wait_for("n3 drained", lambda: c.assignment()[0].counts().get("n3") == 0)
        c.kubectl("uncordon", "n3")
        wait_for("n3 back", lambda: c.assignment()[0].counts().get("n3") == 256)
        c.kubectl("apply", "-f", "-", input=json.dumps(_farm("churn", "203.0.113.20")))
        wait_for("Farm churn READY 3/3", lambda: (c.get_farm("churn").get("status") or {}).get("readyText") == "3/3",
                 timeout=120)
        c.kubectl("delete", "farm", "churn", "--timeout=120s")
        wait_for(f"operator-{active} to retry Farm stuck 3 times since the demotion (the standby's "
                 f"retry would be due by then)", lambda: len(c.status_writes(active, "stuck", after=demoted)) >= 3)
        by_standby = [(e["requestReceivedTimestamp"], e["verb"], e["objectRef"].get("resource"),
                       e["objectRef"].get("subresource"), e["objectRef"].get("name"))
                      for e in c.writes_by_operator(standby, after=demoted)]
        story = [ln for ln in c.lab.log(f"operator-{standby}.log").splitlines()
                 if re.search(r"replica_state|Pausing|Resuming|reconcile_|status_written", ln)][-40:]
        resumed = [t for t, state in c.kopf_peering_lines(standby) if t > demoted and state == "active"]
        assert by_standby == [], (f"operator-{standby}, the standby since {demoted}, wrote: {by_standby}; "
                                  f"Kopf resumed it at {resumed}\n"
                                  + "\n".join(story))
        assert c.status_writes(active, "web", after=demoted) and c.status_writes(active, "churn", after=demoted)
    finally:
        for doc in reversed(REFUSE_STUCK_STATUS):
            c.kubectl("delete", doc["kind"], doc["metadata"]["name"], "--ignore-not-found")
        c.kubectl("delete", "farm", "stuck", "--ignore-not-found", "--timeout=120s")


def test_exactly_one_operator_is_active_and_the_standby_takes_over_when_it_dies(cluster):
    # Peering settles first (the API-server restart above expired both keep-alives for a moment).
    active, standby = cluster.wait_one_active()
    since = datetime.datetime.now(datetime.timezone.utc)
    cluster.kubectl("cordon", "n3")
    wait_for("n3 drained", lambda: cluster.assignment()[0].counts().get("n3") == 0)
    # The audit log is written before each response (blocking mode): the drain's write is in it.
    writers = {i for i in (0, 1) if cluster.status_writes(i, "web", after=since)}
    assert writers == {active}, f"status writers during the change: {writers} (exactly one must be active)"
    assert cluster.writes_by_operator(standby, after=since) == []
    assert cluster.operators[standby].poll() is None
    cluster.operators[active].send_signal(signal.SIGKILL)
    cluster.operators[active].wait(10)
    killed = datetime.datetime.now(datetime.timezone.utc)
    cluster.kubectl("uncordon", "n3")
    wait_for("the standby to rebalance", lambda: cluster.assignment()[0].counts().get("n3") == 256, timeout=120)
    assert cluster.status_writes(standby, "web", after=killed)


def _membership_events(cluster, farm: str = "web") -> set[str]:
    """The names of the MembershipChanged Events posted about a Farm (each is its own object)."""
    items = json.loads(cluster.kubectl("get", "events", "-A", "--field-selector", f"involvedObject.name={farm}",
                                       "-o", "json").stdout)["items"]
    return {e["metadata"]["name"] for e in items if e.get("reason") == "MembershipChanged"}


def test_an_agent_restart_under_steady_load_fails_no_connection_and_moves_no_bucket(cluster):
    import subprocess
    lab = cluster.lab
    balanced = {"n1": 256, "n2": 512, "n3": 256}
    wait_for("web balanced over n1..n3", lambda: cluster.assignment()[0].counts() == balanced
             and cluster.get_farm()["status"]["readyText"] == "3/3", timeout=120)
    st = cluster.get_farm()["status"]
    wait_for("every agent to report the epoch", lambda: all(
        cluster.report(f"n{k}").get("appliedEpoch") == st["epoch"] for k in (1, 2, 3)))
    events_before = _membership_events(cluster)
    adopted_before = lab.agent_log(1).count("adopted=True")
    load_start = time.time()
    load = subprocess.Popen(
        lab.command(lab.client, [sys.executable, "-m", "nodeagent.lab.traffic", "steady", "--vip", VIP,
                                 "--port", "80", "--seconds", "30", "--rate", "40", "--timeout", "3"]
                    + sum((["--src", s] for s in client_ips(60)), [])),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cluster.agents[1].send_signal(signal.SIGTERM)
        assert cluster.agents[1].wait(30) == 0, lab.agent_log(1)
        gone = time.time() - load_start
        # Cluster mode leaves the dataplane in place for the next agent.
        assert "xdp" in lab.run(lab.node(1), ["ip", "-o", "link", "show", "dev", "eth0"]).stdout
        cluster.agents[1] = start_cluster_agent(lab, 1, os.path.join(lab.workdir, "agent-n1.kubeconfig"))
        wait_for("the restarted agent to adopt the dataplane",
                 lambda: lab.agent_log(1).count("adopted=True") > adopted_before, timeout=90)
        adopted = time.time() - load_start
        out, err = load.communicate(timeout=90)
    finally:
        if load.poll() is None:
            load.kill()
            load.wait(10)
    results = json.loads(out)
    failed = [r for r in results if r["error"]]
    after = cluster.get_farm()["status"]
    new_events = _membership_events(cluster) - events_before
    said = [line for line in lab.agent_log(1).splitlines() if "event=report_changed" in line][-4:]
    why = f"epoch {st['epoch']} -> {after['epoch']}; new MembershipChanged: {new_events}; n1 said: {said}"
    assert len(results) >= 30 * 40 * 0.8, f"only {len(results)} connections made: {err[-2000:]}"
    assert [r for r in results if gone <= r["t"] <= adopted], "no connection was made while n1 restarted"
    assert failed == [], f"{len(failed)} of {len(results)} connections failed, e.g. {failed[:3]}; {why}"
    assert set(Counter(r["node"] for r in results)) == {"n1", "n2", "n3"}
    assert (after["epoch"], after["assignment"]) == (st["epoch"], st["assignment"]), f"buckets moved: {why}"
    assert not new_events, f"MembershipChanged posted during the restart: {why}"
    assert cluster.report("n1").get("ready") is True


V6_VIP = "2001:db8::10"
# The earlier Farm spells the address in capitals: a comparison of strings then misses that
# the later Farm's canonical "2001:db8::10" is the same address.
V6_VIP_CAPITALS = "2001:DB8::10"


def test_a_later_farm_claiming_an_ipv6_vip_in_other_case_gets_conflict_and_breaks_nothing(cluster):
    from nodeagent.lab.namespaces import client_ips6
    try:
        cluster.kubectl("apply", "-f", "-", input=json.dumps(_farm("v6a", V6_VIP_CAPITALS)))
        wait_for("v6a READY 3/3", lambda: (cluster.get_farm("v6a").get("status") or {}).get("readyText") == "3/3",
                 timeout=120)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(_farm("v6b", V6_VIP)))
        st = wait_for("v6b to get Conflict", lambda: (lambda s: s if s.get("phase") == "Conflict" else None)(
            cluster.get_farm("v6b").get("status") or {}), timeout=60)
        cond = next(c for c in st["conditions"] if c["type"] == "Conflict")
        assert cond["status"] == "True" and "Farm v6a" in cond["message"], cond
        assert all(m["buckets"] == 0 for m in st["members"])
        # Give the agents time to see v6b (a report of it on every node), then check the earlier Farm.
        wait_for("every agent to report v6b", lambda: all(cluster.report(f"n{k}", "v6b") for k in (1, 2, 3)))
        for farm in ("v6a", "web"):
            fst = cluster.get_farm(farm)["status"]
            assert (fst["phase"], fst["readyText"]) == ("Ready", "3/3"), (farm, fst)
            for k in (1, 2, 3):
                r = cluster.report(f"n{k}", farm)
                assert r.get("ready") is True and r.get("reason") != "DataplaneError", (farm, f"n{k}", r)
        args = ["tcp", "--vip", V6_VIP, "--port", "80", "--per-src", "2"]
        for s in client_ips6(60):
            args += ["--src", s]
        results = json.loads(cluster.lab.python(cluster.lab.client, "nodeagent.lab.traffic", *args,
                                                timeout=300).stdout)
        assert [r for r in results if r["error"]] == []
        assert set(Counter(r["node"] for r in results)) == {"n1", "n2", "n3"}
        assert [r for r in cluster.traffic(per_src=1) if r["error"]] == []
    finally:
        for name in ("v6b", "v6a"):
            cluster.kubectl("delete", "farm", name, "--ignore-not-found", "--timeout=120s", check=False)


def test_deleting_the_farm_releases_the_vip_and_detaches_xdp_everywhere(cluster):
    cluster.kubectl("delete", "farm", "web", "--timeout=120s")
    assert cluster.kubectl("get", "farm", "web", check=False).returncode != 0
    lab = cluster.lab
    for k in (1, 2, 3):
        lo = lab.run(lab.node(k), ["ip", "-o", "addr", "show", "dev", "lo"]).stdout
        assert VIP not in lo, f"n{k} still holds the VIP"
        link = lab.run(lab.node(k), ["ip", "-o", "link", "show", "dev", "eth0"]).stdout
        assert "xdp" not in link, f"n{k} still has XDP attached"
        assert not os.path.exists(os.path.join(lab.pin_root, f"n{k}", "eth0"))
    wait_for("the agents to drop the Farm from their FarmNodes", lambda: all(
        "web" not in (json.loads(cluster.kubectl("get", "farmnode", f"n{k}", "-o", "json").stdout)
                      .get("status", {}).get("farms") or {}) for k in (1, 2, 3)))


CHECKED_VIP = "203.0.113.40"


def _agent_events(cluster, farm: str) -> list[dict]:
    """The events.k8s.io/v1 Events the agents posted about a Farm, as the API server has them."""
    items = json.loads(cluster.kubectl("get", "events.v1.events.k8s.io", "-n", "default", "-o", "json").stdout)["items"]
    return [e for e in items if (e.get("regarding") or {}).get("name") == farm
            and e.get("reportingController") == "vipfarm.io/agent"]


def test_a_failing_then_passing_checker_posts_events_regarding_the_farm_from_the_agents_service_account(cluster):
    """An exec checker fails on n2 only (a flag file), its recovery (`false`) fails and then
    has no budget left; the flag goes and the checker passes again. The API server has one
    Event per transition, regarding the Farm (with its uid), reported by n2's agent; none from
    n1 or n3 (a first pass posts nothing); the agents' own tokens created them (audit log),
    and no agent logged a failed post."""
    c = cluster
    flags = os.path.join(c.lab.workdir, "event-flags")
    os.makedirs(flags, exist_ok=True)
    flag = os.path.join(flags, "n2.down")
    body = _farm("checked", CHECKED_VIP)
    body["spec"]["checkers"] = [{"name": "app", "type": "exec", "intervalMs": 500, "timeoutMs": 450,
                                 "failureThreshold": 3, "successThreshold": 1,
                                 "command": ["sh", "-c", f'test ! -e "{flags}/$VIPFARM_NODE.down"']}]
    body["spec"]["recovery"] = {"command": ["false"], "timeoutSeconds": 5, "maxRestarts": 1, "windowSeconds": 3600}
    started = datetime.datetime.now(datetime.timezone.utc)
    try:
        c.kubectl("apply", "-f", "-", input=json.dumps(body))
        wait_for("checked READY 3/3", lambda: (c.get_farm("checked").get("status") or {}).get("readyText") == "3/3",
                 timeout=120)
        uid = c.get_farm("checked")["metadata"]["uid"]
        open(flag, "w").close()
        down = ["CheckerFailing", "RecoveryStarted", "RecoveryFailed", "RecoveryBudgetExhausted"]
        wait_for(f"n2's agent to post {', '.join(down)} about Farm checked", lambda: set(down) <= {
            e["reason"] for e in _agent_events(c, "checked")}, timeout=60)
        os.unlink(flag)
        wait_for("n2's agent to post CheckerPassing about Farm checked", lambda: "CheckerPassing" in {
            e["reason"] for e in _agent_events(c, "checked")}, timeout=60)

        events = _agent_events(c, "checked")
        by_reason = {e["reason"]: e for e in events}
        assert sorted(by_reason) == sorted(down + ["CheckerPassing"]) and len(events) == 5, \
            [(e["reason"], e["reportingInstance"]) for e in events]
        types = {"CheckerFailing": "Warning", "RecoveryStarted": "Normal", "RecoveryFailed": "Warning",
                 "RecoveryBudgetExhausted": "Warning", "CheckerPassing": "Normal"}
        for reason, e in by_reason.items():
            assert e["regarding"] == {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "name": "checked",
                                      "uid": uid}, e
            assert (e["type"], e["reportingInstance"], e["metadata"]["namespace"]) == (types[reason], "n2", "default")
            assert e["action"] == ("Check" if reason.startswith("Checker") else "Recover"), e
            assert "node n2" in e["note"] and "app" in e["note"], e["note"]
        assert "passing -> failing" in by_reason["CheckerFailing"]["note"]
        assert "failing -> passing" in by_reason["CheckerPassing"]["note"]
        # The README's command finds them.
        out = c.kubectl("events", "--for", "farm/checked", "-n", "default").stdout
        assert "CheckerFailing" in out and "CheckerPassing" in out, out
        # Created by the agents' own tokens (the chart's ServiceAccount), and none refused.
        creates = [e for e in c.requests(c.agent_ids, started) if e["verb"] == "create"
                   and (e.get("objectRef") or {}).get("resource") == "events"]
        assert creates and {(e["objectRef"].get("apiGroup"), e["objectRef"].get("namespace"),
                             e["responseStatus"]["code"]) for e in creates} == {("events.k8s.io", "default", 201)}, \
            [(e["objectRef"], e["responseStatus"]) for e in creates]
        for k in (1, 2, 3):
            log = c.lab.log(f"agent-n{k}.log")
            assert "event=k8s_event_failed" not in log, log[-3000:]
        assert "event=k8s_event_posted node=n2 farm=checked reason=CheckerFailing" in c.lab.log("agent-n2.log")
    finally:
        if os.path.exists(flag):
            os.unlink(flag)
        c.kubectl("delete", "farm", "checked", "--ignore-not-found", "--timeout=120s", check=False)


def test_the_agents_used_exactly_what_their_roles_grant(cluster):
    """Least privilege, checked: the (verb, resource) pairs the three agents' tokens used in this
    module's tests (audit log) equal what the vipfarm-agent ClusterRole, the heartbeat key's
    Role (get on that one Secret) and the events Role (create in `default`, used by the
    checker test above) grant, and each grant
    was used and allowed. (A request the API server refuses while its RBAC cache warms up
    after the restart above can be refused once; a pair that is needed but not granted would
    show up as used and not granted.)"""
    role = json.loads(cluster.kubectl("get", "clusterrole", "vipfarm-agent", "-o", "json").stdout)
    key_role = json.loads(cluster.kubectl("get", "role", "vipfarm-agent-heartbeat-key", "-n", NS, "-o", "json").stdout)
    events_role = json.loads(cluster.kubectl("get", "role", "vipfarm-agent-events", "-n", "default", "-o", "json").stdout)
    granted = {(verb, f"{group}/{res}" if group else res) for rule in role["rules"] + key_role["rules"]
               + events_role["rules"]
               for group in rule.get("apiGroups", [""]) for res in rule.get("resources", [])
               for verb in rule.get("verbs", [])}
    assert key_role["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["vipfarm-heartbeat"],
                                  "verbs": ["get"]}], key_role["rules"]
    assert events_role["rules"] == [{"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create"]}], \
        events_role["rules"]
    used, allowed, refused = set(), set(), []
    for e in cluster.requests(cluster.agent_ids):
        ref = e.get("objectRef")
        if ref is None:
            pair = (e["verb"], e.get("requestURI", ""))        # a non-resource URL
        else:
            res = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
            pair = (e["verb"], f"{ref['apiGroup']}/{res}" if ref.get("apiGroup") else res)
        used.add(pair)
        if (e.get("responseStatus") or {}).get("code") in (401, 403):
            refused.append((e["requestReceivedTimestamp"], *pair, (ref or {}).get("name")))
        else:
            allowed.add(pair)
    assert used == granted, (f"granted but never used: {sorted(granted - used)}; "
                             f"used but not granted: {sorted(used - granted)}; refused: {refused}")
    assert allowed == granted, f"never allowed: {sorted(granted - allowed)}; refused: {refused}"
