"""The failover prober's analysis and the ownership watcher's report, on synthetic records."""
from __future__ import annotations

import json

import pytest

from nodeagent.lab.ownership_watch import OwnershipReport, Spell
from nodeagent.lab.prober import (Attempt, clients_of, failed_attempts, load_records, outcome_counts,
                                  recovery_time)

MS = 1_000_000
A, B = "198.51.100.100", "198.51.100.101"


def run(client: str, spec: str, start_ms: int = 0, step_ms: int = 10, node: str = "n1") -> list[Attempt]:
    """One attempt per character every step_ms: o = ok, t = timeout, r = reset."""
    names = {"o": "ok", "t": "timeout", "r": "reset", "f": "refused"}
    return [Attempt((start_ms + i * step_ms) * MS, client, names[c], node if c == "o" else None)
            for i, c in enumerate(spec)]


def test_recovery_time_is_the_first_success_after_the_last_failure_of_the_slowest_client():
    recs = run(A, "ooottto") + run(B, "oootooo", node="n2")
    # fault at 30 ms: A fails at 30-50 and is served for good at 60; B fails at 30, is served at 40.
    assert recovery_time(recs, [A, B], 30 * MS) == 30 * MS
    assert recovery_time(recs, [B], 30 * MS) == 10 * MS


def test_recovery_time_is_none_for_a_client_never_served_again():
    recs = run(A, "ooottttt") + run(B, "oooooooo")
    assert recovery_time(recs, [A], 30 * MS) is None
    assert recovery_time(recs, [A, B], 30 * MS) is None


def test_recovery_time_is_none_when_the_last_attempt_failed_even_after_a_success():
    recs = run(A, "ooototot")
    assert recovery_time(recs, [A], 30 * MS) is None


def test_recovery_time_of_a_client_that_never_failed_is_its_first_attempt_after_the_fault():
    recs = run(A, "oooooo")
    assert recovery_time(recs, [A], 25 * MS) == 5 * MS


def test_recovery_time_is_none_for_a_client_with_no_attempt_after_the_fault():
    assert recovery_time(run(A, "ooo"), [A], 100 * MS) is None
    assert recovery_time(run(A, "ooo"), ["198.51.100.199"], 0) is None


def test_recovery_time_refuses_an_empty_client_list():
    with pytest.raises(ValueError, match="no clients given"):
        recovery_time(run(A, "o"), [], 0)


def test_failed_attempts_are_those_started_in_the_window_and_of_the_given_clients():
    recs = run(A, "otrot") + run(B, "tooo")
    assert [(r.client, r.t_ns // MS, r.outcome) for r in failed_attempts(recs, 0, 40 * MS)] == \
        [(B, 0, "timeout"), (A, 10, "timeout"), (A, 20, "reset")]
    assert [r.t_ns // MS for r in failed_attempts(recs, 5 * MS, 50 * MS, clients=[A])] == [10, 20, 40]
    assert failed_attempts(recs, 30 * MS, 40 * MS) == []


def test_outcome_counts_per_client_in_a_window():
    recs = run(A, "ootr") + run(B, "fo")
    assert outcome_counts(recs) == {A: {"ok": 2, "timeout": 1, "reset": 1}, B: {"refused": 1, "ok": 1}}
    assert outcome_counts(recs, since=20 * MS) == {A: {"timeout": 1, "reset": 1}}


def test_clients_of_a_node_are_those_only_it_served_before_the_fault():
    recs = run(A, "oo", node="n3") + run(B, "oo", node="n1") + run("198.51.100.102", "o", node="n3") \
        + run("198.51.100.102", "o", start_ms=10, node="n1")
    assert clients_of(recs, "n3", until=100 * MS) == [A]


def test_load_records_reads_attempts_and_skips_framing_and_a_torn_last_line(tmp_path):
    path = tmp_path / "probe.jsonl"
    lines = [json.dumps({"type": "start", "t_ns": 1, "clients": [A]}),
             json.dumps({"t_ns": 5, "end_ns": 7, "client": A, "outcome": "ok", "node": "n2"}),
             json.dumps({"t_ns": 9, "end_ns": 12, "client": A, "outcome": "timeout", "node": None}),
             '{"t_ns": 13, "cli']
    path.write_text("\n".join(lines))
    assert load_records(str(path)) == [Attempt(5, A, "ok", "n2", 7), Attempt(9, A, "timeout", None, 12)]


def report(*spells: Spell) -> OwnershipReport:
    return OwnershipReport(samples=100, read_errors=0, spells=list(spells), started_ns=0, stopped_ns=1000 * MS)


def test_ownership_report_names_the_longest_spell_of_each_kind():
    r = report(Spell(5, "zero", 10 * MS, 30 * MS), Spell(7, "zero", 10 * MS, 60 * MS),
               Spell(9, "double", 100 * MS, 104 * MS))
    assert (r.max_zero_ms, r.worst_zero.bucket) == (50.0, 7)
    assert (r.max_double_ms, r.worst_double.bucket) == (4.0, 9)
    assert report().max_zero_ms == report().max_double_ms == 0.0


def test_covered_at_is_when_the_last_lost_bucket_had_an_acceptor_again():
    r = report(Spell(5, "zero", 10 * MS, 30 * MS), Spell(7, "zero", 10 * MS, 60 * MS),
               Spell(8, "zero", 1 * MS, 2 * MS))   # before the fault: not this one
    assert r.covered_at({5, 7, 8}, since_ns=9 * MS) == 60 * MS
    assert r.covered_at({8}, since_ns=9 * MS) == 9 * MS


def test_covered_at_is_none_while_a_lost_bucket_still_has_no_acceptor_at_stop():
    r = report(Spell(5, "zero", 10 * MS, 30 * MS), Spell(7, "zero", 10 * MS, 1000 * MS, open_at_stop=True))
    assert r.covered_at({5, 7}, since_ns=9 * MS) is None
    assert r.covered_at({5}, since_ns=9 * MS) == 30 * MS
