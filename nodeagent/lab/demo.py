"""`vipfarm lab demo` (also `vipfarm demo`, `make demo`): a farm that fails over in front of you.

The shell around demo_report.py (the pure summary and verdict). It builds a lab (Lab: a
bridge, nodes n1-n3, a client namespace with 60 addresses), starts a named server and a real
standalone agent on every node (the agents in parallel: each compiles its XDP filter, ~10 s),
and then, with live progress lines (at most one a second):
  1. traffic: ~1,200 new TCP connections from 60 client addresses (ClientIPPort), the
     per-node distribution against the weights 1/2/1;
  2. a crash of n3 (faults.crash: every process in it killed, its link down, as
     tests/lab/test_failover.py does) while 30 clients keep opening connections (ClientIP):
     the failover time as those clients saw it (prober.recovery_time), then n3 brought back
     under 120 long-lived connections (holder.py), none of which may be reset;
  3. a drain of n2 (`drain: true` in the farm file, SIGHUP) under the same long-lived
     connections: n2 takes no new connection, keeps its held ones, resets none; an undrain;
  4. everything torn down (Lab), and checked: no namespace of the lab left.
Progress goes to stdout, or to stderr with --json, which prints one JSON object (the
DemoSummary) on stdout at the end. Exit 0 only if every step worked.

SIGINT/SIGTERM at any moment: Lab's own handler tears the lab down (processes killed,
namespaces and pins removed) and then calls the handler installed here, which ends the run
(exit 130 / 143, with the summary so far and the interruption in its errors).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from typing import Callable, TextIO

from . import faults
from .demo_report import (Measurements, counts_text, distribution, distribution_lines, holder_progress,
                          recovery_progress, summarize, traffic_progress, traffic_verdict)
from .holder import spawn_holder
from .namespaces import Lab, client_ips, farm_yaml, partitioned
from .prober import clients_of, recovery_time, spawn_probe

FARM, VIP = "demo", "203.0.113.10"
NAME_PORT, AFFINITY_PORT, ECHO_PORT = 80, 8080, 9100
RULES = (f'    - {{protocol: TCP, ports: "{NAME_PORT}", affinity: ClientIPPort}}\n'
         f'    - {{protocol: TCP, ports: "{AFFINITY_PORT}", affinity: ClientIP}}\n'
         f'    - {{protocol: TCP, ports: "{ECHO_PORT}", affinity: ClientIPPort}}\n')
WEIGHTS = {"n1": 1, "n2": 2, "n3": 1}
INTERVAL_MS, TIMEOUT_MS = 100, 300          # the defaults: a node is lost after 300 ms of silence
DRAIN_TIMEOUT_S = 120                       # longer than the demo: the drain cuts nothing
CRASHED, DRAINED = 3, 2
TRAFFIC_CONNECTIONS = 1200
HELD = 120
KEEP_LOGS_HINT = "rerun with VIPFARM_LAB_KEEP_LOGS=/some/dir to keep the lab's logs"


class Interrupted(BaseException):
    """SIGINT/SIGTERM: raised after Lab's handler has torn the lab down. A BaseException, so
    that no step's error handling takes it for a failed step."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


class Progress:
    """Step headers and results as they come; live lines at most once a second, flushed."""

    def __init__(self, out: TextIO):
        self.out = out
        self.step_t0 = time.monotonic()
        self.last_live = 0.0

    def say(self, text: str = "") -> None:
        print(text, file=self.out, flush=True)

    def step(self, text: str) -> None:
        self.say(f"\n== {text}")
        self.step_t0 = time.monotonic()
        self.last_live = self.step_t0

    def live(self, text: Callable[[], str], force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_live >= 1.0:
            self.last_live = now
            self.say(f"   [{now - self.step_t0:5.1f}s] {text()}")

    def wait(self, cond: Callable[[], object], timeout: float, what: str, text: Callable[[], str],
             step: float = 0.1):
        """Poll cond() until truthy (returns it), a live line each second; TimeoutError after `timeout` s."""
        deadline = time.monotonic() + timeout
        while True:
            value = cond()
            if value:
                return value
            if time.monotonic() > deadline:
                raise TimeoutError(f"{what} not within {timeout:.0f} s")
            self.live(text)
            time.sleep(step)


class DemoRun:
    """One run of the demo in one lab: the steps, and what they measured (self.m)."""

    def __init__(self, lab: Lab, progress: Progress):
        self.lab = lab
        self.p = progress
        self.m: dict = {}
        self.failures: list[str] = []
        self.agents: dict[int, subprocess.Popen] = {}
        self.drained: tuple[str, ...] = ()
        self.farm = ""
        self.holder = None

    # -- helpers --------------------------------------------------------------------------
    def farm_text(self) -> str:
        return farm_yaml(FARM, [VIP], WEIGHTS, rules=RULES, key_file=self.lab.key_file, interval_ms=INTERVAL_MS,
                         timeout_ms=TIMEOUT_MS, drained=self.drained,
                         extra=f"  handover: {{drainTimeoutSeconds: {DRAIN_TIMEOUT_S}}}\n")

    def reconfigure(self, drained: tuple[str, ...]) -> int:
        """Rewrite the farm file and SIGHUP every agent; returns the time of the change."""
        self.drained = drained
        self.lab.write_farm(FARM, self.farm_text())
        t = time.monotonic_ns()
        for proc in self.agents.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGHUP)
        return t

    def buckets(self) -> dict[str, int]:
        return {f"n{k}": len(self.lab.owned(k, FARM) or ()) for k in (1, 2, 3)}

    def start_server(self, k: int) -> None:
        log = f"server-n{k}-{len(self.lab.procs)}.log"
        self.lab.spawn(self.lab.node(k), [sys.executable, "-m", "nodeagent.lab.traffic", "serve", "--name", f"n{k}",
                                          "--tcp", str(NAME_PORT), "--tcp", str(AFFINITY_PORT),
                                          "--echo", str(ECHO_PORT)], log_name=log)
        self.p.wait(lambda: "serving" in self.lab.log(log), 20, f"n{k}'s server", lambda: f"n{k}'s server starting")

    def start_agents(self, nodes: list[int], also: Callable[[], str] | None = None) -> None:
        """Start the agents of `nodes` at once and wait until each is ready (its filter compiled)."""
        before = {k: self.lab.agent_log(k).count("event=agent_ready") for k in nodes}
        for k in nodes:
            self.agents[k] = self.lab.start_agent(k, [self.farm])
        t0 = time.monotonic()
        ready: dict[int, float] = {}

        def all_ready():
            for k in nodes:
                if k not in ready and self.lab.agent_log(k).count("event=agent_ready") > before[k]:
                    ready[k] = time.monotonic() - t0
                elif k not in ready and self.agents[k].poll() is not None:
                    tail = " | ".join(self.lab.agent_log(k).strip().splitlines()[-3:])
                    raise RuntimeError(f"agent n{k} exited with {self.agents[k].returncode}: {tail}")
            return len(ready) == len(nodes)

        def state():
            text = ", ".join(f"n{k} " + (f"ready ({ready[k]:.0f} s)" if k in ready else "compiling")
                             for k in nodes)
            return text + (f"; {also()}" if also else "")
        self.p.wait(all_ready, 180, "the agents' start", state)
        self.p.live(state, force=True)

    def converged(self, what: str) -> dict[str, int]:
        """Until the three filters partition the buckets (the drained node may hold none)."""
        idle = tuple(int(n[1:]) for n in self.drained)
        self.p.wait(lambda: partitioned({k: self.lab.owned(k, FARM) for k in (1, 2, 3)}, idle=idle), 60, what,
                    lambda: f"buckets held: {counts_text(self.buckets())}")
        return self.buckets()

    # -- the steps --------------------------------------------------------------------------
    def setup(self) -> None:
        lab = self.lab
        self.p.step(f"the lab: namespaces {lab.prefix}* (a bridge, nodes n1-n3 at 198.51.100.1-3, a client "
                    f"with 60 addresses)")
        self.farm = lab.write_farm(FARM, self.farm_text())
        self.p.say(f"   farm {FARM}: VIP {VIP}, weights {counts_text(WEIGHTS)}, 1024 buckets; heartbeats every "
                   f"{INTERVAL_MS} ms, a node silent for {TIMEOUT_MS} ms is lost")
        self.p.say(f"   ports: {NAME_PORT} (a bucket per connection), {AFFINITY_PORT} (a bucket per client "
                   f"address), {ECHO_PORT} (echo, for long-lived connections)")
        self.p.step("a server and a vipfarm agent on every node (each agent compiles its XDP filter: ~10 s)")
        for k in (1, 2, 3):
            self.start_server(k)
        self.start_agents([1, 2, 3])
        shares = self.converged("the agents' agreement on one owner per bucket")
        self.p.say(f"   heartbeats agreed: every bucket has exactly one owner ({counts_text(shares)})")

    def traffic(self) -> None:
        lab = self.lab
        nodes = sorted(WEIGHTS)
        self.p.step(f"traffic: {TRAFFIC_CONNECTIONS} new TCP connections to {VIP}:{NAME_PORT} from 60 client "
                    f"addresses")
        # (no try/finally around the probers and the holder: after an interruption the lab is
        # gone, and the teardown has killed them already)
        probe = spawn_probe(lab, VIP, NAME_PORT, client_ips(60), seconds=60, interval_ms=150, timeout_ms=2000,
                            max_attempts=TRAFFIC_CONNECTIONS)
        self.p.wait(lambda: len(probe.records()) >= TRAFFIC_CONNECTIONS, 60, "the traffic step",
                    lambda: traffic_progress(probe.records(), nodes), step=0.2)
        records = probe.stop()
        self.m["traffic"] = records
        for line in distribution_lines(distribution(records, nodes), WEIGHTS, self.buckets()):
            self.p.say("   " + line)
        self.p.say("   " + traffic_verdict(records, WEIGHTS))

    def crash_and_rejoin(self) -> None:
        lab, k, name = self.lab, CRASHED, f"n{CRASHED}"
        clients = client_ips(30)
        self.p.step(f"{name} crashes (its agent and server killed, its link down) while 30 clients keep "
                    f"opening connections to {VIP}:{AFFINITY_PORT}")
        probe = spawn_probe(lab, VIP, AFFINITY_PORT, clients, seconds=120, interval_ms=20, timeout_ms=80)
        probe.wait_all_served(timeout=20)
        t_crash = time.monotonic_ns()
        mine = clients_of(probe.records(), name, until=t_crash)
        self.p.say(f"   {name} serves {len(mine)} of the 30 clients (each client address has its bucket)")
        self.m.update(crashed=name, crash_ns=t_crash)
        faults.crash(lab, k)
        self.agents.pop(k, None)
        if mine:
            self.p.wait(lambda: recovery_time(probe.records(), mine, t_crash) is not None, 20,
                        f"{name}'s clients to be served again",
                        lambda: f"{name}'s clients: " + recovery_progress(probe.records(), mine, t_crash))
            time.sleep(1.0)     # a tail of attempts: "served for good" must mean something
        records = probe.stop()
        self.m["crash_probe"] = records
        # Its clients from the whole record, as the summary counts them (demo_report): the
        # records read at the crash could still lack the last attempts before it.
        mine = clients_of(records, name, until=t_crash)
        ns = recovery_time(records, mine, t_crash) if mine else None
        if mine and ns is None:
            self.p.say(f"   {name}'s clients: {recovery_progress(records, mine, t_crash)}; not all served again "
                       f"for good (see the summary)")
        elif ns is not None:
            self.p.say(f"   {name}'s clients: {recovery_progress(records, mine, t_crash)}, "
                       f"{ns / 1e6:.0f} ms after the crash as they saw it (heartbeat timeout {TIMEOUT_MS} ms)")
        survivors = {n: c for n, c in self.buckets().items() if n != name}
        self.p.say(f"   buckets held by the survivors: {counts_text(survivors)} ({name}'s filter is dead)")

        self.p.step(f"{name} comes back (link up, server and agent restarted) under {HELD} long-lived "
                    f"connections and 20 new connections a second")
        self.holder = spawn_holder(lab, VIP, ECHO_PORT, client_ips(40), HELD, seconds=300, period_ms=200,
                                   new_rate=20, new_port=NAME_PORT, new_kind="name")
        up = self.holder.wait_established(timeout=40)
        self.p.say(f"   {up.connections} long-lived connections up: {counts_text(up.nodes)}")
        t_rejoin = time.monotonic_ns()
        faults.link_up(lab, k)
        self.start_server(k)
        self.start_agents([k], also=lambda: holder_progress(self.holder.records(), t_rejoin))
        self.p.wait(lambda: self.lab.owned(k, FARM), 60, f"{name} to take buckets again",
                    lambda: f"buckets held: {counts_text(self.buckets())}")
        shares = self.converged(f"one owner per bucket with {name} back")
        t_back = time.monotonic_ns()
        self.p.say(f"   {name} serves again: buckets {counts_text(shares)}")
        end = time.monotonic() + 2
        self.p.wait(lambda: time.monotonic() > end, 10, "the rejoined window",
                    lambda: holder_progress(self.holder.records(), t_back))
        self.p.say("   " + holder_progress(self.holder.records(), t_back))

    def drain(self) -> None:
        name = f"n{DRAINED}"
        held = self.holder.records()
        on_it = sum(1 for r in held if r.get("type") == "served" and r["node"] == name)
        self.p.step(f"drain {name} (drain: true in the farm file, SIGHUP): it holds {on_it} of the "
                    f"{HELD} long-lived connections")
        t_drain = self.reconfigure((name,))
        self.m.update(drained=name, drain_ns=t_drain)
        self.p.wait(lambda: self.lab.owned(DRAINED, FARM) == set(), 30, f"{name} to give its buckets up",
                    lambda: f"buckets held: {counts_text(self.buckets())}")
        shares = self.converged(f"one owner per bucket without {name}")
        t_drained = time.monotonic_ns()
        self.m["drained_ns"] = t_drained
        self.p.say(f"   {name} takes no new connection: buckets {counts_text(shares)}")
        end = time.monotonic() + 3
        self.p.wait(lambda: time.monotonic() > end, 10, "the drained window",
                    lambda: holder_progress(self.holder.records(), t_drained, name))
        self.p.say("   " + holder_progress(self.holder.records(), t_drained, name))

        self.p.step(f"undrain {name}")
        t_undrain = self.reconfigure(())
        self.m["undrain_ns"] = t_undrain
        self.p.wait(lambda: self.lab.owned(DRAINED, FARM), 30, f"{name} to take buckets again",
                    lambda: f"buckets held: {counts_text(self.buckets())}")
        shares = self.converged(f"one owner per bucket with {name} back")
        t_back = time.monotonic_ns()
        end = time.monotonic() + 2
        self.p.wait(lambda: time.monotonic() > end, 10, "the undrained window",
                    lambda: holder_progress(self.holder.records(), t_back))
        self.p.say(f"   buckets {counts_text(shares)}; " + holder_progress(self.holder.records(), t_back))

    def stop_holder(self) -> None:
        if self.holder is not None:
            try:
                self.holder.stop()
            finally:
                self.m["held"] = self.holder.records()
                self.holder = None

    def run(self) -> None:
        for step in (self.setup, self.traffic, self.crash_and_rejoin, self.drain):
            try:
                step()
            except Exception as e:     # noqa: BLE001 - a failed step ends the run, its error is reported
                self.failures.append(f"{step.__name__.replace('_', ' ')}: {_first_line(e)} ({KEEP_LOGS_HINT})")
                self.p.say(f"   FAILED: {self.failures[-1]}")
                break
        try:
            self.stop_holder()
        except Exception as e:         # noqa: BLE001
            self.failures.append(f"stopping the holder: {_first_line(e)}")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:400] if text else ''}"


def leftovers(prefix: str) -> list[str]:
    """The lab's namespaces and pin directory still present after its teardown (should be none)."""
    try:
        left = sorted(n for n in os.listdir("/run/netns") if n.startswith(prefix))
    except FileNotFoundError:
        left = []
    pins = f"/sys/fs/bpf/vipfarm-lab/{prefix.rstrip('-')}"
    return left + ([pins] if os.path.exists(pins) else [])


def run_demo(json_out: bool = False) -> int:
    """Run the demo; progress on stdout (stderr with json_out), the JSON summary on stdout with
    json_out. Returns the exit code."""
    p = Progress(sys.stderr if json_out else sys.stdout)
    if os.geteuid() != 0:
        print("vipfarm lab demo: needs root (it creates network namespaces and attaches XDP programs); "
              "run it as root, e.g. `sudo make demo`", file=sys.stderr)
        return 1
    t0 = time.monotonic()

    def interrupted(signum, frame):
        raise Interrupted(signum)
    previous = {sig: signal.signal(sig, interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    run: DemoRun | None = None
    failures: list[str] = []
    rc_signal = None
    prefix = ""
    try:
        p.say("vipfarm lab demo: a 3-node farm in network namespaces with real agents and real traffic; "
              "a crash, a rejoin, a drain (about a minute; Ctrl-C at any time cleans up)")
        lab = Lab(nodes=3, clients=60)
        prefix = lab.prefix
        with lab:
            run = DemoRun(lab, p)
            run.run()
            p.step("tearing the lab down")
    except Interrupted as e:
        rc_signal = e.signum
        failures.append(f"interrupted by {e}: the lab was torn down")
    except Exception as e:             # noqa: BLE001 - the lab could not be built
        failures.append(f"lab: {_first_line(e)}")
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
    left = leftovers(prefix) if prefix else []
    if left:
        failures.append(f"left behind after the teardown: {', '.join(left)}")
    elif rc_signal is None and prefix:
        p.say("   namespaces, processes and pinned maps removed: nothing left behind")
    m = dict(run.m) if run else {}
    summary = summarize(Measurements(weights=WEIGHTS, failures=(run.failures if run else []) + failures,
                                     duration_s=time.monotonic() - t0, interval_ms=INTERVAL_MS,
                                     timeout_ms=TIMEOUT_MS, lab=prefix or None, **m))
    p.say()
    if summary.ok:
        p.say(f"OK: every node served ({counts_text(summary.distribution)}), failover {summary.failover_ms:.0f} ms "
              f"as the clients saw it, {summary.connections_reset} connections reset by the drain, "
              f"{summary.rejoin_reset} by the rejoin; {summary.duration_s:.0f} s")
    else:
        p.say("FAILED:\n" + "\n".join(f"  - {e}" for e in summary.errors))
    if json_out:
        print(json.dumps(summary.as_json()), flush=True)
    if rc_signal is not None:
        return 128 + rc_signal
    return 0 if summary.ok else 1
