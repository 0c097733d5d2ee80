"""The checkers' imperative shell: real probes with real timeouts, and a runner per farm.

The decisions (thresholds, recovery budget, the verdict) are vipfarm.checks, pure code; this
module measures and executes. CheckRunner runs one scheduler thread per farm: each checker is
probed on its own drift-free schedule (monotonic clock) in a short-lived worker thread, so a
slow probe never delays another checker; a probe past its timeout is a failure, and a checker
is never probed again while its previous probe is still running. The recovery command runs
in a thread of its own, in its own process group, killed with the group past its timeout.
"""
from __future__ import annotations

import dataclasses
import http.client
import logging
import os
import signal
import socket
import subprocess
import threading
import time
from typing import Callable, Mapping, Sequence

from vipfarm.checks import (CHECKER_TRANSITION, Event, Health, ProbeResult, RecoveryState, farm_health,
                            initial_state, observe, recovery_finished, recovery_step, retry_gap,
                            transition_event)
from vipfarm.spec import Checker, Farm
from vipfarm.timestamps import utc_now

from .rtnl import link_state

log = logging.getLogger("vipfarm.checkers")
_DEADLINE_GRACE = 0.1   # the scheduler's own deadline, past the probe's: the probe times itself out first


def _kv(value: str) -> str:
    value = value.replace('"', "'").replace("\n", " ")
    return f'"{value}"' if (not value or any(c.isspace() for c in value)) else value


def _ms(seconds: float) -> int:
    return int(round(seconds * 1000))


# -- probes --------------------------------------------------------------------------------------

def _addr(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _os_reason(e: OSError) -> str:
    return e.strerror.lower() if e.strerror else (str(e) or type(e).__name__)


def probe_tcp(host: str, port: int, timeout: float) -> ProbeResult:
    where = f"tcp {_addr(host, port)}"
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return ProbeResult(True, f"{where}: connected")
    except socket.timeout:
        return ProbeResult(False, f"{where}: timed out after {_ms(timeout)} ms")
    except OSError as e:
        return ProbeResult(False, f"{where}: {_os_reason(e)}")


def probe_http(host: str, port: int, path: str, expect: Sequence[int], timeout: float) -> ProbeResult:
    where = f"http {_addr(host, port)}{path}"
    start = time.monotonic()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", path, headers={"User-Agent": "vipfarm-checker", "Connection": "close"})
        resp = conn.getresponse()
        resp.read(65536)
        if time.monotonic() - start > timeout:
            return ProbeResult(False, f"{where}: timed out after {_ms(timeout)} ms (status {resp.status})")
        if resp.status in expect:
            return ProbeResult(True, f"{where}: status {resp.status}")
        return ProbeResult(False, f"{where}: status {resp.status} (expected {', '.join(map(str, expect))})")
    except socket.timeout:
        return ProbeResult(False, f"{where}: timed out after {_ms(timeout)} ms")
    except OSError as e:
        return ProbeResult(False, f"{where}: {_os_reason(e)}")
    except http.client.HTTPException as e:
        return ProbeResult(False, f"{where}: bad HTTP response ({type(e).__name__}: {e})")
    finally:
        conn.close()


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def run_command(command: Sequence[str], timeout: float, what: str,
                started: Callable[[subprocess.Popen], None] | None = None, timeout_text: str = "",
                env: Mapping[str, str] | None = None) -> ProbeResult:
    """Run a command in its own process group; killed with the group past `timeout`; judged by
    its exit code. `started` receives the process (so a stop() can kill it). `env` is added to
    the agent's environment (VIPFARM_NODE, VIPFARM_FARM, VIPFARM_CHECKER)."""
    try:
        proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True, close_fds=True,
                                env={**os.environ, **env} if env else None)
    except OSError as e:
        return ProbeResult(False, f"{what}: cannot run {command[0]!r}: {_os_reason(e)}")
    if started is not None:
        started(proc)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill_group(proc)
        proc.wait()
        return ProbeResult(False, f"{what}: timed out after {timeout_text or f'{_ms(timeout)} ms'}, "
                                  f"process group killed")
    if rc < 0:
        return ProbeResult(False, f"{what}: killed by signal {-rc}")
    return ProbeResult(rc == 0, f"{what}: exit {rc}")


def read_link(name: str) -> dict | None:
    """The interface's operstate and carrier, from netlink in the agent's own network namespace
    (not /sys/class/net, which shows the namespace sysfs was mounted in); None if it is missing.
    A plain rtnetlink request (nodeagent/rtnl.py): well under a millisecond, so a short
    timeoutMs holds on a busy node."""
    return link_state(name)


def interface_verdict(name: str, link: dict | None) -> ProbeResult:
    """Up with a carrier (operstate up, or unknown as on lo) passes; anything else fails, saying what it saw."""
    where = f"interface {name}"
    if link is None:
        return ProbeResult(False, f"{where}: no such interface")
    carrier, operstate = link.get("carrier"), link.get("operstate")
    if carrier == 1 and operstate in ("up", "unknown"):
        return ProbeResult(True, f"{where}: carrier 1, operstate {operstate}")
    return ProbeResult(False, f"{where}: carrier {carrier}, operstate {operstate}")


def probe_interface(name: str, read: Callable[[str], dict | None] = read_link) -> ProbeResult:
    try:
        return interface_verdict(name, read(name))
    except OSError as e:
        return ProbeResult(False, f"interface {name}: cannot read its state: {_os_reason(e)}")


def probe(checker: Checker, started: Callable[[subprocess.Popen], None] | None = None,
          env: Mapping[str, str] | None = None) -> ProbeResult:
    """One probe of `checker`, within its timeout."""
    timeout = checker.timeout_ms / 1000.0
    start = time.monotonic()
    if checker.type == "tcp":
        result = probe_tcp(checker.host, checker.port, timeout)
    elif checker.type == "http":
        result = probe_http(checker.host, checker.port, checker.path, checker.expect_status, timeout)
    elif checker.type == "exec":
        result = run_command(checker.command, timeout, "exec", started, env=env)
    elif checker.type == "interface":
        result = probe_interface(checker.interface)
    else:
        return ProbeResult(False, f"unknown checker type {checker.type!r}")
    if result.ok and time.monotonic() - start > timeout:
        return ProbeResult(False, f"timed out after {checker.timeout_ms} ms ({result.detail})")
    return result


# -- the runner ----------------------------------------------------------------------------------

TIMED_OUT = "timed out after"     # how every timeout above (and the scheduler's) starts its detail


def probe_outcome(result: ProbeResult) -> str:
    """pass, fail or timeout: the `result` label of vipfarm_checker_runs_total."""
    if result.ok:
        return "pass"
    return "timeout" if TIMED_OUT in result.detail else "fail"


@dataclasses.dataclass(frozen=True)
class CheckerRecord:
    """One checker as the observability endpoint shows it (CheckRunner.observed)."""
    name: str
    state: str                          # vipfarm.checks: unknown, passing, failing
    last_run: str                       # RFC 3339 of the last probe result, "" before the first
    runs: Mapping[str, int]             # probe_outcome -> count
    recovery_runs: Mapping[str, int]    # "ok" / "failed" -> recovery runs this checker's failure caused


@dataclasses.dataclass
class _Slot:
    """The scheduling of one checker."""
    checker: Checker
    due: float
    busy: bool = False                  # a probe worker is running (never two at once)
    deadline: float = 0.0
    result: ProbeResult | None = None   # delivered by the worker, taken by the scheduler
    abandoned: bool = False             # the scheduler already counted this probe as timed out
    proc: subprocess.Popen | None = None


class CheckRunner:
    """Runs one farm's checkers and its recovery; calls on_change(health, events) from its
    thread whenever the farm's Health changes or a transition happened (events, possibly
    with the Health unchanged, e.g. one checker passing while another is still starting). A farm without checkers is always ok (reason
    NoCheckers) and gets no thread."""

    def __init__(self, farm: Farm, on_change: Callable[[Health, list[Event]], None],
                 clock: Callable[[], float] = time.monotonic, node: str = ""):
        self.farm = farm
        # exec checkers and the recovery command learn where they run from their environment
        self.env = {"VIPFARM_FARM": farm.name, **({"VIPFARM_NODE": node} if node else {})}
        self._on_change = on_change
        self._clock = clock
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        now = clock()
        self._slots = [_Slot(c, now) for c in farm.checkers]
        self._states = [initial_state(c, now) for c in farm.checkers]
        self._recovery = RecoveryState()
        self._recovery_proc: subprocess.Popen | None = None
        self._recovery_thread: threading.Thread | None = None
        self._recovery_result: ProbeResult | None = None
        self._recovery_checker = ""
        self._health = farm_health(self._states, self._recovery)
        self._runs: dict[str, dict[str, int]] = {c.name: {} for c in farm.checkers}
        self._recoveries: dict[str, dict[str, int]] = {c.name: {} for c in farm.checkers}
        self._last_run: dict[str, str] = {}
        self.observed: tuple[CheckerRecord, ...] = ()    # replaced whole, read without the lock
        self._publish()

    # -- public ------------------------------------------------------------------------------

    def start(self) -> None:
        if not self.farm.checkers or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name=f"checkers-{self.farm.name}", daemon=True)
        self._thread.start()
        log.info("event=checkers_started farm=%s checkers=%s recovery=%s", self.farm.name,
                 ",".join(c.name for c in self.farm.checkers), "yes" if self.farm.recovery else "no")

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stopping = True
            procs = [s.proc for s in self._slots if s.proc is not None] + [self._recovery_proc]
            self._cond.notify_all()
        for proc in procs:
            if proc is not None and proc.poll() is None:
                _kill_group(proc)
        if self._thread is not None:
            self._thread.join(timeout)
        if self._recovery_thread is not None:
            self._recovery_thread.join(timeout)

    def health(self) -> Health:
        with self._cond:
            return self._health

    # -- the scheduler thread ----------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._cond:
                if self._stopping:
                    return
                now = self._clock()
                events = self._collect(now)
                events += self._schedule(now)
                health = farm_health(self._states, self._recovery)
                changed = health != self._health
                self._health = health
                wait = self._next_wake(now)
            stamp = utc_now()
            events = [dataclasses.replace(e, since=stamp) for e in events]
            for e in events:
                self._log(e)
            if changed:
                log.info("event=checks_health farm=%s ok=%s reason=%s checker=%s detail=%s", self.farm.name,
                         str(health.ok).lower(), health.reason, health.checker or "-", _kv(health.detail))
            if changed or events:
                try:
                    self._on_change(health, events)
                except Exception as e:     # a bad callback must not stop the checks
                    log.error("event=checks_callback_failed farm=%s error=%s", self.farm.name, _kv(repr(e)))
            with self._cond:     # a result delivered while the lock was free is not waited past
                pending = self._recovery_result is not None or any(s.result is not None for s in self._slots)
                if not self._stopping and not pending and wait > 0:
                    self._cond.wait(wait)

    def _collect(self, now: float) -> list[Event]:
        """Results of finished or overdue probes and of a finished recovery, through the state machines."""
        events: list[Event] = []
        for i, slot in enumerate(self._slots):
            result = None
            if slot.result is not None:
                result, slot.result = slot.result, None
            elif slot.busy and not slot.abandoned and now >= slot.deadline:
                slot.abandoned = True   # counted now; the worker's late answer is dropped
                result = ProbeResult(False, f"timed out after {slot.checker.timeout_ms} ms")
            if result is not None:
                counts = self._runs[slot.checker.name]
                outcome = probe_outcome(result)
                counts[outcome] = counts.get(outcome, 0) + 1
                self._last_run[slot.checker.name] = utc_now()
                before = self._states[i]
                self._states[i] = observe(before, result, slot.checker, now)
                event = transition_event(self.farm.name, before, self._states[i], now)
                if event is not None:
                    events.append(event)
        if self._recovery_result is not None:
            result, self._recovery_result = self._recovery_result, None
            counts = self._recoveries.setdefault(self._recovery_checker, {})
            outcome = "ok" if result.ok else "failed"
            counts[outcome] = counts.get(outcome, 0) + 1
            self._recovery, event = recovery_finished(self._recovery, result, now, self.farm.name,
                                                      self._recovery_checker)
            events.append(event)
        gap = retry_gap(self.farm.checkers, self._states)
        self._recovery, start, rec_events = recovery_step(self._recovery, self.farm.recovery, self._states,
                                                          gap, now, self.farm.name)
        events += rec_events
        if start:
            self._start_recovery(rec_events[0].checker)
        self._publish()
        return events

    def _publish(self) -> None:
        self.observed = tuple(CheckerRecord(c.name, st.state, self._last_run.get(c.name, ""),
                                            dict(self._runs[c.name]), dict(self._recoveries.get(c.name, {})))
                              for c, st in zip(self.farm.checkers, self._states))

    def _schedule(self, now: float) -> list[Event]:
        for slot in self._slots:
            if slot.busy or now < slot.due:
                continue
            interval = slot.checker.interval_ms / 1000.0
            slot.due += interval
            if slot.due <= now:     # behind (a suspended process): skip the missed beats, keep the phase
                slot.due += interval * (int((now - slot.due) / interval) + 1)
            slot.busy, slot.abandoned, slot.result = True, False, None
            slot.deadline = now + slot.checker.timeout_ms / 1000.0 + _DEADLINE_GRACE
            threading.Thread(target=self._probe_worker, args=(slot,), daemon=True,
                             name=f"probe-{self.farm.name}-{slot.checker.name}").start()
        return []

    def _next_wake(self, now: float) -> float:
        times = [s.deadline if s.busy and not s.abandoned else s.due for s in self._slots if not s.busy or
                 not s.abandoned]
        return max(0.0, min(times, default=now + 1.0) - now)

    def _probe_worker(self, slot: _Slot) -> None:
        def started(proc: subprocess.Popen) -> None:
            with self._cond:
                slot.proc = proc
                if self._stopping:
                    _kill_group(proc)
        try:
            result = probe(slot.checker, started, dict(self.env, VIPFARM_CHECKER=slot.checker.name))
        except Exception as e:     # a probe bug is a failed probe, not a dead runner
            result = ProbeResult(False, f"probe error: {type(e).__name__}: {e}")
        with self._cond:
            slot.proc = None
            slot.busy = False
            if not slot.abandoned:
                slot.result = result
            self._cond.notify_all()

    # -- recovery ----------------------------------------------------------------------------

    def _start_recovery(self, checker: str) -> None:
        recovery = self.farm.recovery
        assert recovery is not None
        self._recovery_checker = checker

        def started(proc: subprocess.Popen) -> None:
            with self._cond:
                self._recovery_proc = proc
                if self._stopping:
                    _kill_group(proc)

        def work() -> None:
            try:
                result = run_command(recovery.command, float(recovery.timeout_seconds), "recovery", started,
                                     f"{recovery.timeout_seconds} s", dict(self.env, VIPFARM_CHECKER=checker))
            except Exception as e:
                result = ProbeResult(False, f"recovery error: {type(e).__name__}: {e}")
            with self._cond:
                self._recovery_proc = None
                self._recovery_result = result
                self._cond.notify_all()

        self._recovery_thread = threading.Thread(target=work, daemon=True, name=f"recovery-{self.farm.name}")
        self._recovery_thread.start()

    def _log(self, e: Event) -> None:
        fields = " ".join(f"{k}={_kv(str(v))}" for k, v in e.log_fields().items())
        level = logging.INFO if e.kind in (CHECKER_TRANSITION, "recovery_started") or e.to_state == "succeeded" \
            else logging.WARNING
        log.log(level, "event=%s %s", e.kind, fields)


class CheckRunners(dict):
    """An agent's CheckRunner per farm with checkers, keyed by farm name. update() makes it
    match a farm list: a runner whose checkers, recovery and interface did not change keeps
    running (and keeps its state) across a reload; on_started(name, health) and
    on_removed(name) let the agent keep its own per-farm records (under its own lock)."""

    def __init__(self, node: str, on_change: Callable[[str, Health, list[Event]], None],
                 on_started: Callable[[str, Health], None], on_removed: Callable[[str], None]):
        super().__init__()
        self.node = node
        self._on_change = on_change
        self._on_started = on_started
        self._on_removed = on_removed

    def update_farms(self, farms: list[Farm]) -> None:
        wanted = {f.name: f for f in farms if f.checkers}
        for name in list(self):
            old, new = self[name].farm, wanted.get(name)
            if new is None or (new.checkers, new.recovery, new.interface) != (old.checkers, old.recovery, old.interface):
                self.pop(name).stop()
                self._on_removed(name)
        for name, farm in wanted.items():
            if name not in self:
                runner = CheckRunner(farm, lambda h, ev, name=name: self._on_change(name, h, ev), node=self.node)
                self._on_started(name, runner.health())
                self[name] = runner
                runner.start()

    def stop_all(self) -> None:
        for runner in self.values():
            runner.stop()
