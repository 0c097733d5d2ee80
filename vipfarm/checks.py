"""Checkers and recovery as pure state machines: the node's verdict on whether it may serve a farm.

No I/O and no clock of its own: every function takes `now` (seconds on a monotonic clock) and
the probe results the shell (nodeagent/checkers.py) measured. Each transition yields an Event
that the shell logs (`event=checker_transition ...`, `event=recovery_started ...`) and that
cluster mode turns into a Kubernetes Event and a FarmNode `checks` entry (Event.to_dict()).

The rules:
- a checker starts `unknown`, which counts as not passing: a node serves a farm only once every
  checker has passed successThreshold times in a row;
- it is `failing` after failureThreshold consecutive failures (from unknown or passing), and
  `passing` again after successThreshold consecutive successes;
- recovery (spec.recovery) runs when a checker enters `failing`, and again after each run ends
  while one is still failing, at most once per failureThreshold x intervalMs of the failing
  checkers, and at most maxRestarts times in any windowSeconds (SafeKit's maxloop). With the
  budget used up the node stays out, reporting RecoveryBudgetExhausted, until its checkers pass
  again; it then rejoins and the budget keeps its history.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Sequence

from .spec import Checker, Recovery

UNKNOWN = "unknown"
PASSING = "passing"
FAILING = "failing"

# Health reasons
NO_CHECKERS = "NoCheckers"
CHECKERS_PASSING = "CheckersPassing"
CHECKER_STARTING = "CheckerStarting"
CHECKER_FAILING = "CheckerFailing"
RECOVERING = "Recovering"
RECOVERY_FAILED = "RecoveryFailed"
RECOVERY_BUDGET_EXHAUSTED = "RecoveryBudgetExhausted"

# Event kinds (the `event=` of the log line)
CHECKER_TRANSITION = "checker_transition"
RECOVERY_STARTED = "recovery_started"
RECOVERY_FINISHED = "recovery_finished"
RECOVERY_BUDGET_EXHAUSTED_EVENT = "recovery_budget_exhausted"


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str     # what the probe saw, e.g. "tcp 127.0.0.1:80: connection refused"


@dataclass(frozen=True)
class CheckerState:
    name: str
    type: str
    state: str = UNKNOWN
    successes: int = 0      # consecutive
    failures: int = 0       # consecutive
    detail: str = "not probed yet"
    since: float = 0.0      # when `state` was entered


@dataclass(frozen=True)
class Event:
    """One transition: a checker's (kind checker_transition) or the recovery's. For recovery
    events `checker` names the failing checker that caused it and `type` is "recovery"."""
    kind: str
    farm: str
    checker: str
    type: str
    from_state: str
    to_state: str
    detail: str
    at: float               # on the injected clock
    since: str = ""         # wall-clock RFC 3339, filled in by the shell

    def to_dict(self) -> dict:
        """The FarmNode `checks` entry shape."""
        name = self.checker if self.kind == CHECKER_TRANSITION else "recovery"
        return {"name": name, "type": self.type, "state": self.to_state, "detail": self.detail,
                "since": self.since or self.at}

    def log_fields(self) -> dict:
        return {"farm": self.farm, "checker": self.checker, "type": self.type, "from": self.from_state,
                "to": self.to_state, "detail": self.detail}


@dataclass(frozen=True)
class Health:
    ok: bool
    reason: str
    checker: str = ""       # the checker the reason is about ("" when ok)
    detail: str = ""        # what that checker saw


def initial_state(checker: Checker, now: float) -> CheckerState:
    return CheckerState(checker.name, checker.type, since=now)


def observe(state: CheckerState, result: ProbeResult, checker: Checker, now: float) -> CheckerState:
    """The checker's state after one probe result."""
    if result.ok:
        successes, failures = state.successes + 1, 0
        new = PASSING if successes >= checker.success_threshold else state.state
    else:
        successes, failures = 0, state.failures + 1
        new = FAILING if failures >= checker.failure_threshold else state.state
    since = now if new != state.state else state.since
    return dataclasses.replace(state, state=new, successes=successes, failures=failures,
                               detail=result.detail, since=since)


def transition_event(farm: str, before: CheckerState, after: CheckerState, now: float) -> Event | None:
    """The event for a state change, None if the state stayed."""
    if before.state == after.state:
        return None
    return Event(CHECKER_TRANSITION, farm, after.name, after.type, before.state, after.state, after.detail, now)


# -- recovery ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RecoveryState:
    runs: tuple[float, ...] = ()        # start times of the runs inside the window
    running: bool = False
    last_ended: float | None = None
    last_ok: bool | None = None         # the outcome of the last run in this failure; None: no run yet
    last_detail: str = ""
    exhausted: bool = False


def _first(states: Sequence[CheckerState], state: str) -> CheckerState | None:
    return next((s for s in states if s.state == state), None)


def retry_gap(checkers: Sequence[Checker], states: Sequence[CheckerState]) -> float:
    """Seconds between the end of one run and the next: failureThreshold x intervalMs of the
    slowest failing checker."""
    by_name = {c.name: c for c in checkers}
    gaps = [by_name[s.name].failure_threshold * by_name[s.name].interval_ms / 1000.0
            for s in states if s.state == FAILING and s.name in by_name]
    return max(gaps, default=0.0)


def recovery_step(rs: RecoveryState, recovery: Recovery | None, states: Sequence[CheckerState],
                  gap: float, now: float, farm: str) -> tuple[RecoveryState, bool, list[Event]]:
    """Decide whether to start a recovery run now. Returns the new state, whether the shell
    must start the command, and the events."""
    if recovery is None:
        return rs, False, []
    window_start = now - recovery.window_seconds
    runs = tuple(t for t in rs.runs if t > window_start)
    rs = dataclasses.replace(rs, runs=runs)
    failing = _first(states, FAILING)
    if failing is None:
        if _first(states, UNKNOWN) is None:     # every checker passes: rejoin, the budget keeps its history
            rs = dataclasses.replace(rs, exhausted=False, last_ok=None, last_detail="")
        return rs, False, []
    if rs.running:
        return rs, False, []
    if rs.last_ended is not None and now - rs.last_ended < gap:
        return rs, False, []
    if len(runs) >= recovery.max_restarts:
        if rs.exhausted:
            return rs, False, []
        detail = (f"{len(runs)} run(s) in the last {recovery.window_seconds} s, maxRestarts is "
                  f"{recovery.max_restarts}; the node stays out until its checkers pass")
        event = Event(RECOVERY_BUDGET_EXHAUSTED_EVENT, farm, failing.name, "recovery", "idle", "exhausted",
                      detail, now)
        return dataclasses.replace(rs, exhausted=True), False, [event]
    detail = f"checker {failing.name} failing ({failing.detail}); run {len(runs) + 1} of {recovery.max_restarts}"
    event = Event(RECOVERY_STARTED, farm, failing.name, "recovery", "idle", "running", detail, now)
    return dataclasses.replace(rs, runs=runs + (now,), running=True), True, [event]


def recovery_finished(rs: RecoveryState, result: ProbeResult, now: float, farm: str,
                      checker: str) -> tuple[RecoveryState, Event]:
    """Record the end of a run (a failure or a timeout counts against the budget like a success:
    the run was made)."""
    event = Event(RECOVERY_FINISHED, farm, checker, "recovery", "running",
                  "succeeded" if result.ok else "failed", result.detail, now)
    return dataclasses.replace(rs, running=False, last_ended=now, last_ok=result.ok,
                               last_detail=result.detail), event


def farm_health(states: Sequence[CheckerState], recovery_state: RecoveryState | None) -> Health:
    """The node's check verdict for one farm."""
    if not states:
        return Health(True, NO_CHECKERS)
    failing = _first(states, FAILING)
    if failing is not None:
        rs = recovery_state
        if rs is not None and rs.exhausted:
            return Health(False, RECOVERY_BUDGET_EXHAUSTED, failing.name, failing.detail)
        if rs is not None and rs.running:
            return Health(False, RECOVERING, failing.name, failing.detail)
        if rs is not None and rs.last_ok is False:
            return Health(False, RECOVERY_FAILED, failing.name, f"{failing.detail}; recovery: {rs.last_detail}")
        return Health(False, CHECKER_FAILING, failing.name, failing.detail)
    starting = _first(states, UNKNOWN)
    if starting is not None:
        return Health(False, CHECKER_STARTING, starting.name, starting.detail)
    return Health(True, CHECKERS_PASSING)
