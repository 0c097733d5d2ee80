"""A bounded client-side failover prober, and the pure analysis of what it recorded.

Run inside the lab's client namespace (spawned, so it probes while a test injects faults):

  python -m nodeagent.lab.prober --vip 203.0.113.10 --port 8080 --src 198.51.100.100 ... \
      --out probe.jsonl --seconds 10 [--interval-ms 20] [--timeout-ms 80] [--max-attempts N] \
      [--stop-file PATH]

Each client source address keeps one attempt in flight at a time: a fresh TCP connection to
VIP:port bound to that address, one read of the lab server's reply (traffic.py's `serve`
answers with the node's name), all within --timeout-ms; then the next attempt --interval-ms
after this one started (or at once if it ran longer). Every attempt is one JSON line:
  {"t_ns": <start, CLOCK_MONOTONIC>, "end_ns": ..., "client": "198.51.100.101",
   "outcome": "ok|reset|timeout|refused|unreachable|error", "node": "n2" or null}
framed by a {"type": "start", ...} and a {"type": "end", ...} line. The prober stops by itself
after --seconds, --max-attempts, or once --stop-file exists. The file is flushed every 100 ms,
so a test can watch it fill. Every process on the machine shares CLOCK_MONOTONIC, so a fault
time taken with time.monotonic_ns() in the test process compares with t_ns directly.
"""
from __future__ import annotations

import argparse
import errno
import ipaddress
import json
import os
import selectors
import socket
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass
from typing import Iterable

OK = "ok"
OUTCOMES = (OK, "reset", "timeout", "refused", "unreachable", "error")
IP_BIND_ADDRESS_NO_PORT = 24


@dataclass(frozen=True)
class Attempt:
    t_ns: int                 # when the attempt started (CLOCK_MONOTONIC)
    client: str               # the source address
    outcome: str              # one of OUTCOMES
    node: str | None = None   # which node answered (ok only)
    end_ns: int | None = None

    @property
    def ok(self) -> bool:
        return self.outcome == OK


# -- analysis (pure) --------------------------------------------------------------------------
def recovery_time(records: Iterable[Attempt], clients: Iterable[str], t_fault: int) -> int | None:
    """Nanoseconds from t_fault until every client in `clients` had a success after which it
    never failed again (among attempts started at or after t_fault); None if some client has no
    such success (never served again, or its last attempt failed, or it made no attempt)."""
    by_client: dict[str, list[Attempt]] = {c: [] for c in clients}
    for r in records:
        if r.client in by_client and r.t_ns >= t_fault:
            by_client[r.client].append(r)
    if not by_client:
        raise ValueError("recovery_time: no clients given; pass the clients whose recovery you measure")
    latest = t_fault
    for client, attempts in by_client.items():
        attempts.sort(key=lambda a: a.t_ns)
        last_fail = max((i for i, a in enumerate(attempts) if not a.ok), default=-1)
        recovered = attempts[last_fail + 1] if last_fail + 1 < len(attempts) else None
        if recovered is None:
            return None
        latest = max(latest, recovered.t_ns)
    return latest - t_fault


def failed_attempts(records: Iterable[Attempt], since: int, until: int,
                    clients: Iterable[str] | None = None) -> list[Attempt]:
    """The failed attempts started in [since, until), optionally only those of `clients`."""
    wanted = None if clients is None else set(clients)
    return sorted((r for r in records if not r.ok and since <= r.t_ns < until
                   and (wanted is None or r.client in wanted)), key=lambda a: a.t_ns)


def outcome_counts(records: Iterable[Attempt], since: int | None = None,
                   until: int | None = None) -> dict[str, Counter]:
    """client -> Counter of outcomes, for attempts started in [since, until)."""
    out: dict[str, Counter] = {}
    for r in records:
        if (since is None or r.t_ns >= since) and (until is None or r.t_ns < until):
            out.setdefault(r.client, Counter())[r.outcome] += 1
    return out


def serving_nodes(records: Iterable[Attempt], since: int | None = None,
                  until: int | None = None) -> dict[str, set[str]]:
    """client -> the nodes that answered its successful attempts started in [since, until)."""
    out: dict[str, set[str]] = {}
    for r in records:
        if r.ok and (since is None or r.t_ns >= since) and (until is None or r.t_ns < until):
            out.setdefault(r.client, set()).add(r.node)
    return out


def clients_of(records: Iterable[Attempt], node: str, until: int) -> list[str]:
    """The clients that only `node` served before `until` (its clients, for ClientIP affinity)."""
    return sorted(c for c, nodes in serving_nodes(records, until=until).items() if nodes == {node})


def load_records(path: str) -> list[Attempt]:
    """The attempts of a prober output file (start/end lines and a torn last line skipped)."""
    out = []
    with open(path) as f:
        for line in f:
            try:
                d = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "client" in d:
                out.append(Attempt(d["t_ns"], d["client"], d["outcome"], d.get("node"), d.get("end_ns")))
    return out


def read_header(path: str) -> dict | None:
    try:
        with open(path) as f:
            first = f.readline()
        d = json.loads(first)
        return d if d.get("type") == "start" else None
    except (OSError, json.JSONDecodeError):
        return None


def finished(path: str) -> bool:
    """Has the prober written its end line?"""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 4096))
            return b'"type": "end"' in f.read()
    except OSError:
        return False


# -- the prober (runs in the client namespace) ------------------------------------------------
def _classify(err: int) -> str:
    if err == errno.ECONNREFUSED:
        return "refused"
    if err in (errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED):
        return "reset"
    if err == errno.ETIMEDOUT:
        return "timeout"
    if err in (errno.EHOSTUNREACH, errno.ENETUNREACH):
        return "unreachable"
    return "error"


@dataclass
class _Slot:
    client: str
    next_start: int
    sock: socket.socket | None = None
    start: int = 0
    deadline: int = 0
    reading: bool = False
    buf: bytes = b""


def probe(vip: str, port: int, clients: list[str], out_path: str, seconds: float,
          interval_ms: float = 20, timeout_ms: float = 80, max_attempts: int = 200_000,
          stop_file: str | None = None) -> int:
    """Probe until `seconds` pass, `max_attempts` are made, or stop_file appears. Returns the
    number of attempts recorded."""
    if not clients:
        raise ValueError("prober: no --src given; name at least one client address")
    if not 0 < seconds <= 600:
        raise ValueError(f"prober: --seconds {seconds} is out of range; give 0 < seconds <= 600")
    family = socket.AF_INET6 if ipaddress.ip_address(vip).version == 6 else socket.AF_INET
    interval, timeout = int(interval_ms * 1e6), int(timeout_ms * 1e6)
    sel = selectors.DefaultSelector()
    t0 = time.monotonic_ns()
    end = t0 + int(seconds * 1e9)
    slots = [_Slot(c, t0 + i * interval // len(clients)) for i, c in enumerate(clients)]
    attempts = 0
    pending: list[str] = []
    out = open(out_path, "w")
    out.write(json.dumps({"type": "start", "t_ns": t0, "vip": vip, "port": port, "clients": clients,
                          "interval_ms": interval_ms, "timeout_ms": timeout_ms}) + "\n")
    out.flush()
    last_flush = last_stop_check = t0
    stop_seen = False

    def finish(s: _Slot, outcome: str, node: str | None = None) -> None:
        nonlocal attempts
        now = time.monotonic_ns()
        if s.sock is not None:
            if outcome != OK:    # no lingering FIN/SYN state for a dead path
                s.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sel.unregister(s.sock)
            s.sock.close()
            s.sock = None
        pending.append(json.dumps({"t_ns": s.start, "end_ns": now, "client": s.client,
                                   "outcome": outcome, "node": node}))
        attempts += 1
        s.next_start = max(s.start + interval, now)
        s.reading, s.buf = False, b""

    def start(s: _Slot, now: int) -> None:
        s.start, s.deadline = now, now + timeout
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        if family == socket.AF_INET:
            sock.setsockopt(socket.IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((s.client, 0))
        s.sock = sock
        err = sock.connect_ex((vip, port))
        sel.register(sock, selectors.EVENT_WRITE, s)
        if err not in (0, errno.EINPROGRESS):
            finish(s, _classify(err))

    def handle(s: _Slot) -> None:
        """One readiness event of an attempt: connected, an error, or (part of) the answer."""
        if s.sock is None:
            return
        if not s.reading:
            err = s.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if err:
                finish(s, _classify(err))
                return
            s.reading = True
            sel.modify(s.sock, selectors.EVENT_READ, s)
            return
        try:
            chunk = s.sock.recv(64)
        except BlockingIOError:
            return
        except OSError as e:
            finish(s, _classify(e.errno or 0))
            return
        if not chunk:            # closed without a name: the path broke mid-way
            finish(s, "reset")
            return
        s.buf += chunk
        if s.buf.endswith(b"\n"):
            name = s.buf.decode(errors="replace").strip()
            finish(s, OK if name else "reset", name or None)

    try:
        while True:
            now = time.monotonic_ns()
            if stop_file and not stop_seen and now - last_stop_check >= 50_000_000:
                last_stop_check = now
                stop_seen = os.path.exists(stop_file)
            stopping = stop_seen or now >= end or attempts >= max_attempts
            if stopping and all(s.sock is None for s in slots):
                break
            # What already arrived counts before any deadline: after a stall of this process,
            # an attempt whose answer is waiting in its socket is not a timeout.
            for _ in range(3):            # connected, then readable: two passes, and one spare
                ready = sel.select(0)
                if not ready:
                    break
                for key, _ in ready:
                    handle(key.data)
            now = time.monotonic_ns()
            for s in slots:
                if s.sock is None and not stopping and now >= s.next_start \
                        and attempts + sum(x.sock is not None for x in slots) < max_attempts:
                    start(s, now)
                elif s.sock is not None and now >= s.deadline:
                    finish(s, "timeout")
            wake = min([s.deadline for s in slots if s.sock is not None]
                       + ([] if stopping else [s.next_start for s in slots if s.sock is None])
                       + [now + 5_000_000])
            for key, _ in sel.select(max(0, wake - time.monotonic_ns()) / 1e9):
                handle(key.data)
            now = time.monotonic_ns()
            if pending and now - last_flush >= 100_000_000:
                out.write("\n".join(pending) + "\n")
                out.flush()
                pending.clear()
                last_flush = now
    finally:
        for s in slots:
            if s.sock is not None:
                sel.unregister(s.sock)
                s.sock.close()
        if pending:
            out.write("\n".join(pending) + "\n")
        out.write(json.dumps({"type": "end", "t_ns": time.monotonic_ns(), "attempts": attempts}) + "\n")
        out.close()
    return attempts


def wait_for(cond, timeout: float, what: str, step: float = 0.05):
    """Poll cond() until it is truthy (returns its value) or fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class RunningProbe:
    """A prober spawned in a lab's client namespace (spawn_probe), and its records so far."""
    lab: object
    path: str
    stop_file: str
    proc: object
    clients: list[str]

    def records(self) -> list[Attempt]:
        return load_records(self.path) if os.path.exists(self.path) else []

    def wait_all_served(self, clients: list[str] | None = None, timeout: float = 10) -> None:
        want = set(clients or self.clients)
        wait_for(lambda: want <= set(serving_nodes(self.records())), timeout,
                 f"every client to be served once (prober output {self.path})")

    def stop(self, timeout: float = 15) -> list[Attempt]:
        open(self.stop_file, "w").close()
        self.proc.wait(timeout=timeout)
        if not finished(self.path):
            raise AssertionError(f"prober did not write its end line:\n"
                                 f"{self.lab.log(os.path.basename(self.path) + '.log')}")
        return self.records()


_runs = iter(range(1, 1 << 30))


def spawn_probe(lab, vip: str, port: int, clients: list[str], seconds: float = 30, interval_ms: float = 20,
                timeout_ms: float = 80, max_attempts: int | None = None) -> RunningProbe:
    """Start a prober in the lab's client namespace; stop it with .stop()."""
    path = os.path.join(lab.workdir, f"probe{next(_runs)}.jsonl")
    stop = path + ".stop"
    args = [sys.executable, "-m", "nodeagent.lab.prober", "--vip", vip, "--port", str(port), "--out", path,
            "--stop-file", stop, "--seconds", str(seconds), "--interval-ms", str(interval_ms),
            "--timeout-ms", str(timeout_ms)]
    if max_attempts is not None:
        args += ["--max-attempts", str(max_attempts)]
    for c in clients:
        args += ["--src", c]
    proc = lab.spawn(lab.client, args, log_name=os.path.basename(path) + ".log")
    return RunningProbe(lab, path, stop, proc, list(clients))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodeagent.lab.prober")
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--src", action="append", required=True, help="a client source address (repeat)")
    p.add_argument("--out", required=True, help="JSONL output file")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--interval-ms", type=float, default=20.0)
    p.add_argument("--timeout-ms", type=float, default=80.0)
    p.add_argument("--max-attempts", type=int, default=200_000)
    p.add_argument("--stop-file")
    a = p.parse_args(argv)
    n = probe(a.vip, a.port, a.src, a.out, a.seconds, a.interval_ms, a.timeout_ms, a.max_attempts, a.stop_file)
    print(json.dumps({"event": "prober_done", "attempts": n, "out": a.out}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
