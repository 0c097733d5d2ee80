"""Kubernetes Events for checker and recovery transitions: which transition says what
(vipfarm/farm_events.py, pure), the events.k8s.io/v1 body, the rate limit, and the agent's
poster (nodeagent/event_poster.py) against a fake create() that records what it was sent."""
from __future__ import annotations

import datetime
import logging
import re
import threading

import pytest

from nodeagent.event_poster import EventPoster
from vipfarm.checks import (CHECKER_TRANSITION, RECOVERY_BUDGET_EXHAUSTED_EVENT, RECOVERY_FINISHED,
                            RECOVERY_STARTED, Event)
from vipfarm.farm_events import (AGENT_CONTROLLER, Due, EventLimiter, FarmEvent, checks_event, event_body,
                                 event_name, micro_time)

AT = datetime.datetime(2026, 12, 2, 3, 4, 5, 678901, tzinfo=datetime.timezone.utc)
DNS_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def transition(frm, to, detail="tcp 127.0.0.1:80: connection refused"):
    return Event(CHECKER_TRANSITION, "web", "app", "tcp", frm, to, detail, 1.0)


def recovery(kind, to, detail):
    return Event(kind, "web", "app", "recovery", "running" if kind == RECOVERY_FINISHED else "idle", to, detail, 2.0)


@pytest.mark.parametrize("event,reason,type_,action,says", [
    (transition("passing", "failing"), "CheckerFailing", "Warning", "Check",
     "node n2: checker app (tcp) passing -> failing: tcp 127.0.0.1:80: connection refused"),
    (transition("unknown", "failing"), "CheckerFailing", "Warning", "Check", "unknown -> failing"),
    (transition("failing", "passing", "tcp 127.0.0.1:80: connected"), "CheckerPassing", "Normal", "Check",
     "node n2: checker app (tcp) failing -> passing: tcp 127.0.0.1:80: connected"),
    (recovery(RECOVERY_STARTED, "running", "checker app failing (refused); run 1 of 3"), "RecoveryStarted",
     "Normal", "Recover", "node n2: recovery started (checker app): checker app failing (refused); run 1 of 3"),
    (recovery(RECOVERY_FINISHED, "succeeded", "recovery: exit 0"), "RecoverySucceeded", "Normal", "Recover",
     "node n2: recovery succeeded (checker app): recovery: exit 0"),
    (recovery(RECOVERY_FINISHED, "failed", "recovery: exit 3"), "RecoveryFailed", "Warning", "Recover",
     "recovery failed (checker app): recovery: exit 3"),
    (recovery(RECOVERY_BUDGET_EXHAUSTED_EVENT, "exhausted", "3 run(s) in the last 86400 s, maxRestarts is 3"),
     "RecoveryBudgetExhausted", "Warning", "Recover", "maxRestarts is 3"),
], ids=["failing", "failing-at-start", "passing-again", "recovery-started", "recovery-succeeded",
        "recovery-failed", "budget-exhausted"])
def test_each_transition_becomes_an_event_with_its_reason_type_action_and_a_note_naming_node_and_checker(
        event, reason, type_, action, says):
    ev = checks_event(event, "n2", "uid-web")
    assert (ev.reason, ev.type, ev.action, ev.checker, ev.farm, ev.farm_uid) == \
        (reason, type_, action, "app", "web", "uid-web")
    assert says in ev.note and "n2" in ev.note and "app" in ev.note


def test_the_first_pass_after_a_start_posts_no_event():
    assert checks_event(transition("unknown", "passing", "connected"), "n2") is None


def test_the_body_is_an_events_k8s_io_v1_event_regarding_the_farm_in_default_reported_by_the_node():
    ev = checks_event(transition("passing", "failing"), "n2", "uid-web")
    body = event_body(ev, "n2", AT)
    assert body == {
        "apiVersion": "events.k8s.io/v1", "kind": "Event",
        "metadata": {"name": body["metadata"]["name"], "namespace": "default",
                     "labels": {"vipfarm.io/farm": "web", "vipfarm.io/node": "n2"}},
        "eventTime": "2026-12-02T03:04:05.678901Z", "type": "Warning", "reason": "CheckerFailing",
        "action": "Check", "note": ev.note,
        "regarding": {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "name": "web", "uid": "uid-web"},
        "reportingController": AGENT_CONTROLLER, "reportingInstance": "n2"}
    assert AGENT_CONTROLLER == "vipfarm.io/agent"
    assert body["metadata"]["name"].startswith("web.n2.") and DNS_SUBDOMAIN.match(body["metadata"]["name"])
    assert "uid" not in event_body(checks_event(transition("passing", "failing"), "n2"), "n2", AT)["regarding"]


def test_an_aggregated_body_carries_its_series_and_the_count_in_its_note():
    ev = checks_event(transition("passing", "failing"), "n2", "uid-web")
    later = AT + datetime.timedelta(seconds=29)
    body = event_body(ev, "n2", AT, count=4, last=later)
    assert body["series"] == {"count": 4, "lastObservedTime": micro_time(later)}
    assert body["eventTime"] == micro_time(later)
    assert body["note"].endswith("(4 times since 2026-12-02T03:04:05Z)")


def test_a_long_detail_is_cut_to_the_api_limit_and_a_long_name_stays_a_dns_subdomain():
    ev = checks_event(transition("passing", "failing", "x" * 5000), "n2")
    assert len(event_body(ev, "n2", AT)["note"]) == 1024
    for farm in ("a" * 235 + "-b", "a" * 235 + ".b", ".".join(["f" * 63] * 3) + "." + "f" * 61):   # valid names
        name = event_name(farm, "n" * 63, AT)
        assert len(name) <= 253 and DNS_SUBDOMAIN.match(name), name
    assert micro_time(AT.replace(microsecond=0)) == "2026-12-02T03:04:05.000000Z"   # six digits, always


def fe(reason="CheckerFailing", checker="app", farm="web"):
    return FarmEvent(farm, reason, "Warning", "Check", f"{checker} {reason}", checker)


def test_the_limiter_lets_the_first_event_of_each_key_out_at_once():
    lim = EventLimiter(interval=30.0)
    assert lim.offer(fe(), 0.0, AT) == [Due(fe(), AT, AT)]
    assert lim.offer(fe("CheckerPassing"), 1.0, AT) == [Due(fe("CheckerPassing"), AT, AT)]
    assert lim.offer(fe(checker="db"), 1.0, AT)[0].ev.checker == "db"
    assert lim.offer(fe(farm="shop"), 1.0, AT)[0].ev.farm == "shop"
    assert lim.held() == 0 and lim.next_due(1.0) is None


def test_a_flapping_checker_gets_one_event_per_reason_per_interval_and_the_newest_is_held_not_dropped():
    lim = EventLimiter(interval=30.0)
    t = [AT + datetime.timedelta(seconds=s) for s in range(40)]
    out = lim.offer(fe(), 0.0, t[0])
    for s in (5, 10, 15):                  # flapping: failing again three times within the interval
        out += lim.offer(fe(), float(s), t[s])
    assert [d.count for d in out] == [1]
    assert lim.held() == 1 and lim.next_due(15.0) == pytest.approx(15.0)
    assert lim.due(29.9) == []
    late = lim.due(30.0)
    assert late == [Due(fe(), t[5], t[15], 3)]                    # three occurrences, from 5 s to 15 s
    assert lim.held() == 0
    # the interval now counts from the held one's release
    assert lim.offer(fe(), 31.0, t[31]) == [] and lim.next_due(31.0) == pytest.approx(29.0)


def test_the_limiter_releases_due_events_when_any_new_one_arrives():
    lim = EventLimiter(interval=30.0)
    lim.offer(fe(), 0.0, AT)
    lim.offer(fe(), 1.0, AT)                 # held
    out = lim.offer(fe("CheckerPassing"), 31.0, AT)
    assert [(d.ev.reason, d.count) for d in out] == [("CheckerFailing", 1), ("CheckerPassing", 1)]


# -- the poster ------------------------------------------------------------------------------

class ApiError(Exception):
    def __init__(self, status, message=""):
        super().__init__(f"HTTP {status}")
        self.status, self.reason = status, {403: "Forbidden", 409: "Conflict", 503: "Service Unavailable"}[status]
        self.body = '{"kind":"Status","message":"%s"}' % message


class FakeCreate:
    """create(namespace, body): fails with the queued errors first, records every call."""

    def __init__(self, *errors):
        self.errors = list(errors)
        self.calls: list[tuple[str, dict]] = []
        self.created = threading.Event()

    def __call__(self, namespace, body):
        self.calls.append((namespace, body))
        if self.errors:
            raise self.errors.pop(0)
        self.created.set()


def due(reason="CheckerFailing"):
    return Due(checks_event(transition("passing", "failing") if reason == "CheckerFailing"
                            else transition("failing", "passing"), "n2", "uid-web"), AT, AT)


def test_a_post_that_fails_on_no_answer_or_5xx_is_retried_with_the_same_name_and_then_posted(caplog):
    create = FakeCreate(ConnectionRefusedError(111, "Connection refused"), ApiError(503))
    poster = EventPoster("n2", create, retry_delays=(0.0, 0.0))
    with caplog.at_level(logging.INFO, logger="vipfarm.agent.events"):
        assert poster.post(due()) is True
    assert len(create.calls) == 3 and {b["metadata"]["name"] for _, b in create.calls} == \
        {create.calls[0][1]["metadata"]["name"]}
    assert all(ns == "default" for ns, _ in create.calls)
    assert "event=k8s_event_posted node=n2 farm=web reason=CheckerFailing" in caplog.text
    assert "k8s_event_failed" not in caplog.text


def test_a_retry_answered_409_counts_as_posted_not_as_a_duplicate():
    create = FakeCreate(ApiError(503), ApiError(409, "already exists"))
    poster = EventPoster("n2", create, retry_delays=(0.0, 0.0))
    assert poster.post(due()) is True and (poster.posted, poster.failed) == (1, 0)
    assert len(create.calls) == 2


def test_a_refused_post_is_not_retried_and_is_logged_with_the_error_and_the_agent_carries_on(caplog):
    create = FakeCreate(ApiError(403, 'events.events.k8s.io is forbidden: User cannot create resource'))
    poster = EventPoster("n2", create, retry_delays=(0.0, 0.0))
    with caplog.at_level(logging.INFO, logger="vipfarm.agent.events"):
        assert poster.post(due()) is False
    assert len(create.calls) == 1 and (poster.posted, poster.failed) == (0, 1)
    line = next(r.getMessage() for r in caplog.records if "k8s_event_failed" in r.getMessage())
    assert re.search(r'^event=k8s_event_failed node=n2 farm=web reason=CheckerFailing name=web\.n2\.\S+ '
                     r'attempts=1 error="HTTP 403 Forbidden: events\.events\.k8s\.io is forbidden', line), line


def test_retries_are_bounded_then_the_event_is_given_up():
    create = FakeCreate(*[ApiError(503)] * 10)
    poster = EventPoster("n2", create, retry_delays=(0.0, 0.0))
    assert poster.post(due()) is False and len(create.calls) == 3


def test_submit_never_blocks_and_the_thread_posts_what_the_limiter_lets_out():
    gate = threading.Event()

    class SlowCreate(FakeCreate):
        def __call__(self, namespace, body):
            gate.wait(10)               # an API server that does not answer
            super().__call__(namespace, body)

    create = SlowCreate()
    poster = EventPoster("n2", create, retry_delays=(0.0,), queue_size=4)
    poster.start()
    try:
        done = threading.Event()

        def flood():
            for _ in range(50):          # more than the queue holds, while the post hangs
                poster.submit(due().ev)
            done.set()
        threading.Thread(target=flood, daemon=True).start()
        assert done.wait(5), "submit() blocked behind a hanging API call"
        gate.set()
        assert create.created.wait(5), "the poster thread posted nothing"
    finally:
        poster.stop()
    reasons = [b["reason"] for _, b in create.calls]
    assert reasons and reasons[0] == "CheckerFailing"
    assert len(reasons) == 1, f"the limiter let {len(reasons)} Events of one key out within 30 s: {reasons}"
