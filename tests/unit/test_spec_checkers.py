"""vipfarm.spec: spec.heartbeat.keyFile, spec.checkers and spec.recovery parse to the model with
their defaults, and every bad value is refused naming its path, the value and the fix."""
from __future__ import annotations

import copy

import pytest

from vipfarm.spec import (MAX_NODES, Checker, FarmSpecError, Heartbeat, Recovery, parse_farm)

ISSUE_8_SPEC = {
    "virtualIPs": ["203.0.113.10"],
    "interface": "bond0",
    "heartbeat": {"port": 7946, "intervalMs": 100, "timeoutMs": 300, "keyFile": "/etc/vipfarm/heartbeat.key"},
    "checkers": [{"name": "web", "type": "tcp", "port": 80, "host": "127.0.0.1", "intervalMs": 1000,
                  "timeoutMs": 500, "failureThreshold": 3, "successThreshold": 2}],
    "recovery": {"command": ["systemctl", "restart", "nginx"], "timeoutSeconds": 30, "maxRestarts": 3,
                 "windowSeconds": 86400},
}


def doc(**spec) -> dict:
    base = copy.deepcopy(ISSUE_8_SPEC)
    base.update(spec)
    return {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "web"}, "spec": base}


def checker_doc(**fields) -> dict:
    return doc(checkers=[fields])


def problems(d) -> list[str]:
    with pytest.raises(FarmSpecError) as info:
        parse_farm(d)
    return info.value.problems


def test_the_issue_8_shape_is_accepted_with_every_value_kept():
    farm = parse_farm(doc())
    assert farm.heartbeat == Heartbeat(7946, 100, 300, "/etc/vipfarm/heartbeat.key")
    assert farm.checkers == (Checker("web", "tcp", port=80, host="127.0.0.1", interval_ms=1000, timeout_ms=500,
                                     failure_threshold=3, success_threshold=2),)
    assert farm.recovery == Recovery(("systemctl", "restart", "nginx"), 30, 3, 86400)


def test_heartbeat_defaults_are_100_ms_interval_and_300_ms_timeout_without_a_key_file():
    farm = parse_farm(doc(heartbeat=None))
    assert farm.heartbeat == Heartbeat(7946, 100, 300, "")


def test_each_checker_type_gets_its_defaults_and_only_its_own_fields():
    farm = parse_farm(doc(checkers=[{"name": "t", "type": "tcp", "port": 80},
                                    {"name": "h", "type": "http", "port": 8080},
                                    {"name": "e", "type": "exec", "command": ["true"]},
                                    {"name": "i", "type": "interface"}]))
    t, h, e, i = farm.checkers
    assert t == Checker("t", "tcp", port=80, host="127.0.0.1")
    assert h == Checker("h", "http", port=8080, host="127.0.0.1", path="/", expect_status=(200,))
    assert e == Checker("e", "exec", command=("true",))
    assert i == Checker("i", "interface", interface="bond0"), "the interface checker defaults to spec.interface"
    assert (t.interval_ms, t.timeout_ms, t.failure_threshold, t.success_threshold) == (1000, 500, 3, 2)


def test_recovery_defaults():
    assert parse_farm(doc(recovery={"command": ["x"]})).recovery == Recovery(("x",), 30, 3, 86400)


def test_null_checkers_and_recovery_count_as_absent():
    farm = parse_farm(doc(checkers=None, recovery=None))
    assert farm.checkers == () and farm.recovery is None


def test_an_ipv6_host_is_kept_in_its_canonical_form():
    farm = parse_farm(checker_doc(name="h", type="http", port=80, host="2001:DB8:0::1"))
    assert farm.checkers[0].host == "2001:db8::1"


BAD = [
    ("key-file-relative", doc(heartbeat={"keyFile": "etc/key"}),
     ["spec.heartbeat.keyFile='etc/key'", "absolute path", "vipfarm keygen"]),
    ("key-file-empty", doc(heartbeat={"keyFile": ""}), ["spec.heartbeat.keyFile=''", "absolute path"]),
    ("heartbeat-default-timeout-below-3x", doc(heartbeat={"intervalMs": 101}),
     ["spec.heartbeat.timeoutMs=300", "3 x intervalMs (303)"]),
    ("tcp-without-port", checker_doc(name="web", type="tcp"),
     ["spec.checkers[0].port=None", "a tcp checker needs the port"]),
    ("exec-without-command", checker_doc(name="app", type="exec"),
     ["spec.checkers[0].command=None", "an exec checker needs the command"]),
    ("path-on-tcp", checker_doc(name="web", type="tcp", port=80, path="/x"),
     ["spec.checkers[0].path='/x'", "path does not apply to a tcp checker", "only http checkers take path"]),
    ("port-on-exec", checker_doc(name="app", type="exec", command=["true"], port=80),
     ["spec.checkers[0].port=80", "port does not apply to a exec checker",
      "only tcp checkers and http checkers take port"]),
    ("command-on-interface", checker_doc(name="l", type="interface", command=["true"]),
     ["spec.checkers[0].command=['true']", "only exec checkers take command"]),
    ("type-unknown", checker_doc(name="web", type="udp"),
     ["spec.checkers[0].type='udp'", "tcp, http, exec, interface"]),
    ("name-not-a-label", checker_doc(name="Web.1", type="interface"),
     ["spec.checkers[0].name='Web.1'", "DNS-1123 label"]),
    ("name-twice", doc(checkers=[{"name": "a", "type": "interface"}, {"name": "a", "type": "interface"}]),
     ["spec.checkers[1].name='a'", "listed twice"]),
    ("too-many-checkers", doc(checkers=[{"name": f"c{i}", "type": "interface"} for i in range(17)]),
     ["spec.checkers='17 checkers'", "at most 16"]),
    ("host-a-name", checker_doc(name="web", type="tcp", port=80, host="localhost"),
     ["spec.checkers[0].host='localhost'", "IP address to probe"]),
    ("path-without-slash", checker_doc(name="h", type="http", port=80, path="healthz"),
     ["spec.checkers[0].path='healthz'", "starts with '/'", "e.g. /healthz"]),
    ("path-with-space", checker_doc(name="h", type="http", port=80, path="/a b"),
     ["spec.checkers[0].path='/a b'", "without spaces"]),
    ("expect-status-empty", checker_doc(name="h", type="http", port=80, expectStatus=[]),
     ["spec.checkers[0].expectStatus=[]", "non-empty list"]),
    ("expect-status-out-of-range", checker_doc(name="h", type="http", port=80, expectStatus=[200, 600]),
     ["spec.checkers[0].expectStatus[1]=600", "between 100 and 599"]),
    ("expect-status-null-item", checker_doc(name="h", type="http", port=80, expectStatus=[None, 204]),
     ["spec.checkers[0].expectStatus[0]=None", "between 100 and 599"]),
    ("command-empty", checker_doc(name="app", type="exec", command=[]),
     ["spec.checkers[0].command=[]", "non-empty list"]),
    ("command-program-empty", checker_doc(name="app", type="exec", command=[""]),
     ["spec.checkers[0].command[0]=''", "cannot be empty"]),
    ("command-nul", checker_doc(name="app", type="exec", command=["a\x00"]),
     ["spec.checkers[0].command[0]='a\\x00'", "without NUL"]),
    ("command-a-string", checker_doc(name="app", type="exec", command="check-app"),
     ["spec.checkers[0].command='check-app'", "list of at most 64 strings"]),
    ("interface-bad", checker_doc(name="l", type="interface", interface="a/b"),
     ["spec.checkers[0].interface='a/b'", "network interface name"]),
    ("interval-too-short", checker_doc(name="l", type="interface", intervalMs=49),
     ["spec.checkers[0].intervalMs=49", "between 50 and 3600000"]),
    ("timeout-above-interval", checker_doc(name="l", type="interface", intervalMs=100),
     ["spec.checkers[0].timeoutMs=500", "at most intervalMs (100)", "never overlap"]),
    ("failure-threshold-zero", checker_doc(name="l", type="interface", failureThreshold=0),
     ["spec.checkers[0].failureThreshold=0", "between 1 and 100"]),
    ("success-threshold-bool", checker_doc(name="l", type="interface", successThreshold=True),
     ["spec.checkers[0].successThreshold=True", "integer between 1 and 100"]),
    ("checker-unknown-field", checker_doc(name="l", type="interface", probe=1),
     ["spec.checkers[0].probe=1", "unknown field"]),
    ("checkers-not-a-list", doc(checkers={"name": "web"}), ["spec.checkers={'name': 'web'}", "must be a list"]),
    ("recovery-without-command", doc(recovery={}), ["spec.recovery.command=None", "recovery needs the command"]),
    ("recovery-not-a-mapping", doc(recovery=["restart"]), ["spec.recovery=['restart']", "must be a mapping"]),
    ("recovery-timeout-zero", doc(recovery={"command": ["x"], "timeoutSeconds": 0}),
     ["spec.recovery.timeoutSeconds=0", "between 1 and 3600"]),
    ("recovery-max-restarts-negative", doc(recovery={"command": ["x"], "maxRestarts": -1}),
     ["spec.recovery.maxRestarts=-1", "between 0 and 1000"]),
    ("recovery-window-too-long", doc(recovery={"command": ["x"], "windowSeconds": 31536001}),
     ["spec.recovery.windowSeconds=31536001", "between 1 and 31536000"]),
    ("recovery-unknown-field", doc(recovery={"command": ["x"], "budget": 3}),
     ["spec.recovery.budget=3", "unknown field; recovery has command"]),
    ("too-many-nodes", doc(nodes=[{"name": f"n{i}", "address": f"198.51.100.{i + 1}"} for i in range(MAX_NODES + 1)]),
     ["spec.nodes='65 nodes'", "at most 64 nodes", "heartbeats are all-to-all", "every member's row"]),
]


@pytest.mark.parametrize("d,needles", [pytest.param(d, n, id=i) for i, d, n in BAD])
def test_a_bad_checker_recovery_or_heartbeat_value_is_refused_naming_path_value_and_fix(d, needles):
    found = problems(d)
    assert any(all(n in p for n in needles) for p in found), f"no problem has all of {needles}: {found}"


def test_every_checker_problem_is_reported_at_once():
    found = problems(doc(checkers=[{"name": "a", "type": "tcp"}, {"name": "b", "type": "exec", "port": 1}],
                         recovery={"command": [], "maxRestarts": -1}))
    paths = {p.split("=", 1)[0] for p in found}
    assert {"spec.checkers[0].port", "spec.checkers[1].port", "spec.checkers[1].command",
            "spec.recovery.command", "spec.recovery.maxRestarts"} <= paths, found


def test_sixty_four_nodes_are_accepted():
    nodes = [{"name": f"n{i}", "address": f"198.51.100.{i + 1}"} for i in range(MAX_NODES)]
    assert MAX_NODES == 64 and len(parse_farm(doc(nodes=nodes)).nodes) == 64


def test_a_heartbeat_witness_must_be_a_unicast_ipv4_address():
    hb = dict(ISSUE_8_SPEC["heartbeat"])
    assert parse_farm(doc(heartbeat=dict(hb, witness="198.51.100.254"))).heartbeat.witness == "198.51.100.254"
    assert parse_farm(doc()).heartbeat.witness == ""
    for bad in ("2001:db8::fe", "224.0.0.1", "255.255.255.255", "router", 7):
        found = problems(doc(heartbeat=dict(hb, witness=bad)))
        assert len(found) == 1 and found[0].startswith("spec.heartbeat.witness") and str(bad) in found[0], found
        assert "IPv4 address of a host on the farm's segment" in found[0]
