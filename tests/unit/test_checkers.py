"""nodeagent.checkers: the real probes (against servers this test process runs on 127.0.0.1,
real subprocesses and /sys/class/net), and CheckRunner end to end with short intervals: a
failing checker withdraws the node, recovery brings the service back, the node rejoins; a
recovery that times out is killed and counts against the budget until it is exhausted."""
from __future__ import annotations

import http.server
import os
import socket
import sys
import textwrap
import threading
import time

import pytest

from nodeagent.checkers import CheckRunner, probe, probe_http, probe_interface, probe_tcp, run_command
from vipfarm.checks import Health
from vipfarm.spec import Checker, Farm, Recovery, parse_farm

WAIT = 15.0     # the bound of every wait below; the conditions are normally met in well under a second


def wait_until(predicate, what: str, timeout: float = WAIT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.01)    # polling interval of a bounded wait, not a synchronisation
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


# -- probes ----------------------------------------------------------------------------------------

def test_tcp_probe_passes_on_a_listener_and_fails_with_connection_refused_once_it_closes():
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    assert probe_tcp("127.0.0.1", port, 0.5) == probe_tcp("127.0.0.1", port, 0.5)
    assert probe_tcp("127.0.0.1", port, 0.5).ok
    listener.close()
    result = probe_tcp("127.0.0.1", port, 0.5)
    assert not result.ok and result.detail == f"tcp 127.0.0.1:{port}: connection refused"


@pytest.fixture
def http_server():
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            status = {"/ok": 200, "/down": 503, "/created": 201}.get(self.path, 404)
            if self.path == "/slow":
                time.sleep(1.0)     # the server being slow is what the test is about
                status = 200
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def test_http_probe_judges_the_status_the_server_returned(http_server):
    port = http_server
    assert probe_http("127.0.0.1", port, "/ok", (200,), 1.0).ok
    down = probe_http("127.0.0.1", port, "/down", (200,), 1.0)
    assert not down.ok and down.detail == f"http 127.0.0.1:{port}/down: status 503 (expected 200)"
    assert probe_http("127.0.0.1", port, "/created", (200, 201), 1.0).ok


def test_http_probe_past_its_timeout_fails_in_about_the_timeout(http_server):
    start = time.monotonic()
    slow = probe_http("127.0.0.1", http_server, "/slow", (200,), 0.2)
    assert not slow.ok and "timed out after 200 ms" in slow.detail
    assert time.monotonic() - start < 0.9


def test_exec_probe_is_judged_by_exit_code():
    assert probe(Checker("a", "exec", command=("true",), timeout_ms=2000)).detail == "exec: exit 0"
    false = probe(Checker("a", "exec", command=("false",), timeout_ms=2000))
    assert not false.ok and false.detail == "exec: exit 1"
    missing = probe(Checker("a", "exec", command=("/nonexistent/check",), timeout_ms=2000))
    assert not missing.ok and "cannot run '/nonexistent/check'" in missing.detail


def test_exec_probe_past_its_timeout_is_killed_with_its_process_group(tmp_path):
    pidfile = tmp_path / "child.pid"
    script = f"sleep 30 & echo $! > {pidfile}; wait"
    start = time.monotonic()
    result = run_command(["sh", "-c", script], 0.3, "exec")
    assert not result.ok and result.detail == "exec: timed out after 300 ms, process group killed"
    assert time.monotonic() - start < 2.0
    child = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), "the child's pid file"))
    wait_until(lambda: process_gone(child), f"the grandchild sleep (pid {child}) to be killed with the group")


def test_interface_probe_passes_on_lo_and_names_a_missing_interface():
    lo = probe_interface("lo")
    assert lo.ok, lo.detail
    missing = probe_interface("vfmissing0")
    assert not missing.ok and missing.detail == "interface vfmissing0: no such interface"


def test_interface_probe_fails_without_carrier_or_when_down():
    no_carrier = probe_interface("eth9", read=lambda name: {"operstate": "down", "carrier": 0})
    assert not no_carrier.ok and no_carrier.detail == "interface eth9: carrier 0, operstate down"
    admin_down = probe_interface("eth9", read=lambda name: {"operstate": "down", "carrier": None})
    assert not admin_down.ok
    up = probe_interface("eth9", read=lambda name: {"operstate": "up", "carrier": 1})
    assert up.ok


# -- CheckRunner -----------------------------------------------------------------------------------

class Recorder:
    def __init__(self):
        self.calls: list[tuple[Health, list]] = []
        self.lock = threading.Lock()

    def __call__(self, health, events):
        with self.lock:
            self.calls.append((health, list(events)))

    def healths(self) -> list[Health]:
        with self.lock:
            return [h for h, _ in self.calls]

    def events(self) -> list:
        with self.lock:
            return [e for _, evs in self.calls for e in evs]

    def saw(self, reason: str) -> bool:
        return any(h.reason == reason for h in self.healths())


def test_exec_checkers_and_recovery_learn_node_farm_and_checker_from_their_environment(tmp_path):
    out = tmp_path / "seen"
    script = f'test "$VIPFARM_NODE/$VIPFARM_FARM/$VIPFARM_CHECKER" = n7/shop/env && echo ok > {out}'
    farm = farm_with([{"name": "env", "type": "exec", "command": ["sh", "-c", script], "intervalMs": 50,
                       "timeoutMs": 40, "successThreshold": 1}])
    rec = Recorder()
    runner = CheckRunner(farm, rec, node="n7")
    runner.start()
    try:
        wait_until(lambda: runner.health().ok, f"the exec checker to see its environment; {runner.health()}")
    finally:
        runner.stop()
    assert out.read_text() == "ok\n"


def farm_with(checkers: list[dict], recovery: dict | None = None) -> Farm:
    spec = {"virtualIPs": ["203.0.113.10"], "checkers": checkers}
    if recovery:
        spec["recovery"] = recovery
    return parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "shop"},
                       "spec": spec})


LISTENER = textwrap.dedent("""\
    import os, socket, sys, time
    port, pidfile = int(sys.argv[1]), sys.argv[2]
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", port))
    s.listen(16)
    if os.fork():
        os._exit(0)             # the recovery command ends; the listener lives on, as a restarted service would
    with open(pidfile, "w") as f:
        f.write(str(os.getpid()))
    s.settimeout(0.5)
    end = time.monotonic() + 30  # bounded life even if the test dies
    while time.monotonic() < end:
        try:
            s.accept()[0].close()
        except OSError:
            pass
""")


def test_a_failing_tcp_checker_withdraws_recovery_restarts_the_listener_and_the_node_rejoins(tmp_path):
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    script = tmp_path / "start_listener.py"
    script.write_text(LISTENER)
    pidfile = tmp_path / "listener.pid"
    farm = farm_with([{"name": "web", "type": "tcp", "port": port, "intervalMs": 50, "timeoutMs": 40,
                       "failureThreshold": 2, "successThreshold": 2}],
                     {"command": [sys.executable, str(script), str(port), str(pidfile)], "timeoutSeconds": 10})
    rec = Recorder()
    runner = CheckRunner(farm, rec)
    assert runner.health().reason == "CheckerStarting" and not runner.health().ok
    runner.start()
    try:
        wait_until(lambda: runner.health().ok, "the checker to pass on the test's own listener")
        listener.close()    # the application goes down
        wait_until(lambda: rec.saw("Recovering") or rec.saw("CheckerFailing"), "the node to withdraw")
        wait_until(lambda: pidfile.exists() and runner.health().ok, "recovery to restart the listener and the "
                   f"node to rejoin; health={runner.health()}")
    finally:
        runner.stop()
        listener.close()
        if pidfile.exists():
            os.kill(int(pidfile.read_text()), 9)
    healths = rec.healths()
    withdrawn = next(h for h in healths if not h.ok and h.reason in ("CheckerFailing", "Recovering"))
    assert withdrawn.checker == "web" and "connection refused" in withdrawn.detail
    assert healths[-1] == Health(True, "CheckersPassing")
    kinds = [(e.kind, e.to_state) for e in rec.events()]
    assert kinds.index(("checker_transition", "failing")) < kinds.index(("recovery_started", "running")) \
        < kinds.index(("recovery_finished", "succeeded")) < len(kinds) - 1 - kinds[::-1].index(
            ("checker_transition", "passing")), kinds
    entry = [e for e in rec.events() if e.kind == "checker_transition"][-1].to_dict()
    assert entry["name"] == "web" and entry["type"] == "tcp" and entry["state"] == "passing"
    assert entry["since"].endswith("Z")


def test_a_recovery_past_its_timeout_is_killed_counts_against_the_budget_and_exhausts_it(tmp_path):
    runs = tmp_path / "runs"
    recovery = [sys.executable, "-c", f"open({str(runs)!r}, 'a').write('run\\n'); import time; time.sleep(30)"]
    farm = farm_with([{"name": "app", "type": "exec", "command": ["false"], "intervalMs": 50, "timeoutMs": 40,
                       "failureThreshold": 2, "successThreshold": 1}],
                     {"command": recovery, "timeoutSeconds": 1, "maxRestarts": 1, "windowSeconds": 3600})
    rec = Recorder()
    runner = CheckRunner(farm, rec)
    runner.start()
    try:
        wait_until(lambda: runner.health().reason == "RecoveryBudgetExhausted",
                   f"the budget to be exhausted; health={runner.health()}")
    finally:
        runner.stop()
    assert runs.read_text() == "run\n", "maxRestarts 1: the recovery must have run exactly once"
    finished = [e for e in rec.events() if e.kind == "recovery_finished"]
    assert len(finished) == 1 and finished[0].to_state == "failed"
    assert finished[0].detail == "recovery: timed out after 1 s, process group killed"
    assert rec.saw("Recovering") and rec.saw("RecoveryFailed")
    health = runner.health()
    assert not health.ok and health.checker == "app" and health.detail == "exec: exit 1"
    assert [e.kind for e in rec.events()].count("recovery_budget_exhausted") == 1


def test_exhausted_then_passing_rejoins(tmp_path):
    flag = tmp_path / "healthy"
    check = [sys.executable, "-c", f"import os, sys; sys.exit(0 if os.path.exists({str(flag)!r}) else 1)"]
    farm = farm_with([{"name": "app", "type": "exec", "command": check, "intervalMs": 100, "timeoutMs": 90,
                       "failureThreshold": 1, "successThreshold": 1}],
                     {"command": ["true"], "maxRestarts": 0})
    rec = Recorder()
    runner = CheckRunner(farm, rec)
    runner.start()
    try:
        wait_until(lambda: runner.health().reason == "RecoveryBudgetExhausted", "the (empty) budget to be exhausted")
        flag.write_text("")     # the operator fixed it by hand
        wait_until(lambda: runner.health().ok, f"the node to rejoin; health={runner.health()}")
    finally:
        runner.stop()
    assert runner.health() == Health(True, "CheckersPassing")


def test_a_slow_probe_does_not_delay_another_checker():
    # lo needs 3 probes 50 ms apart; the slow probe hangs for its whole 1000 ms timeout. A
    # runner that waited on the slow probe could not pass lo before the slow one failed.
    farm = farm_with([{"name": "slow", "type": "exec", "command": ["sleep", "5"], "intervalMs": 2000,
                       "timeoutMs": 1000, "failureThreshold": 1, "successThreshold": 1},
                      {"name": "link", "type": "interface", "interface": "lo", "intervalMs": 50, "timeoutMs": 40,
                       "failureThreshold": 1, "successThreshold": 3}])
    rec = Recorder()
    runner = CheckRunner(farm, rec)
    runner.start()
    try:
        wait_until(lambda: any(e.checker == "slow" and e.to_state == "failing" for e in rec.events()),
                   "the slow checker to fail on its timeout")
    finally:
        runner.stop()
    order = [(e.checker, e.to_state) for e in rec.events()]
    assert ("link", "passing") in order and order.index(("link", "passing")) < order.index(("slow", "failing")), order
    slow = next(e for e in rec.events() if e.checker == "slow" and e.to_state == "failing")
    assert "timed out after 1000 ms" in slow.detail
    assert runner.health().reason == "CheckerFailing" and runner.health().checker == "slow"


def test_stop_kills_a_running_recovery(tmp_path):
    pidfile = tmp_path / "recovery.pid"
    recovery = ["sh", "-c", f"echo $$ > {pidfile}; sleep 30"]
    farm = farm_with([{"name": "app", "type": "exec", "command": ["false"], "intervalMs": 50, "timeoutMs": 40,
                       "failureThreshold": 1}], {"command": recovery, "timeoutSeconds": 60})
    runner = CheckRunner(farm, Recorder())
    runner.start()
    try:
        pid = int(wait_until(lambda: pidfile.exists() and pidfile.read_text().strip(), "the recovery to start"))
        assert runner.health().reason == "Recovering"
    finally:
        start = time.monotonic()
        runner.stop()
    assert time.monotonic() - start < 5.0, "stop() waited for the recovery instead of killing it"
    wait_until(lambda: process_gone(pid), f"the recovery process (pid {pid}) to be killed by stop()")


def test_a_farm_without_checkers_is_always_ok_and_runs_no_thread():
    farm = farm_with([])
    before = {t.name for t in threading.enumerate()}
    runner = CheckRunner(farm, Recorder())
    runner.start()
    assert runner.health() == Health(True, "NoCheckers")
    assert {t.name for t in threading.enumerate()} - before == set()
    runner.stop()
