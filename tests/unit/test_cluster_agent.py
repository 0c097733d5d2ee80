"""The cluster agent's loop against an in-memory API and a recording dataplane (no host, no cluster).

What the fake API saw (FarmNode patches, calls, their order) is what these tests assert.
"""
from __future__ import annotations

import logging
import threading
import time
from types import SimpleNamespace

import pytest
from kubernetes.client.rest import ApiException

from nodeagent import cluster as cluster_mod
from nodeagent.backoff import Backoff
from nodeagent.bpf_program import DataplaneError

LABELS = {"vipfarm.io/member": "true"}
REPORTED = {"ready": True, "reason": "", "appliedEpoch": 0, "lastError": "", "dataplaneMode": "generic"}


def farm_body(name="web", vip="203.0.113.10", deleting=False):
    md = {"name": name, "creationTimestamp": "2026-12-01T00:00:00Z", "uid": f"uid-{name}"}
    if deleting:
        md["deletionTimestamp"] = "2026-12-01T01:00:00Z"
    return {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": md,
            "spec": {"virtualIPs": [vip], "interface": "eth0", "nodeSelector": dict(LABELS),
                     "rules": [{"protocol": "TCP", "ports": "80"}]}}


def api_error(status, reason, message):
    e = ApiException(status=status, reason=reason)
    e.body = '{"kind":"Status","message":"%s"}' % message
    return e


def _merged(doc, patch):
    if not isinstance(patch, dict):
        return patch
    out = dict(doc) if isinstance(doc, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = _merged(out.get(k), v)
    return out


class FakeApi:
    """CoreV1Api + CustomObjectsApi, in memory. The Farm LIST answers when `list_gate` is set
    (a slow API server); the watch that follows stays open until `closed` is set."""

    def __init__(self, farms, farmnode_farms, *, node_failures=0, list_failures=0, patch_failures=0):
        self.farms = {f["metadata"]["name"]: f for f in farms}
        self.farmnode_farms = dict(farmnode_farms)
        self.node_failures = node_failures
        self.list_failures = list_failures
        self.patch_failures = patch_failures
        self.list_gate = threading.Event()
        self.closed = threading.Event()
        self.calls: list[str] = []
        self.patches: list[dict] = []
        self.listed = threading.Event()

    # CoreV1Api
    def read_node(self, name):
        self.calls.append("read_node")
        if self.node_failures > 0:
            self.node_failures -= 1
            raise api_error(503, "Service Unavailable", "etcdserver: request timed out")
        return SimpleNamespace(metadata=SimpleNamespace(labels=dict(LABELS), uid="uid-n1"))

    # CustomObjectsApi
    def list_cluster_custom_object(self, group, version, plural, watch=False, **kw):
        if watch:
            self.closed.wait(30)
            raise ConnectionResetError("the fake API server closed the watch")
        self.calls.append("list_farms")
        if self.list_failures > 0:
            self.list_failures -= 1
            raise ConnectionRefusedError(111, "Connection refused")
        self.list_gate.wait(30)
        self.listed.set()
        return {"metadata": {"resourceVersion": "7"}, "items": list(self.farms.values())}

    def get_cluster_custom_object(self, group, version, plural, name):
        self.calls.append("get_farmnode")
        return {"metadata": {"name": name}, "status": {"farms": dict(self.farmnode_farms)}}

    def create_cluster_custom_object(self, group, version, plural, body):
        raise AssertionError("the FarmNode exists; the agent must not create it")

    def patch_cluster_custom_object_status(self, group, version, plural, name, body, **kw):
        self.calls.append("patch_farmnode")
        if self.patch_failures > 0:
            self.patch_failures -= 1
            raise api_error(500, "Internal Server Error", "etcd leader changed")
        self.patches.append(body)
        for f, r in body["status"]["farms"].items():
            if r is None:
                self.farmnode_farms.pop(f, None)
            else:
                self.farmnode_farms[f] = _merged(self.farmnode_farms.get(f), r)   # RFC 7386, as the API server


class RecordingDataplanes:
    """NodeDataplanes' interface: records each program() call; fails while `fail` is set."""

    instances: list["RecordingDataplanes"] = []

    def __init__(self, node, pin_root, state_root):
        self.programs: list[list[str]] = []
        self.owned: list[dict[str, frozenset[int]]] = []     # the buckets of each program() call
        self.fail: str | None = None
        self.held: set[str] = {"web"}         # adopted from the previous agent
        RecordingDataplanes.instances.append(self)

    def program(self, items):
        names = sorted(i.farm.name for i in items)
        self.programs.append(names)
        self.owned.append({i.farm.name: frozenset(i.owned) for i in items})
        if self.fail:
            raise DataplaneError(self.fail)
        self.held = set(names)

    def serving_now(self):
        return {}

    def pins(self):
        return {}       # no pinned maps: the observability endpoint shows what was programmed

    def mode_of(self, iface):
        return "generic"

    def set_lease(self, farm_name, syn_deadline_ns, deadline_ns):
        return True

    def stop(self):
        self.held = set()


class Clock:
    def __init__(self, t=1000.0):
        self.t = t

    def __call__(self):
        return self.t


@pytest.fixture
def make_agent(monkeypatch):
    monkeypatch.setattr("vipfarm.kubeconfig.api_client", lambda pool_size=None: None)
    monkeypatch.setattr(cluster_mod, "NodeDataplanes", RecordingDataplanes)
    monkeypatch.setattr(cluster_mod.signal, "signal", lambda *a: None)   # run() may run in a thread

    def make(api):
        agent = cluster_mod.ClusterAgent("n1", "/nonexistent/pins", "/nonexistent/state", refresh_s=30)
        agent.custom = agent.core = api
        agent.address_of = lambda iface: "198.51.100.1"
        return agent
    return make


def run_until(agent, api, done, what, timeout=20.0):
    """Run the agent's main loop in a thread until done() holds, then stop it and wait for it."""
    t = threading.Thread(target=agent.run, daemon=True)
    t.start()
    deadline = time.monotonic() + timeout
    try:
        while not done():
            assert time.monotonic() < deadline, f"timed out after {timeout}s waiting for {what}; calls: {api.calls}"
            assert t.is_alive(), "the agent's main loop ended by itself"
            time.sleep(0.02)
    finally:
        agent.stop()
        api.closed.set()
        api.list_gate.set()
        t.join(10)
    assert not t.is_alive(), "the agent did not stop"


def test_a_restarted_agent_programs_and_reports_nothing_until_its_first_farm_list(make_agent):
    # The previous agent served web and reported it; the API server is slow to answer the LIST.
    api = FakeApi([farm_body()], {"web": dict(REPORTED)})
    agent = make_agent(api)
    dp = RecordingDataplanes.instances[-1]
    threading.Timer(1.0, api.list_gate.set).start()        # the LIST comes a second late
    run_until(agent, api, lambda: dp.programs, "the first dataplane change after the LIST")
    assert api.listed.is_set()
    assert dp.programs[0] == ["web"], f"programmed before the LIST arrived: {dp.programs}"
    assert all(body["status"]["farms"].get("web", "kept") is not None for body in api.patches), \
        f"the agent told the operator web is gone: {api.patches}"
    assert api.farmnode_farms["web"]["ready"] is True


def test_an_agent_that_cannot_read_its_node_yet_reports_nothing(make_agent):
    api = FakeApi([farm_body()], {"web": dict(REPORTED)}, node_failures=2)
    api.list_gate.set()
    agent = make_agent(api)
    agent.retries = Backoff(first=0.05, cap=0.1)
    dp = RecordingDataplanes.instances[-1]
    run_until(agent, api, lambda: dp.programs, "the first dataplane change after the Node read")
    assert api.calls.count("read_node") == 3
    assert dp.programs[0] == ["web"]
    assert all(body["status"]["farms"].get("web", "kept") is not None for body in api.patches), api.patches


def deleting_agent(make_agent):
    api = FakeApi([farm_body(deleting=True)], {"web": dict(REPORTED)})
    agent = make_agent(api)
    agent.labels = dict(LABELS)
    agent.farms = dict(api.farms)
    agent.listed = True
    return agent, RecordingDataplanes.instances[-1]


def test_a_deleting_farm_is_not_released_while_the_dataplane_change_fails(make_agent):
    agent, dp = deleting_agent(make_agent)
    dp.fail = "eth0: cannot detach XDP: device busy"
    agent._apply()
    assert dp.programs == [[]] and dp.held == {"web"}
    report = agent.wanted["web"]
    assert report.get("released") is not True, f"released while the node still holds web: {report}"
    assert "device busy" in report.get("lastError", ""), report


def test_a_deleting_farm_is_released_once_the_dataplane_let_it_go(make_agent):
    agent, dp = deleting_agent(make_agent)
    dp.fail = "eth0: cannot detach XDP: device busy"
    agent._apply()
    dp.fail = None
    agent._apply()                                  # the retry succeeds
    assert dp.held == set()
    assert agent.wanted["web"] == {"ready": False, "reason": "Deleting", "released": True}


def api_lines(caplog, event):
    return [r.getMessage() for r in caplog.records if f"event={event} " in r.getMessage()]


def test_a_failing_node_read_is_logged_once_retried_with_backoff_and_its_recovery_logged_once(make_agent, caplog):
    caplog.set_level(logging.INFO, logger="vipfarm.agent.cluster")
    api = FakeApi([], {}, node_failures=3)
    agent = make_agent(api)
    agent.clock = clock = Clock()
    for t in (1000.0, 1000.5, 1001.0, 1002.0, 1003.0, 1005.0):   # backoff 1 s, 2 s, 4 s
        clock.t = t
        agent._refresh_labels()
    assert api.calls.count("read_node") == 3          # at 1000, 1001 and 1003, not in between
    assert agent.labels is None
    clock.t = 1007.0
    agent._refresh_labels()
    assert agent.labels == LABELS and api.calls.count("read_node") == 4
    failed, recovered = api_lines(caplog, "api_failed"), api_lines(caplog, "api_recovered")
    assert len(failed) == 1 and len(recovered) == 1, caplog.text
    assert "object=node/n1 op=read" in failed[0] and "503" in failed[0] and "etcdserver" in failed[0]
    assert "object=node/n1 op=read" in recovered[0] and "failed_attempts=3" in recovered[0]
    clock.t = 1010.0
    agent._refresh_labels()                           # healthy again: next read after 30 s
    assert api.calls.count("read_node") == 4


def test_a_failing_farm_list_is_logged_once_and_its_recovery_once(make_agent, caplog):
    caplog.set_level(logging.INFO, logger="vipfarm.agent.cluster")
    api = FakeApi([farm_body()], {}, list_failures=3)
    api.list_gate.set()
    agent = make_agent(api)
    agent.watch_retries = Backoff(first=0.01, cap=0.02)
    t = threading.Thread(target=agent._watch_loop, daemon=True)
    t.start()
    try:
        kind, farms = agent.events.get(timeout=10)
    finally:
        agent.stopping.set()
        api.closed.set()
        t.join(10)
    assert kind == "LIST" and set(farms) == {"web"}
    assert api.calls.count("list_farms") == 4
    failed, recovered = api_lines(caplog, "api_failed"), api_lines(caplog, "api_recovered")
    assert len(failed) == 1 and len(recovered) == 1, caplog.text
    assert "object=farms.vipfarm.io op=list+watch" in failed[0] and "Connection refused" in failed[0]
    assert "failed_attempts=3" in recovered[0]


def test_a_failing_report_patch_is_logged_once_and_retried_with_backoff(make_agent, caplog):
    caplog.set_level(logging.INFO, logger="vipfarm.agent.cluster")
    api = FakeApi([farm_body()], {}, patch_failures=2)
    agent = make_agent(api)
    agent.clock = clock = Clock()
    agent.labels, agent.farms, agent.listed = dict(LABELS), dict(api.farms), True
    agent._apply()
    assert agent._report_delay() == 0
    agent._write_report()                             # fails: next try in 1 s
    assert agent._report_delay() == pytest.approx(1.0)
    clock.t += 1.0
    agent._write_report()                             # fails: next try in 2 s
    assert agent._report_delay() == pytest.approx(2.0)
    clock.t += 2.0
    agent._write_report()
    assert api.farmnode_farms["web"]["ready"] is True
    failed, recovered = api_lines(caplog, "api_failed"), api_lines(caplog, "api_recovered")
    assert len(failed) == 1 and len(recovered) == 1, caplog.text
    assert "object=farmnode/n1/status op=patch" in failed[0] and "etcd leader changed" in failed[0]
    assert not [r for r in caplog.records if "report_failed" in r.getMessage()]


def test_watch_error_events_back_off_instead_of_listing_again_in_a_tight_loop(make_agent, caplog, monkeypatch):
    class ErrorWatch:
        def stream(self, *a, **kw):
            yield {"type": "ERROR", "object": {"kind": "Status", "code": 500, "message": "etcd is sad"}}

        def stop(self):
            pass
    monkeypatch.setattr("kubernetes.watch.Watch", ErrorWatch)
    caplog.set_level(logging.INFO, logger="vipfarm.agent.cluster")
    api = FakeApi([farm_body()], {})
    api.list_gate.set()
    agent = make_agent(api)
    agent.watch_retries = Backoff(first=0.3, cap=0.3)
    t = threading.Thread(target=agent._watch_loop, daemon=True)
    t.start()
    time.sleep(1.0)          # the loop's own pace is what is measured: ~4 LISTs in a second, not hundreds
    agent.stopping.set()
    api.closed.set()
    t.join(10)
    assert 2 <= api.calls.count("list_farms") <= 6, api.calls.count("list_farms")
    failed = api_lines(caplog, "api_failed")
    assert len(failed) == 1 and "etcd is sad" in failed[0], caplog.text


# -- failover: the heartbeat configuration, the key, the engine's decisions ------------------
import base64                                             # noqa: E402

from nodeagent.cluster import SecretRef, farm_peers, secret_ref   # noqa: E402
from nodeagent.heartbeat import Decision, Membership        # noqa: E402
from nodeagent.netconfig import pick_heartbeat_address    # noqa: E402
from vipfarm.decisions import decide                      # noqa: E402
from vipfarm.farm_status import stored_assignment         # noqa: E402
from vipfarm.heartbeat_keys import keyring_from_secret    # noqa: E402
from vipfarm.membership import NodeInfo                   # noqa: E402
from vipfarm.spec import parse_farm                       # noqa: E402

KEY = b"k" * 40
NEW_KEY = b"n" * 40


def served_farm(members=("n1", "n2", "n3"), not_eligible=(), addresses=None):
    """A Farm body with the status the operator writes for these members."""
    body = farm_body()
    nodes = [NodeInfo(n, dict(LABELS), weight=2 if n == "n2" else 1) for n in members]
    reports = {n: {"ready": True, "address": (addresses or {}).get(n, f"198.51.100.{i + 1}")}
               for i, n in enumerate(members)}
    status = decide(parse_farm(body), 1, "t1", nodes, [], {}, reports, "2026-12-01T00:00:00Z").status
    for m in status["members"]:
        if m["node"] in not_eligible:
            m.update(ready=False, reason="NodeNotReady")
            m.pop("eligible", None)
    body["status"] = status
    return body


def test_farm_peers_votes_with_the_eligible_members_at_their_weights_and_reported_addresses():
    body = served_farm(not_eligible=("n3",))
    ring = keyring_from_secret({"hmac-key": base64.b64encode(KEY).decode()}, "hmac-key", "test")
    p = farm_peers(parse_farm(body), body["status"], "n1", "198.51.100.1", ring, frozenset({1, 2}))
    assert dict(p.weights) == {"n1": 1, "n2": 2}
    assert dict(p.addresses) == {"n1": "198.51.100.1", "n2": "198.51.100.2"}
    assert p.base.epoch == 1 and p.base.assignment == stored_assignment(body["status"])
    assert p.may_start_chain is False and p.keyring is ring and p.adopted == {1, 2}
    assert p.withdrawn is False
    hb = parse_farm(body).heartbeat
    assert (p.port, p.interval_ms, p.timeout_ms) == (hb.port, hb.interval_ms, hb.timeout_ms)


def test_a_member_the_operator_does_not_count_eligible_withdraws_and_votes_only_for_itself():
    body = served_farm(not_eligible=("n3",))
    p = farm_peers(parse_farm(body), body["status"], "n3", "198.51.100.3", None)
    assert dict(p.weights) == {"n1": 1, "n2": 2, "n3": 1}
    assert p.withdrawn is True         # it serves nothing now, not when its peers' rows expire
    # the others leave n3 out of their weights, so their base (config digest) differs from n3's:
    # n3 never agrees with them and serves nothing until the operator counts it eligible
    other = farm_peers(parse_farm(body), body["status"], "n1", "198.51.100.1", None)
    assert p.base.digest != other.base.digest


def test_a_draining_member_keeps_its_vote_at_weight_0_so_its_peers_hear_its_handover():
    """Cordoned, Draining or Drained (vipfarm/decisions.py): it stays a voter everywhere, with
    weight 0 (no bucket) and its address, and is not withdrawn; every member computes the same
    base, so the takers wait for its release and keep its buckets moving while it hands over."""
    for reason in ("Cordoned", "Draining", "Drained"):
        body = served_farm(not_eligible=("n3",))
        next(m for m in body["status"]["members"] if m["node"] == "n3")["reason"] = reason
        own = farm_peers(parse_farm(body), body["status"], "n3", "198.51.100.3", None)
        other = farm_peers(parse_farm(body), body["status"], "n1", "198.51.100.1", None)
        assert dict(own.weights) == dict(other.weights) == {"n1": 1, "n2": 2, "n3": 0}, reason
        assert other.addresses["n3"] == "198.51.100.3" and own.withdrawn is False
        assert own.base.digest == other.base.digest


def test_a_farm_without_an_assignment_or_in_conflict_has_no_heartbeat_decisions():
    body = farm_body()
    assert farm_peers(parse_farm(body), {}, "n1", "198.51.100.1", None) is None
    conflict = served_farm()
    conflict["status"]["phase"] = "Conflict"
    assert farm_peers(parse_farm(conflict), conflict["status"], "n1", "198.51.100.1", None) is None
    corrupt = served_farm()
    corrupt["status"]["assignment"]["data"] = "z1:not-base64!"
    assert farm_peers(parse_farm(corrupt), corrupt["status"], "n1", "198.51.100.1", None) is None


def test_the_secret_reference_comes_from_the_charts_environment():
    env = {"VIPFARM_HEARTBEAT_SECRET": "vipfarm-heartbeat", "VIPFARM_HEARTBEAT_SECRET_KEY": "hmac-key",
           "POD_NAMESPACE": "vipfarm-system"}
    assert secret_ref(env) == SecretRef("vipfarm-heartbeat", "hmac-key", "vipfarm-system")
    assert secret_ref({"VIPFARM_HEARTBEAT_SECRET": "s", "VIPFARM_NAMESPACE": "ns"}) == SecretRef("s", "hmac-key", "ns")
    assert secret_ref({}) is None


def test_the_heartbeat_address_is_the_first_ipv4_else_the_first_global_ipv6():
    assert pick_heartbeat_address(["fe80::1", "2001:db8::1", "198.51.100.7", "198.51.100.8"]) == "198.51.100.7"
    assert pick_heartbeat_address(["fe80::1", "2001:db8::1"]) == "2001:db8::1"
    assert pick_heartbeat_address(["fe80::1", "::1"]) is None


class SecretApi(FakeApi):
    """FakeApi with the heartbeat Secret: `secret_data` None = 404."""

    def __init__(self, *a, secret_data=None, **kw):
        super().__init__(*a, **kw)
        self.secret_data = secret_data
        self.secret_reads = 0

    def read_namespaced_secret(self, name, namespace):
        self.calls.append(f"read_secret {namespace}/{name}")
        self.secret_reads += 1
        if self.secret_data is None:
            raise api_error(404, "Not Found", f'secrets "{name}" not found')
        if self.secret_data == "down":
            raise ConnectionRefusedError(111, "Connection refused")
        return SimpleNamespace(data={k: base64.b64encode(v).decode() for k, v in self.secret_data.items()})


@pytest.fixture
def keyed_agent(make_agent, monkeypatch):
    monkeypatch.setenv("VIPFARM_HEARTBEAT_SECRET", "vipfarm-heartbeat")
    monkeypatch.setenv("VIPFARM_HEARTBEAT_SECRET_KEY", "hmac-key")
    monkeypatch.setenv("POD_NAMESPACE", "vipfarm-system")

    def make(api):
        agent = make_agent(api)
        agent.clock = Clock()
        configured = []
        agent.engine.configure = configured.append       # what the heartbeat thread would be told
        agent.configured = configured
        agent.labels, agent.farms, agent.listed = dict(LABELS), dict(api.farms), True
        return agent
    return make


def test_the_key_is_read_from_the_secret_reread_every_30s_and_a_rotation_reconfigures_the_heartbeats(keyed_agent):
    api = SecretApi([served_farm()], {}, secret_data={"hmac-key": KEY})
    agent = keyed_agent(api)
    agent._refresh_key()
    agent._apply()
    assert api.calls[-2:] != [] and "read_secret vipfarm-system/vipfarm-heartbeat" in api.calls
    assert agent.configured[-1][0].keyring.signing.secret == KEY
    # It started with no filter of its own: withdrawn until its first programming, then not.
    assert [c[0].withdrawn for c in agent.configured] == [True, False]
    agent.configured.clear()
    agent.clock.t += 10
    agent._refresh_key()
    assert api.secret_reads == 1                          # not before 30 s
    # Rotation, step 1: the new key is accepted next to the old one, which still signs.
    api.secret_data = {"hmac-key": KEY, "hmac-key-previous": NEW_KEY}
    agent.clock.t += 21
    agent._refresh_key()
    agent._apply()
    ring = agent.configured[-1][0].keyring
    assert ring.signing.secret == KEY and {k.secret for k in ring.accepted} == {KEY, NEW_KEY}
    assert len(agent.configured) == 1
    # The API server away: the key in use stays (the heartbeats must not stop).
    api.secret_data = "down"
    agent.clock.t += 31
    agent._refresh_key()
    agent._apply()
    assert agent.keyring is ring and len(agent.configured) == 1


def test_a_missing_key_is_said_once_with_the_fix_and_the_node_serves_no_multi_node_farm(keyed_agent, caplog):
    caplog.set_level(logging.INFO, logger="vipfarm.agent.cluster")
    api = SecretApi([served_farm()], {}, secret_data=None)
    agent = keyed_agent(api)
    for _ in range(2):
        agent._refresh_key()
        agent._apply()
        agent.clock.t += 31
    lines = api_lines(caplog, "heartbeat_key_unusable")
    assert len(lines) == 1, lines
    assert "vipfarm-system/vipfarm-heartbeat" in lines[0] and "kubectl -n vipfarm-system create secret" in lines[0]
    r = agent.wanted["web"]
    assert (r["ready"], r["reason"]) == (False, "HeartbeatKeyUnusable")
    assert "Secret vipfarm-system/vipfarm-heartbeat key hmac-key does not exist" in r["lastError"]
    assert agent.configured[-1][0].keyring is None


def test_a_short_key_is_refused_with_the_secret_named(keyed_agent):
    api = SecretApi([served_farm()], {}, secret_data={"hmac-key": b"short"})
    agent = keyed_agent(api)
    agent._refresh_key()
    agent._apply()
    assert agent.keyring is None and "vipfarm-heartbeat" in agent.wanted["web"]["lastError"]


def test_the_buckets_programmed_are_the_heartbeat_decisions_not_the_stored_assignment(keyed_agent):
    api = SecretApi([served_farm()], {}, secret_data={"hmac-key": KEY})
    agent = keyed_agent(api)
    agent._refresh_key()
    agent._apply()
    dp = RecordingDataplanes.instances[-1]
    assert dp.owned[-1]["web"] == frozenset()             # undecided: what the filter served (nothing)
    stored = frozenset(stored_assignment(api.farms["web"]["status"]).owned_by("n1"))
    taken_over = frozenset(range(600))                    # e.g. n3's buckets after n3 crashed
    agent._on_decision(Decision("web", taken_over, frozenset({"n1", "n2"}), frozenset(), True, 1,
                                b"\1" * 8, 0, 0))
    agent._on_membership(Membership("web", 1, frozenset({"n1", "n2"}), bytes([1] * 8), True, frozenset()))
    agent._apply()
    assert dp.owned[-1]["web"] == taken_over != stored
    r = agent.wanted["web"]
    assert r["membership"] == {"baseEpoch": 1, "view": ["n1", "n2"], "digest": "01" * 8, "agreed": True}
    assert r["address"] == "198.51.100.1" and r["ready"] is True


class FakeRunner:
    """CheckRunner's interface, driven by the test."""

    def __init__(self, farm, on_change, node=""):
        self.farm, self.on_change, self.stopped = farm, on_change, False

    def health(self):
        from vipfarm.checks import Health
        return Health(False, "CheckerStarting", "web", "")

    def start(self):
        pass

    def stop(self):
        self.stopped = True


def test_failing_checkers_withdraw_the_node_and_their_transitions_are_the_reports_checks(keyed_agent, monkeypatch):
    from vipfarm.checks import CHECKER_TRANSITION, Event, Health
    monkeypatch.setattr("nodeagent.checkers.CheckRunner", FakeRunner)
    body = served_farm()
    body["spec"]["checkers"] = [{"name": "web", "type": "tcp", "port": 80}]
    api = SecretApi([body], {}, secret_data={"hmac-key": KEY})
    agent = keyed_agent(api)
    agent._refresh_key()
    agent._apply()
    assert agent.configured[-1][0].withdrawn is True       # starting, nothing adopted: not serving yet
    runner = agent.runners["web"]
    passing = Event(CHECKER_TRANSITION, "web", "web", "tcp", "starting", "passing", "127.0.0.1:80 accepted", 1.0,
                    "2026-12-01T00:00:01Z")
    runner.on_change(Health(True, "CheckersPassing"), [passing])
    agent._apply()
    assert agent.configured[-1][0].withdrawn is False
    assert agent.wanted["web"]["checks"] == {"web": {"name": "web", "type": "tcp", "state": "passing",
                                                     "detail": "127.0.0.1:80 accepted", "since": "2026-12-01T00:00:01Z"}}
    failing = Event(CHECKER_TRANSITION, "web", "web", "tcp", "passing", "failing", "connection refused", 9.0,
                    "2026-12-01T00:00:09Z")
    runner.on_change(Health(False, "CheckerFailing", "web", "connection refused"), [failing])
    agent._apply()
    assert agent.configured[-1][0].withdrawn is True
    assert agent.wanted["web"]["checks"]["web"]["state"] == "failing"


def test_checker_transitions_go_to_the_event_poster_as_events_regarding_the_farm_with_its_uid(keyed_agent, monkeypatch):
    """The runner's thread only queues; the main loop hands each transition that posts an
    Event to the poster (which returns at once), with the Farm's uid from the watch."""
    from vipfarm.checks import CHECKER_TRANSITION, Event, Health
    monkeypatch.setattr("nodeagent.checkers.CheckRunner", FakeRunner)
    body = served_farm()
    body["spec"]["checkers"] = [{"name": "web", "type": "tcp", "port": 80}]
    api = SecretApi([body], {}, secret_data={"hmac-key": KEY})
    agent = keyed_agent(api)
    submitted = []
    agent.k8s_events.submit = submitted.append
    agent._refresh_key()
    agent._apply()
    runner = agent.runners["web"]
    runner.on_change(Health(True, "CheckersPassing"),
                     [Event(CHECKER_TRANSITION, "web", "web", "tcp", "unknown", "passing", "connected", 1.0)])
    runner.on_change(Health(False, "CheckerFailing", "web", "connection refused"),
                     [Event(CHECKER_TRANSITION, "web", "web", "tcp", "passing", "failing", "connection refused", 9.0)])
    assert submitted == []                  # nothing is posted from the runner's thread
    agent._apply()
    assert [(e.reason, e.farm, e.farm_uid, e.checker) for e in submitted] == \
        [("CheckerFailing", "web", "uid-web", "web")]     # the first pass after a start posts none
    assert "node n1: checker web (tcp) passing -> failing: connection refused" == submitted[0].note
    agent._apply()
    assert len(submitted) == 1              # each transition once
