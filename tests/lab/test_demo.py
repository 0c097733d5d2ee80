"""Lab tier: `vipfarm lab demo` end to end, as a newcomer runs it, and interrupted.

The demo runs as a subprocess (`python -m nodeagent.cli lab demo --json`, what `make demo`
runs through the `vipfarm` console script): its JSON summary must say that every node
served, that a failover was measured from the clients, that the drain reset nothing, and
that nothing failed. Then the same command is interrupted (Ctrl-C to its whole process
group, as a terminal does; SIGTERM to the demo alone) once its lab exists and its agents are
starting: it must exit soon, and leave no namespace, pin directory or process behind.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import pytest

from nodeagent.lab.namespaces import ns_pids
from nodeagent.lab.prober import wait_for

pytestmark = pytest.mark.lab
DEMO = [sys.executable, "-m", "nodeagent.cli", "lab", "demo", "--json"]
# Far above the failover the demo measures (~300 ms at its 300 ms heartbeat timeout), far
# below anything a broken failover gives: "measured", not a speed assertion.
FAILOVER_BOUND_MS = 10_000


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, start time) of a process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[1]), int(fields[19])
    except (OSError, IndexError, ValueError):
        return None


def descendants(root: int) -> dict[int, int]:
    """pid -> start time of every process under `root` (root included)."""
    stats = {int(p): _stat(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    children: dict[int, list[int]] = {}
    for pid, st in stats.items():
        if st:
            children.setdefault(st[0], []).append(pid)
    out, todo = {}, [root]
    while todo:
        pid = todo.pop()
        if stats.get(pid):
            out[pid] = stats[pid][1]
        todo += children.get(pid, [])
    return out


def still_running(procs: dict[int, int]) -> list[int]:
    """The pids of `procs` that still run (the same process: same start time, not a zombie)."""
    alive = []
    for pid, start in procs.items():
        st = _stat(pid)
        if st and st[1] == start:
            try:
                with open(f"/proc/{pid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if state not in ("Z", "X"):
                alive.append(pid)
    return alive


def lab_namespaces(prefix: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]


class RunningDemo:
    """The demo as a subprocess in its own session, its stderr (the progress) read as it comes."""

    def __init__(self):
        self.proc = subprocess.Popen(DEMO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     start_new_session=True)
        self.lines: list[str] = []
        self.stdout: list[str] = []
        # One reader per pipe, and nothing else reads them (communicate() would take part of
        # stderr away from the progress reader).
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.out_reader = threading.Thread(target=lambda: self.stdout.append(self.proc.stdout.read()), daemon=True)
        self.out_reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def progress(self) -> str:
        return "".join(self.lines)

    def prefix(self) -> str | None:
        m = re.search(r"namespaces (vf[0-9a-f]+-)\*", self.progress)
        return m.group(1) if m else None

    def finish(self, timeout: float) -> tuple[int, dict]:
        self.proc.wait(timeout=timeout)
        self.reader.join(10)
        self.out_reader.join(10)
        return self.proc.returncode, json.loads("".join(self.stdout))


def test_the_demo_shows_every_node_serving_a_measured_failover_and_a_drain_that_resets_nothing():
    demo = RunningDemo()
    try:
        rc, summary = demo.finish(timeout=400)
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
    progress = demo.progress
    assert summary["errors"] == [], progress
    assert rc == 0, progress
    assert set(summary["distribution"]) == {"n1", "n2", "n3"}
    assert all(n > 0 for n in summary["distribution"].values()), summary
    assert summary["matches_weights"] is True, summary
    assert isinstance(summary["failover_ms"], (int, float)) and 0 < summary["failover_ms"] < FAILOVER_BOUND_MS
    assert summary["crashed_clients"] > 0 and summary["held_on_drained"] > 0, summary
    assert summary["connections_reset"] == 0 and summary["rejoin_reset"] == 0, summary
    assert summary["new_to_drained"] == 0, summary
    # What a newcomer reads: a bar per node, the failover, the drain, the teardown.
    assert re.search(r"n2  weight 2  buckets  512  connections +\d+ .*#", progress), progress
    assert "after the crash as they saw it" in progress and "nothing left behind" in progress, progress
    assert summary["lab"] and lab_namespaces(summary["lab"]) == []
    print(f"demo: {summary['duration_s']} s, failover {summary['failover_ms']} ms, "
          f"distribution {summary['distribution']}")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_an_interrupted_demo_exits_soon_and_leaves_nothing_behind(sig):
    demo = RunningDemo()
    try:
        # Once the lab exists and its servers and agents run (the agents are compiling).
        wait_for(lambda: "compiling" in demo.progress or demo.proc.poll() is not None, 60,
                 "the demo to start its agents")
        assert demo.proc.poll() is None, demo.progress
        prefix = demo.prefix()
        assert prefix and lab_namespaces(prefix), demo.progress
        time.sleep(2)
        procs = descendants(demo.proc.pid)
        for ns in lab_namespaces(prefix):
            procs |= {pid: st[1] for pid in ns_pids(ns) if (st := _stat(pid))}
        assert len(procs) >= 7, (procs, demo.progress)      # the demo, 3 servers, 3 agents at least
        t = time.monotonic()
        if sig == signal.SIGINT:
            os.killpg(demo.proc.pid, sig)         # what Ctrl-C in a terminal does
        else:
            demo.proc.send_signal(sig)
        rc, summary = demo.finish(timeout=60)
        took = time.monotonic() - t
    finally:
        if demo.proc.poll() is None:
            demo.proc.kill()
    assert rc == 128 + sig, demo.progress
    assert any(f"interrupted by {signal.Signals(sig).name}" in e for e in summary["errors"]), summary
    assert lab_namespaces(prefix) == []
    assert not os.path.exists(f"/sys/fs/bpf/vipfarm-lab/{prefix.rstrip('-')}")
    assert still_running(procs) == [], (still_running(procs), demo.progress)
    print(f"{signal.Signals(sig).name}: exited {took:.1f} s after the signal with {rc}")
