"""API failure episodes (nodeagent/backoff.py): bounded backoff, one line to start, one to end."""
from __future__ import annotations

from nodeagent.backoff import CAP, FIRST, Backoff, delay_after


def test_retries_wait_one_second_doubling_up_to_thirty():
    assert [delay_after(n) for n in range(1, 9)] == [1, 2, 4, 8, 16, 30, 30, 30]
    assert (FIRST, CAP) == (1.0, 30.0)


def test_only_the_first_failure_of_an_episode_is_to_be_logged_and_its_end_once():
    b = Backoff()
    first = b.failed("node/n1 read", "HTTP 503", now=100.0)
    assert first.started and first.retry_in == 1.0
    again = [b.failed("node/n1 read", "HTTP 503", now=t) for t in (101.0, 103.0, 107.0)]
    assert [f.started for f in again] == [False, False, False]
    assert [f.retry_in for f in again] == [2.0, 4.0, 8.0]
    end = b.succeeded("node/n1 read", now=115.0)
    assert (end.failures, end.lasted, end.reason) == (4, 15.0, "HTTP 503")
    assert b.succeeded("node/n1 read", now=116.0) is None          # healthy: nothing to say
    assert b.failed("node/n1 read", "HTTP 403", now=200.0).started  # a new episode


def test_the_wait_counts_down_on_the_injected_clock_and_keys_are_independent():
    b = Backoff()
    b.failed("farmnode/n1/status patch", "HTTP 500", now=10.0)
    b.failed("farmnode/n1/status patch", "HTTP 500", now=11.0)       # next try at 13
    assert b.wait("farmnode/n1/status patch", now=11.5) == 1.5
    assert b.wait("farmnode/n1/status patch", now=14.0) == 0.0
    assert b.failing("farmnode/n1/status patch") and not b.failing("node/n1 read")
    assert b.wait("node/n1 read", now=11.5) == 0.0
