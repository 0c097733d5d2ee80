#!/usr/bin/env python3
"""Control plane at scale: one vipfarm operator, 200 Farms x 64 Nodes, on a real API server.

Everything runs against the cluster-tier harness (tests/support/apiserver.py: a real
etcd + kube-apiserver on 127.0.0.1, RBAC on). The chart is installed with the real helm
(CRDs, RBAC, the agents' ValidatingAdmissionPolicy); 64 Node objects (label
vipfarm.io/member=true) are created and marked Ready, and right after them the 64 FarmNode
objects (one per Node, named after it, owned by it), created by this script as the admin
user (the admission policy binds only the agent ServiceAccount). ONE operator process
(`python -m vipfarm_operator.main`) runs with the vipfarm-operator ServiceAccount's token, as
in tests/cluster/test_control_plane.py, with the environment the chart's Deployment gives it
(charts/vipfarm/templates/operator-deployment.yaml with values.yaml defaults:
VIPFARM_PEERING_NAME=vipfarm, VIPFARM_PEERING_PRIORITY empty = random, VIPFARM_LOG_LEVEL=info,
POD_ID/POD_NAME, PYTHONUNBUFFERED, PYTHONDONTWRITEBYTECODE). The chart sets
no other VIPFARM_* variable, so every other VIPFARM_* variable is removed from the operator's
environment and the handlers' own defaults apply: VIPFARM_RECONCILE_INTERVAL 60 s,
VIPFARM_PEERING_LIFETIME 20 s, VIPFARM_WORKERS 8, VIPFARM_RELEASE_TIMEOUT 60 s (read back from
operator/vipfarm_operator/handlers.py and printed).

Node agents are SIMULATED, and write what real agents write (nodeagent/farmnode_report.py builds the
bodies): each agent owns its node's FarmNode and writes ONE merge patch of its status
subresource per burst, holding only the entries that changed (null removes one) plus
reportedAt, agentVersion, farmCount and readyCount. An entry is
{ready, reason, lastError, dataplaneMode: native, appliedEpoch} (+ released while deleting).
Between the moments listed below the simulated agents are silent. The number of FarmNode
writes they made, by purpose, is printed at the end.

Phases, in order:
  baseline   one Farm (VIPs 203.0.113.250, 2001:db8::fa): create, then one FarmNode patch
             per node (64 writes) reporting it ready; create -> READY 64/64; then an
             appliedEpoch round and the NotReady runs below; then it is deleted: each agent reports released (64 writes), the
             operator's finalizer (it waits for `released` in the FarmNodes, up to 60 s) lets
             it go (delete -> gone is timed), and each agent removes its entry (64 writes).
  scale      200 Farms (farm-001..farm-200, VIPs 203.0.113.<i> and 2001:db8::<i hex>, all
             selecting the 64 nodes, 1024 buckets): created one after the other, THEN one
             FarmNode patch per node holding its reports for all 200 Farms (64 writes: real
             agents coalesce a burst into one write). Initial convergence = first create ->
             every Farm shows readyText 64/64 (LIST of farms, polled). Then one appliedEpoch
             round (below).
  notready   x3: patch node-17's Ready condition to False (status subresource) and time until
             EVERY Farm's status.assignment (decoded with vipfarm.assignment.Assignment.decode)
             gives node-17 0 buckets; then an appliedEpoch round; then Ready again and wait
             until every Farm is back at 64/64 with node-17 owning buckets; then another
             appliedEpoch round. Median and max reported. The same is run on the single
             baseline Farm first (baseline column).
  rounds     an appliedEpoch round is what a paced real agent does ~2 s after a burst of Farm
             updates: every agent writes ONE FarmNode patch setting appliedEpoch of every Farm
             to the Farm's current status.assignment.epoch (64 writes). First the script waits
             until the operator's own writes have stopped (events are posted after the status
             writes), reads the epochs (one LIST), then apiserver_request_total is scraped
             before the 64 patches and again
             --probe-wait seconds after: the operator's requests in between (farms*, events;
             WATCH excluded) are its reaction. appliedEpoch is not a decision field: expect 0.
  steady     after a settle pause, 60 s without any write from this script: the API server's
             apiserver_request_total (verbs POST/PUT/PATCH/DELETE/APPLY) is scraped at both
             ends with the admin token; the difference, by resource, is attributed: farms,
             farms/status and events are the operator's; farmnodes and farmnodes/status are the
             agents' (the simulated agents are silent here, so expect 0); clusterkopfpeerings
             are Kopf's peering keep-alive (reported apart); leases are kube-apiserver's own
             identity lease; nodes are this script's.
  probe      one agent (node-03) refreshes its FarmNode 5 times, --probe-gap seconds apart
             (only reportedAt changes; same farmCount/readyCount, no entry), as a real agent
             does once per refresh period (vipfarm-agent --refresh, 60 s by default; set the
             period used here with --agent-refresh) when nothing changed: the operator's API
             requests in response (expect 0). The agents' own steady write rate is then 64
             nodes / refresh period (64 writes/min at 60 s), whatever the number of Farms.
  rss        the operator's VmRSS is sampled every second throughout; VmHWM read at the end.
  floor      with the operator stopped: the API server's own cost of one node's worth of status
             writes (decide()'s output for node-17 NotReady / Ready, every agent reporting
             ready, written serially and 8 in flight), on the 200 Farms as they are and on 200
             slim Farms (status without the members list, no Kopf annotations). Skip with
             --no-write-floor.

The reaction time is measured by polling (LIST of all Farms every --poll seconds), so it
carries up to one poll interval plus one LIST of resolution; the operator's own log
(event=node_changed / event=status_written timestamps) gives the operator-side breakdown:
watch delay, time to the first and to the last status write, writes per second, the
operator's CPU time. Exit status is 0 whatever the verdicts: this is a benchmark.

Run from the repository root, as root:
    .venv/bin/python bench/control_plane.py
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from nodeagent.farmnode_report import farmnode_object, status_patch  # noqa: E402
from vipfarm import __version__  # noqa: E402
from nodeagent.lab.processes import pdeathsig_prefix  # noqa: E402
from tests.support.apiserver import ApiServer  # noqa: E402
from vipfarm.assignment import NO_OWNER, Assignment  # noqa: E402
from vipfarm.decisions import decide  # noqa: E402
from vipfarm.membership import node_info  # noqa: E402
from vipfarm.spec import API_VERSION, GROUP, PLURAL, REPORT_PLURAL, VERSION  # noqa: E402
from vipfarm.spec import parse_farm  # noqa: E402

NS = "vipfarm-system"
MEMBER_LABEL = "vipfarm.io/member"
BENCH_LABEL = "bench.vipfarm.io/phase"
REACTION_TARGET_S = 5.0
RSS_TARGET_MB = 150.0
WRITES_TARGET_PER_MIN = 1.0          # "about zero": at most one stray write a minute
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE", "APPLY")
STATUS = f"{GROUP}/{PLURAL}/status"
FN_STATUS = f"{GROUP}/{REPORT_PLURAL}/status"
MERGE = "application/merge-patch+json"
# The environment the chart's operator Deployment sets (templates/operator-deployment.yaml,
# values.yaml defaults). POD_ID is Kopf's peering identity, POD_NAME the Events' reportingInstance.
CHART_ENV = {"VIPFARM_PEERING_NAME": "vipfarm", "VIPFARM_PEERING_PRIORITY": "", "VIPFARM_LOG_LEVEL": "info",
             "POD_ID": "vipfarm-operator-bench", "POD_NAME": "vipfarm-operator-bench", "PYTHONUNBUFFERED": "1",
             "PYTHONDONTWRITEBYTECODE": "1"}
T_START = time.monotonic()


def say(msg: str) -> None:
    print(f"[{time.monotonic() - T_START:6.1f}s] {msg}", flush=True)


def utcnow() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def farm_body(name: str, vips: list[str], phase: str, buckets: int) -> dict:
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "Farm",
            "metadata": {"name": name, "labels": {BENCH_LABEL: phase}},
            "spec": {"virtualIPs": vips, "interface": "eth0", "buckets": buckets,
                     "nodeSelector": {MEMBER_LABEL: "true"},
                     "rules": [{"protocol": "TCP", "ports": "80", "affinity": "ClientIPPort"}]}}


def agent_entry(epoch: int, **extra) -> dict:
    """One simulated agent's report for one Farm (what nodeagent/cluster.py writes when ready)."""
    return dict({"ready": True, "reason": "", "lastError": "", "dataplaneMode": "native",
                 "appliedEpoch": int(epoch)}, **extra)


def operator_defaults() -> dict[str, str]:
    """The defaults operator/vipfarm_operator/handlers.py falls back to, per VIPFARM_* variable."""
    with open(os.path.join(REPO, "operator", "vipfarm_operator", "handlers.py")) as f:
        return dict(re.findall(r'os\.environ\.get\("(VIPFARM_\w+)", "([^"]*)"\)', f.read()))


# -- process accounting -----------------------------------------------------------------------
def proc_status_kb(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def proc_cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime


class RssSampler(threading.Thread):
    """VmRSS of one process every `interval` seconds, tagged with the current phase."""

    def __init__(self, pid: int, interval: float = 1.0):
        super().__init__(daemon=True, name="rss-sampler")
        self.pid, self.interval = pid, interval
        self.phase = "startup"
        self.samples: list[tuple[float, str, int]] = []     # (monotonic, phase, kB)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.phase, proc_status_kb(self.pid, "VmRSS")))
            except OSError:
                return
            self.stop.wait(self.interval)

    def mb(self, phase: str | None = None) -> list[float]:
        return [kb / 1024 for _, p, kb in self.samples if phase is None or p == phase]


# -- API server metrics -----------------------------------------------------------------------
_METRIC = re.compile(r'^apiserver_request_(total|duration_seconds_sum|duration_seconds_count)\{([^}]*)\}\s+(\S+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


class Metrics:
    """apiserver_request_total and the request latency sums, keyed (group/resource[/sub], verb)."""

    def __init__(self, api: ApiServer):
        req = urllib.request.Request(f"{api.url}/metrics", headers={"Authorization": f"Bearer {api.admin_token}"})
        ctx = ssl.create_default_context(cafile=api.ca_file)
        with urllib.request.urlopen(req, timeout=30, context=ctx) as r:
            text = r.read().decode()
        self.count: Counter = Counter()       # requests (apiserver_request_total)
        self.lat_sum: Counter = Counter()     # seconds (apiserver_request_duration_seconds_sum)
        self.lat_n: Counter = Counter()
        for line in text.splitlines():
            m = _METRIC.match(line)
            if not m:
                continue
            labels = dict(_LABEL.findall(m.group(2)))
            res = labels.get("resource", "")
            if labels.get("group"):
                res = f"{labels['group']}/{res}"
            if labels.get("subresource"):
                res += "/" + labels["subresource"]
            key = (res, labels.get("verb", ""))
            value = float(m.group(3))
            {"total": self.count, "duration_seconds_sum": self.lat_sum,
             "duration_seconds_count": self.lat_n}[m.group(1)][key] += value

    def since(self, before: "Metrics") -> "Metrics":
        out = object.__new__(Metrics)
        for attr in ("count", "lat_sum", "lat_n"):
            a, b = getattr(self, attr), getattr(before, attr)
            setattr(out, attr, Counter({k: a[k] - b.get(k, 0) for k in a if a[k] - b.get(k, 0) > 0}))
        return out

    def writes(self) -> Counter:
        return Counter({k: int(v) for k, v in self.count.items() if k[1] in WRITE_VERBS})

    def mean_ms(self, res: str, verb: str) -> float | None:
        n = self.lat_n.get((res, verb), 0)
        return 1000 * self.lat_sum[(res, verb)] / n if n else None


def diff(after: Counter, before: Counter) -> Counter:
    return Counter({k: after[k] - before.get(k, 0) for k in after if after[k] - before.get(k, 0) > 0})


def classify(res: str) -> str:
    if res.split("/")[:2] == [GROUP, REPORT_PLURAL]:
        return "agents"          # FarmNodes: only the (simulated) agents write them
    if res.split("/")[:2] == [GROUP, PLURAL] or res in ("events", "events.k8s.io/events"):
        return "operator"
    if res.startswith("kopf.dev/"):
        return "peering"
    if res.startswith("coordination.k8s.io/leases"):
        return "apiserver-own"
    if res.startswith("nodes"):
        return "bench"           # this script's Node Ready patches
    return "other"


def operator_requests(m: "Metrics") -> Counter:
    """The operator's requests in a Metrics difference: farms*, events; not WATCH (long-lived)."""
    return Counter({k: int(v) for k, v in m.count.items() if classify(k[0]) == "operator" and k[1] != "WATCH"})


def fmt_writes(c: Counter) -> str:
    return ", ".join(f"{res} {verb} {n}" for (res, verb), n in sorted(c.items())) or "none"


# -- the operator's log -----------------------------------------------------------------------
_LOGTIME = re.compile(r'^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),(\d{3}) ')
_HANDLER = re.compile(r"(?:Handler|Timer) '([^'/]+)[^']*' succeeded")


def log_lines(path: str, t_from: float, t_to: float) -> list[tuple[float, str]]:
    out = []
    with open(path, errors="replace") as f:
        for line in f:
            m = _LOGTIME.match(line)
            if not m:
                continue
            t = time.mktime(time.strptime(m.group(1), "%Y-%m-%d %H:%M:%S")) + int(m.group(2)) / 1000
            if t_from <= t <= t_to:
                out.append((t, line.rstrip("\n")))
    return out


def operator_breakdown(path: str, t0_wall: float, t1_wall: float) -> dict:
    """What the operator did between t0 and t1 (wall clock), from its log."""
    lines = log_lines(path, t0_wall - 0.01, t1_wall + 0.01)
    node_changed = [t for t, ln in lines if "event=node_changed" in ln]
    written = [t for t, ln in lines if "event=status_written" in ln]
    handlers = Counter(m.group(1) for _, ln in lines for m in [_HANDLER.search(ln)] if m)
    errors = [ln for _, ln in lines if " ERROR " in ln or "Traceback" in ln or " WARNING " in ln]
    return {"node_changed": node_changed[0] - t0_wall if node_changed else None,
            "first_write": written[0] - t0_wall if written else None,
            "last_write": written[-1] - t0_wall if written else None,
            "writes": len(written), "handlers": dict(handlers), "warnings": errors[:5],
            "n_warnings": len(errors)}


# -- the benchmark ----------------------------------------------------------------------------
class Bench:
    def __init__(self, api: ApiServer, args, workdir: str):
        from kubernetes import client
        self.api, self.args, self.workdir = api, args, workdir
        self.ac = api.api_client()
        self.core = client.CoreV1Api(self.ac)
        self.custom = client.CustomObjectsApi(self.ac)
        self.nodes = [f"node-{i:02d}" for i in range(args.nodes)]
        self.victim = self.nodes[min(17, args.nodes - 1)]
        self.prober = self.nodes[min(3, args.nodes - 1)]
        self.full = f"{args.nodes}/{args.nodes}"
        self.operator: subprocess.Popen | None = None
        self.oplog = os.path.join(workdir, "operator.log")
        self.sampler: RssSampler | None = None
        self.list_seconds: dict[str, list[float]] = defaultdict(list)
        self.list_bytes: Counter = Counter()
        # The simulated agents: each node's FarmNode status.farms as last written, and how
        # many FarmNode writes they made, by purpose.
        self.written: dict[str, dict[str, dict]] = {n: {} for n in self.nodes}
        self.agent_writes: Counter = Counter()
        self.rounds: dict[str, list[dict]] = defaultdict(list)     # appliedEpoch rounds, by phase
        self.op_env: dict[str, str] = {}

    # -- setup --------------------------------------------------------------------------------
    def install(self) -> None:
        res = self.api.helm("install", "vipfarm", "charts/vipfarm", "--namespace", NS, "--create-namespace",
                            "--wait=false")
        assert "STATUS: deployed" in res.stdout, res.stdout + res.stderr
        self.api.kubectl("wait", "--for=condition=Established", "crd/farms.vipfarm.io", "crd/farmnodes.vipfarm.io",
                         "crd/clusterkopfpeerings.kopf.dev", "--timeout=60s")

    def set_ready(self, node: str, ready: bool) -> None:
        cond = {"type": "Ready", "status": "True" if ready else "False",
                "reason": "KubeletReady" if ready else "KubeletStopped",
                "message": "set by bench/control_plane.py", "lastHeartbeatTime": utcnow(),
                "lastTransitionTime": utcnow()}
        self.core.patch_node_status(node, {"status": {"conditions": [cond]}})

    def create_nodes(self) -> None:
        """The Nodes, Ready; then each one's FarmNode (empty, owned by the Node), as the admin."""
        uids = {}
        for n in self.nodes:
            node = self.core.create_node({"apiVersion": "v1", "kind": "Node",
                                          "metadata": {"name": n, "labels": {MEMBER_LABEL: "true"}}})
            uids[n] = node.metadata.uid
            self.set_ready(n, True)
        for n in self.nodes:
            self.custom.create_cluster_custom_object(GROUP, VERSION, REPORT_PLURAL,
                                                     farmnode_object(n, uids[n], API_VERSION))
            self.agent_writes["FarmNode creation"] += 1

    def start_operator(self) -> None:
        token = self.api.mint_token(NS, "vipfarm-operator")
        cfg = self.api.kubeconfig_for_token(token, os.path.join(self.workdir, "operator.kubeconfig"))
        # The chart's environment and nothing else of ours: a VIPFARM_* variable exported in this
        # shell must not change the operator under test (the handlers' defaults apply).
        env = {k: v for k, v in os.environ.items() if not k.startswith("VIPFARM_")}
        env.update(CHART_ENV, KUBECONFIG=cfg, NODE_NAME=self.nodes[0])
        self.op_env = {k: v for k, v in env.items() if k.startswith("VIPFARM_")}
        out = open(self.oplog, "ab")
        try:
            self.operator = subprocess.Popen(pdeathsig_prefix() + [sys.executable, "-m", "vipfarm_operator.main"],
                                             stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                             env=env, cwd=REPO)
        finally:
            out.close()
        self.sampler = RssSampler(self.operator.pid)
        self.sampler.start()
        # Active once Kopf has announced itself in the ClusterKopfPeering status.
        self.wait("the operator to join the peering", lambda: bool(
            self.custom.get_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", "vipfarm").get("status")),
                  timeout=60)
        time.sleep(1.0)                         # let its watch streams start

    def stop_operator(self) -> None:
        if self.sampler:
            self.sampler.stop.set()
        p = self.operator
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=15)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(timeout=10)

    def check_operator(self) -> None:
        if self.operator.poll() is not None:
            raise RuntimeError(f"the operator exited ({self.operator.returncode}); log tail:\n"
                               + "\n".join(open(self.oplog, errors="replace").read().splitlines()[-30:]))

    # -- reading Farms --------------------------------------------------------------------------
    def list_farms(self, phase: str) -> list[dict]:
        t = time.monotonic()
        r = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL, label_selector=f"{BENCH_LABEL}={phase}",
                                                   _preload_content=False)
        data = r.data
        items = json.loads(data)["items"]
        self.list_seconds[phase].append(time.monotonic() - t)
        self.list_bytes[phase] = max(self.list_bytes[phase], len(data))
        return items

    def wait(self, what: str, fn, timeout: float, interval: float = 0.5):
        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            last = fn()
            if last:
                return last
            self.check_operator()
            time.sleep(interval)
        raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}; last: {last!r}")

    def poll_until(self, what: str, phase: str, n_farms: int, cond, t0: float, timeout: float) -> float:
        """Poll LIST until cond(farm) holds for all n_farms Farms; seconds since t0 (monotonic)."""
        deadline = t0 + timeout
        next_print = time.monotonic() + self.args.progress
        while True:
            items = self.list_farms(phase)
            t = time.monotonic()
            ok = sum(1 for f in items if cond(f))
            if len(items) == n_farms and ok == n_farms:
                return t - t0
            if t >= next_print:
                say(f"  {what}: {ok}/{n_farms} farms after {t - t0:.1f}s")
                next_print = t + self.args.progress
            if t > deadline:
                raise RuntimeError(f"timed out after {timeout:.0f}s waiting for {what}: {ok}/{n_farms}")
            self.check_operator()
            # At least --poll, and at least one LIST's duration: the poller uses at most about
            # half of the API server's time for itself (a LIST of 200 Farms is several MB).
            time.sleep(max(self.args.poll, self.list_seconds[phase][-1]))

    def all_ready(self, farm: dict) -> bool:
        return (farm.get("status") or {}).get("readyText") == self.full

    def owned(self, farm: dict, node: str) -> int | None:
        a = (farm.get("status") or {}).get("assignment") or {}
        if not a.get("data"):
            return None
        asg = Assignment.decode(a.get("members") or [], a["data"])
        if node not in asg.members:
            return 0
        i = asg.members.index(node)
        return sum(1 for o in asg.owners if o == i and o != NO_OWNER)

    @staticmethod
    def epoch_of(farm: dict) -> int:
        return int((((farm.get("status") or {}).get("assignment") or {}).get("epoch")) or 0)

    # -- the simulated agents -------------------------------------------------------------------
    def agents_write(self, deltas: dict[str, dict], purpose: str, refresh: bool = False) -> int:
        """Each node in `deltas` writes ONE merge patch of its FarmNode status: the entries of its
        delta (None removes a Farm), reportedAt, agentVersion, farmCount, readyCount (the body
        nodeagent/farmnode_report.py builds). An empty delta is not written unless refresh (the periodic
        reportedAt refresh). Returns the number of writes."""
        n_writes = 0
        for node, delta in deltas.items():
            if not delta and not refresh:
                continue
            wanted = dict(self.written[node])
            for farm, entry in delta.items():
                if entry is None:
                    wanted.pop(farm, None)
                else:
                    wanted[farm] = dict(entry)
            self.custom.patch_cluster_custom_object_status(
                GROUP, VERSION, REPORT_PLURAL, node, status_patch(delta, wanted, utcnow(), __version__),
                _content_type=MERGE)
            self.written[node] = wanted
            n_writes += 1
        self.agent_writes[purpose] += n_writes
        return n_writes

    def agents_report_new(self, farms: list[str], purpose: str) -> int:
        """Every agent reports the new Farms ready. They have no assignment yet (no ready member
        means no epoch), so appliedEpoch is 0."""
        return self.agents_write({n: {f: agent_entry(0) for f in farms} for n in self.nodes}, purpose)

    def wait_operator_quiet(self, quiet: float = 2.0, limit: float = 20.0) -> float:
        """Wait until the operator's writes (farms*, events) have stopped for `quiet` seconds:
        its events are posted after its status writes, and must not count as a reaction to what
        comes next. Returns the seconds waited."""
        t0 = time.monotonic()
        last, since = None, t0
        while True:
            n = sum(v for (res, _), v in Metrics(self.api).writes().items() if classify(res) == "operator")
            now = time.monotonic()
            if n != last:
                last, since = n, now
            elif now - since >= quiet or now - t0 >= limit:
                return now - t0
            self.check_operator()
            time.sleep(0.5)

    def epoch_round(self, phase: str, label: str) -> dict:
        """What paced real agents do ~2 s after a burst of Farm updates: each agent writes ONE
        FarmNode patch setting appliedEpoch of every Farm to the Farm's status.assignment.epoch.
        Counts the operator's requests in response (appliedEpoch decides nothing: expect 0)."""
        quiet = self.wait_operator_quiet()
        epochs = {f["metadata"]["name"]: self.epoch_of(f) for f in self.list_farms(phase)}
        m0, w0 = Metrics(self.api), time.time()
        deltas = {n: {f: dict(self.written[n][f], appliedEpoch=e) for f, e in epochs.items()
                      if f in self.written[n] and self.written[n][f].get("appliedEpoch") != e}
                  for n in self.nodes}
        n_writes = self.agents_write(deltas, "appliedEpoch rounds")
        time.sleep(self.args.probe_wait)
        m = Metrics(self.api).since(m0)
        ops = operator_requests(m)
        writes = sum(v for (_, verb), v in ops.items() if verb in WRITE_VERBS)
        br = operator_breakdown(self.oplog, w0, time.time())
        say(f"  {label}: appliedEpoch round, {n_writes} FarmNode writes (epochs "
            f"{min(epochs.values(), default=0)}..{max(epochs.values(), default=0)}; operator quiet after "
            f"{quiet:.1f}s): operator writes {writes}, requests {fmt_writes(ops)}; "
            f"log: {br['writes']} status writes, handlers {br['handlers']}")
        out = {"label": label, "agent_writes": n_writes, "op_writes": writes, "op_requests": ops,
               "status_writes": br["writes"], "quiet_s": quiet}
        self.rounds[phase].append(out)
        return out

    # -- actions ------------------------------------------------------------------------------
    def create_farms(self, farms: list[dict]) -> None:
        for body in farms:
            self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)

    def notready_runs(self, phase: str, n_farms: int, runs: int) -> list[dict]:
        out = []
        for k in range(runs):
            self.sampler.phase = f"{phase}-notready"
            m0, c0 = Metrics(self.api), proc_cpu_s(self.operator.pid)
            a0 = sum(proc_cpu_s(p) for p in self.api.pids())
            w0, t0 = time.time(), time.monotonic()
            self.set_ready(self.victim, False)
            dt = self.poll_until(f"{self.victim} at 0 buckets", phase, n_farms,
                                 lambda f: self.owned(f, self.victim) == 0, t0, self.args.timeout)
            w1 = time.time()
            cpu = proc_cpu_s(self.operator.pid) - c0
            api_cpu = sum(proc_cpu_s(p) for p in self.api.pids()) - a0
            m = Metrics(self.api).since(m0)
            # The operator's log a little past detection: the last write may land after the poll.
            time.sleep(0.3)
            br = operator_breakdown(self.oplog, w0, w1)
            say(f"  run {k + 1}: {self.victim} NotReady -> 0 buckets on all {n_farms} farm(s) in {dt:.2f}s "
                f"(operator: node event +{_f(br['node_changed'])}s, first write +{_f(br['first_write'])}s, "
                f"last write +{_f(br['last_write'])}s, {br['writes']} status writes, CPU {cpu:.2f}s; "
                f"apiserver+etcd CPU {api_cpu:.2f}s; mean API latency: status PATCH "
                f"{_f(m.mean_ms(STATUS, 'PATCH'), 0)} ms, event POST {_f(m.mean_ms('events', 'POST'), 0)} ms)")
            self.epoch_round(phase, f"run {k + 1} after NotReady")
            self.sampler.phase = f"{phase}-recover"
            t1 = time.monotonic()
            self.set_ready(self.victim, True)
            back = self.poll_until(f"{self.victim} back", phase, n_farms,
                                   lambda f: self.all_ready(f) and (self.owned(f, self.victim) or 0) > 0,
                                   t1, self.args.timeout)
            say(f"  run {k + 1}: {self.victim} Ready again -> back on all {n_farms} farm(s) in {back:.2f}s")
            self.epoch_round(phase, f"run {k + 1} after rejoin")
            out.append({"seconds": dt, "recover": back, "operator": br, "cpu": cpu, "api_cpu": api_cpu,
                        "writes": m.writes(), "status_ms": m.mean_ms(STATUS, "PATCH"),
                        "event_ms": m.mean_ms("events", "POST")})
        return out

    # -- phases -------------------------------------------------------------------------------
    def baseline(self) -> dict:
        say("baseline: one Farm")
        self.sampler.phase = "baseline"
        name = "baseline"
        t0 = time.monotonic()
        self.create_farms([farm_body(name, ["203.0.113.250", "2001:db8::fa"], "baseline", self.args.buckets)])
        self.agents_report_new([name], "baseline reports")
        conv = self.poll_until("READY", "baseline", 1, self.all_ready, t0, self.args.timeout)
        say(f"  baseline Farm READY {self.full} in {conv:.2f}s ({self.args.nodes} FarmNode writes)")
        self.epoch_round("baseline", "after initial convergence")
        runs = self.notready_runs("baseline", 1, self.args.runs)
        rss = max(self.sampler.mb())
        # Delete it, as the agents see it: the Farm gets a deletionTimestamp, every agent withdraws
        # it and reports released (one write each); the finalizer then lets the Farm go, and every
        # agent drops the entry (one more write each).
        self.wait_operator_quiet()
        t1 = time.monotonic()
        self.custom.delete_cluster_custom_object(GROUP, VERSION, PLURAL, name)
        self.agents_write({n: {name: dict(self.written[n][name], ready=False, reason="Deleting", released=True)}
                           for n in self.nodes}, "baseline release")
        self.wait("the baseline Farm to be deleted", lambda: not self.list_farms("baseline"),
                  timeout=self.args.timeout, interval=0.1)
        released = time.monotonic() - t1
        self.agents_write({n: {name: None} for n in self.nodes}, "baseline release")
        say(f"  baseline Farm deleted {released:.2f}s after the DELETE (agents reported released: "
            f"{self.args.nodes} writes; then removed its entry: {self.args.nodes} writes)")
        return {"converge": conv, "runs": runs, "rss_peak": rss, "released": released}

    def scale(self) -> dict:
        n = self.args.farms
        say(f"scale: creating {n} Farms, then one FarmNode write per node ({self.args.nodes}) reporting them all")
        self.sampler.phase = "scale-create"
        farms = [farm_body(f"farm-{i:03d}", [f"203.0.113.{i}", f"2001:db8::{i:x}"], "scale", self.args.buckets)
                 for i in range(1, n + 1)]
        c0, m0 = proc_cpu_s(self.operator.pid), Metrics(self.api)
        w0, t0 = time.time(), time.monotonic()
        self.create_farms(farms)
        created = time.monotonic() - t0
        reports = self.agents_report_new([b["metadata"]["name"] for b in farms], "scale reports")
        reported = time.monotonic() - t0
        say(f"  {n} Farms created in {created:.1f}s, {reports} FarmNode writes done at {reported:.1f}s; "
            f"waiting for READY {self.full} everywhere")
        conv = self.poll_until(f"READY {self.full}", "scale", n, self.all_ready, t0, self.args.timeout)
        br = operator_breakdown(self.oplog, w0, time.time())
        cpu = proc_cpu_s(self.operator.pid) - c0
        writes = Metrics(self.api).since(m0).writes()
        say(f"  all {n} Farms READY {self.full} {conv:.1f}s after the first create "
            f"(operator: {br['writes']} status writes, CPU {cpu:.1f}s, handlers {br['handlers']})")
        self.epoch_round("scale", "after initial convergence")
        return {"converge": conv, "created": created, "reported": reported, "agent_writes": reports,
                "operator": br, "cpu": cpu, "writes": writes}

    def steady(self) -> dict:
        say(f"steady state: settling {self.args.settle:.0f}s, then {self.args.window:.0f}s without writes")
        self.sampler.phase = "settle"
        time.sleep(self.args.settle)
        self.sampler.phase = "steady"
        m0, c0 = Metrics(self.api), proc_cpu_s(self.operator.pid)
        w0, t0 = time.time(), time.monotonic()
        time.sleep(self.args.window)
        m1, c1 = Metrics(self.api), proc_cpu_s(self.operator.pid)
        elapsed = time.monotonic() - t0
        self.check_operator()
        d = m1.since(m0).writes()
        by: dict[str, Counter] = defaultdict(Counter)
        for k, v in d.items():
            by[classify(k[0])][k] += v
        per_min = {cls: sum(c.values()) * 60 / elapsed for cls, c in by.items()}
        br = operator_breakdown(self.oplog, w0, time.time())
        for cls in ("operator", "agents", "peering", "apiserver-own", "bench", "other"):
            say(f"  {cls:13s} writes: {sum(by[cls].values()):4d} in {elapsed:.0f}s ({per_min.get(cls, 0):.1f}/min): "
                f"{fmt_writes(by[cls])}")
        say(f"  operator CPU {100 * (c1 - c0) / elapsed:.1f}% of a core; log: {br['writes']} status writes, "
            f"handlers {br['handlers']}")
        return {"elapsed": elapsed, "by": by, "per_min": per_min, "cpu_pct": 100 * (c1 - c0) / elapsed,
                "operator": br}

    def refresh_probe(self) -> dict:
        """What an agent's periodic refresh costs the operator: one agent rewrites its FarmNode
        with nothing new (reportedAt only, same counts, no entry), --probe-refreshes times,
        --probe-gap seconds apart; count the API requests the operator makes in response."""
        k = self.args.probe_refreshes
        node = self.prober
        say(f"agent refresh probe: {node} refreshes its FarmNode {k} times, {self.args.probe_gap:.0f}s apart")
        self.sampler.phase = "probe"
        self.wait_operator_quiet()
        m0, w0 = Metrics(self.api), time.time()
        for i in range(k):
            if i:
                time.sleep(self.args.probe_gap)
            self.agents_write({node: {}}, "refresh probe", refresh=True)
        time.sleep(self.args.probe_wait)
        m = Metrics(self.api).since(m0)
        br = operator_breakdown(self.oplog, w0, time.time())
        ops = operator_requests(m)
        writes = sum(v for (_, verb), v in ops.items() if verb in WRITE_VERBS)
        seen = int(m.count.get((FN_STATUS, "PATCH"), 0))
        say(f"  {k} refreshes ({seen} FarmNode status PATCHes seen by the API server): operator requests "
            f"{fmt_writes(ops)}; reconciles (handlers) {br['handlers']}; status writes {br['writes']}")
        return {"refreshes": k, "node": node, "requests": ops, "requests_per": sum(ops.values()) / k,
                "writes_per": writes / k, "handlers": br["handlers"], "status_writes": br["writes"],
                "patches_seen": seen}

    # -- the API server's cost of the writes themselves (operator stopped) ----------------------
    def _node_infos(self, victim_ready: bool) -> list:
        return [node_info(n, {MEMBER_LABEL: "true"}, {},
                          [{"type": "Ready", "status": "True" if victim_ready or n != self.victim else "False"}], False)
                for n in self.nodes]

    def _write_statuses(self, statuses: list[tuple[str, dict]], conc: int) -> tuple[float, float]:
        from kubernetes import client
        apis = [client.CustomObjectsApi(self.api.api_client()) for _ in range(conc)]

        def one(job):
            i, (name, st) = job
            apis[i % conc].patch_cluster_custom_object_status(GROUP, VERSION, PLURAL, name, {"status": st},
                                                              _content_type=MERGE)
        a0, t0 = sum(proc_cpu_s(p) for p in self.api.pids()), time.monotonic()
        with ThreadPoolExecutor(conc) as ex:
            list(ex.map(one, enumerate(statuses)))
        return time.monotonic() - t0, sum(proc_cpu_s(p) for p in self.api.pids()) - a0

    def _decisions(self, items: list[dict], victim_ready: bool, keep=None) -> tuple[list, float]:
        nodes, out = self._node_infos(victim_ready), []
        reports = {n: {"ready": True, "dataplaneMode": "native"} for n in self.nodes}   # every agent ready
        t = time.perf_counter()
        for f in items:
            st = decide(parse_farm(f), int(f["metadata"].get("generation", 1)), f["metadata"]["creationTimestamp"],
                        nodes, [], f.get("status") or {}, reports, utcnow()).status
            out.append((f["metadata"]["name"], {k: v for k, v in st.items() if keep is None or k in keep}))
        return out, 1000 * (time.perf_counter() - t) / max(1, len(items))

    def write_floor(self) -> dict:
        """How long the API server itself needs for one node's worth of status writes: with the
        operator stopped, write what decide() gives for node-17 NotReady (serially), then for
        node-17 Ready (N writes in flight, as the operator's workers do); the same on slim Farms
        whose status has no members list and no Kopf annotations."""
        conc = self.args.write_concurrency
        say(f"API write floor (operator stopped): {self.args.farms} status writes, serial and {conc} in flight")
        out: dict = {}
        items = self.list_farms("scale")
        out["full_kb"] = len(json.dumps(items[0])) / 1000
        out["mf_kb"] = len(json.dumps(items[0]["metadata"].get("managedFields"))) / 1000
        ds, out["decide_ms"] = self._decisions(items, False)
        serial, cpu1 = self._write_statuses(ds, 1)
        ds, _ = self._decisions(self.list_farms("scale"), True)
        parallel, cpu2 = self._write_statuses(ds, conc)
        out["full"] = {"serial_s": serial, "parallel_s": parallel, "cpu_ms": 1000 * (cpu1 + cpu2) / (2 * len(ds))}
        say(f"  full Farms: serial {serial:.2f}s, {conc} in flight {parallel:.2f}s, "
            f"{out['full']['cpu_ms']:.0f} ms apiserver+etcd CPU per write")
        keep = ("observedGeneration", "phase", "epoch", "assignment", "readyMembers", "totalMembers", "readyText",
                "vipText", "conditions")
        slim = [farm_body(f"slim-{i:03d}", [f"203.0.113.{i}", f"2001:db8::{i:x}"], "slim", self.args.buckets)
                for i in range(1, self.args.farms + 1)]
        for body in slim:
            self.custom.create_cluster_custom_object(GROUP, VERSION, PLURAL, body)
        self._write_statuses(self._decisions(self.list_farms("slim"), True, keep)[0], conc)
        serial, cpu1 = self._write_statuses(self._decisions(self.list_farms("slim"), False, keep)[0], 1)
        parallel, cpu2 = self._write_statuses(self._decisions(self.list_farms("slim"), True, keep)[0], conc)
        out["slim_kb"] = len(json.dumps(self.list_farms("slim")[0])) / 1000
        out["slim"] = {"serial_s": serial, "parallel_s": parallel, "cpu_ms": 1000 * (cpu1 + cpu2) / (2 * len(slim))}
        out["n"] = len(ds)
        say(f"  slim Farms: serial {serial:.2f}s, {conc} in flight {parallel:.2f}s, "
            f"{out['slim']['cpu_ms']:.0f} ms apiserver+etcd CPU per write")
        return out


def _f(x, digits: int = 2) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--farms", type=int, default=200)
    ap.add_argument("--nodes", type=int, default=64)
    ap.add_argument("--buckets", type=int, default=1024)
    ap.add_argument("--runs", type=int, default=3, help="NotReady runs (each phase)")
    ap.add_argument("--window", type=float, default=60, help="steady-state window, seconds")
    ap.add_argument("--settle", type=float, default=10, help="pause before the window, seconds")
    ap.add_argument("--poll", type=float, default=0.25, help="pause between LIST polls, seconds")
    ap.add_argument("--progress", type=float, default=3, help="progress print interval, seconds")
    ap.add_argument("--timeout", type=float, default=150, help="per-wait timeout, seconds")
    ap.add_argument("--probe-refreshes", "--probe-farms", dest="probe_refreshes", type=int, default=5,
                    help="FarmNode refreshes (reportedAt only) by node-03 in the agent refresh probe "
                         "(--probe-farms is the old name)")
    ap.add_argument("--probe-gap", type=float, default=3, help="seconds between the probe's refreshes")
    ap.add_argument("--probe-wait", type=float, default=6,
                    help="seconds to let the operator react to agent writes that decide nothing "
                         "(each appliedEpoch round, the refresh probe)")
    ap.add_argument("--agent-refresh", type=float, default=60,
                    help="the agents' refresh period (vipfarm-agent --refresh), for the steady write rate")
    ap.add_argument("--write-concurrency", type=int, default=8, help="writes in flight in the write floor")
    ap.add_argument("--no-write-floor", dest="write_floor", action="store_false",
                    help="skip the API write floor measurement (operator stopped)")
    ap.add_argument("--keep-log", metavar="DIR", help="copy the operator log to DIR")
    args = ap.parse_args(argv)
    if args.nodes > 253 or args.farms > 249:
        ap.error("at most 249 farms (VIPs 203.0.113.1..249) and 253 nodes")
    if args.probe_refreshes < 1:
        ap.error("--probe-refreshes must be at least 1")

    def on_signal(signum, _frame):
        raise SystemExit(f"control_plane.py: interrupted by signal {signum}; cleaning up")
    for sig in (signal.SIGTERM, signal.SIGHUP):      # SIGINT already raises KeyboardInterrupt
        signal.signal(sig, on_signal)

    workdir = tempfile.mkdtemp(prefix="vipfarm-bench-cp-")
    say(f"starting etcd + kube-apiserver (work dir {workdir})")
    bench = None
    try:
        with ApiServer() as api:
            bench = Bench(api, args, workdir)
            bench.install()
            say("chart installed")
            bench.create_nodes()
            say(f"{args.nodes} Nodes created, all Ready; {args.nodes} FarmNodes created (empty, owned by their Node)")
            bench.start_operator()
            say(f"operator running (pid {bench.operator.pid}, log {bench.oplog}); {operator_settings(bench)}")
            try:
                base = bench.baseline()
                scale = bench.scale()
                say(f"scale: NotReady reaction x{args.runs}")
                runs = bench.notready_runs("scale", args.farms, args.runs)
                steady = bench.steady()
                probe = bench.refresh_probe()
                hwm = proc_status_kb(bench.operator.pid, "VmHWM") / 1024
                bench.stop_operator()
                floor = bench.write_floor() if args.write_floor else None
            finally:
                bench.stop_operator()      # while the API server is still up: Kopf exits promptly
                if args.keep_log:
                    os.makedirs(args.keep_log, exist_ok=True)
                    shutil.copy(bench.oplog, os.path.join(args.keep_log, "operator.log"))
            say("stopping the API server")
        report(args, bench, base, scale, runs, steady, probe, hwm, floor)
    finally:
        if bench is not None:
            bench.stop_operator()
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


def operator_settings(bench: Bench) -> str:
    """The operator's VIPFARM_* settings: the chart's environment, else the handlers' defaults."""
    defaults = {k: v for k, v in operator_defaults().items() if k not in bench.op_env}
    return ("env as the chart sets it: " + ", ".join(f"{k}={v!r}" for k, v in sorted(bench.op_env.items()))
            + "; handler defaults in effect: " + ", ".join(f"{k}={v}" for k, v in sorted(defaults.items())))


def _rounds(rs: list[dict], nodes: int) -> str:
    if not rs:
        return "-"
    return f"{max(r['op_writes'] for r in rs)} (max of {len(rs)} rounds of {nodes} writes)"


def report(args, bench: Bench, base: dict, scale: dict, runs: list[dict], steady: dict, probe: dict,
           hwm: float, floor: dict | None) -> None:
    secs = [r["seconds"] for r in runs]
    bsecs = [r["seconds"] for r in base["runs"]]
    rec = [r["recover"] for r in runs]
    brec = [r["recover"] for r in base["runs"]]
    steady_rss = bench.sampler.mb("steady")
    peak = max(bench.sampler.mb())
    op_min = steady["per_min"].get("operator", 0.0)
    rounds, brounds = bench.rounds["scale"], bench.rounds["baseline"]
    rounds_ok = all(r["op_writes"] == 0 for r in rounds + brounds)
    agents_min = args.nodes * 60 / args.agent_refresh           # each agent once per refresh period
    refresh_op_min = probe["writes_per"] * agents_min
    rows = [
        ("initial convergence (create -> all READY)",
         f"{scale['converge']:.1f} s ({args.farms} farms; {args.farms} creates + {scale['agent_writes']} "
         f"FarmNode writes)", f"{base['converge']:.2f} s (1 farm)", "-", "info"),
        ("NotReady -> 0 buckets on every farm, median", f"{statistics.median(secs):.2f} s",
         f"{statistics.median(bsecs):.2f} s", f"< {REACTION_TARGET_S:.0f} s",
         verdict(statistics.median(secs) < REACTION_TARGET_S)),
        ("NotReady -> 0 buckets on every farm, max", f"{max(secs):.2f} s", f"{max(bsecs):.2f} s",
         f"< {REACTION_TARGET_S:.0f} s", verdict(max(secs) < REACTION_TARGET_S)),
        ("Ready again -> back on every farm, median", f"{statistics.median(rec):.2f} s",
         f"{statistics.median(brec):.2f} s", "-", "info"),
        ("operator writes per round of appliedEpoch reports", _rounds(rounds, args.nodes),
         _rounds(brounds, args.nodes), "0", verdict(rounds_ok)),
        ("Farm delete -> gone (agents report released)", "-", f"{base['released']:.2f} s", "-", "info"),
        ("operator writes/min, steady (farms, events)", f"{op_min:.1f}", "-",
         f"~0 (<= {WRITES_TARGET_PER_MIN:.0f})", verdict(op_min <= WRITES_TARGET_PER_MIN)),
        ("agent (FarmNode) writes/min, steady window", f"{steady['per_min'].get('agents', 0.0):.1f}", "-",
         "0 (simulated agents silent)", "info"),
        ("operator requests per agent refresh (probe)",
         f"{probe['requests_per']:.2f} ({probe['writes_per']:.2f} writes)", "-", "~0",
         verdict(probe["writes_per"] <= 0.05)),
        (f"agents' own refresh writes ({args.nodes} nodes / {args.agent_refresh:.0f} s)",
         f"{agents_min:.1f} writes/min", "-", "-", "info"),
        ("  operator writes/min those refreshes cause", f"{refresh_op_min:.1f}", "-",
         f"~0 (<= {WRITES_TARGET_PER_MIN:.0f})", verdict(refresh_op_min <= WRITES_TARGET_PER_MIN)),
        ("Kopf peering keep-alive writes/min", f"{steady['per_min'].get('peering', 0.0):.1f}", "-", "-", "info"),
        ("operator CPU, steady", f"{steady['cpu_pct']:.1f} % of a core", "-", "-", "info"),
        ("operator RSS, steady (median of 1 s samples)", f"{statistics.median(steady_rss):.1f} MB", "-",
         f"< {RSS_TARGET_MB:.0f} MB", verdict(statistics.median(steady_rss) < RSS_TARGET_MB)),
        ("operator RSS, peak (max sample / VmHWM)", f"{peak:.1f} / {hwm:.1f} MB",
         f"{base['rss_peak']:.1f} MB", f"< {RSS_TARGET_MB:.0f} MB", verdict(max(peak, hwm) < RSS_TARGET_MB)),
    ]
    heads = ("metric", "value", "baseline", "target", "verdict")
    widths = [max(len(str(r[i])) for r in rows + [heads]) for i in range(5)]
    print()
    print(f"Control plane scale: {args.farms} Farms x {args.nodes} Nodes, {args.buckets} buckets, one operator, "
          f"simulated agents reporting in FarmNodes")
    print("  ".join(h.ljust(w) for h, w in zip(heads, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print()
    print(f"Operator: {operator_settings(bench)}")
    print(f"NotReady runs at scale: {', '.join(f'{s:.2f}' for s in secs)} s; baseline (1 farm): "
          f"{', '.join(f'{s:.2f}' for s in bsecs)} s")
    print(f"LIST of the {args.farms} farms: median {statistics.median(bench.list_seconds['scale']) * 1000:.0f} ms, "
          f"largest {bench.list_bytes['scale'] / 1e6:.1f} MB; pause between LISTs max({args.poll} s, last LIST): "
          f"the reaction's resolution is about two LISTs")
    print("Where the time goes (operator log, seconds after the Node patch):")
    for i, r in enumerate(runs, 1):
        br = r["operator"]
        span = (br["last_write"] - br["first_write"]) if br["writes"] > 1 else None
        rate = f"{(br['writes'] - 1) / span:.0f} writes/s" if span else "-"
        print(f"  run {i}: node event seen +{_f(br['node_changed'])}, first status write +{_f(br['first_write'])}, "
              f"last +{_f(br['last_write'])} ({br['writes']} writes, {rate}); operator CPU {r['cpu']:.2f} s, "
              f"apiserver+etcd CPU {r['api_cpu']:.2f} s; handlers {br['handlers']}; "
              f"API writes {fmt_writes(r['writes'])}; mean API latency: Farm status PATCH "
              f"{_f(r['status_ms'], 0)} ms, event POST {_f(r['event_ms'], 0)} ms")
        if br["n_warnings"]:
            print(f"    {br['n_warnings']} warning/error lines, e.g. {br['warnings'][0][:200]}")
    print(f"Initial convergence: {scale['created']:.1f} s to create {args.farms} farms, agents' "
          f"{scale['agent_writes']} FarmNode writes done at {scale['reported']:.1f} s; operator CPU "
          f"{scale['cpu']:.1f} s; {scale['operator']['writes']} status writes; handlers "
          f"{scale['operator']['handlers']}; API writes {fmt_writes(scale['writes'])}")
    print(f"appliedEpoch rounds (operator requests within {args.probe_wait:.0f} s of the agents' writes, "
          f"after waiting for the operator to go quiet):")
    for phase, rs in (("baseline", brounds), ("scale", rounds)):
        for r in rs:
            print(f"  {phase:8s} {r['label']:26s} {r['agent_writes']} agent writes -> operator writes "
                  f"{r['op_writes']}, requests {fmt_writes(r['op_requests'])}; log: {r['status_writes']} "
                  f"status writes (quiet after {r['quiet_s']:.1f} s)")
    print(f"Agent refresh probe ({probe['node']}, {probe['refreshes']} refreshes, {probe['patches_seen']} "
          f"FarmNode status PATCHes seen): operator requests {fmt_writes(probe['requests'])}; handlers "
          f"{probe['handlers']}; status writes {probe['status_writes']}")
    print("Simulated agents' FarmNode writes: " + ", ".join(
        f"{purpose} {n}" for purpose, n in bench.agent_writes.items())
          + f"; total {sum(bench.agent_writes.values())}")
    if floor:
        print(f"API write floor, operator stopped ({floor['n']} status writes, the operator's own decide() output; "
              f"decide() {floor['decide_ms']:.1f} ms/farm):")
        for label, key in (("full Farms as above (~%.0f kB, managedFields %.0f kB)" % (floor["full_kb"], floor["mf_kb"]), "full"),
                           ("slim Farms: status without the members list, no Kopf annotations (~%.0f kB)"
                            % floor["slim_kb"], "slim")):
            r = floor[key]
            print(f"  {label}: serial {r['serial_s']:.2f} s, {args.write_concurrency} in flight "
                  f"{r['parallel_s']:.2f} s; apiserver+etcd CPU {r['cpu_ms']:.0f} ms per write")
    print(f"Steady window ({steady['elapsed']:.0f} s) writes by class: " + "; ".join(
        f"{cls}: {fmt_writes(c)}" for cls, c in sorted(steady["by"].items())))


if __name__ == "__main__":
    sys.exit(main())
