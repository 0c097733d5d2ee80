#!/usr/bin/env python3
"""Failover time (issue 8, "Benchmarks"): during continuous connection attempts from many
clients, cut one of 3 nodes off (link down); time from the fault until every bucket of the
lost node accepts new connections again. Repeated over --trials (>= 20 for a p99).

    sudo .venv/bin/python bench/failover.py [--interval-ms 100 --timeout-ms 300] [--trials 20]
    sudo .venv/bin/python bench/failover.py --cluster ...   # cluster mode, API server stopped
                                                            # (bench/failover_cluster.py)

Everything runs in a lab of network namespaces this script creates and deletes
(nodeagent/lab; DESIGN.md "Lab network rules"): 3 node namespaces with real standalone agents
and an echo server each, a client namespace with --clients addresses. The farm file carries
spec.heartbeat {intervalMs, timeoutMs} from the flags and the lab's heartbeat key file.

One trial: a prober (nodeagent/lab/prober.py) in the client namespace opens a TCP connection
from every client every --probe-interval-ms (--probe-timeout-ms each); an ownership watcher
(nodeagent/lab/ownership_watch.py) reads every node's pinned tables and leases every ~2 ms.
Once every client is served, node k's link goes down (k = 1, 2, 3 in turn) and the watcher
stops counting node k. The trial's failover time (the issue's measure) is
  * buckets: when every bucket node k owned at the fault had an acceptor again (tables+lease),
and beside it, as the clients saw it,
  * clients: recovery_time over node k's clients (served only by k before the fault): the
    first success after which none of them failed again (it includes the probe's timeout),
or "never" if it did not happen within --window-s. Then the link comes back up and the
next trial waits until every client is served again.

Printed: each trial; p50/p99/max over the trials (a trial that never recovered counts as
never, so p99 and max say "never" when any did); the bound timeoutMs + intervalMs + 50 ms
from the issue; and beside it the baseline timeoutMs (a peer cannot be declared lost before
its timeout: the detection lower bound) and the probe's resolution. Exits 0 whatever the
verdict; it is bounded in time (each trial by --window-s, the whole run by the trial count).
"""
from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time
from dataclasses import dataclass

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import yaml  # noqa: E402

from nodeagent.lab import faults  # noqa: E402
from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml  # noqa: E402
from nodeagent.lab.ownership_watch import OwnershipWatcher  # noqa: E402
from nodeagent.lab.prober import clients_of, failed_attempts, load_records, recovery_time, wait_for  # noqa: E402
from vipfarm.spec import FarmSpecError, parse_farm  # noqa: E402

FARM, VIP, PORT = "fo", "203.0.113.50", 8080
RULES = '    - {protocol: TCP, ports: "8080", affinity: ClientIP}\n'


@dataclass
class Trial:
    n: int
    node: int
    clients: int
    buckets: int
    client_ms: float | None
    bucket_ms: float | None
    failed: int
    max_double_ms: float

    @property
    def ms(self) -> float | None:
        if self.client_ms is None or self.bucket_ms is None:
            return None
        return max(self.client_ms, self.bucket_ms)


def farm_file(lab: Lab, interval_ms: int, timeout_ms: int) -> str:
    text = farm_yaml(FARM, [VIP], {"n1": 1, "n2": 1, "n3": 1}, rules=RULES, key_file=lab.key_file,
                     interval_ms=interval_ms, timeout_ms=timeout_ms)
    try:
        parse_farm(yaml.safe_load(text), require_nodes=True)
    except FarmSpecError as e:
        raise SystemExit(f"bench/failover.py: the farm built from the flags is invalid: {e}")
    return lab.write_farm(FARM, text)


def settled(recs, clients: list[str]) -> bool:
    """Every client's last 3 attempts succeeded (a rejoin after the previous trial has settled)."""
    last: dict[str, list[bool]] = {}
    for r in recs:
        last.setdefault(r.client, []).append(r.ok)
    return all(len(last.get(c, [])) >= 3 and all(last[c][-3:]) for c in clients)


def link_down(lab: Lab, k: int) -> int:
    """The standalone bench's fault: node k's link goes down; the fault time is when it is down."""
    faults.link_down(lab, k)
    return time.monotonic_ns()       # the link is down once link_down returns (its namespace
    #                                  entry, ~40 ms, comes before the netlink call)


def run_trial(lab: Lab, n: int, k: int, clients: list[str], a, *, fault=link_down, undo=faults.link_up,
              farm: str = FARM, vip: str = VIP, port: int = PORT) -> Trial:
    """One trial against `farm` (VIP:port, 1024 buckets): fault(lab, k) injects the fault and
    returns its time (time.monotonic_ns()); undo(lab, k), if given, runs once the probe stopped.
    Shared by this script and bench/failover_cluster.py."""
    out = os.path.join(lab.workdir, f"trial{n}.jsonl")
    stop = out + ".stop"
    args = [sys.executable, "-m", "nodeagent.lab.prober", "--vip", vip, "--port", str(port), "--out", out,
            "--stop-file", stop, "--seconds", str(a.window_s + 30), "--interval-ms", str(a.probe_interval_ms),
            "--timeout-ms", str(a.probe_timeout_ms)]
    for c in clients:
        args += ["--src", c]
    proc = lab.spawn(lab.client, args, log_name=f"trial{n}.log")

    def records():
        return load_records(out) if os.path.exists(out) else []
    try:
        wait_for(lambda: settled(records(), clients), 30, "every client's last 3 attempts to succeed before the fault")
        lab.wait_converged(farm, [1, 2, 3])
        lost = lab.owned(k, farm)
        watcher = OwnershipWatcher.for_lab(lab, farm).start()
        time.sleep(0.1)       # a little steady state in the watcher's record before the fault
        mine = clients_of(records(), f"n{k}", until=time.monotonic_ns())
        t_fault = fault(lab, k)
        watcher.exclude(f"n{k}")
        deadline = time.monotonic() + a.window_s
        while time.monotonic() < deadline:       # stop early once both measures have recovered
            unowned = watcher.unowned_now()
            if mine and recovery_time(records(), mine, t_fault) is not None \
                    and unowned is not None and not lost & unowned:
                break
            time.sleep(0.05)
        time.sleep(min(0.3, max(0.0, deadline - time.monotonic())))  # "never failed again" needs a tail
        report = watcher.stop()
        open(stop, "w").close()
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
        if undo is not None:
            undo(lab, k)
    recs = records()
    client_ns = recovery_time(recs, mine, t_fault) if mine else None
    covered = report.covered_at(lost, t_fault)
    if covered is not None:
        late = [r for r in recs if r.client in mine and not r.ok and r.t_ns > covered]
        if late:
            print(f"  trial {n}: {len(late)} attempts of n{k}'s clients started after every bucket was covered and failed: "
                  + ", ".join(f"{r.outcome}@{(r.t_ns - t_fault) / 1e6:.0f}ms" for r in late[:8]), flush=True)
    return Trial(n, k, len(mine), len(lost),
                 None if client_ns is None else client_ns / 1e6,
                 None if covered is None else (covered - t_fault) / 1e6,
                 len(failed_attempts(recs, t_fault, 2**63)), report.max_double_ms)


def pct(values: list[float | None], q: float) -> str:
    """Nearest-rank percentile; a None (never recovered) sorts after every number."""
    if not values:
        return "n/a"
    ranked = sorted(values, key=lambda v: math.inf if v is None else v)
    v = ranked[max(0, math.ceil(q * len(ranked)) - 1)]
    return "never" if v is None else f"{v:.0f} ms"


def trial_line(t: Trial, **extra: str) -> str:
    """One trial's progress line (`extra`: more key=value fields, such as the cluster bench's mode)."""
    fmt = lambda v: "never" if v is None else f"{v:.0f}"   # noqa: E731
    more = "".join(f" {k}={v}" for k, v in extra.items())
    return (f"event=failover_trial n={t.n}{more} lost=n{t.node} lost_clients={t.clients} lost_buckets={t.buckets} "
            f"failover_ms={fmt(t.ms)} clients_ms={fmt(t.client_ms)} buckets_ms={fmt(t.bucket_ms)} "
            f"failed_attempts={t.failed} max_double_ms={t.max_double_ms:.1f}")


def summarize(trials: list[Trial], a, title: str = "", baseline: str | None = None) -> bool:
    """Print p50/p99/max over the trials, the clients' view, the bound and the baseline;
    returns whether the p99 met the bound timeoutMs + intervalMs + 50 ms with every trial
    recovered. `baseline` replaces the default baseline line (timeoutMs, the detection floor)."""
    bound = a.timeout_ms + a.interval_ms + 50
    if title:
        print(f"-- {title}")
    ms = [t.bucket_ms for t in trials]       # the measure: every lost bucket accepts again
    recovered = [v for v in ms if v is not None]
    clients_ms = [t.client_ms for t in trials]
    print(f"recovered: {len(recovered)}/{len(trials)} trials")
    print(f"failover time (every lost bucket accepts again): p50 {pct(ms, 0.50)}, p99 {pct(ms, 0.99)}, "
          f"max {pct(ms, 1.0)}" + (f", mean of recovered {statistics.mean(recovered):.0f} ms" if recovered else ""))
    print(f"as the clients saw it (first success after which none failed; includes the probe's "
          f"{a.probe_timeout_ms:g} ms timeout and {a.probe_interval_ms:g} ms interval): p50 {pct(clients_ms, 0.50)}, "
          f"p99 {pct(clients_ms, 0.99)}, max {pct(clients_ms, 1.0)}")
    print(f"bound: timeoutMs + intervalMs + 50 = {bound} ms")
    print(baseline or f"baseline: timeoutMs = {a.timeout_ms} ms (no peer can be declared lost sooner); probe "
          f"resolution ~{a.probe_interval_ms:g} ms")
    print(f"double ownership max {max(t.max_double_ms for t in trials):.1f} ms; failed attempts "
          f"{sum(t.failed for t in trials)} over {len(trials)} trials")
    p99 = pct(ms, 0.99)
    ok = len(recovered) == len(trials) and pct(ms, 0.99) != "never" and sorted(recovered)[
        max(0, math.ceil(0.99 * len(recovered)) - 1)] <= bound
    print(f"verdict: {'PASS' if ok else 'MISS'} (p99 {p99} against {bound} ms"
          + ("" if recovered else "; no trial recovered: this build does not fail over") + ")")
    return ok


def add_common_args(p: argparse.ArgumentParser) -> None:
    """The options this script and bench/failover_cluster.py share."""
    p.add_argument("--interval-ms", type=int, default=100, help="spec.heartbeat.intervalMs")
    p.add_argument("--timeout-ms", type=int, default=300, help="spec.heartbeat.timeoutMs")
    p.add_argument("--trials", type=int, default=20)
    p.add_argument("--clients", type=int, default=24, help="client addresses probing (1..100)")
    p.add_argument("--probe-interval-ms", type=float, default=10.0)
    p.add_argument("--probe-timeout-ms", type=float, default=50.0)
    p.add_argument("--window-s", type=float, default=0.0,
                   help="how long a trial waits for recovery (default max(2 s, 4 x the bound))")
    p.add_argument("--keep-logs", metavar="DIR", help="copy the agents' logs there before the lab is deleted")


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--cluster" in argv:          # the same measure in cluster mode, API server stopped
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from failover_cluster import main as cluster_main
        return cluster_main([x for x in argv if x != "--cluster"])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog="--cluster: run bench/failover_cluster.py instead (see its --help)")
    add_common_args(p)
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/failover.py needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    if not 1 <= a.trials <= 200:
        p.error(f"--trials {a.trials}: give 1..200 (20 or more for a p99)")
    bound = a.timeout_ms + a.interval_ms + 50
    a.window_s = a.window_s or max(2.0, 4 * bound / 1000)
    print(f"failover benchmark: 3 nodes, {a.clients} clients probing every {a.probe_interval_ms:g} ms "
          f"(timeout {a.probe_timeout_ms:g} ms), heartbeat intervalMs={a.interval_ms} timeoutMs={a.timeout_ms}, "
          f"{a.trials} trials, window {a.window_s:g} s each")
    trials: list[Trial] = []
    with Lab(nodes=3, clients=a.clients) as lab:
        path = farm_file(lab, a.interval_ms, a.timeout_ms)
        lab.start_servers(tcp_ports=(PORT,), udp_ports=())
        agents = {k: lab.start_agent(k, [path]) for k in (1, 2, 3)}
        for k, proc in agents.items():
            lab.wait_agent_ready(k, proc, timeout=180)
        clients = client_ips(a.clients)
        for n in range(1, a.trials + 1):
            k = (n - 1) % 3 + 1
            t = run_trial(lab, n, k, clients, a)
            trials.append(t)
            print(trial_line(t), flush=True)
            for j, proc in agents.items():
                if proc.poll() is not None:
                    print(f"agent n{j} exited ({proc.returncode}); stopping:\n{lab.agent_log(j)[-2000:]}")
                    return 1
        if a.keep_logs:
            os.makedirs(a.keep_logs, exist_ok=True)
            for k in (1, 2, 3):
                with open(os.path.join(a.keep_logs, f"agent-n{k}.log"), "w") as f:
                    f.write(lab.agent_log(k))
            print(f"agent logs copied to {a.keep_logs}")
    print()
    summarize(trials, a)
    return 0


if __name__ == "__main__":
    sys.exit(main())
