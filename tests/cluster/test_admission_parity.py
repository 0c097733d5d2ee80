"""Cluster tier: the Farm CRD (OpenAPI schema + CEL rules, on the real kube-apiserver) and
parse_farm agree on which Farm documents are valid.

Each document is sent with server-side dry run (nothing is stored) and strict field
validation (unknown fields are errors, as parse_farm makes them), and parsed by parse_farm as
the operator would (require_nodes=False). Two kinds of document are compared: targeted
variants of the field rules (node names, interface names, member and virtual addresses, ...)
and random mutations of a valid Farm (tests/support/farm_mutations.py, seeded, so a failure
reproduces).

Where the two cannot agree, the difference is written down in KNOWN_DIFFERENCES and checked
to go the documented way; everything else must agree.
"""
from __future__ import annotations

import copy
import json
import os
import random

import pytest

from tests.support.apiserver import REPO
from tests.support.farm_mutations import VALID_FARM, mutate
from vipfarm.spec import GROUP, PLURAL, VERSION, FarmSpecError, parse_farm

pytestmark = pytest.mark.cluster
RANDOM_DOCUMENTS = 200
BASE = copy.deepcopy(VALID_FARM)
BASE["metadata"]["name"] = "parity"


def _has_byte_a0(value) -> bool:
    return isinstance(value, str) and b"\xa0" in value.encode("utf-8", "replace")


def _interface_has_byte_a0(doc) -> bool:
    spec = doc.get("spec")
    if not isinstance(spec, dict):
        return False
    checkers = spec.get("checkers")
    checker_ifaces = [c.get("interface") for c in checkers if isinstance(c, dict)] if isinstance(checkers, list) else []
    return any(_has_byte_a0(v) for v in [spec.get("interface")] + checker_ifaces)


def _selector_has_null_value(doc) -> bool:
    spec = doc.get("spec")
    sel = spec.get("nodeSelector") if isinstance(spec, dict) else None
    return isinstance(sel, dict) and any(v is None for v in sel.values())


# (why, test on the document): parse_farm refuses these, the API server accepts them.
KNOWN_DIFFERENCES = [
    ("an interface name (spec.interface or a checker's) whose UTF-8 holds the byte 0xA0 (e.g. 'eth\u00e0'): the kernel's isspace() counts it "
     "as a space, so parse_farm refuses it; CEL cannot look at the bytes of a string", _interface_has_byte_a0),
    ("a null label value in nodeSelector: the API server drops the key before validation (so the stored "
     "selector selects more Nodes); parse_farm refuses the null. Refusing it in the CRD needs "
     "nullable values and a maxProperties bound on nodeSelector", _selector_has_null_value),
]


def _with(path: tuple, value) -> dict:
    doc = copy.deepcopy(BASE)
    target = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return doc


NODE_NAME = ("spec", "nodes", 0, "name")
NODE_ADDRESS = ("spec", "nodes", 0, "address")
TARGETED = (
    [_with(NODE_NAME, v) for v in ["n1", "node-1.example.com", "a" * 63, ".".join(["a" * 63] * 3) + "." + "b" * 61,
                                   "\x00", "n\x001", "\u00fc", "ff02::1", "0.0.0.0", "N1", "n_1", "-n1", "n1.", "..",
                                   "a/b", "a" * 64, ".".join(["a" * 63] * 3) + "." + "b" * 62, "", "n1\n"]]
    + [_with(("spec", "interface"), v) for v in ["eth0", "bond0.100", "x" * 15, "\u00fc" * 7, "\u00fc" * 8, "x" * 16,
                                                  "eth\x000", ".", "..", "a/b", "a:b", "a b", "eth\x0b0", "eth\u2003",
                                                  "eth\u00a0", "\u00e0", "", "eth0\n", 'a"b', "a\\b"]]
    + [_with(NODE_ADDRESS, v) for v in ["198.51.100.9", "2001:db8::9", "fe80::9", "169.254.0.9", "0.0.0.0", "::",
                                        "255.255.255.255", "ff02::1", "224.0.0.5", "127.0.0.1", "::1",
                                        "::ffff:198.51.100.9", "fe80::9%eth0", "203.0.113.10", "2001:DB8:0::10",
                                        "198.51.100.2", "2001:db8::2", "198.51.100"]]
    + [_with(("spec", "virtualIPs"), [v]) for v in ["203.0.113.20", "255.255.255.255", "0.0.0.0", "::", "ff02::1",
                                                     "239.1.2.3", "127.0.0.1", "169.254.1.1", "fe80::1",
                                                     "::ffff:203.0.113.20", "fe80::1%eth0", "198.51.100.1"]]
    + [_with(("spec", "nodeSelector"), v) for v in [{}, {"vipfarm.io/member": ""}, {"vipfarm.io/member": None}, []]]
    + [_with(("spec", "nodes"), [{"name": f"n{i}", "address": f"198.51.100.{i + 1}"} for i in range(n)])
       for n in (64, 65)]
    + [_with(("spec", "heartbeat", "keyFile"), v) for v in ["/k", "etc/key", "", "/a\x00b", None, 7, "/" + "k" * 4095,
                                                            "/" + "k" * 4096]]
    + [_with(("spec", "heartbeat"), v) for v in [{"intervalMs": 10, "timeoutMs": 30}, {"intervalMs": 100},
                                                 {"intervalMs": 101}, {"timeoutMs": 299}]]
    + [_with(("spec", "handover"), v) for v in [{}, None, {"drainTimeoutSeconds": 1}, {"drainTimeoutSeconds": 86400},
                                                {"drainTimeoutSeconds": 0}, {"drainTimeoutSeconds": 86401},
                                                {"drainTimeoutSeconds": "300"}, {"udpIdleSeconds": 1},
                                                {"udpIdleSeconds": 3600}, {"udpIdleSeconds": 0},
                                                {"udpIdleSeconds": 3601}, {"drainTimeout": 60}, 300, []]]
    + [_with(("spec", "nodes", 0, "drain"), v) for v in [True, False, None, "true", 1, 0, []]]
)


def _checker(index: int, **fields) -> dict:
    doc = copy.deepcopy(BASE)
    checker = doc["spec"]["checkers"][index]
    for key, value in fields.items():
        if value is _DROP:
            checker.pop(key, None)
        else:
            checker[key] = value
    return doc


def _spec(**fields) -> dict:
    doc = copy.deepcopy(BASE)
    doc["spec"].update(fields)
    return doc


_DROP = object()
TCP, HTTP, EXEC, IFACE = 0, 1, 2, 3
TARGETED += (
    # a field per type: each type refuses the fields of the others
    [_checker(TCP, **{k: v}) for k, v in [("path", "/"), ("expectStatus", [200]), ("command", ["true"]),
                                          ("interface", "lo")]]
    + [_checker(HTTP, **{k: v}) for k, v in [("command", ["true"]), ("interface", "lo")]]
    + [_checker(EXEC, **{k: v}) for k, v in [("port", 80), ("host", "127.0.0.1"), ("path", "/"),
                                             ("expectStatus", [200]), ("interface", "lo")]]
    + [_checker(IFACE, **{k: v}) for k, v in [("port", 80), ("command", ["true"])]]
    # required per type, and defaults
    + [_checker(TCP, port=_DROP), _checker(HTTP, port=_DROP), _checker(EXEC, command=_DROP),
       _checker(IFACE, interface=_DROP), _checker(TCP, host=_DROP), _checker(HTTP, path=_DROP, expectStatus=_DROP),
       _checker(TCP, name=_DROP), _checker(TCP, type=_DROP), _checker(TCP, type="udp"), _checker(TCP, type=None)]
    # value rules
    + [_checker(TCP, port=v) for v in [1, 65535, 0, 65536, "80", None]]
    + [_checker(TCP, host=v) for v in ["198.51.100.7", "2001:db8::7", "localhost", "fe80::1%eth0",
                                       "::ffff:127.0.0.1", "", None]]
    + [_checker(HTTP, path=v) for v in ["/", "/a/b?c=d", "healthz", "/a b", "/\u00fc", "/\n", "", "/" + "p" * 1023,
                                        "/" + "p" * 1024]]
    + [_checker(HTTP, expectStatus=v) for v in [[100, 599], [99], [600], [], [200] * 16, [200] * 17, ["200"], None, [None, 204]]]
    + [_checker(EXEC, command=v) for v in [["true"], [], [""], ["", "x"], ["x", ""], ["a\x00"], [7], "true",
                                           ["x"] * 64, ["x"] * 65, ["k" * 4096], ["k" * 4097], [None]]]
    + [_checker(IFACE, interface=v) for v in ["lo", "x" * 15, "x" * 16, "a/b", "", "eth\u00e0"]]
    + [_checker(TCP, name=v) for v in ["a", "a" * 63, "a" * 64, "Web", "web.1", "-web", "web-", "", "health"]]
    + [_checker(TCP, intervalMs=v) for v in [49, 50, 3600000, 3600001]]
    + [_checker(TCP, timeoutMs=v) for v in [9, 10, 1000, 1001, None]]
    + [_checker(TCP, intervalMs=100)]       # the default timeoutMs (500) is then above intervalMs
    + [_checker(TCP, failureThreshold=v) for v in [0, 1, 100, 101]]
    + [_checker(TCP, successThreshold=v) for v in [0, 1, 100, 101, True]]
    + [_checker(TCP, probe="x"), _checker(TCP, intervalMS=10)]
    + [_spec(checkers=v) for v in [[], None, {}, [None], [{"name": f"c{i}", "type": "interface"} for i in range(16)],
                                   [{"name": f"c{i}", "type": "interface"} for i in range(17)]]]
    # recovery
    + [_spec(recovery=v) for v in [None, {}, {"command": ["x"]}, {"command": []}, {"command": [""]},
                                   {"command": "restart"}, {"command": ["x"], "timeoutSeconds": 0},
                                   {"command": ["x"], "timeoutSeconds": 3600}, {"command": ["x"], "timeoutSeconds": 3601},
                                   {"command": ["x"], "maxRestarts": 0}, {"command": ["x"], "maxRestarts": 1001},
                                   {"command": ["x"], "maxRestarts": -1}, {"command": ["x"], "windowSeconds": 0},
                                   {"command": ["x"], "windowSeconds": 31536000},
                                   {"command": ["x"], "windowSeconds": 31536001}, {"command": ["x"], "budget": 3},
                                   [], "x"]]
)


def _server_accepts(api, doc) -> tuple[bool, str]:
    from kubernetes.client.rest import ApiException
    try:
        api.create_cluster_custom_object(GROUP, VERSION, PLURAL, doc, dry_run="All", field_validation="Strict")
        return True, ""
    except ApiException as e:
        if e.status in (400, 422):      # 400: not decodable / unknown field; 422: schema or CEL rule
            try:
                return False, json.loads(e.body).get("message", "")
            except (TypeError, ValueError):
                return False, str(e.body)
        raise AssertionError(f"the API server answered {e.status} (not a verdict on the document): {e.body}")


def _parse_accepts(doc) -> tuple[bool, str]:
    try:
        parse_farm(copy.deepcopy(doc))
        return True, ""
    except FarmSpecError as e:
        return False, "; ".join(e.problems)


@pytest.fixture(scope="module")
def farms_api(apiserver):
    # The CRDs straight from crds/, removed again at the end: the chart's CRDs are templates,
    # and helm, later in the session, refuses to take over CRDs that no release owns.
    apiserver.kubectl("apply", "-f", os.path.join(REPO, "crds"))
    apiserver.kubectl("wait", "--for=condition=Established", "crd/farms.vipfarm.io", "--timeout=60s")
    from kubernetes import client
    try:
        yield client.CustomObjectsApi(apiserver.api_client())
    finally:
        apiserver.kubectl("delete", "--wait=true", "--ignore-not-found", "-f", os.path.join(REPO, "crds"))


def _compare(api, docs: list[dict]) -> tuple[list[str], int, dict[str, int]]:
    """Disagreements (one line each), how many documents both accepted, and how often each
    known difference was seen."""
    disagreements: list[str] = []
    accepted = 0
    seen = {why: 0 for why, _ in KNOWN_DIFFERENCES}
    for doc in docs:
        server, server_says = _server_accepts(api, doc)
        parser, parser_says = _parse_accepts(doc)
        spec = json.dumps(doc.get("spec"), ensure_ascii=True)[:400]
        known = next((why for why, applies in KNOWN_DIFFERENCES if applies(doc)), None)
        if known is not None:
            seen[known] += 1
            if server and not parser:
                continue
            if server == parser:       # another problem in the same document decided it for both
                continue
            disagreements.append(f"known difference went the other way ({known}): server={server} "
                                 f"parse_farm={parser}; spec={spec}")
            continue
        if server != parser:
            disagreements.append(f"API server {'accepts' if server else 'refuses'}, parse_farm "
                                 f"{'accepts' if parser else 'refuses'}: spec={spec}\n"
                                 f"    API server: {server_says[:300]}\n    parse_farm: {parser_says[:300]}")
        accepted += server and parser
    return disagreements, accepted, seen


def test_the_api_server_and_parse_farm_agree_on_each_targeted_variant(farms_api):
    disagreements, accepted, seen = _compare(farms_api, [copy.deepcopy(BASE)] + TARGETED)
    assert not disagreements, f"{len(disagreements)} of {len(TARGETED) + 1} disagree:\n" + "\n".join(disagreements)
    assert accepted >= 50, f"only {accepted} targeted variants were accepted by both; the valid ones must be"
    assert all(seen.values()), f"a documented difference was never exercised: {seen}"


def test_the_api_server_and_parse_farm_agree_on_random_mutations(farms_api):
    docs = [mutate(BASE, random.Random(seed), spec_only=True, json_safe=True) for seed in range(RANDOM_DOCUMENTS)]
    disagreements, accepted, _ = _compare(farms_api, docs)
    assert not disagreements, (f"{len(disagreements)} of {RANDOM_DOCUMENTS} mutated Farms disagree "
                               f"(reproduce with mutate(BASE, random.Random(seed), spec_only=True, "
                               f"json_safe=True)):\n" + "\n".join(disagreements))
    assert accepted >= 5, f"only {accepted} of {RANDOM_DOCUMENTS} mutations were accepted by both: not a comparison"


@pytest.mark.parametrize("field,needle", [
    ("farm.spec.heartbeat.keyFile", "vipfarm keygen"),
    ("farm.spec.checkers.type", "exec: command, passing when it"),
    ("farm.spec.checkers.expectStatus", "Defaults to [200]"),
    ("farm.spec.checkers.timeoutMs", "at most intervalMs"),
    ("farm.spec.recovery.maxRestarts", "in any windowSeconds"),
    ("farm.spec.handover", "Planned moves"),
    ("farm.spec.handover.drainTimeoutSeconds", "default 300 like a cloud load balancer's connection draining"),
    ("farm.spec.handover.udpIdleSeconds", "default 30 like the kernel conntrack's UDP timeout"),
    ("farm.spec.nodes.drain", "re-read on SIGHUP"),
])
def test_kubectl_explain_describes_the_checker_recovery_and_key_fields(apiserver, farms_api, field, needle):
    out = apiserver.kubectl("explain", field).stdout
    assert needle in " ".join(out.split()), f"kubectl explain {field} does not say {needle!r}:\n{out}"
