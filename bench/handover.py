#!/usr/bin/env python3
"""Connections broken per planned move, handover on against handover off (issue 9, "Benchmark").

    sudo .venv/bin/python bench/handover.py [--trials 1] [--json] [--sizes 200,2000] [--moves weight,drain]

Everything runs in one lab of network namespaces this script creates and deletes
(nodeagent/lab; DESIGN.md "Lab network rules"): 3 node namespaces, each with a real
standalone agent and an echo server (`serve --echo 9100 --tcp 80`), and a client namespace
with --clients addresses. One farm `hb` (203.0.113.71; TCP 9100 and 80, ClientIPPort) with
heartbeats at 200/30000 ms, as tests/lab/test_handover.py has them: only planned moves here.
The agents start once; every change is the farm file rewritten and SIGHUP to every agent.

One case = a move x a number of long-lived connections x handover on or off:
  * the farm is even (n1..n3 weight 1, nobody drained) with spec.handover.drainTimeoutSeconds
    300 (on) or 0 (off: a plain rehash, the moved flows are cut at once), the filters hold the
    even shares and no node drains any bucket;
  * a SYN-ACK watch starts in the client namespace, then a holder (nodeagent/lab/holder.py)
    opens the long-lived connections (each echoing a line every --period-ms; 500 ms from
    1,000 connections up, see holder.py) plus --new-rate new connections a second to port 80;
  * once every held connection is served, the move: `weight` (n1 1 -> 3) or `drain`
    (n3 drain: true);
  * time to the new balance: from the SIGHUP until the filters (pinned maps) partition the
    buckets by the new shares (each within 3 buckets of its part, a drained node none);
  * --after-s more seconds of traffic, then the holder and the watch stop;
  * recorded, as the clients saw it: held connections reset, stalled (no echo for --stall-ms),
    moved (echoes from two nodes), new connections failed, SYN-ACK duplicates; and from the
    agents: the filter counters handover_kept / handover_unknown_dropped (deltas summed over
    the nodes), the flows the agents logged as cut (event=handover_cut flows_cut=; the census
    counts TIME_WAIT sockets too, so this is not connections broken) and the agents' CPU time;
    and the holder's longest late 1-s tick (the client itself off-CPU: a stall of every node's
    connections at once is that, not the move).
  * the farm is restored (even, undrained) before the next case.

Printed: one progress line per case (event=handover_case ...), then a table per move and size
with the figure (handover on) beside its baseline (handover off) from the same run; with
--trials 2 or more, min/max over the trials. --json prints the cases as one JSON document
instead of the table. The load average is printed before and after: a 2,000-connection case
on a small shared machine may stall connections from CPU alone, which the handover-off row
of the same run shows too. Exits 0 whatever the verdict; bounded in time (every wait has a
timeout).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nodeagent.lab.holder import spawn_holder  # noqa: E402
from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml  # noqa: E402
from nodeagent.lab.prober import wait_for  # noqa: E402
from nodeagent.lab.synack_watch import spawn_watch  # noqa: E402
from nodeagent.pinned_maps import read_counters, read_moving  # noqa: E402

FARM, VIP, ECHO, NAME = "hb", "203.0.113.71", 9100, 80
BUCKETS = 1024
NODES = (1, 2, 3)
RULES = (f'    - {{protocol: TCP, ports: "{ECHO}", affinity: ClientIPPort}}\n'
         f'    - {{protocol: TCP, ports: "{NAME}", affinity: ClientIPPort}}\n')
EVEN = {"n1": 1, "n2": 1, "n3": 1}
MOVES = {"weight": ({"n1": 3, "n2": 1, "n3": 1}, ()),       # the move: (weights, drained)
         "drain": (dict(EVEN), ("n3",))}
MOVE_TEXT = {"weight": "weight change n1 1->3", "drain": "drain n3"}
ON_TIMEOUT = 300
CUT = re.compile(r"event=handover_cut node=(\S+) farm=" + FARM + r" buckets=(\d+) flows_cut=(\d+)")


@dataclass
class Case:
    trial: int
    move: str
    connections: int
    handover: bool
    period_ms: float
    held: int = 0                  # long-lived connections established
    served: int = 0
    reset: int = 0
    stalled: int = 0
    moved: int = 0                 # echoes from two nodes
    broken: int = 0                # reset or stalled or moved (one connection counted once)
    open_failed: int = 0
    new_total: int = 0
    new_failed: int = 0
    new_slow: int = 0                                # served, but later than 800 ms (a SYN retransmitted)
    slow_at: list = field(default_factory=list)      # each slow one: "<start ms from the move>:<node>"
    new_after: dict = field(default_factory=dict)    # node -> new connections served, started after the balance
    max_gap_ms: float = 0.0
    balance_ms: float | None = None                  # SIGHUP -> the filters hold the new shares
    moved_buckets: int = 0                           # buckets whose owner changed
    duplicates: int = 0                              # handshakes answered by two nodes
    kernel_drops: int = 0                            # the SYN-ACK watch's capture drops (must be 0)
    handover_kept: int = 0
    handover_unknown_dropped: int = 0
    flows_cut: int = 0                               # as the agents logged it (event=handover_cut)
    agent_cpu_s: float = 0.0                         # CPU time of the 3 agents during the case
    holder_late_ms: float = 0.0                      # the holder's longest late tick: it was off-CPU that long
    load_before: float = 0.0
    load_after: float = 0.0
    problems: list = field(default_factory=list)     # the holder's first problems, as text

    @property
    def name(self) -> str:
        return f"{self.move}/{self.connections}/{'on' if self.handover else 'off'}"


class BenchFarm:
    """The farm file and the agents: every change is the file rewritten and SIGHUP to all."""

    def __init__(self, lab: Lab):
        self.lab = lab
        self.weights = dict(EVEN)
        self.drained: tuple[str, ...] = ()
        self.drain_timeout = ON_TIMEOUT
        self.file = lab.write_farm(FARM, self.text())
        self.agents: dict[int, subprocess.Popen] = {}
        self.log_offsets = {k: 0 for k in NODES}

    def text(self) -> str:
        return farm_yaml(FARM, [VIP], self.weights, rules=RULES, key_file=self.lab.key_file, interval_ms=200,
                         timeout_ms=30000, drained=self.drained,
                         extra=f"  handover: {{drainTimeoutSeconds: {self.drain_timeout}}}\n")

    def reconfigure(self, weights: dict[str, int], drained: tuple[str, ...], drain_timeout: int) -> int:
        """Rewrite the farm file and SIGHUP every agent; returns the time of the signals."""
        self.weights, self.drained, self.drain_timeout = dict(weights), tuple(drained), drain_timeout
        with open(self.file, "w") as f:
            f.write(self.text())
        t = time.monotonic_ns()
        for k in NODES:
            self.agents[k].send_signal(signal.SIGHUP)
        return t

    def want(self) -> dict[int, float]:
        live = {n: w for n, w in self.weights.items() if n not in self.drained}
        return {int(n[1:]): BUCKETS * live.get(n, 0) / sum(live.values()) for n in self.weights}

    def shares_now(self) -> dict[int, set[int]] | None:
        """The nodes' shares if the filters partition the buckets by the current weights."""
        want = self.want()
        owned = {k: self.lab.owned(k, FARM) for k in NODES}
        if any(o is None for o in owned.values()):
            return None
        if sum(map(len, owned.values())) != BUCKETS or set().union(*owned.values()) != set(range(BUCKETS)):
            return None
        if all(abs(len(owned[k]) - want[k]) <= 3 for k in NODES):
            return owned
        return None

    def wait_shares(self, timeout: float = 60) -> tuple[dict[int, set[int]], int]:
        """Until the filters hold the shares; returns them and the time they were first seen."""
        def seen():
            s = self.shares_now()
            return (s, time.monotonic_ns()) if s is not None else None
        return wait_for(seen, timeout, f"farm {FARM}: the filters to hold the shares by weights {self.weights} "
                                       f"drained {list(self.drained)} (agent logs in {self.lab.workdir})", step=0.02)

    def draining(self) -> dict[int, int]:
        """Per node, the buckets it hands over: moving but no longer owned."""
        out = {}
        for k in NODES:
            slot = self.slot(k)
            pin = os.path.join(self.lab.pin_root, f"n{k}", "eth0")
            out[k] = len(read_moving(pin, slot) - (self.lab.owned(k, FARM) or set()))
        return out

    def wait_no_drain(self, timeout: float = 90) -> None:
        wait_for(lambda: not any(self.draining().values()), timeout,
                 f"farm {FARM}: no node draining any bucket (still draining: {self.draining()})", step=0.1)

    def slot(self, k: int) -> int:
        with open(os.path.join(self.lab.state_root, f"n{k}", "eth0.json")) as f:
            return json.load(f)["slots"][FARM]

    def counters(self) -> dict[str, int]:
        total = {"handover_kept": 0, "handover_unknown_dropped": 0}
        for k in NODES:
            c = read_counters(os.path.join(self.lab.pin_root, f"n{k}", "eth0"), self.slot(k))
            for name in total:
                total[name] += c[name]
        return total

    def new_log_lines(self) -> list[str]:
        """The agents' log lines since the last call."""
        lines = []
        for k in NODES:
            text = self.lab.agent_log(k)
            lines += text[self.log_offsets[k]:].splitlines()
            self.log_offsets[k] = len(text)
        return lines

    def agent_cpu_s(self) -> float:
        """The agents' CPU time so far (user + system, every thread), in seconds."""
        total = 0
        for proc in self.agents.values():
            try:
                with open(f"/proc/{proc.pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += int(fields[11]) + int(fields[12])        # utime, stime (fields 14, 15)
            except (OSError, IndexError, ValueError):
                continue
        return total / os.sysconf("SC_CLK_TCK")

    def check_agents(self) -> None:
        for k, proc in self.agents.items():
            if proc.poll() is not None:
                raise RuntimeError(f"agent n{k} exited ({proc.returncode}):\n{self.lab.agent_log(k)[-3000:]}")


def run_case(bf: BenchFarm, case: Case, a) -> Case:
    lab = bf.lab
    timeout = ON_TIMEOUT if case.handover else 0
    if (bf.weights, bf.drained, bf.drain_timeout) != (EVEN, (), timeout):
        bf.reconfigure(EVEN, (), timeout)
    before, _ = bf.wait_shares()
    bf.wait_no_drain()
    bf.new_log_lines()
    counters0 = bf.counters()
    cpu0 = bf.agent_cpu_s()
    case.load_before = os.getloadavg()[0]
    seconds = 120 + case.connections / a.open_rate
    watch = spawn_watch(lab, [VIP], seconds=seconds)
    watch.wait_started()
    holder = spawn_holder(lab, VIP, ECHO, client_ips(a.clients), case.connections, seconds=seconds,
                          open_rate=a.open_rate, period_ms=case.period_ms, stall_ms=a.stall_ms,
                          new_rate=a.new_rate, new_port=NAME, new_kind="name")
    try:
        holder.wait_established(timeout=30 + case.connections / a.open_rate)
        time.sleep(a.before_s)              # steady traffic in the record before the move
        weights, drained = MOVES[case.move]
        t_move = bf.reconfigure(weights, drained, timeout)
        after, t_balance = bf.wait_shares()
        case.balance_ms = (t_balance - t_move) / 1e6
        case.moved_buckets = sum(len(after[k] - before[k]) for k in NODES)
        time.sleep(a.after_s)               # the measure's window after the balance
        holder.stop(timeout=30)
    finally:
        if holder.proc.poll() is None:
            holder.proc.kill()
        end = watch.stop()
    case.load_after = os.getloadavg()[0]
    s = holder.summary(t_balance)
    counters1 = bf.counters()
    case.agent_cpu_s = bf.agent_cpu_s() - cpu0
    ticks = [r["t_ns"] for r in holder.records() if r.get("type") == "tick"]
    case.holder_late_ms = max([0.0] + [(b - a) / 1e6 - 1000 for a, b in zip(ticks, ticks[1:])])
    case.held, case.served, case.reset, case.stalled = s.connections, s.served, s.reset, s.stalled
    case.moved, case.open_failed = s.node_changes, s.open_failed
    changed = {p.id for p in s.problems if p.kind == "node_change"}
    case.broken = len(s.reset_ids | s.stalled_ids | changed)
    case.new_total, case.new_failed, case.new_slow = s.new_total, s.failed_new, s.slow_new
    case.new_after = dict(sorted(s.new_nodes_after.items()))
    case.slow_at = [f"{(r['t_ns'] - t_move) / 1e6:+.0f}:{r.get('node')}" for r in holder.records()
                    if r.get("type") == "new" and r.get("slow")]
    case.max_gap_ms = s.max_gap_ns / 1e6
    case.duplicates, case.kernel_drops = end.get("duplicates", 0), end.get("kernel_drops", 0)
    case.handover_kept = counters1["handover_kept"] - counters0["handover_kept"]
    case.handover_unknown_dropped = counters1["handover_unknown_dropped"] - counters0["handover_unknown_dropped"]
    lines = bf.new_log_lines()
    case.flows_cut = sum(int(m.group(3)) for m in map(CUT.search, lines) if m)
    case.problems = [str(p) for p in s.problems[:a.problems]]
    if case.handover and (case.reset or case.stalled or case.moved or case.new_failed or case.duplicates):
        ho = [ln for ln in lines if "event=handover_" in ln or "buckets_programmed" in ln]
        case.problems.append("agent log (handover_*, buckets_programmed) in this case:\n    "
                             + "\n    ".join(ho[-40:]))
    bf.check_agents()
    return case


def progress(c: Case) -> str:
    return (f"event=handover_case trial={c.trial} move={c.move} connections={c.connections} "
            f"handover={'on' if c.handover else 'off'} held={c.held} served={c.served} reset={c.reset} "
            f"stalled={c.stalled} moved={c.moved} broken={c.broken} new={c.new_total} new_failed={c.new_failed} "
            f"new_slow={c.new_slow}{'@' + ','.join(c.slow_at) if c.slow_at else ''} "
            f"new_after_balance={','.join(f'{n}:{v}' for n, v in c.new_after.items()) or '-'} "
            f"balance_ms={'never' if c.balance_ms is None else f'{c.balance_ms:.0f}'} "
            f"moved_buckets={c.moved_buckets} duplicate_synacks={c.duplicates} kernel_drops={c.kernel_drops} "
            f"handover_kept={c.handover_kept} unknown_dropped={c.handover_unknown_dropped} "
            f"flows_cut={c.flows_cut} max_gap_ms={c.max_gap_ms:.0f} holder_late_ms={c.holder_late_ms:.0f} "
            f"agent_cpu_s={c.agent_cpu_s:.1f} "
            f"load={c.load_before:.2f}->{c.load_after:.2f}")


def span(values: list, fmt: str = "") -> str:
    """One value, or min–max over the trials (`fmt`: a format spec for the numbers)."""
    vals = [v for v in values if v is not None]
    if not vals:
        return "never"
    fmt = fmt or (".0f" if isinstance(vals[0], float) else "d")
    lo, hi = format(min(vals), fmt), format(max(vals), fmt)
    text = lo if lo == hi else f"{lo}–{hi}"
    return text + (" (+never)" if len(vals) < len(values) else "")


def table(cases: list[Case], trials: int) -> str:
    cols = [("held", "held"), ("reset", "reset"), ("stalled", "stalled"), ("moved", "moved"),
            ("broken", "broken"), ("new_failed", "new failed"), ("new_slow", "new slow"),
            ("duplicates", "dup SYN-ACK"),
            ("balance_ms", "balance ms"), ("flows_cut", "cut (logged)"), ("max_gap_ms", "max gap ms"),
            ("holder_late_ms", "holder late ms"), ("agent_cpu_s", "agents CPU s")]
    fmts = {"agent_cpu_s": ".1f"}
    head = "| move | held connections | handover | " + " | ".join(t for _, t in cols) + " |"
    out = [head, "|" + "---|" * (3 + len(cols))]
    keys = []
    for c in cases:
        if (c.move, c.connections) not in keys:
            keys.append((c.move, c.connections))
    for move, n in keys:
        for on in (True, False):
            group = [c for c in cases if (c.move, c.connections, c.handover) == (move, n, on)]
            if not group:
                continue
            label = "**on** (300 s)" if on else "off (plain rehash)"
            out.append(f"| {MOVE_TEXT[move]} | {n} | {label} | "
                       + " | ".join(span([getattr(c, k) for c in group], fmts.get(k, "")) for k, _ in cols) + " |")
    note = f"{trials} trial(s)" + ("; ranges are min–max over the trials" if trials > 1 else "")
    return "\n".join(out) + f"\n({note}; broken = reset, stalled or moved, each connection once)"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=1)
    p.add_argument("--json", action="store_true", help="print the cases as JSON instead of the table")
    p.add_argument("--sizes", default="200,2000", help="numbers of long-lived connections, comma-separated")
    p.add_argument("--moves", default="weight,drain", help="of weight,drain")
    p.add_argument("--clients", type=int, default=60, help="client addresses (1..100)")
    p.add_argument("--open-rate", type=float, default=400.0, help="long-lived connections opened per second")
    p.add_argument("--period-ms", type=float, default=0.0,
                   help="each held connection's echo period (default 100 ms, 500 ms from 1,000 connections)")
    p.add_argument("--stall-ms", type=float, default=1000.0, help="no echo for longer is a stall")
    p.add_argument("--new-rate", type=float, default=50.0, help="new connections per second during the case")
    p.add_argument("--before-s", type=float, default=2.0, help="traffic before the move")
    p.add_argument("--after-s", type=float, default=5.0, help="traffic after the new balance")
    p.add_argument("--problems", type=int, default=8, help="the holder's problems kept per case")
    p.add_argument("--keep-logs", metavar="DIR", help="copy the agents' logs there before the lab is deleted")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/handover.py needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    if not 1 <= a.trials <= 20:
        p.error(f"--trials {a.trials}: give 1..20")
    try:
        sizes = [int(x) for x in a.sizes.split(",") if x]
    except ValueError:
        p.error(f"--sizes {a.sizes!r}: give numbers of connections, e.g. 200,2000")
    if not sizes or not all(1 <= n <= 5000 for n in sizes):
        p.error(f"--sizes {a.sizes!r}: each must be 1..5000")
    moves = [m for m in a.moves.split(",") if m]
    if not moves or any(m not in MOVES for m in moves):
        p.error(f"--moves {a.moves!r}: give weight, drain or both (weight,drain)")
    say = (lambda *x: print(*x, file=sys.stderr, flush=True)) if a.json else (lambda *x: print(*x, flush=True))
    load0 = os.getloadavg()
    say(f"handover benchmark: 3 nodes, moves {moves}, {sizes} long-lived connections, {a.new_rate:g} new/s, "
        f"handover on (drainTimeoutSeconds {ON_TIMEOUT}) and off (0), {a.trials} trial(s); "
        f"load average before {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f} on {os.cpu_count()} CPUs")
    cases: list[Case] = []
    with Lab(nodes=3, clients=a.clients) as lab:
        bf = BenchFarm(lab)
        for k in NODES:
            log = f"echo-n{k}.log"
            lab.spawn(lab.node(k), [sys.executable, "-m", "nodeagent.lab.traffic", "serve", "--name", f"n{k}",
                                    "--echo", str(ECHO), "--tcp", str(NAME)], log_name=log)
            wait_for(lambda log=log: "serving" in lab.log(log), 10, f"n{k}'s echo server ({lab.workdir}/{log})")
            bf.agents[k] = lab.start_agent(k, [bf.file])
        for k in NODES:
            lab.wait_agent_ready(k, bf.agents[k], timeout=240)
        bf.wait_shares(timeout=90)
        say(f"agents ready; lab {lab.prefix.rstrip('-')}")
        try:
            for trial in range(1, a.trials + 1):
                for move in moves:
                    for n in sizes:
                        for on in (True, False):
                            period = a.period_ms or (500.0 if n >= 1000 else 100.0)
                            c = run_case(bf, Case(trial, move, n, on, period), a)
                            cases.append(c)
                            say(progress(c))
                            for line in c.problems:
                                say(f"  {line}")
            bf.reconfigure(EVEN, (), ON_TIMEOUT)
            bf.wait_shares()
        finally:
            if a.keep_logs:
                os.makedirs(a.keep_logs, exist_ok=True)
                for k in NODES:
                    with open(os.path.join(a.keep_logs, f"agent-n{k}.log"), "w") as f:
                        f.write(lab.agent_log(k))
                say(f"agent logs copied to {a.keep_logs}")
    load1 = os.getloadavg()
    broken_on = sum(c.broken + c.new_failed + c.duplicates for c in cases if c.handover)
    broken_off = sum(c.broken for c in cases if not c.handover)
    verdict = (f"verdict: {'PASS' if broken_on == 0 else 'MISS'} (with handover: {broken_on} held connections "
               f"broken, new connections failed or handshakes answered twice; the plain rehash broke {broken_off})")
    if a.json:
        print(json.dumps({"cases": [dict(asdict(c), name=c.name) for c in cases], "trials": a.trials,
                          "load_before": load0, "load_after": load1, "pass": broken_on == 0}, indent=1))
    else:
        print()
        print(table(cases, a.trials))
        print(f"load average after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f}")
        print(verdict)
    return 0


if __name__ == "__main__":
    sys.exit(main())
