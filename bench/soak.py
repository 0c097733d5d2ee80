#!/usr/bin/env python3
"""False failovers (issue 8, "Benchmarks"): a soak with both CPUs saturated by a competing load
and steady traffic, at the heartbeat defaults. Targets: 0 false failovers, 0 failed connections;
the agents' worst heartbeat send delay is reported.

    sudo .venv/bin/python bench/soak.py [--minutes 10] [--interval-ms 100 --timeout-ms 300]

Everything runs in a lab of network namespaces this script creates and deletes (nodeagent/lab;
DESIGN.md "Lab network rules"): 3 node namespaces with real standalone agents and an echo server
each (farm `fo`, the same farm file as bench/failover.py), a client namespace with --clients
addresses. Nothing is faulted: every view change or bucket move is a false failover.

The run, after the farm converged and the agents' logs went quiet:
  1. baseline (--baseline-s, default 60 s): steady traffic, no competing load;
  2. loaded (--minutes): the same traffic, plus --burners python busy loops (default
     2 x os.cpu_count()) and one allocation/GC-heavy loop, all at normal priority in the lab's
     client namespace (so the lab kills them with everything else).
Throughout, a prober (nodeagent/lab/prober.py) keeps one TCP attempt in flight per client,
every --probe-interval-ms, each with a generous --probe-timeout-ms (1.5 s: a slow CPU is not a
failed connection, a reset, a refusal or no answer at all is; and a SYN the filter dropped,
resent by the kernel after 1 s, shows as an attempt served after >= 1 s, counted apart);
an ownership watcher (ownership_watch.py) reads
every node's tables and leases every ~2 ms; a capture in the switch namespace timestamps every
heartbeat on the wire (kernel receive time on the sender's bridge port).

Reported per phase: attempts and failures by outcome; view changes (`event=view_changed`) and
bucket moves (`event=buckets_programmed`) in the agents' logs, each with the log lines before
it; the agents' worst heartbeat send delay (`event=heartbeat_counters ... worst_send_delay_us`,
logged every 30 s, a maximum since the agent started: a phase's figure is the value logged at
its end when it rose during the phase, and "<= previous" when it did not); the longest gap
between two heartbeats of one sender to one peer on the wire (what a peer's timeoutMs is
measured against); the filters' lease counters (lease_expired: SYNs dropped because the lease
had passed); and the watcher's longest double and zero ownership, with when each node's buckets
had no acceptor; and the hypervisor's steal time (/proc/stat) in the phase. Progress every 30 s.
PASS needs all of these at 0 (steal aside).
Bounded (--minutes 1..60, every wait has a timeout); exits 0 whatever the verdict.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import re
import shutil
import socket
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from failover import FARM, PORT, VIP, farm_file  # noqa: E402  (bench/ is this script's folder)

from nodeagent.lab.namespaces import Lab, client_ips  # noqa: E402
from nodeagent.lab.ownership_watch import OwnershipWatcher  # noqa: E402
from nodeagent.lab.prober import Attempt, spawn_probe  # noqa: E402
from vipfarm.spec import (DEFAULT_HEARTBEAT_INTERVAL_MS, DEFAULT_HEARTBEAT_PORT,  # noqa: E402
                          DEFAULT_HEARTBEAT_TIMEOUT_MS)

NODES = (1, 2, 3)
PROGRESS_S = 30
SEGMENT_S = 300            # a prober runs at most 600 s: the soak chains segments of this length
COUNTERS_WAIT_S = 45
RETRANSMIT_NS = 1_000_000_000   # Linux resends an unanswered SYN after 1 s (the initial RTO)       # the agents log heartbeat_counters every 30 s
BUSY = "while True: pass"
GC_HEAVY = ("import gc\n"
            "while True:\n"
            "    junk = [{'k': [i, str(i)]} for i in range(100000)]\n"
            "    del junk\n"
            "    gc.collect()\n")
EVENT = re.compile(r"event=(\w+)")
WORST = re.compile(r"worst_send_delay_us=(\d+)")


# -- reading files as they grow ------------------------------------------------------------------
class Tail:
    """The complete lines appended to a file since the last read (a torn last line waits)."""

    def __init__(self, path: str, offset: int = 0):
        self.path, self.offset = path, offset

    def read(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        end = data.rfind(b"\n") + 1
        self.offset += end
        return data[:end].decode(errors="replace").splitlines()


@dataclass
class ProbeTally:
    """Attempts of every prober segment, counted as they are written."""
    attempts: list[Attempt] = field(default_factory=list)
    tails: list[Tail] = field(default_factory=list)

    def follow(self, path: str) -> None:
        self.tails.append(Tail(path))

    def poll(self) -> None:
        import json
        for t in self.tails:
            for line in t.read():
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if "client" in d:
                    self.attempts.append(Attempt(d["t_ns"], d["client"], d["outcome"], d.get("node"),
                                                 d.get("end_ns")))

    def between(self, since: int, until: int) -> list[Attempt]:
        return [a for a in self.attempts if since <= a.t_ns < until]


# -- heartbeats on the wire ----------------------------------------------------------------------
CLONE_NEWNET = 0x40000000
SO_TIMESTAMPNS = 35
PACKET_OUTGOING = 4
ETH_P_ALL = 0x0003
SO_ATTACH_FILTER = 26


def heartbeat_filter(port: int) -> bytes:
    """A struct sock_fprog (classic BPF, packet at the IP header) accepting IPv4 UDP to `port`.
    The returned bytes hold a pointer into a buffer kept alive on the function object."""
    insns = [(0x30, 0, 0, 9),            # ldb [9]            (IP protocol)
             (0x15, 0, 4, 17),           # jeq #17 ? next : drop
             (0xb1, 0, 0, 0),            # ldxb 4*([0]&0xf)   (IP header length)
             (0x48, 0, 0, 2),            # ldh [x+2]          (UDP destination port)
             (0x15, 0, 1, port),         # jeq #port ? accept : drop
             (0x06, 0, 0, 0xffff),       # accept
             (0x06, 0, 0, 0)]            # drop
    buf = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *i) for i in insns))
    heartbeat_filter.keep = getattr(heartbeat_filter, "keep", []) + [buf]
    return struct.pack("HL", len(insns), ctypes.addressof(buf))


def socket_in_netns(ns: str, *args) -> socket.socket:
    """A socket created inside network namespace `ns` (the calling thread switches there and back)."""
    libc = ctypes.CDLL(None, use_errno=True)
    here = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    there = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if libc.setns(there, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {ns}")
        try:
            return socket.socket(*args)
        finally:
            if libc.setns(here, CLONE_NEWNET) != 0:      # never stay in the lab's namespace
                print(f"bench/soak.py: could not return to the original network namespace "
                      f"(errno {ctypes.get_errno()}); exiting rather than run in {ns}", file=sys.stderr)
                os._exit(70)
    finally:
        os.close(here)
        os.close(there)


class WireGaps:
    """Timestamps every heartbeat (UDP to the heartbeat port) that a node's bridge port receives,
    and records per (sender, peer) the gaps between consecutive ones, as (end time, gap)."""

    def __init__(self, lab: Lab, port: int):
        self.port = port
        # ETH_P_ALL: a bridge port hands its frames to the bridge before protocol-specific packet
        # sockets see them; the classic BPF filter keeps only UDP to the heartbeat port.
        self.sock = socket_in_netns(lab.switch, socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_ALL))
        self._prog = heartbeat_filter(port)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, self._prog)
        self.sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        self.sock.settimeout(0.2)
        self.ports = {f"n{k}" for k in range(1, lab.nodes + 1)}
        self.last: dict[tuple[str, str], int] = {}
        self.gaps: dict[tuple[str, str], list[tuple[int, int]]] = {}
        self.packets = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="soak-wire", daemon=True)

    def start(self) -> "WireGaps":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                data, anc, _, addr = self.sock.recvmsg(256, 64)
            except socket.timeout:
                continue
            except OSError:
                return
            ifname, proto, pkttype = addr[0], addr[1], addr[2]
            if proto != 0x0800 or pkttype == PACKET_OUTGOING or ifname not in self.ports or len(data) < 28:
                continue
            ihl = (data[0] & 0x0f) * 4
            if data[9] != socket.IPPROTO_UDP or len(data) < ihl + 8:
                continue
            if struct.unpack_from("!H", data, ihl + 2)[0] != self.port:
                continue
            ts = next((struct.unpack("qq", d[:16]) for lvl, typ, d in anc
                       if lvl == socket.SOL_SOCKET and typ == SO_TIMESTAMPNS), None)
            t = ts[0] * 1_000_000_000 + ts[1] if ts else time.time_ns()
            pair = (ifname, "n" + socket.inet_ntoa(data[16:20]).rsplit(".", 1)[1])
            prev = self.last.get(pair)
            self.last[pair] = t
            self.packets += 1
            if prev is not None:
                self.gaps.setdefault(pair, []).append((t, t - prev))

    def worst(self, since_wall_ns: int, until_wall_ns: int) -> dict[str, tuple[float, str, int]]:
        """sender -> (longest gap in ms to any peer, which peer, when it ended in wall ns), for gaps
        ending in the window."""
        out: dict[str, tuple[float, str, int]] = {}
        for (src, dst), gaps in list(self.gaps.items()):
            g = max(((gap, t) for t, gap in gaps if since_wall_ns <= t < until_wall_ns), default=None)
            if g is not None and (src not in out or g[0] / 1e6 > out[src][0]):
                out[src] = (g[0] / 1e6, dst, g[1])
        return out

    def over(self, ms: float, since_wall_ns: int, until_wall_ns: int) -> int:
        """How many gaps (any sender, any peer) in the window were longer than `ms`."""
        return sum(1 for gaps in list(self.gaps.values()) for t, gap in gaps
                   if since_wall_ns <= t < until_wall_ns and gap > ms * 1e6)


def wall(ns: int) -> str:
    return time.strftime("%H:%M:%S", time.gmtime(ns / 1e9)) + f".{ns // 1_000_000 % 1000:03d}"


# -- the agents' logs -----------------------------------------------------------------------------
def log_path(lab: Lab, k: int) -> str:
    return os.path.join(lab.workdir, f"agent-n{k}.log")


def log_size(lab: Lab, k: int) -> int:
    try:
        return os.path.getsize(log_path(lab, k))
    except FileNotFoundError:
        return 0


def wait_quiet(lab: Lab, quiet_s: float = 3.0, timeout: float = 60.0) -> dict[int, int]:
    """Wait until no agent logged a view change or a programming for quiet_s; returns each log's size
    then (the soak's start: any such line after it is a false failover)."""
    tails = {k: Tail(log_path(lab, k)) for k in NODES}
    last = time.monotonic()
    deadline = last + timeout
    while time.monotonic() < deadline:
        for t in tails.values():
            if any(EVENT.search(x) and EVENT.search(x).group(1) in ("view_changed", "buckets_programmed")
                   for x in t.read()):
                last = time.monotonic()
        if time.monotonic() - last >= quiet_s:
            return {k: t.offset for k, t in tails.items()}
        time.sleep(0.2)
    raise TimeoutError(f"the agents kept changing views or programming for {timeout}s after converging; "
                       f"logs in {lab.workdir}")


def wait_counters_after(lab: Lab, offsets: dict[int, int], timeout: float = COUNTERS_WAIT_S) -> dict[int, int]:
    """Wait until every agent logged a heartbeat_counters line past its offset (the 30 s cadence);
    returns each log's size just after that line."""
    done: dict[int, int] = {}
    tails = {k: Tail(log_path(lab, k), offsets[k]) for k in NODES}
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and len(done) < len(NODES):
        for k, t in tails.items():
            if k not in done and any("event=heartbeat_counters" in x for x in t.read()):
                done[k] = t.offset
        time.sleep(0.2)
    missing = [f"n{k}" for k in NODES if k not in done]
    if missing:
        print(f"warning: no heartbeat_counters line from {','.join(missing)} within {timeout}s; "
              f"their send-delay figure for this phase may be incomplete", flush=True)
        for k in missing:
            done[k] = log_size(lab, k)
    return done


def log_lines(lab: Lab, k: int, start: int, end: int | None = None) -> list[str]:
    with open(log_path(lab, k), "rb") as f:
        f.seek(start)
        data = f.read() if end is None else f.read(max(0, end - start))
    return data.decode(errors="replace").splitlines()


def filter_counters(lines: list[str]) -> dict[str, int]:
    """The farm's filter counters in the last `event=counters` line of these lines (totals since
    the agent started; {} if none)."""
    last = [x for x in lines if "event=counters" in x and f"farm={FARM} " in x]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", last[-1])} if last else {}


def worst_logged(lines: list[str]) -> int | None:
    """The last worst_send_delay_us in these lines (a running maximum), None if none."""
    vals = [int(m.group(1)) for x in lines if "event=heartbeat_counters" in x for m in [WORST.search(x)] if m]
    return vals[-1] if vals else None


def false_failovers(lab: Lab, k: int, start: int, end: int | None) -> list[tuple[str, list[str]]]:
    """(line, the 4 lines before it) for every view change or programming in [start, end)."""
    lines = log_lines(lab, k, 0, end)
    before = len(log_lines(lab, k, 0, start))
    out = []
    for i in range(before, len(lines)):
        m = EVENT.search(lines[i])
        if m and m.group(1) in ("view_changed", "buckets_programmed"):
            out.append((lines[i], lines[max(0, i - 4):i]))
    return out


class AgentExited(RuntimeError):
    pass


def steal_ms() -> int:
    """CPU time the hypervisor gave to others while this VM wanted it (/proc/stat, all CPUs), in ms."""
    with open("/proc/stat") as f:
        fields = f.readline().split()
    return int(fields[8]) * 1000 // os.sysconf("SC_CLK_TCK") if len(fields) > 8 else 0


# -- the run ----------------------------------------------------------------------------------------
@dataclass
class Phase:
    name: str
    t0: int            # monotonic ns
    t1: int
    w0: int            # wall ns (the capture's clock)
    w1: int
    log0: dict[int, int]
    log1: dict[int, int]
    steal_ms: int = 0


def start_load(lab: Lab, burners: int, gc_heavy: bool) -> list:
    procs = [lab.spawn(lab.client, [sys.executable, "-c", BUSY], log_name=f"burner{i}.log") for i in range(burners)]
    if gc_heavy:
        procs.append(lab.spawn(lab.client, [sys.executable, "-c", GC_HEAVY], log_name="burner-gc.log"))
    return procs


def stop_load(procs: list) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
    for p in procs:
        p.wait(timeout=10)


def run_phase(name: str, seconds: float, lab: Lab, a, tally: ProbeTally, probes: list, clients: list[str],
              agents: dict, t_run: float) -> None:
    """Keep traffic going for `seconds`, chaining prober segments and printing progress."""
    end = time.monotonic() + seconds
    next_progress = time.monotonic() + PROGRESS_S
    while True:
        now = time.monotonic()
        if now >= end:
            return
        if now - probes[-1][1] >= SEGMENT_S:            # the next segment first, then stop the last
            p = spawn_probe(lab, VIP, PORT, clients, seconds=SEGMENT_S + 120, interval_ms=a.probe_interval_ms,
                            timeout_ms=a.probe_timeout_ms)
            tally.follow(p.path)
            old = probes[-1][0]
            probes.append((p, time.monotonic()))
            old.stop(timeout=30)
        for k, proc in agents.items():
            if proc.poll() is not None:
                raise AgentExited(f"agent n{k} exited ({proc.returncode}) during the {name} phase:\n"
                                   f"{lab.agent_log(k)[-3000:]}")
        if now >= next_progress:
            next_progress += PROGRESS_S
            tally.poll()
            bad = Counter(x.outcome for x in tally.attempts if not x.ok)
            print(f"event=soak_progress phase={name} elapsed_s={now - t_run:.0f} attempts={len(tally.attempts)} "
                  f"failed={sum(bad.values())}" + "".join(f" {o}={n}" for o, n in sorted(bad.items()))
                  + f" load1={os.getloadavg()[0]:.2f}", flush=True)
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))


def report_phase(p: Phase, lab: Lab, tally: ProbeTally, wire: WireGaps, watch, prev_worst: dict[int, int | None],
                 timeout_ms: int, owner: dict[int, int]) -> dict:
    att = tally.between(p.t0, p.t1)
    bad = Counter(x.outcome for x in att if not x.ok)
    slow = max(((x.end_ns or x.t_ns) - x.t_ns for x in att if x.ok), default=0) / 1e6
    late = [x for x in att if x.ok and (x.end_ns or x.t_ns) - x.t_ns >= RETRANSMIT_NS]
    print(f"\n== {p.name}: {(p.t1 - p.t0) / 1e9:.0f} s, hypervisor steal {p.steal_ms} ms of CPU time ==")
    print(f"connections: {len(att)} attempts, {sum(bad.values())} failed"
          + (" (" + ", ".join(f"{o} {n}" for o, n in sorted(bad.items())) + ")" if bad else "")
          + f"; slowest successful attempt {slow:.0f} ms; {len(late)} served only after >= 1 s "
          f"(their first SYN was dropped: the kernel resends it after 1 s)")
    for x in sorted(late, key=lambda x: x.t_ns)[:10]:
        print(f"  delayed: client={x.client} node={x.node} took {((x.end_ns or 0) - x.t_ns) / 1e6:.0f} ms "
              f"at +{(x.t_ns - p.t0) / 1e9:.2f} s")
    for x in sorted((x for x in att if not x.ok), key=lambda x: x.t_ns)[:10]:
        print(f"  failed: client={x.client} outcome={x.outcome} at +{(x.t_ns - p.t0) / 1e9:.2f} s")
    events = []
    for k in NODES:
        for line, before in false_failovers(lab, k, p.log0[k], p.log1[k]):
            events.append((k, line, before))
    print(f"false failovers: {sum('view_changed' in e[1] for e in events)} view changes, "
          f"{sum('buckets_programmed' in e[1] for e in events)} bucket programmings")
    for k, line, before in events:
        print(f"  n{k}: {line}")
        for b in before:
            print(f"      before: {b}")
    worst = {}
    for k in NODES:
        w = worst_logged(log_lines(lab, k, 0, p.log1[k]))
        prev = prev_worst.get(k)
        if w is None:
            worst[k] = ("n/a", None)
        elif prev is not None and w <= prev:
            worst[k] = (f"<= {prev / 1000:.1f} ms (no new maximum in this phase)", w)
        else:
            worst[k] = (f"{w / 1000:.1f} ms", w)
    print("agents' worst heartbeat send delay: " + ", ".join(f"n{k} {worst[k][0]}" for k in NODES))
    gaps = wire.worst(p.w0, p.w1)
    print("longest heartbeat gap on the wire (any peer; a peer is declared lost after "
          f"{timeout_ms} ms): " + ", ".join(f"n{k} {gaps[f'n{k}'][0]:.1f} ms (to {gaps[f'n{k}'][1]}, ended "
                                             f"{wall(gaps[f'n{k}'][2])} UTC)"
                                             if f"n{k}" in gaps else f"n{k} n/a" for k in NODES)
          + f"; gaps over {timeout_ms} ms: {wire.over(timeout_ms, p.w0, p.w1)}, over 200 ms: {wire.over(200, p.w0, p.w1)}")
    lease = {}
    for k in NODES:
        before = filter_counters(log_lines(lab, k, 0, p.log0[k]))
        after = filter_counters(log_lines(lab, k, 0, p.log1[k]))
        lease[k] = {c: after.get(c, 0) - before.get(c, 0) for c in ("lease_expired", "lease_lapsed")}
    print("filter counters in the phase (SYNs dropped past syn_deadline / packets past deadline): "
          + ", ".join(f"n{k} lease_expired={lease[k]['lease_expired']} lease_lapsed={lease[k]['lease_lapsed']}"
                      for k in NODES))
    spells = [sp for sp in watch.spells if sp.end_ns > p.t0 and sp.start_ns < p.t1]
    dbl = max((sp.ms for sp in spells if sp.kind == "double"), default=0.0)
    zero = max((sp.ms for sp in spells if sp.kind == "zero"), default=0.0)
    print(f"ownership: max double {dbl:.1f} ms, max zero {zero:.1f} ms")
    for k in NODES:        # zero spells by the node that owned the bucket at convergence
        mine = [sp for sp in spells if sp.kind == "zero" and owner.get(sp.bucket) == k]
        if mine:
            starts = sorted({round((sp.start_ns - p.t0) / 1e9, 2) for sp in mine})
            print(f"  n{k}'s buckets had no acceptor {len(starts)} times (longest "
                  f"{max(sp.ms for sp in mine):.1f} ms), at +s: {', '.join(map(str, starts[:12]))}"
                  + (" ..." if len(starts) > 12 else ""))
    return {"failed": sum(bad.values()), "late": len(late), "events": len(events), "double": dbl, "zero": zero,
            "worst": {k: v[1] for k, v in worst.items()}, "gaps": gaps}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10.0, help="the loaded phase (1..60)")
    p.add_argument("--baseline-s", type=float, default=60.0, help="the unloaded phase before it (10..600)")
    p.add_argument("--interval-ms", type=int, default=DEFAULT_HEARTBEAT_INTERVAL_MS, help="spec.heartbeat.intervalMs")
    p.add_argument("--timeout-ms", type=int, default=DEFAULT_HEARTBEAT_TIMEOUT_MS, help="spec.heartbeat.timeoutMs")
    p.add_argument("--clients", type=int, default=24, help="client addresses probing (1..100)")
    p.add_argument("--probe-interval-ms", type=float, default=100.0)
    p.add_argument("--probe-timeout-ms", type=float, default=1500.0,
                   help="per attempt; above the 1 s SYN retransmission, so a dropped SYN shows as a delay")
    p.add_argument("--burners", type=int, default=2 * (os.cpu_count() or 1), help="busy-loop processes")
    p.add_argument("--no-gc-load", action="store_true", help="leave out the allocation/GC-heavy loop")
    p.add_argument("--keep-logs", metavar="DIR", help="copy the agents' logs there before the lab is deleted")
    a = p.parse_args(argv)
    if os.geteuid() != 0:
        print("bench/soak.py needs root (network namespaces, XDP)", file=sys.stderr)
        return 2
    if not 1 <= a.minutes <= 60:
        p.error(f"--minutes {a.minutes:g}: give 1..60")
    if not 10 <= a.baseline_s <= 600:
        p.error(f"--baseline-s {a.baseline_s:g}: give 10..600")
    if not 0 <= a.burners <= 64:
        p.error(f"--burners {a.burners}: give 0..64")
    load = f"{a.burners} busy loops" + ("" if a.no_gc_load else " + 1 GC-heavy loop")
    print(f"soak: 3 nodes, {a.clients} clients (one attempt in flight each, every {a.probe_interval_ms:g} ms, "
          f"timeout {a.probe_timeout_ms:g} ms), heartbeat intervalMs={a.interval_ms} timeoutMs={a.timeout_ms}; "
          f"baseline {a.baseline_s:g} s unloaded, then {a.minutes:g} min with {load} on {os.cpu_count()} CPUs; "
          f"load average at start {os.getloadavg()[0]:.2f}", flush=True)
    with Lab(nodes=3, clients=a.clients) as lab:
        path = farm_file(lab, a.interval_ms, a.timeout_ms)
        lab.start_servers(tcp_ports=(PORT,), udp_ports=())
        agents = {k: lab.start_agent(k, [path]) for k in NODES}
        for k, proc in agents.items():
            lab.wait_agent_ready(k, proc, timeout=180)
        shares = lab.wait_converged(FARM, list(NODES), timeout=60)
        owner = {b: k for k, bs in shares.items() for b in bs}
        start_logs = wait_quiet(lab)
        clients = client_ips(a.clients)
        wire = WireGaps(lab, DEFAULT_HEARTBEAT_PORT).start()
        watcher = OwnershipWatcher.for_lab(lab, FARM, max_seconds=a.baseline_s + a.minutes * 60 + 600).start()
        tally = ProbeTally()
        first = spawn_probe(lab, VIP, PORT, clients, seconds=SEGMENT_S + 120, interval_ms=a.probe_interval_ms,
                            timeout_ms=a.probe_timeout_ms)
        tally.follow(first.path)
        probes = [(first, time.monotonic())]
        load_procs: list = []
        try:
            first.wait_all_served(timeout=30)
            t_run = time.monotonic()
            t0, w0, s0 = time.monotonic_ns(), time.time_ns(), steal_ms()
            print(f"converged; baseline phase ({a.baseline_s:g} s, no load)", flush=True)
            run_phase("baseline", a.baseline_s, lab, a, tally, probes, clients, agents, t_run)
            # The baseline ends once every agent logged its counters (its worst send delay so far).
            base_logs = wait_counters_after(lab, {k: log_size(lab, k) for k in NODES})
            t1, w1, s1 = time.monotonic_ns(), time.time_ns(), steal_ms()
            load_procs = start_load(lab, a.burners, not a.no_gc_load)
            print(f"event=soak_load_started procs={len(load_procs)} ({load}) elapsed_s={time.monotonic() - t_run:.0f}",
                  flush=True)
            run_phase("loaded", a.minutes * 60, lab, a, tally, probes, clients, agents, t_run)
            end_logs = wait_counters_after(lab, {k: log_size(lab, k) for k in NODES})
            t2, w2, s2 = time.monotonic_ns(), time.time_ns(), steal_ms()
        except AgentExited as e:
            print(f"{e}\nverdict: MISS (an agent died during the soak; that is a finding, not a measurement)")
            return 1
        finally:
            stop_load(load_procs)
            for pr, _ in probes:
                if pr.proc.poll() is None:
                    open(pr.stop_file, "w").close()
            for pr, _ in probes:
                pr.proc.wait(timeout=30)
            report = watcher.stop()
            wire.stop()
        tally.poll()
        if a.keep_logs:
            os.makedirs(a.keep_logs, exist_ok=True)
            for k in NODES:
                shutil.copy(log_path(lab, k), os.path.join(a.keep_logs, f"agent-n{k}.log"))
            print(f"agent logs copied to {a.keep_logs}")
        print(f"\nwatcher: {report.summary()}; heartbeats captured on the wire: {wire.packets}")
        phases = [Phase("baseline (no load)", t0, t1, w0, w1, start_logs, base_logs, s1 - s0),
                  Phase(f"loaded ({load})", t1, t2, w1, w2, base_logs, end_logs, s2 - s1)]
        prev: dict[int, int | None] = {}
        results = []
        for ph in phases:
            r = report_phase(ph, lab, tally, wire, report, prev, a.timeout_ms, owner)
            prev = {k: v for k, v in r["worst"].items() if v is not None}
            results.append(r)
        base, loaded = results
        wmax = lambda r: max((v for v in r["worst"].values() if v is not None), default=None)  # noqa: E731
        gmax = lambda r: max((g[0] for g in r["gaps"].values()), default=0.0)  # noqa: E731
        b, l_ = wmax(base), wmax(loaded)
        loaded_worst = ("n/a" if l_ is None else f"<= {b / 1000:.1f} ms" if b is not None and l_ <= b
                        else f"{l_ / 1000:.1f} ms")
        print(f"\nworst heartbeat send delay overall: baseline {'n/a' if b is None else f'{b / 1000:.1f} ms'} "
              f"(since agent start), loaded {loaded_worst}; longest wire gap: baseline {gmax(base):.1f} ms, "
              f"loaded {gmax(loaded):.1f} ms (interval {a.interval_ms} ms, timeout {a.timeout_ms} ms)")
        bad = [f"{r_['events']} view changes/programmings, {r_['failed']} failed connections, "
               f"{r_['late']} delayed >= 1 s, "
               f"double {r_['double']:.1f} ms, zero {r_['zero']:.1f} ms" for r_ in results]
        ok = all(r_["events"] == 0 and r_["failed"] == 0 and r_["late"] == 0 and r_["double"] == 0
                 and r_["zero"] == 0 for r_ in results)
        print(f"verdict: {'PASS' if ok else 'MISS'} (baseline: {bad[0]}; loaded: {bad[1]}; targets 0 false "
              f"failovers, 0 failed connections)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
