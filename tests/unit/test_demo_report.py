"""The lab demo's summary and verdict (nodeagent/lab/demo_report.py), on synthetic records."""
from __future__ import annotations

import json

from nodeagent.lab.demo_report import (Measurements, distribution_lines, holder_progress, summarize,
                                       traffic_verdict)
from nodeagent.lab.prober import Attempt

MS = 1_000_000
WEIGHTS = {"n1": 1, "n2": 2, "n3": 1}
CRASH = 10_000 * MS
DRAIN, DRAINED, UNDRAIN = 20_000 * MS, 20_500 * MS, 25_000 * MS


def traffic(counts: dict[str, int], failed: int = 0) -> list[Attempt]:
    out = [Attempt(i * MS, f"198.51.100.{100 + i % 60}", "ok", node)
           for node, n in counts.items() for i in range(n)]
    return out + [Attempt(i * MS, "198.51.100.100", "timeout") for i in range(failed)]


def crash_probe(recover_ms: int | None = 300) -> list[Attempt]:
    """Client A served by n3 until the crash, then timeouts until recover_ms after it, then n1;
    client B served by n1 throughout. Attempts every 20 ms from 9 s to 12 s."""
    out = []
    for t in range(9_000, 12_000, 20):
        t_ns = t * MS
        out.append(Attempt(t_ns, "198.51.100.101", "ok", "n1"))
        if t_ns < CRASH:
            out.append(Attempt(t_ns, "198.51.100.100", "ok", "n3"))
        elif recover_ms is not None and t_ns >= CRASH + recover_ms * MS:
            out.append(Attempt(t_ns, "198.51.100.100", "ok", "n1"))
        else:
            out.append(Attempt(t_ns, "198.51.100.100", "timeout"))
    return out


def held(on_n2: int = 30, on_n1: int = 20, resets_at: tuple[int, ...] = (),
         new_to_n2_at: tuple[int, ...] = ()) -> list[dict]:
    recs = []
    for i in range(on_n1 + on_n2):
        recs.append({"type": "open", "t_ns": 11_000 * MS, "id": i, "src": "198.51.100.100", "sport": 40000 + i})
        recs.append({"type": "served", "t_ns": 11_001 * MS, "id": i, "node": "n2" if i < on_n2 else "n1"})
    for j, t in enumerate(resets_at):
        recs.append({"type": "reset", "t_ns": t, "id": j, "src": "198.51.100.100", "sport": 40000 + j,
                     "error": "ECONNRESET", "node": "n2"})
    for t in new_to_n2_at:
        recs.append({"type": "new", "t_ns": t, "end_ns": t + MS, "src": "198.51.100.100", "sport": 1,
                     "outcome": "ok", "node": "n2"})
    recs.append({"type": "new", "t_ns": DRAINED + MS, "end_ns": DRAINED + 2 * MS, "src": "198.51.100.100",
                 "sport": 2, "outcome": "ok", "node": "n1"})
    return recs


def measured(**over) -> Measurements:
    base = dict(weights=WEIGHTS, traffic=traffic({"n1": 300, "n2": 600, "n3": 300}), crashed="n3", crash_ns=CRASH,
                crash_probe=crash_probe(), drained="n2", held=held(), drain_ns=DRAIN, drained_ns=DRAINED,
                undrain_ns=UNDRAIN, duration_s=41.23, interval_ms=100, timeout_ms=300)
    return Measurements(**(base | over))


def test_a_run_where_every_step_worked_has_no_errors_and_says_what_it_measured():
    s = summarize(measured())
    assert s.ok and s.errors == []
    assert s.distribution == {"n1": 300, "n2": 600, "n3": 300} and s.matches_weights
    assert s.failover_ms == 300.0 and s.crashed_clients == 1 and s.other_clients_failed == 0
    assert (s.rejoin_reset, s.connections_reset, s.held_connections, s.held_on_drained) == (0, 0, 50, 30)
    assert s.new_to_drained == 0
    j = s.as_json()
    assert json.loads(json.dumps(j)) == j            # one JSON object, nothing that does not serialize
    assert {"distribution", "failover_ms", "connections_reset", "errors", "rejoin_reset", "duration_s",
            "weights"} <= set(j)
    assert j["duration_s"] == 41.2 and j["heartbeat"] == {"interval_ms": 100, "timeout_ms": 300}


def test_a_node_that_served_nothing_is_an_error_and_is_still_listed_with_zero():
    s = summarize(measured(traffic=traffic({"n1": 600, "n2": 600})))
    assert s.distribution == {"n1": 600, "n2": 600, "n3": 0}
    assert any("n3 served none" in e for e in s.errors), s.errors
    assert not s.ok


def test_a_spread_off_the_weights_is_an_error_naming_each_share():
    s = summarize(measured(traffic=traffic({"n1": 400, "n2": 400, "n3": 400})))
    assert s.matches_weights is False
    assert any("did not follow the weights" in e and "n2 33.3% for 50.0%" in e for e in s.errors), s.errors
    # within the tolerance it matches
    assert summarize(measured(traffic=traffic({"n1": 330, "n2": 560, "n3": 310}))).matches_weights


def test_failed_connections_in_the_traffic_step_are_an_error_with_their_outcomes():
    s = summarize(measured(traffic=traffic({"n1": 300, "n2": 600, "n3": 300}, failed=3)))
    assert s.traffic_failed == 3
    assert any("3 of the traffic step's 1203 connections failed (timeout 3)" in e for e in s.errors), s.errors


def test_failover_is_the_time_until_the_crashed_nodes_clients_are_served_for_good():
    assert summarize(measured(crash_probe=crash_probe(520))).failover_ms == 520.0
    never = summarize(measured(crash_probe=crash_probe(None)))
    assert never.failover_ms is None
    assert any("failover not measured" in e and "not all served again" in e for e in never.errors)


def test_a_crashed_node_without_clients_measures_no_failover():
    probe = [a for a in crash_probe() if a.client != "198.51.100.100"]
    s = summarize(measured(crash_probe=probe))
    assert s.failover_ms is None and s.crashed_clients == 0
    assert any("n3 served none of the prober's clients" in e for e in s.errors), s.errors


def test_other_clients_failing_after_the_crash_are_counted_but_do_not_fail_the_run():
    probe = crash_probe() + [Attempt(CRASH + 5 * MS, "198.51.100.101", "timeout")]
    s = summarize(measured(crash_probe=probe))
    assert s.other_clients_failed == 1 and s.ok


def test_resets_are_split_at_the_drain_between_the_rejoin_and_the_drain():
    s = summarize(measured(held=held(resets_at=(15_000 * MS, DRAIN + 1, UNDRAIN + 1))))
    assert (s.rejoin_reset, s.connections_reset) == (1, 2)
    assert any("1 held connections reset before the drain" in e for e in s.errors)
    assert any("2 held connections reset by the drain and undrain of n2" in e for e in s.errors)


def test_a_drain_with_no_connection_on_the_drained_node_proves_nothing_and_is_an_error():
    s = summarize(measured(held=held(on_n2=0)))
    assert s.held_on_drained == 0
    assert any("not under load" in e for e in s.errors), s.errors


def test_new_connections_to_the_drained_node_while_drained_are_an_error_but_not_before_or_after():
    s = summarize(measured(held=held(new_to_n2_at=(DRAIN + 1, DRAINED + 10 * MS, UNDRAIN + 10 * MS))))
    assert s.new_to_drained == 1
    assert any("n2 took 1 new connections while drained" in e for e in s.errors), s.errors


def test_a_step_that_failed_is_an_error_and_the_steps_it_stopped_add_none():
    s = summarize(Measurements(weights=WEIGHTS, failures=["setup: TimeoutError: the agents' start not within 180 s"]))
    assert s.errors == ["setup: TimeoutError: the agents' start not within 180 s"]
    assert s.failover_ms is None and s.connections_reset is None and s.distribution == {"n1": 0, "n2": 0, "n3": 0}


def test_a_run_with_nothing_measured_and_no_failure_is_not_a_success():
    s = summarize(Measurements(weights=WEIGHTS))
    assert not s.ok
    assert {"no traffic measured", "failover not measured: the crash step did not run",
            "the drain did not run"} <= set(s.errors)


def test_the_progress_texts_show_a_bar_per_node_and_the_new_connections_of_the_drained_node():
    lines = distribution_lines({"n1": 300, "n2": 600, "n3": 300}, WEIGHTS, {"n1": 256, "n2": 512, "n3": 256})
    assert len(lines) == 3 and lines[1].startswith("n2  weight 2  buckets  512  connections   600")
    assert lines[1].endswith("#" * 20) and lines[0].endswith(" " + "#" * 10)
    assert "every node served; the spread follows the weights" in traffic_verdict(
        traffic({"n1": 300, "n2": 600, "n3": 300}), WEIGHTS)
    assert "does NOT follow" in traffic_verdict(traffic({"n1": 600, "n2": 300, "n3": 300}), WEIGHTS)
    assert holder_progress(held(), DRAINED, "n2") == "held 50 (reset 0); new connections since: n1 1 n2 0"
