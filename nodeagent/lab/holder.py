"""A bounded client that holds long-lived TCP connections through a farm and proves that
nothing happened to them, plus a steady load of new connections; and the pure analysis.

Run inside the lab's client namespace (spawned, so it measures while a test moves buckets):

  python -m nodeagent.lab.holder --vip 203.0.113.10 --port 9100 --src 198.51.100.100 ... \
      --connections 200 --out hold.jsonl --seconds 20 [--open-rate 200] [--period-ms 100] \
      [--stall-ms 1000] [--new-rate 50] [--new-port 80 --new-kind name] [--new-timeout-ms 3000] \
      [--slow-ms 800] [--stop-file PATH]

Long-lived connections go to the echo port (traffic.py `serve --echo`), opened at --open-rate
per second, spread round-robin over the --src addresses (the kernel gives each its own source
port). Each sends "<id> <seq>\\n" every --period-ms and expects "<node> <id> <seq>\\n" back. A
connection that ends (ECONNRESET, EPIPE, EOF) is a reset and is not reopened; one that gets no
echo for more than --stall-ms is stalled (the longest gap is kept); the node in its echoes
must never change. New connections (--new-rate per second, 0 for none) each must be answered
within --new-timeout-ms: with --new-kind echo, one line sent and its echo read; with
--new-kind name (the `serve --tcp` port), the node's name read. An answer later than --slow-ms
(one SYN retransmission) is "slow" but served.

Output (JSONL, flushed every 100 ms, every time CLOCK_MONOTONIC ns like the prober):
  {"type": "start", ...}
  {"type": "open", "t_ns", "id", "src", "sport"}                a long-lived connection is up
  {"type": "served", "t_ns", "id", "node"}                      its first echo
  {"type": "open_failed" | "reset", "t_ns", "id", "src", "sport", "dst", "dport", "error", "node"}
  {"type": "stall", "t_ns" (last echo), "detected_ns", "id", "src", "sport", "dst", "dport", "node"}
  {"type": "stall_end", "t_ns", "id", "gap_ns"}
  {"type": "node_change", "t_ns", "id", "src", "sport", "old", "new"}
  {"type": "new", "t_ns", "end_ns", "src", "sport", "dst", "dport", "outcome", "slow", "node"}
  {"type": "tick", "t_ns", "open", "established", "reset", "stalled_now", "echoes", "new_ok", ...}
  {"type": "conn", "id", "src", "sport", "node", "nodes", "echoes", "max_gap_ns", "reset"}   at the end
  {"type": "end", "t_ns", ...totals}
It stops after --seconds or once --stop-file exists, closing every connection cleanly (FIN).
CPU: every echo is a send and a receive on both sides, connections x 1000/period-ms per second
(200 x 10 = 2,000/s is light; at 2,000 connections on the 2-core lab machine give --period-ms 500
or more, or the one-threaded echo server itself delays answers towards --slow-ms).
"""
from __future__ import annotations

import argparse
import errno
import heapq
import ipaddress
import json
import os
import selectors
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable

from .prober import _classify, finished, wait_for
from .traffic import raise_nofile

IP_BIND_ADDRESS_NO_PORT = 24
MS = 1_000_000
NEW_FAILURES = ("reset", "timeout", "refused", "unreachable", "error")


# -- analysis (pure) --------------------------------------------------------------------------
@dataclass(frozen=True)
class Problem:
    """One thing that went wrong, as the holder recorded it."""
    kind: str          # reset | stall | node_change | open_failed | new_<outcome> | unserved
    t_ns: int
    id: int | None
    src: str
    sport: int | None
    detail: str

    def __str__(self) -> str:
        who = f"conn {self.id}" if self.id is not None else "new conn"
        return f"{self.kind} {who} {self.src}:{self.sport} at t_ns={self.t_ns}: {self.detail}"


@dataclass
class Summary:
    connections: int = 0                       # long-lived connections established
    open_failed: int = 0
    served: int = 0                            # ... that got at least one echo
    reset: int = 0                             # ... that ended (ECONNRESET/EPIPE/EOF)
    stalled: int = 0                           # ... that had at least one gap over --stall-ms
    node_changes: int = 0                      # ... whose echoes came from two nodes
    max_gap_ns: int = 0                        # the longest echo gap of any connection (end records)
    echoes: int = 0
    nodes: Counter = field(default_factory=Counter)           # node -> long-lived connections it served
    reset_ids: set = field(default_factory=set)
    stalled_ids: set = field(default_factory=set)
    new_total: int = 0
    new_ok: int = 0
    slow_new: int = 0                          # served, but later than --slow-ms
    failed_new: int = 0
    new_outcomes: Counter = field(default_factory=Counter)
    new_nodes: Counter = field(default_factory=Counter)       # node -> new connections it served
    new_nodes_before: Counter = field(default_factory=Counter)  # ... started before t (summarize's t_ns)
    new_nodes_after: Counter = field(default_factory=Counter)   # ... started at or after t
    problems: list = field(default_factory=list)              # Problem, in time order
    finished: bool = False                                    # the end line was seen

    @property
    def clean(self) -> bool:
        """Every long-lived connection served, none reset/stalled/moved, every new one served."""
        return (self.connections > 0 and self.served == self.connections and not self.reset
                and not self.stalled and not self.node_changes and not self.open_failed
                and not self.failed_new)

    def describe(self, limit: int = 10) -> str:
        head = (f"{self.connections} connections ({self.served} served, {self.open_failed} failed to open), "
                f"{self.reset} reset, {self.stalled} stalled, {self.node_changes} changed node, "
                f"max gap {self.max_gap_ns / MS:.0f} ms, {self.echoes} echoes, nodes {dict(self.nodes)}; "
                f"new: {self.new_total} ({self.new_ok} ok, {self.slow_new} slow, {self.failed_new} failed "
                f"{dict(self.new_outcomes)}), nodes {dict(self.new_nodes)}")
        more = "".join(f"\n  {p}" for p in self.problems[:limit])
        if len(self.problems) > limit:
            more += f"\n  ... and {len(self.problems) - limit} more"
        return head + more


def summarize(records: Iterable[dict], t_ns: int | None = None) -> Summary:
    """What a holder's records (its JSONL lines, parsed) say; works on a file still being
    written. `t_ns` splits the new connections' nodes into before/after (a move's time)."""
    s = Summary()
    served: dict[int, str] = {}
    end_conns: dict[int, dict] = {}
    opened: set[int] = set()
    changed: set[int] = set()
    problems: list[Problem] = []
    for r in records:
        kind = r.get("type")
        if kind == "open":
            opened.add(r["id"])
        elif kind == "served":
            served[r["id"]] = r["node"]
        elif kind == "open_failed":
            s.open_failed += 1
            problems.append(Problem("open_failed", r["t_ns"], r["id"], r["src"], r.get("sport"), r["error"]))
        elif kind == "reset":
            s.reset_ids.add(r["id"])
            problems.append(Problem("reset", r["t_ns"], r["id"], r["src"], r.get("sport"),
                                    f"{r['error']} (node {r.get('node')})"))
        elif kind == "stall":
            s.stalled_ids.add(r["id"])
            problems.append(Problem("stall", r["t_ns"], r["id"], r["src"], r.get("sport"),
                                    f"no echo since t_ns={r['t_ns']} (node {r.get('node')}), "
                                    f"seen at {r['detected_ns']}"))
        elif kind == "stall_end":
            s.max_gap_ns = max(s.max_gap_ns, r["gap_ns"])
        elif kind == "node_change":
            changed.add(r["id"])
            problems.append(Problem("node_change", r["t_ns"], r["id"], r["src"], r.get("sport"),
                                    f"echoes from {r['old']} then {r['new']}"))
        elif kind == "new":
            s.new_total += 1
            s.new_outcomes[r["outcome"]] += 1
            if r["outcome"] == "ok":
                s.new_ok += 1
                s.slow_new += bool(r.get("slow"))
                s.new_nodes[r["node"]] += 1
                if t_ns is not None:
                    (s.new_nodes_before if r["t_ns"] < t_ns else s.new_nodes_after)[r["node"]] += 1
            else:
                s.failed_new += 1
                problems.append(Problem(f"new_{r['outcome']}", r["t_ns"], None, r["src"], r.get("sport"),
                                        f"after {(r['end_ns'] - r['t_ns']) / MS:.0f} ms"))
        elif kind == "conn":
            end_conns[r["id"]] = r
        elif kind == "end":
            s.finished = True
    for cid, c in end_conns.items():
        s.max_gap_ns = max(s.max_gap_ns, c["max_gap_ns"])
        s.echoes += c["echoes"]
        if c["echoes"] == 0 and cid not in s.reset_ids:
            problems.append(Problem("unserved", 0, cid, c["src"], c.get("sport"), "never got an echo"))
    s.connections = len(opened)
    s.served = len(served)
    s.reset = len(s.reset_ids)
    s.stalled = len(s.stalled_ids)
    s.node_changes = len(changed)
    s.nodes = Counter(served.values())
    s.problems = sorted(problems, key=lambda p: p.t_ns)
    return s


def connections_of(records: Iterable[dict], node: str) -> set[int]:
    """The ids of the long-lived connections `node` served first."""
    return {r["id"] for r in records if r.get("type") == "served" and r["node"] == node}


def load_records(path: str) -> list[dict]:
    """The lines of a holder output file (a torn last line skipped)."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return out


# -- the holder (runs in the client namespace) ------------------------------------------------
@dataclass
class _Conn:
    id: int
    src: str
    sock: socket.socket | None = None
    sport: int | None = None
    opened_ns: int = 0             # connect() called
    up_ns: int = 0                 # established
    node: str | None = None        # the first node that echoed
    nodes: set = field(default_factory=set)
    seq: int = 0
    echoes: int = 0
    last_echo_ns: int = 0          # or the time it came up
    max_gap_ns: int = 0
    stalled: bool = False          # in a stall right now
    reset: str | None = None
    inbuf: bytes = b""
    outbuf: bytes = b""


@dataclass
class _New:
    src: str
    sock: socket.socket
    start: int
    deadline: int
    sport: int | None = None
    connected: bool = False
    line: bytes = b""
    buf: bytes = b""


def _err_name(err: int) -> str:
    return errno.errorcode.get(err, str(err))


def hold(vip: str, port: int, sources: list[str], connections: int, out_path: str, seconds: float,
         open_rate: float = 200, period_ms: float = 100, stall_ms: float = 1000, new_rate: float = 50,
         new_port: int | None = None, new_kind: str = "echo", new_timeout_ms: float = 3000,
         slow_ms: float = 800, connect_timeout_ms: float = 3000, stop_file: str | None = None) -> Summary:
    """Hold `connections` echo connections and make `new_rate` new ones per second until
    `seconds` pass or stop_file appears; returns the summary of what it wrote to out_path."""
    if not sources:
        raise ValueError("holder: no --src given; name at least one client address")
    if not 0 < seconds <= 600:
        raise ValueError(f"holder: --seconds {seconds} is out of range; give 0 < seconds <= 600")
    if not 0 <= connections <= 20_000:
        raise ValueError(f"holder: --connections {connections} is out of range; give 0..20000")
    if open_rate <= 0 or period_ms <= 0 or not 0 <= new_rate <= 1000:
        raise ValueError(f"holder: --open-rate {open_rate} and --period-ms {period_ms} must be > 0, "
                         f"--new-rate {new_rate} within 0..1000")
    if new_kind not in ("echo", "name"):
        raise ValueError(f"holder: --new-kind {new_kind!r} is not echo or name")
    raise_nofile(connections + int(new_rate * new_timeout_ms / 1000) + 256)
    new_port = port if new_port is None else new_port
    family = socket.AF_INET6 if ipaddress.ip_address(vip).version == 6 else socket.AF_INET
    period, stall = int(period_ms * MS), int(stall_ms * MS)
    sel = selectors.DefaultSelector()
    t0 = time.monotonic_ns()
    end = t0 + int(seconds * 1e9)
    conns = [_Conn(i, sources[i % len(sources)]) for i in range(connections)]
    to_open = 0                                   # the next conns[] index to open
    sends: list[tuple[int, int]] = []             # heap of (due, id)
    new_count = 0
    new_ok = new_slow = new_failed = 0
    resets = echoes = 0
    pending: list[str] = []
    out = open(out_path, "w")

    def emit(d: dict) -> None:
        pending.append(json.dumps(d))

    out.write(json.dumps({"type": "start", "t_ns": t0, "vip": vip, "port": port, "sources": sources,
                          "connections": connections, "open_rate": open_rate, "period_ms": period_ms,
                          "stall_ms": stall_ms, "new_rate": new_rate, "new_port": new_port,
                          "new_kind": new_kind, "new_timeout_ms": new_timeout_ms, "slow_ms": slow_ms}) + "\n")
    out.flush()

    def tuple_of(c) -> dict:
        return {"src": c.src, "sport": c.sport, "dst": vip, "dport": port}

    # -- long-lived connections ---------------------------------------------------------------
    def conn_close(c: _Conn, reason: str | None, now: int) -> None:
        nonlocal resets
        if c.sock is None:
            return
        if reason is not None:
            c.reset = reason
            resets += bool(c.up_ns)
            kind = "reset" if c.up_ns else "open_failed"
            emit({"type": kind, "t_ns": now, "id": c.id, **tuple_of(c), "error": reason, "node": c.node})
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sel.unregister(c.sock)
        c.sock.close()
        c.sock = None

    def conn_open(c: _Conn, now: int) -> None:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((c.src, 0))
        c.sock, c.opened_ns = sock, now
        err = sock.connect_ex((vip, port))
        sel.register(sock, selectors.EVENT_WRITE, c)
        if err not in (0, errno.EINPROGRESS):
            conn_close(c, _err_name(err), now)

    def conn_event(c: _Conn, mask: int, now: int) -> None:
        if c.sock is None:
            return
        if not c.up_ns:
            err = c.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                conn_close(c, _err_name(err), now)
                return
            c.up_ns = c.last_echo_ns = now
            c.sport = c.sock.getsockname()[1]
            emit({"type": "open", "t_ns": now, "id": c.id, "src": c.src, "sport": c.sport})
            sel.modify(c.sock, selectors.EVENT_READ, c)
            heapq.heappush(sends, (now + (c.id * period // max(1, connections)) % period, c.id))
            return
        if mask & selectors.EVENT_READ:
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError as e:
                conn_close(c, _err_name(e.errno or 0), now)
                return
            if data == b"":
                conn_close(c, "EOF", now)
                return
            if data:
                c.inbuf += data
                *lines, c.inbuf = c.inbuf.split(b"\n")
                for line in lines:
                    conn_echo(c, line, now)
        if mask & selectors.EVENT_WRITE and c.sock is not None:
            conn_flush(c, now)

    def conn_echo(c: _Conn, line: bytes, now: int) -> None:
        nonlocal echoes
        parts = line.decode(errors="replace").split(" ")
        node = parts[0]
        if len(parts) != 3 or parts[1] != str(c.id):
            conn_close(c, f"bad_echo:{line[:40]!r}", now)
            return
        echoes += 1
        c.echoes += 1
        gap = now - c.last_echo_ns
        c.max_gap_ns = max(c.max_gap_ns, gap)
        if c.stalled:
            c.stalled = False
            emit({"type": "stall_end", "t_ns": now, "id": c.id, "gap_ns": gap})
        c.last_echo_ns = now
        if c.node is None:
            c.node = node
            emit({"type": "served", "t_ns": now, "id": c.id, "node": node})
        elif node not in c.nodes:
            emit({"type": "node_change", "t_ns": now, "id": c.id, "src": c.src, "sport": c.sport,
                  "old": c.node, "new": node})
        c.nodes.add(node)

    def conn_flush(c: _Conn, now: int) -> None:
        try:
            n = c.sock.send(c.outbuf)
        except BlockingIOError:
            n = 0
        except OSError as e:
            conn_close(c, _err_name(e.errno or 0), now)
            return
        c.outbuf = c.outbuf[n:]
        sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.outbuf else 0), c)

    # -- new connections ----------------------------------------------------------------------
    new_by_fd: dict[int, _New] = {}               # the new connections in flight, by id()

    def new_finish(n: _New, outcome: str, now: int, node: str | None = None) -> None:
        nonlocal new_ok, new_slow, new_failed
        slow = outcome == "ok" and now - n.start > slow_ms * MS
        if outcome == "ok":
            new_ok += 1
            new_slow += slow
        else:
            new_failed += 1
            n.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        emit({"type": "new", "t_ns": n.start, "end_ns": now, "src": n.src, "sport": n.sport, "dst": vip,
              "dport": new_port, "outcome": outcome, "slow": slow, "node": node})
        sel.unregister(n.sock)
        n.sock.close()
        new_by_fd.pop(id(n), None)

    def new_start(now: int) -> None:
        nonlocal new_count
        src = sources[new_count % len(sources)]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((src, 0))
        n = _New(src, sock, now, now + int(new_timeout_ms * MS), line=f"new {new_count}\n".encode())
        new_count += 1
        new_by_fd[id(n)] = n
        err = sock.connect_ex((vip, new_port))
        sel.register(sock, selectors.EVENT_WRITE, n)
        if err not in (0, errno.EINPROGRESS):
            new_finish(n, _classify(err), now)

    def new_event(n: _New, now: int) -> None:
        if not n.connected:
            err = n.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                new_finish(n, _classify(err), now)
                return
            n.connected = True
            n.sport = n.sock.getsockname()[1]
            if new_kind == "echo":
                try:
                    n.sock.send(n.line)      # a few bytes into an empty send buffer
                except OSError as e:
                    new_finish(n, _classify(e.errno or 0), now)
                    return
            sel.modify(n.sock, selectors.EVENT_READ, n)
            return
        try:
            chunk = n.sock.recv(256)
        except BlockingIOError:
            return
        except OSError as e:
            new_finish(n, _classify(e.errno or 0), now)
            return
        if not chunk:
            new_finish(n, "reset", now)
            return
        n.buf += chunk
        if n.buf.endswith(b"\n"):
            text = n.buf.decode(errors="replace").strip()
            node = text.split(" ", 1)[0] if text else None
            good = bool(text) and (new_kind == "name" or text.split(" ", 1)[-1] == n.line.decode().strip())
            new_finish(n, "ok" if good else "error", now, node if good else None)

    # -- the loop -----------------------------------------------------------------------------
    open_every = int(1e9 / open_rate)
    new_every = int(1e9 / new_rate) if new_rate else 0
    next_open = t0
    next_new = t0
    next_tick = t0 + 1_000_000_000
    next_stall_check = t0
    last_flush = last_stop_check = t0
    stop_seen = False
    stop_ns = 0
    payload_tmpl = "{} {}\n"

    def tick(now: int) -> None:
        established = sum(1 for c in conns if c.up_ns)
        emit({"type": "tick", "t_ns": now, "opened": to_open, "established": established,
              "open": sum(1 for c in conns if c.sock is not None and c.up_ns), "reset": resets,
              "stalled_now": sum(1 for c in conns if c.stalled), "echoes": echoes,
              "nodes": dict(Counter(c.node for c in conns if c.node)),
              "new": new_count, "new_ok": new_ok, "new_slow": new_slow, "new_failed": new_failed})

    try:
        while True:
            now = time.monotonic_ns()
            if stop_file and not stop_seen and now - last_stop_check >= 50 * MS:
                last_stop_check = now
                stop_seen = os.path.exists(stop_file)
            stopping = stop_seen or now >= end
            if stopping and not stop_ns:
                stop_ns = now           # no more sends from here: gaps and stalls end here too
            if stopping and not new_by_fd:
                break
            # What already arrived counts before any deadline (a stall of this very process
            # must not look like a stall of the farm).
            for _ in range(3):
                ready = sel.select(0)
                if not ready:
                    break
                for key, mask in ready:
                    (new_event(key.data, now) if isinstance(key.data, _New)
                     else conn_event(key.data, mask, time.monotonic_ns()))
            now = time.monotonic_ns()
            if not stopping:
                while to_open < connections and now >= next_open:
                    conn_open(conns[to_open], now)
                    to_open += 1
                    next_open += open_every
                while new_every and now >= next_new:
                    new_start(now)
                    next_new += new_every
                while sends and sends[0][0] <= now:
                    due, cid = heapq.heappop(sends)
                    c = conns[cid]
                    if c.sock is None:
                        continue
                    c.seq += 1
                    c.outbuf += payload_tmpl.format(c.id, c.seq).encode()
                    conn_flush(c, now)
                    heapq.heappush(sends, (max(now, due + period), cid))
            for n in [n for n in new_by_fd.values() if now >= n.deadline]:
                new_finish(n, "timeout", now)
            if not stopping and now >= next_stall_check:     # one pass over all, 20 times a second
                next_stall_check = now + 50 * MS
                for c in conns[:to_open]:
                    if c.sock is None:
                        continue
                    if not c.up_ns:
                        if now - c.opened_ns > connect_timeout_ms * MS:
                            conn_close(c, "connect_timeout", now)
                    elif not c.stalled and now - c.last_echo_ns > stall:
                        c.stalled = True
                        emit({"type": "stall", "t_ns": c.last_echo_ns, "detected_ns": now, "id": c.id,
                              **tuple_of(c), "node": c.node})
            if now >= next_tick:
                tick(now)
                next_tick += 1_000_000_000
            wake = [next_tick, now + 20 * MS] + ([] if stopping else [next_stall_check])
            if not stopping:
                wake += [next_new] if new_every else []
                wake += [next_open] if to_open < connections else []
                wake += [sends[0][0]] if sends else []
            wake = min(wake)
            for key, mask in sel.select(max(0, wake - time.monotonic_ns()) / 1e9):
                t = time.monotonic_ns()
                new_event(key.data, t) if isinstance(key.data, _New) else conn_event(key.data, mask, t)
            now = time.monotonic_ns()
            if pending and now - last_flush >= 100 * MS:
                out.write("\n".join(pending) + "\n")
                out.flush()
                pending.clear()
                last_flush = now
    finally:
        now = time.monotonic_ns()
        for n in list(new_by_fd.values()):
            new_finish(n, "timeout", now)
        tick(now)
        stop_ns = stop_ns or now
        for c in conns:
            if c.up_ns:
                emit({"type": "conn", "id": c.id, "src": c.src, "sport": c.sport, "node": c.node,
                      "nodes": sorted(c.nodes), "echoes": c.echoes,
                      "max_gap_ns": max(c.max_gap_ns, (stop_ns - c.last_echo_ns) if c.sock is not None else 0),
                      "reset": c.reset})
            if c.sock is not None:
                conn_close(c, None, now)
        emit({"type": "end", "t_ns": now, "connections": sum(1 for c in conns if c.up_ns), "resets": resets,
              "echoes": echoes, "new": new_count, "new_ok": new_ok, "new_slow": new_slow,
              "new_failed": new_failed})
        out.write("\n".join(pending) + "\n")
        out.close()
    return summarize(load_records(out_path))


# -- spawning it in a lab ---------------------------------------------------------------------
@dataclass
class RunningHolder:
    """A holder spawned in a lab's client namespace (spawn_holder), and its records so far."""
    lab: object
    path: str
    stop_file: str
    proc: object
    connections: int

    def records(self) -> list[dict]:
        return load_records(self.path)

    def summary(self, t_ns: int | None = None) -> Summary:
        return summarize(self.records(), t_ns)

    def _check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise AssertionError(f"holder exited early with {self.proc.returncode}:\n"
                                 f"{self.lab.log(os.path.basename(self.path) + '.log')}")

    def wait_established(self, timeout: float = 30) -> Summary:
        """Until every long-lived connection is up and has its first echo."""
        def served():
            self._check_alive()
            s = self.summary()
            return s if s.served >= self.connections else None
        try:
            return wait_for(served, timeout, f"all {self.connections} held connections served "
                                             f"(holder output {self.path})", step=0.1)
        except AssertionError as e:
            raise AssertionError(f"{e}; so far: {self.summary().describe()}") from None

    def stop(self, timeout: float = 15) -> Summary:
        open(self.stop_file, "w").close()
        self.proc.wait(timeout=timeout)
        if not finished(self.path):
            raise AssertionError(f"holder did not write its end line:\n"
                                 f"{self.lab.log(os.path.basename(self.path) + '.log')}")
        return self.summary()


_runs = iter(range(1, 1 << 30))


def spawn_holder(lab, vip: str, port: int, sources: list[str], connections: int, seconds: float = 60,
                 **opts) -> RunningHolder:
    """Start a holder in the lab's client namespace; opts are hold()'s keywords (new_rate=50, ...)."""
    path = os.path.join(lab.workdir, f"hold{next(_runs)}.jsonl")
    stop = path + ".stop"
    args = [sys.executable, "-m", "nodeagent.lab.holder", "--vip", vip, "--port", str(port), "--out", path,
            "--stop-file", stop, "--seconds", str(seconds), "--connections", str(connections)]
    for s in sources:
        args += ["--src", s]
    for k, v in opts.items():
        args += [f"--{k.replace('_', '-')}", str(v)]
    proc = lab.spawn(lab.client, args, log_name=os.path.basename(path) + ".log")
    return RunningHolder(lab, path, stop, proc, connections)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodeagent.lab.holder")
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, required=True, help="the echo port (traffic.py serve --echo)")
    p.add_argument("--src", action="append", required=True, help="a client source address (repeat)")
    p.add_argument("--connections", type=int, default=200, help="long-lived connections to hold")
    p.add_argument("--out", required=True, help="JSONL output file")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--open-rate", type=float, default=200.0, help="long-lived connections opened per second")
    p.add_argument("--period-ms", type=float, default=100.0, help="each connection sends a line this often")
    p.add_argument("--stall-ms", type=float, default=1000.0, help="no echo for longer than this is a stall")
    p.add_argument("--connect-timeout-ms", type=float, default=3000.0)
    p.add_argument("--new-rate", type=float, default=50.0, help="new short connections per second (0: none)")
    p.add_argument("--new-port", type=int, help="their port (default: --port)")
    p.add_argument("--new-kind", choices=("echo", "name"), default="echo",
                   help="echo: send a line, read its echo; name: read the name (serve --tcp)")
    p.add_argument("--new-timeout-ms", type=float, default=3000.0)
    p.add_argument("--slow-ms", type=float, default=800.0, help="a new connection served later than this is slow")
    p.add_argument("--stop-file")
    a = p.parse_args(argv)
    s = hold(a.vip, a.port, a.src, a.connections, a.out, a.seconds, a.open_rate, a.period_ms, a.stall_ms,
             a.new_rate, a.new_port, a.new_kind, a.new_timeout_ms, a.slow_ms, a.connect_timeout_ms, a.stop_file)
    print(json.dumps({"event": "holder_done", "out": a.out, "connections": s.connections, "reset": s.reset,
                      "stalled": s.stalled, "failed_new": s.failed_new}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
