"""spec.handover and the node entry's `drain` flag: defaults, bounds, refusals that name the
path, the value and the fix, and the CRD declaring the same defaults and bounds as parse_farm."""
from __future__ import annotations

import os

import pytest
import yaml

from vipfarm.spec import (DEFAULT_DRAIN_TIMEOUT_SECONDS, DEFAULT_UDP_IDLE_SECONDS, MAX_DRAIN_TIMEOUT_SECONDS,
                          MAX_UDP_IDLE_SECONDS, FarmSpecError, Handover, parse_farm)

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def farm_doc(handover=..., nodes=None) -> dict:
    spec = {"virtualIPs": ["203.0.113.10"],
            "nodes": nodes if nodes is not None else [{"name": "n1", "address": "198.51.100.1"},
                                                      {"name": "n2", "address": "198.51.100.2"}]}
    if handover is not ...:
        spec["handover"] = handover
    return {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "web"}, "spec": spec}


def problems(doc) -> list[str]:
    with pytest.raises(FarmSpecError) as info:
        parse_farm(doc, require_nodes=True)
    return info.value.problems


def test_an_absent_or_null_handover_gets_the_documented_defaults():
    for doc in (farm_doc(), farm_doc(handover=None), farm_doc(handover={})):
        farm = parse_farm(doc, require_nodes=True)
        assert farm.handover == Handover(300, 30)
    assert (DEFAULT_DRAIN_TIMEOUT_SECONDS, DEFAULT_UDP_IDLE_SECONDS) == (300, 30)


def test_handover_values_within_bounds_are_kept():
    farm = parse_farm(farm_doc(handover={"drainTimeoutSeconds": 86400, "udpIdleSeconds": 1}), require_nodes=True)
    assert farm.handover == Handover(drain_timeout_seconds=86400, udp_idle_seconds=1)


@pytest.mark.parametrize("handover,path,value,why", [
    ({"drainTimeoutSeconds": -1}, "spec.handover.drainTimeoutSeconds", "-1", "between 0 and 86400"),
    ({"drainTimeoutSeconds": 86401}, "spec.handover.drainTimeoutSeconds", "86401", "between 0 and 86400"),
    ({"drainTimeoutSeconds": "300"}, "spec.handover.drainTimeoutSeconds", "'300'", "an integer between 0 and 86400"),
    ({"drainTimeoutSeconds": True}, "spec.handover.drainTimeoutSeconds", "True", "an integer between 0 and 86400"),
    ({"udpIdleSeconds": 0}, "spec.handover.udpIdleSeconds", "0", "between 1 and 3600"),
    ({"udpIdleSeconds": 3601}, "spec.handover.udpIdleSeconds", "3601", "between 1 and 3600"),
    ({"udpIdleSeconds": 2.5}, "spec.handover.udpIdleSeconds", "2.5", "an integer between 1 and 3600"),
    ({"drainTimeout": 60}, "spec.handover.drainTimeout", "60",
     "unknown field; handover has drainTimeoutSeconds and udpIdleSeconds"),
    (300, "spec.handover", "300", "must be a mapping {drainTimeoutSeconds, udpIdleSeconds}"),
    ([], "spec.handover", "[]", "must be a mapping {drainTimeoutSeconds, udpIdleSeconds}"),
])
def test_a_bad_handover_is_refused_naming_path_value_and_fix(handover, path, value, why):
    found = problems(farm_doc(handover=handover))
    assert any(p.startswith(f"{path}=") and f"={value}:" in p and why in p for p in found), found


def test_a_node_entry_is_not_draining_unless_it_says_drain_true():
    farm = parse_farm(farm_doc(nodes=[{"name": "n1", "address": "198.51.100.1"},
                                      {"name": "n2", "address": "198.51.100.2", "drain": True},
                                      {"name": "n3", "address": "198.51.100.3", "drain": False},
                                      {"name": "n4", "address": "198.51.100.4", "drain": None}]),
                      require_nodes=True)
    assert [(n.name, n.drain) for n in farm.nodes] == [("n1", False), ("n2", True), ("n3", False), ("n4", False)]


@pytest.mark.parametrize("raw", ["true", "yes", 1, 0, [], {}])
def test_a_drain_that_is_not_a_yaml_boolean_is_refused_with_the_fix(raw):
    found = problems(farm_doc(nodes=[{"name": "n1", "address": "198.51.100.1", "drain": raw}]))
    assert any(p.startswith(f"spec.nodes[0].drain={raw!r}:") and "must be true or false" in p
               and "node n1" in p for p in found), found


def test_unknown_node_keys_are_still_refused_and_the_message_lists_drain():
    found = problems(farm_doc(nodes=[{"name": "n1", "address": "198.51.100.1", "drained": True}]))
    assert any(p.startswith("spec.nodes[0].drained=True:") and "name, address, weight and drain" in p
               for p in found), found


def _crd_spec_properties() -> dict:
    with open(os.path.join(REPO, "crds", "farms.vipfarm.io.yaml"), encoding="utf-8") as f:
        crd = yaml.safe_load(f)
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    return schema["properties"]["spec"]["properties"]


def test_the_crd_declares_the_handover_defaults_and_bounds_of_parse_farm():
    handover = _crd_spec_properties()["handover"]
    assert handover["default"] == {} and handover["description"]
    drain, idle = handover["properties"]["drainTimeoutSeconds"], handover["properties"]["udpIdleSeconds"]
    assert (drain["default"], drain["minimum"], drain["maximum"]) == (DEFAULT_DRAIN_TIMEOUT_SECONDS, 0,
                                                                      MAX_DRAIN_TIMEOUT_SECONDS)
    assert (idle["default"], idle["minimum"], idle["maximum"]) == (DEFAULT_UDP_IDLE_SECONDS, 1, MAX_UDP_IDLE_SECONDS)
    assert set(handover["properties"]) == {"drainTimeoutSeconds", "udpIdleSeconds"}
    assert drain["description"] and idle["description"]


def test_the_crd_node_entry_has_a_boolean_drain_defaulting_to_false():
    node = _crd_spec_properties()["nodes"]["items"]["properties"]["drain"]
    assert node["type"] == "boolean" and node["default"] is False and "SIGHUP" in node["description"]
