"""The agent's HTTP endpoint (nodeagent/observe.py) on 127.0.0.1 in this namespace, asked
with real HTTP requests; its inputs are the snapshots the agent's threads publish, faked here."""
from __future__ import annotations

import ipaddress
import json
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.checkers import CheckerRecord, probe_outcome
from nodeagent.heartbeat import Decision, FarmHeartbeats, FarmPeers, HeartbeatSnapshot
from nodeagent.main import main as agent_main
from nodeagent.observe import ObserveError, Observer, listen
from vipfarm.assignment import Assignment
from vipfarm.checks import ProbeResult
from vipfarm.handover import Drain, HandoverTotals, add_step
from vipfarm.listen_address import parse_listen_address
from vipfarm.spec import Farm, NodeSpec

S = 1_000_000_000
FARM = Farm("web", (ipaddress.ip_address("203.0.113.10"),), buckets=4,
            nodes=(NodeSpec("n1", ipaddress.ip_address("198.51.100.1")),
                   NodeSpec("n2", ipaddress.ip_address("198.51.100.2"))))


class Clock:
    def __init__(self):
        self.now = 100 * S

    def __call__(self):
        return self.now


class FakeEngine:
    def __init__(self, clock):
        self.clock = clock
        self.snap = HeartbeatSnapshot(0, {}, {})
        self.running = True

    def snapshot(self):
        return self.snap

    def alive(self):
        return self.running


class FakeRunner:
    observed = (CheckerRecord("http", "failing", "2026-01-01T00:00:00Z", {"fail": 3}, {"failed": 1}),)


class FakeHandover:
    drains = {"web": Drain()}
    totals = {"web": HandoverTotals(1, 2, 3)}


@pytest.fixture
def endpoint():
    clock = Clock()
    engine = FakeEngine(clock)
    obs = Observer("n1", "standalone", engine, {"web": FakeRunner()}, FakeHandover(), clock=clock)
    server = listen(("127.0.0.1", 0), obs)
    port = server.httpd.server_address[1]
    yield obs, engine, clock, lambda path: _get(f"http://127.0.0.1:{port}{path}")
    server.stop()


def _get(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status, r.read().decode(), r.headers.get("Content-Type")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(), e.headers.get("Content-Type")


def program_web(obs, engine, clock):
    engine.snap = HeartbeatSnapshot(clock.now, {"web": FarmHeartbeats(100, 300, 2, {"n2": clock.now - 40_000_000},
                                                                      {"n2": 0}, {"sent": 9, "heartbeat_accepted": 4})},
                                    {"sent": 9, "heartbeat_accepted": 4})
    obs.configured([FarmPeers("web", "n1", {"n1": 1, "n2": 1}, {"n1": "198.51.100.1", "n2": "198.51.100.2"},
                              5405, 100, 300, None, 4, None)])
    target = Assignment(("n1", "n2"), (0, 1, 0, 1))
    d = Decision("web", frozenset({0, 2}), frozenset({"n1", "n2"}), frozenset(), True, 2, b"x" * 8, 0, 0,
                 weights={"n1": 1, "n2": 1}, last_heard_ns={"n2": clock.now}, target=target)
    obs.programmed([FARM], {"web": d}, {"web": frozenset({0, 2})}, {}, {})


def test_before_the_first_programming_readyz_says_why(endpoint):
    obs, engine, clock, get = endpoint
    engine.snap = HeartbeatSnapshot(clock.now, {}, {})
    code, body, _ = get("/readyz")
    assert code == 503 and "nothing programmed yet" in body
    assert get("/healthz")[:2] == (200, "ok\n")


def test_status_metrics_and_probes_over_http(endpoint):
    obs, engine, clock, get = endpoint
    program_web(obs, engine, clock)
    code, body, ctype = get("/status")
    assert code == 200 and ctype == "application/json"
    doc = json.loads(body)
    (f,) = doc["farms"]
    assert f["owners"] == ["n1", "n2", "n1", "n2"] and f["ownedBuckets"] == 2 and f["baseEpoch"] == 2
    assert [(m["name"], m["state"], m["buckets"], m["lastHeardMs"]) for m in f["members"]] == [
        ("n1", "Serving", 2, None), ("n2", "Serving", 2, 40)]
    assert f["checks"] == [{"name": "http", "state": "Failing", "lastRun": "2026-01-01T00:00:00Z", "recoveryRuns": 1}]
    assert f["handover"] == {"active": False, "flowsLeft": 0, "flowsDrained": 2, "flowsCut": 3}
    assert doc["ready"] is True
    code, text, ctype = get("/metrics")
    assert code == 200 and ctype.startswith("text/plain; version=")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(text) for s in fam.samples}
    assert samples[("vipfarm_buckets_owned", (("farm", "web"),))] == 2
    assert samples[("vipfarm_heartbeats_sent_total", (("farm", "web"),))] == 9
    assert samples[("vipfarm_checker_runs_total", (("checker", "http"), ("farm", "web"), ("result", "fail")))] == 3
    assert samples[("vipfarm_heartbeat_gap_seconds", (("farm", "web"), ("peer", "n2")))] == 0.04
    assert get("/readyz")[:2] == (200, "ok\n")
    code, body, _ = get("/metrics/extra")
    assert code == 404 and "/status" in body


def test_readyz_fails_when_no_peer_is_heard_and_healthz_when_a_loop_is_stuck(endpoint):
    obs, engine, clock, get = endpoint
    program_web(obs, engine, clock)
    obs.main_loop_alive(30)
    clock.now += 2 * S          # the snapshot is now 2 s old: its peer 2.04 s
    code, body, _ = get("/readyz")
    assert code == 503 and body == "farm web: no heartbeat from any peer accepted within timeoutMs (300 ms)\n"
    assert get("/healthz")[0] == 200
    clock.now += 2 * S          # the heartbeat thread has not passed its loop for 4 s
    code, body, _ = get("/healthz")
    assert code == 503 and body.startswith("heartbeat thread stuck")
    engine.snap = HeartbeatSnapshot(clock.now, {}, {})
    clock.now += 90 * S + 1     # the main loop (wakes every 30 s) has not passed for 3 wakes
    engine.snap = HeartbeatSnapshot(clock.now, {}, {})
    code, body, _ = get("/healthz")
    assert code == 503 and body.startswith("main loop stuck")
    obs.main_loop_alive(30)
    engine.running = False
    assert get("/healthz")[:2] == (503, "heartbeat thread not running\n")


def test_a_taken_port_is_a_clear_error():
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    try:
        port = holder.getsockname()[1]
        with pytest.raises(ObserveError, match=rf"--observe-address 127.0.0.1:{port}: cannot listen there .*off"):
            listen(("127.0.0.1", port), Observer("n1", "standalone", None, {}, None))
    finally:
        holder.close()
    assert listen(None, Observer("n1", "standalone", None, {}, None)) is None


@pytest.mark.parametrize("text, expect", [("127.0.0.1:9478", ("127.0.0.1", 9478)), ("[::1]:9478", ("::1", 9478)),
                                          ("0.0.0.0:1", ("0.0.0.0", 1)), ("[198.51.100.1]:9478", ("198.51.100.1", 9478)), ("off", None), ("OFF", None)])
def test_listen_addresses(text, expect):
    assert parse_listen_address(text, "--observe-address") == expect


@pytest.mark.parametrize("text, says", [("9478", "not HOST:PORT"), ("localhost:9478", "not an IP address"),
                                        ("127.0.0.1:0", "port '0'"), ("127.0.0.1:http", "port 'http'"),
                                        ("::1:9478", "needs brackets"), ("", "not HOST:PORT")])
def test_bad_listen_addresses_say_what_to_give(text, says):
    with pytest.raises(ValueError) as e:
        parse_listen_address(text, "--observe-address")
    assert says in str(e.value) and "--observe-address off" in str(e.value)


def test_a_bad_observe_address_is_a_usage_error_before_anything_happens(capsys, tmp_path):
    assert agent_main(["--node", "n1", "--farm-file", str(tmp_path / "none.yaml"),
                       "--observe-address", "nowhere"]) == 2
    err = capsys.readouterr().err
    assert "--observe-address 'nowhere'" in err and "Nothing was changed on this node." in err


def test_probe_outcomes_and_handover_totals():
    assert probe_outcome(ProbeResult(True, "tcp x: connected")) == "pass"
    assert probe_outcome(ProbeResult(False, "tcp x: connection refused")) == "fail"
    assert probe_outcome(ProbeResult(False, "http x/: timed out after 500 ms")) == "timeout"
    before = Drain({1: 0, 2: 0}, {1: 5, 2: 3})
    after = Drain({1: 0}, {1: 2}, cut={2: 3})
    t = add_step(HandoverTotals(), Drain(), before)
    assert t == HandoverTotals(1, 0, 0)
    assert add_step(t, before, after) == HandoverTotals(1, 3, 3)   # bucket 1: 3 ended; bucket 2: cut, not drained
