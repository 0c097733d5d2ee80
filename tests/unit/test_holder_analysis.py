"""The connection holder's analysis (summarize) on synthetic records, as the holder writes them."""
from __future__ import annotations

import json

from nodeagent.lab.holder import connections_of, load_records, summarize

MS = 1_000_000
A, B = "198.51.100.100", "198.51.100.101"


def held(cid: int, node: str, src: str = A, sport: int = 40000, t_ms: int = 0, echoes: int = 10,
         max_gap_ms: int = 100) -> list[dict]:
    """A long-lived connection that came up at t_ms and was served by `node`, with its end record."""
    return [{"type": "open", "t_ns": t_ms * MS, "id": cid, "src": src, "sport": sport + cid},
            {"type": "served", "t_ns": (t_ms + 50) * MS, "id": cid, "node": node},
            {"type": "conn", "id": cid, "src": src, "sport": sport + cid, "node": node, "nodes": [node],
             "echoes": echoes, "max_gap_ns": max_gap_ms * MS, "reset": None}]


def new(t_ms: int, node: str | None, outcome: str = "ok", took_ms: int = 5, slow: bool = False) -> dict:
    return {"type": "new", "t_ns": t_ms * MS, "end_ns": (t_ms + took_ms) * MS, "src": B, "sport": 50000 + t_ms,
            "dst": "203.0.113.10", "dport": 9100, "outcome": outcome, "slow": slow, "node": node}


def test_a_quiet_run_is_clean_and_counts_each_nodes_connections():
    recs = held(0, "n1") + held(1, "n2") + held(2, "n2") + [new(10, "n1"), new(20, "n3")] + [{"type": "end"}]
    s = summarize(recs)
    assert s.clean, s.describe()
    assert (s.connections, s.served, s.reset, s.stalled, s.node_changes) == (3, 3, 0, 0, 0)
    assert s.nodes == {"n1": 1, "n2": 2}
    assert s.new_nodes == {"n1": 1, "n3": 1}
    assert (s.new_total, s.new_ok, s.failed_new, s.slow_new) == (2, 2, 0, 0)
    assert s.echoes == 30 and s.max_gap_ns == 100 * MS
    assert s.finished and s.problems == []


def test_resets_stalls_and_node_changes_count_connections_once_each_and_are_listed_in_time_order():
    recs = held(0, "n1") + held(1, "n2") + held(2, "n3")
    recs += [
        {"type": "stall", "t_ns": 900 * MS, "detected_ns": 1950 * MS, "id": 1, "src": A, "sport": 40001,
         "dst": "203.0.113.10", "dport": 9100, "node": "n2"},
        {"type": "stall_end", "t_ns": 2500 * MS, "id": 1, "gap_ns": 1600 * MS},
        {"type": "stall", "t_ns": 3000 * MS, "detected_ns": 4001 * MS, "id": 1, "src": A, "sport": 40001,
         "dst": "203.0.113.10", "dport": 9100, "node": "n2"},
        {"type": "reset", "t_ns": 500 * MS, "id": 0, "src": A, "sport": 40000, "dst": "203.0.113.10",
         "dport": 9100, "error": "ECONNRESET", "node": "n1"},
        {"type": "node_change", "t_ns": 700 * MS, "id": 2, "src": A, "sport": 40002, "old": "n3", "new": "n1"},
    ]
    s = summarize(recs)
    assert not s.clean
    assert (s.reset, s.stalled, s.node_changes) == (1, 1, 1)
    assert s.reset_ids == {0} and s.stalled_ids == {1}
    assert s.max_gap_ns == 1600 * MS          # the stall's gap outweighs every end record's
    assert [p.kind for p in s.problems] == ["reset", "node_change", "stall", "stall"]
    assert "ECONNRESET" in str(s.problems[0]) and "198.51.100.100:40000" in str(s.problems[0])
    assert not s.finished


def test_failed_and_slow_new_connections_are_counted_apart_and_the_slow_ones_are_still_served():
    recs = held(0, "n1") + [new(0, "n1"), new(10, "n2", took_ms=1020, slow=True), new(20, None, "timeout", 3000),
                            new(30, None, "reset", 2), new(40, None, "refused", 1)]
    s = summarize(recs)
    assert (s.new_total, s.new_ok, s.slow_new, s.failed_new) == (5, 2, 1, 3)
    assert s.new_outcomes == {"ok": 2, "timeout": 1, "reset": 1, "refused": 1}
    assert s.new_nodes == {"n1": 1, "n2": 1}
    assert [p.kind for p in s.problems] == ["new_timeout", "new_reset", "new_refused"]
    assert not s.clean


def test_new_connections_split_by_node_before_and_after_a_move_time():
    recs = [new(t, "n1") for t in (0, 10, 20)] + [new(t, "n2") for t in (30, 40)] + [new(50, "n1")]
    s = summarize(recs, t_ns=30 * MS)
    assert s.new_nodes_before == {"n1": 3}
    assert s.new_nodes_after == {"n2": 2, "n1": 1}     # at t itself counts as after
    assert summarize(recs).new_nodes_before == {}


def test_a_connection_never_echoed_is_unserved_and_not_clean():
    recs = held(0, "n1") + [{"type": "open", "t_ns": 0, "id": 1, "src": B, "sport": 40001},
                            {"type": "conn", "id": 1, "src": B, "sport": 40001, "node": None, "nodes": [],
                             "echoes": 0, "max_gap_ns": 2000 * MS, "reset": None}]
    s = summarize(recs)
    assert (s.connections, s.served) == (2, 1)
    assert [p.kind for p in s.problems] == ["unserved"]
    assert not s.clean


def test_a_connection_that_failed_to_open_is_not_clean_even_if_the_rest_were_served():
    recs = held(0, "n1") + [{"type": "open_failed", "t_ns": 5 * MS, "id": 1, "src": B, "sport": None,
                             "dst": "203.0.113.10", "dport": 9100, "error": "connect_timeout", "node": None}]
    s = summarize(recs)
    assert s.open_failed == 1 and s.connections == 1 and not s.clean
    assert "connect_timeout" in s.describe()


def test_an_empty_run_is_not_clean():
    assert not summarize([]).clean


def test_connections_of_a_node_are_those_it_served_first():
    recs = held(0, "n1") + held(1, "n2") + held(2, "n1")
    assert connections_of(recs, "n1") == {0, 2}


def test_load_records_skips_a_torn_last_line(tmp_path):
    path = tmp_path / "hold.jsonl"
    lines = [json.dumps(r) for r in held(0, "n1")]
    path.write_text("\n".join(lines) + '\n{"type": "new", "t_')
    recs = load_records(str(path))
    assert len(recs) == 3 and summarize(recs).served == 1
    assert load_records(str(tmp_path / "missing.jsonl")) == []
