#!/usr/bin/env python3
"""Failover time in cluster mode with the API server stopped (issue 8, "Benchmarks": "the same
with the API server stopped (cluster mode): unchanged"), and its baseline from the same run:
the same trial with the API server up.

    sudo .venv/bin/python bench/failover_cluster.py [--interval-ms 100 --timeout-ms 300] [--trials 20]
    sudo .venv/bin/python bench/failover.py --cluster ...          # the same

The world is the cluster tier's (tests/cluster, tests/support/apiserver.py): a real etcd +
kube-apiserver on 127.0.0.1, the chart installed with helm (CRDs, RBAC, the heartbeat key's
Secret), Node objects n1..n3 (Ready, weight 1 each), one operator process with the operator
ServiceAccount's token, and one cluster-mode agent per lab node with a node-bound agent token,
reaching the API server through a forwarder into its namespace. The Farm `fo` (203.0.113.50,
TCP 8080 ClientIP, 1024 buckets, spec.heartbeat from the flags) spans the 3 nodes.

Trials alternate between two modes, the lost node rotating n1, n2, n3:
  * api-stopped: the API server is stopped (SIGTERM, its port closed), --api-down-s later
    node k crashes;
  * api-up (the baseline): node k crashes with the API server up.
A crash is nodeagent/lab/faults.crash: SIGKILL of every process in node k's namespace (its
agent and its echo server; the XDP program stays attached, as on a dead box), then its link
goes down. The fault time is taken just before the SIGKILL (the dead agent sends nothing
after it). The measure is bench/failover.py's, by the same code (run_trial): every bucket node
k owned accepts again (tables + lease, read every ~2 ms), and beside it the clients' view.

Restore after each trial: the link comes up, the API server starts (if it was stopped), node
k's echo server and agent start again, and the run waits until the farm has converged: the
Farm's status says 3/3, every agent reports the agreed view n1,n2,n3, and every filter holds
the stored assignment. The agent's restart (a Python start and a BPF compile) makes a trial
take ~20-40 s. Everything is deleted on every exit, Ctrl-C included (the lab's and the API
server's cleanup). Exits 0 whatever the verdict.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import failover  # noqa: E402  (bench/failover.py: the trial and its measure)
from nodeagent.lab import faults  # noqa: E402
from nodeagent.lab.namespaces import Lab, client_ips  # noqa: E402
from tests.cluster.test_control_plane import NS, start_cluster_agent, wait_for  # noqa: E402
from tests.cluster.test_failover import FailoverCluster  # noqa: E402
from tests.support.apiserver import ApiServer, HarnessError, token_id  # noqa: E402

FARM, VIP, PORT = failover.FARM, failover.VIP, failover.PORT
MODES = ("api-stopped", "api-up")


def farm_body(interval_ms: int, timeout_ms: int) -> dict:
    return {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": FARM},
            "spec": {"virtualIPs": [VIP], "interface": "eth0", "buckets": 1024,
                     "heartbeat": {"intervalMs": interval_ms, "timeoutMs": timeout_ms},
                     "nodeSelector": {"vipfarm.io/member": "true"},
                     "rules": [{"protocol": "TCP", "ports": str(PORT), "affinity": "ClientIP"}]}}


class BenchCluster(FailoverCluster):
    """The cluster test's helpers, plus what a trial needs: each agent's kubeconfig (to start it
    again after a crash) and the restore."""

    def __init__(self, api: ApiServer, lab: Lab):
        super().__init__(api, lab, FARM)
        self.agent_kubeconfigs: dict[int, str] = {}

    def start_server(self, k: int) -> None:
        self.lab.spawn(self.lab.node(k), [sys.executable, "-m", "nodeagent.lab.traffic", "serve", "--name",
                                          f"n{k}", "--tcp", str(PORT)], log_name=f"server-n{k}.log")

    def start_agent(self, k: int) -> None:
        self.agents[k] = start_cluster_agent(self.lab, k, self.agent_kubeconfigs[k])

    def converged(self) -> bool:
        st = self.status()
        if st.get("readyText") != "3/3" or not self.all_agree({"n1", "n2", "n3"}):
            return False
        a, _ = self.stored()
        return self.served() == {f"n{k}": frozenset(a.owned_by(f"n{k}")) for k in (1, 2, 3)}

    def wait_converged(self, timeout: float = 180) -> None:
        wait_for(f"Farm {FARM} 3/3, every agent agreeing on n1,n2,n3 and every filter holding the stored "
                 f"assignment (logs in {self.lab.workdir})", self.converged, timeout=timeout, interval=0.3)


def setup(api: ApiServer, lab: Lab, a) -> BenchCluster:
    res = api.helm("install", "vipfarm", "charts/vipfarm", "--namespace", NS, "--create-namespace", "--wait=false")
    if "STATUS: deployed" not in res.stdout:
        raise SystemExit(f"bench/failover_cluster.py: helm install of charts/vipfarm failed:\n{res.stdout}{res.stderr}")
    api.kubectl("wait", "--for=condition=Established", "crd/farms.vipfarm.io", "crd/farmnodes.vipfarm.io",
                "--timeout=60s")
    c = BenchCluster(api, lab)
    for k in (1, 2, 3):
        node = {"apiVersion": "v1", "kind": "Node",
                "metadata": {"name": f"n{k}", "labels": {"vipfarm.io/member": "true"},
                             "annotations": {"vipfarm.io/weight": "1"}}}
        api.kubectl("apply", "-f", "-", input=json.dumps(node))
        c.set_ready(f"n{k}", True)
    op_token = api.mint_token(NS, "vipfarm-operator")
    c.operator_ids = [token_id(op_token)]
    c.operators = [c.start_operator(0, api.kubeconfig_for_token(
        op_token, os.path.join(lab.workdir, "operator-0.kubeconfig")))]
    for k in (1, 2, 3):
        c.start_server(k)
        token = api.mint_token(NS, "vipfarm-agent", node=f"n{k}", duration="24h")
        url = api.forward_into(lab.node(k), 6443)
        c.agent_kubeconfigs[k] = api.kubeconfig_for_token(
            token, os.path.join(lab.workdir, f"agent-n{k}.kubeconfig"), server=url)
        c.start_agent(k)
    api.kubectl("apply", "-f", "-", input=json.dumps(farm_body(a.interval_ms, a.timeout_ms)))
    c.wait_converged()
    return c


def crash_fault(c: BenchCluster, stop_api: bool, api_down_s: float):
    """fault(lab, k) for run_trial: (stop the API server, wait api_down_s,) then crash node k."""
    def fault(lab: Lab, k: int) -> int:
        if stop_api:
            c.api.stop_apiserver()
            if c.api.running:
                raise RuntimeError("kube-apiserver still running after stop_apiserver()")
            time.sleep(api_down_s)       # the scenario: the control plane has been gone a while
        t = time.monotonic_ns()          # the agent sends nothing after the SIGKILL that follows
        faults.crash(lab, k)
        return t
    return fault


def restore(c: BenchCluster, k: int) -> None:
    """Node k comes back: link up (run_trial's undo did it), API server, server, agent; converged."""
    if not c.api.running:
        c.api.start_apiserver()
    c.start_server(k)
    c.start_agent(k)
    c.wait_converged()


def keep_logs(lab: Lab, dest: str) -> None:
    os.makedirs(dest, exist_ok=True)
    for name in ["operator-0.log"] + [f"agent-n{k}.log" for k in (1, 2, 3)]:
        with open(os.path.join(dest, name), "w") as f:
            f.write(lab.log(name))
    print(f"operator and agent logs copied to {dest}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    failover.add_common_args(p)
    p.add_argument("--baseline-trials", type=int, default=-1,
                   help="trials with the API server up (default: as many as --trials); 0 = none")
    p.add_argument("--api-down-s", type=float, default=1.0,
                   help="how long the API server is down before the crash")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/failover_cluster.py needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    if not 1 <= a.trials <= 200:
        p.error(f"--trials {a.trials}: give 1..200 (20 or more for a p99)")
    a.baseline_trials = a.trials if a.baseline_trials < 0 else a.baseline_trials
    if not 0 <= a.baseline_trials <= 200:
        p.error(f"--baseline-trials {a.baseline_trials}: give 0..200")
    bound = a.timeout_ms + a.interval_ms + 50
    a.window_s = a.window_s or max(2.0, 4 * bound / 1000)
    order = [m for i in range(max(a.trials, a.baseline_trials)) for m, count in
             zip(MODES, (a.trials, a.baseline_trials)) if i < count]
    print(f"cluster failover benchmark: real kube-apiserver + operator, 3 cluster-mode agents, {a.clients} clients "
          f"probing every {a.probe_interval_ms:g} ms (timeout {a.probe_timeout_ms:g} ms), heartbeat "
          f"intervalMs={a.interval_ms} timeoutMs={a.timeout_ms}; {a.trials} trials with the API server stopped "
          f"({a.api_down_s:g} s before the crash), {a.baseline_trials} with it up, alternating; window "
          f"{a.window_s:g} s each", flush=True)
    results: dict[str, list[failover.Trial]] = {m: [] for m in MODES}
    t_start = time.monotonic()
    try:
        api = ApiServer()
    except HarnessError as e:
        print(f"bench/failover_cluster.py: could not start the API server: {e}", file=sys.stderr)
        return 1
    with api, Lab(nodes=3, clients=a.clients) as lab:
        if a.keep_logs:      # a teardown hook: it runs on Ctrl-C and SIGTERM too, before the logs go
            lab.teardown_hooks.insert(0, lambda: keep_logs(lab, a.keep_logs))
        c = setup(api, lab, a)
        print(f"event=cluster_ready seconds={time.monotonic() - t_start:.1f}", flush=True)
        clients = client_ips(a.clients)
        try:
            for n, mode in enumerate(order, 1):
                k = (n - 1) // len(MODES) % 3 + 1 if a.baseline_trials else (n - 1) % 3 + 1
                t0 = time.monotonic()
                t = failover.run_trial(lab, n, k, clients, a, fault=crash_fault(c, mode == "api-stopped", a.api_down_s),
                                       farm=FARM, vip=VIP, port=PORT)
                results[mode].append(t)
                restore(c, k)
                print(failover.trial_line(t, mode=mode) + f" trial_s={time.monotonic() - t0:.1f}", flush=True)
                for j in (1, 2, 3):
                    if c.agents[j].poll() is not None:
                        print(f"agent n{j} exited ({c.agents[j].returncode}); stopping:\n{lab.agent_log(j)[-2000:]}")
                        return 1
        finally:
            for k in (1, 2, 3):
                api.stop_forward(lab.node(k))
    print()
    base = results["api-up"]
    base_line = (f"baseline (same run, API server up, {len(base)} trials): p50 "
                 f"{failover.pct([t.bucket_ms for t in base], 0.5)}, p99 {failover.pct([t.bucket_ms for t in base], 0.99)}, "
                 f"max {failover.pct([t.bucket_ms for t in base], 1.0)}; detection floor timeoutMs = {a.timeout_ms} ms"
                 if base else f"baseline: timeoutMs = {a.timeout_ms} ms (no API-up trials run)")
    failover.summarize(results["api-stopped"], a, title="API server stopped", baseline=base_line)
    if base:
        print()
        failover.summarize(base, a, title="baseline: API server up")
    print(f"\nwall time {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
