"""vipfarm.checks: the checker thresholds, the recovery budget (a sliding window, like SafeKit's
maxloop) and the node's verdict, as pure transitions on an injected clock."""
from __future__ import annotations

from vipfarm.checks import (CHECKER_TRANSITION, FAILING, PASSING, RECOVERY_BUDGET_EXHAUSTED_EVENT,
                            RECOVERY_FINISHED, RECOVERY_STARTED, UNKNOWN, CheckerState, Event, Health,
                            ProbeResult, RecoveryState, farm_health, initial_state, observe, recovery_finished,
                            recovery_step, retry_gap, transition_event)
from vipfarm.spec import Checker, Recovery

TCP = Checker("web", "tcp", port=80, host="127.0.0.1", failure_threshold=3, success_threshold=2)
OK = ProbeResult(True, "tcp 127.0.0.1:80: connected")
BAD = ProbeResult(False, "tcp 127.0.0.1:80: connection refused")


def run(results, checker=TCP, state=None):
    """Feed results one second apart; the states after each."""
    state = state or initial_state(checker, 0.0)
    out = []
    for i, r in enumerate(results, 1):
        state = observe(state, r, checker, float(i))
        out.append(state)
    return out


def test_a_checker_starts_unknown_and_unknown_does_not_serve():
    s = initial_state(TCP, 0.0)
    assert s.state == UNKNOWN
    health = farm_health([s], RecoveryState())
    assert health == Health(False, "CheckerStarting", "web", "not probed yet")


def test_passing_needs_success_threshold_successes_in_a_row():
    states = run([OK, BAD, OK, OK])
    assert [s.state for s in states] == [UNKNOWN, UNKNOWN, UNKNOWN, PASSING]
    assert states[-1].since == 4.0


def test_failing_needs_failure_threshold_failures_in_a_row_from_passing():
    passing = run([OK, OK])[-1]
    states = run([BAD, BAD, OK, BAD, BAD, BAD], state=passing)
    assert [s.state for s in states] == [PASSING, PASSING, PASSING, PASSING, PASSING, FAILING]
    assert states[-1].detail == BAD.detail


def test_failing_from_unknown_after_failure_threshold():
    assert [s.state for s in run([BAD, BAD, BAD])] == [UNKNOWN, UNKNOWN, FAILING]


def test_a_failing_checker_passes_again_after_success_threshold_successes():
    failing = run([BAD, BAD, BAD])[-1]
    assert [s.state for s in run([OK, BAD, OK, OK], state=failing)] == [FAILING, FAILING, FAILING, PASSING]


def test_thresholds_of_one_flip_on_each_result():
    one = Checker("l", "interface", interface="lo", failure_threshold=1, success_threshold=1)
    assert [s.state for s in run([OK, BAD, OK], checker=one)] == [PASSING, FAILING, PASSING]


def test_a_transition_yields_an_event_with_the_farmnode_checks_entry_shape():
    before = run([OK])[-1]
    after = observe(before, OK, TCP, 2.0)
    event = transition_event("shop", before, after, 2.0)
    assert event == Event(CHECKER_TRANSITION, "shop", "web", "tcp", UNKNOWN, PASSING, OK.detail, 2.0)
    assert event.to_dict() == {"name": "web", "type": "tcp", "state": PASSING, "detail": OK.detail, "since": 2.0}
    assert transition_event("shop", after, observe(after, OK, TCP, 3.0), 3.0) is None


def test_health_is_ok_only_when_every_checker_passes_and_names_the_failing_one():
    a = CheckerState("a", "tcp", PASSING)
    b = CheckerState("b", "exec", FAILING, detail="exec: exit 1")
    c = CheckerState("c", "http", UNKNOWN)
    assert farm_health([a], None) == Health(True, "CheckersPassing")
    assert farm_health([a, c], None).reason == "CheckerStarting"
    assert farm_health([a, c, b], None) == Health(False, "CheckerFailing", "b", "exec: exit 1")
    assert farm_health([], None) == Health(True, "NoCheckers")


# -- recovery ------------------------------------------------------------------------------------

REC = Recovery(("restart",), timeout_seconds=5, max_restarts=2, window_seconds=100)
FAIL = [CheckerState("web", "tcp", FAILING, detail=BAD.detail)]
PASS = [CheckerState("web", "tcp", PASSING, detail=OK.detail)]


def test_recovery_starts_when_a_checker_fails_and_reports_recovering():
    rs, start, events = recovery_step(RecoveryState(), REC, FAIL, 3.0, 10.0, "shop")
    assert start and rs.running and rs.runs == (10.0,)
    assert [e.kind for e in events] == [RECOVERY_STARTED] and "run 1 of 2" in events[0].detail
    assert farm_health(FAIL, rs) == Health(False, "Recovering", "web", BAD.detail)
    # while it runs, nothing else starts
    assert recovery_step(rs, REC, FAIL, 3.0, 11.0, "shop")[1] is False


def test_a_failed_run_is_reported_and_retried_only_after_the_gap():
    rs, _, _ = recovery_step(RecoveryState(), REC, FAIL, 3.0, 10.0, "shop")
    rs, event = recovery_finished(rs, ProbeResult(False, "exit 1"), 12.0, "shop", "web")
    assert event.kind == RECOVERY_FINISHED and event.to_state == "failed" and event.detail == "exit 1"
    health = farm_health(FAIL, rs)
    assert health.reason == "RecoveryFailed" and "exit 1" in health.detail
    assert recovery_step(rs, REC, FAIL, 3.0, 14.9, "shop")[1] is False, "retried before failureThreshold x interval"
    rs, start, _ = recovery_step(rs, REC, FAIL, 3.0, 15.0, "shop")
    assert start and rs.runs == (10.0, 15.0)


def test_the_budget_allows_max_restarts_in_the_window_then_is_exhausted():
    rs = RecoveryState()
    for t in (10.0, 20.0):
        rs, start, _ = recovery_step(rs, REC, FAIL, 3.0, t, "shop")
        assert start
        rs, _ = recovery_finished(rs, ProbeResult(True, "exit 0"), t + 1, "shop", "web")
    rs, start, events = recovery_step(rs, REC, FAIL, 3.0, 30.0, "shop")
    assert not start and rs.exhausted
    assert [e.kind for e in events] == [RECOVERY_BUDGET_EXHAUSTED_EVENT]
    assert "maxRestarts is 2" in events[0].detail
    assert farm_health(FAIL, rs).reason == "RecoveryBudgetExhausted"
    # exhausted is said once, not on every step
    assert recovery_step(rs, REC, FAIL, 3.0, 31.0, "shop")[2] == []


def test_the_budget_window_slides_so_an_old_run_frees_a_restart():
    rs = RecoveryState(runs=(10.0, 60.0), last_ended=61.0, last_ok=True)
    assert recovery_step(rs, REC, FAIL, 3.0, 109.9, "shop")[1] is False     # 10.0 is still inside (now - 100)
    rs2, start, _ = recovery_step(rs, REC, FAIL, 3.0, 110.0, "shop")         # 10.0 has left the window
    assert start and rs2.runs == (60.0, 110.0)


def test_exhausted_then_passing_rejoins_and_the_budget_keeps_its_history():
    rs = RecoveryState(runs=(10.0, 20.0), last_ended=21.0, last_ok=True, exhausted=True)
    assert farm_health(FAIL, rs).reason == "RecoveryBudgetExhausted"
    rs, start, _ = recovery_step(rs, REC, PASS, 3.0, 40.0, "shop")
    assert not start and not rs.exhausted and rs.runs == (10.0, 20.0)
    assert farm_health(PASS, rs) == Health(True, "CheckersPassing")
    # failing again inside the window: still no run left
    rs, start, events = recovery_step(rs, REC, FAIL, 3.0, 50.0, "shop")
    assert not start and rs.exhausted and events[0].kind == RECOVERY_BUDGET_EXHAUSTED_EVENT


def test_max_restarts_zero_never_runs_and_says_the_budget_is_exhausted():
    rs, start, events = recovery_step(RecoveryState(), Recovery(("x",), max_restarts=0), FAIL, 3.0, 1.0, "shop")
    assert not start and rs.exhausted and events[0].kind == RECOVERY_BUDGET_EXHAUSTED_EVENT


def test_no_recovery_configured_leaves_the_reason_checker_failing():
    rs, start, events = recovery_step(RecoveryState(), None, FAIL, 3.0, 1.0, "shop")
    assert (start, events) == (False, []) and farm_health(FAIL, rs).reason == "CheckerFailing"


def test_retry_gap_is_failure_threshold_times_interval_of_the_slowest_failing_checker():
    fast = Checker("a", "interface", interface="lo", interval_ms=100, failure_threshold=2)
    slow = Checker("b", "interface", interface="lo", interval_ms=1000, failure_threshold=3)
    states = [CheckerState("a", "interface", FAILING), CheckerState("b", "interface", FAILING)]
    assert retry_gap([fast, slow], states) == 3.0
    assert retry_gap([fast, slow], states[:1]) == 0.2
