"""vipfarm.membership.node_drain_requested: a cluster Node asks its agent to drain when it is
cordoned or annotated vipfarm.io/drain=true; the operator's NodeInfo reads the annotation alike."""
from __future__ import annotations

import pytest

from vipfarm.membership import DRAIN_KEY, node_drain_requested, node_info


def node(unschedulable=None, annotations=None, **extra) -> dict:
    obj = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "worker-1"}, "spec": {}}
    if unschedulable is not None:
        obj["spec"]["unschedulable"] = unschedulable
    if annotations is not None:
        obj["metadata"]["annotations"] = annotations
    obj.update(extra)
    return obj


def test_a_plain_node_is_not_asked_to_drain():
    assert node_drain_requested(node()) is False
    assert node_drain_requested(node(unschedulable=False, annotations={"other": "true"})) is False


def test_a_cordoned_node_is_asked_to_drain():
    assert node_drain_requested(node(unschedulable=True)) is True


@pytest.mark.parametrize("value", ["true", "True", "TRUE", "1", "yes"])
def test_the_drain_annotation_asks_for_a_drain(value):
    assert node_drain_requested(node(annotations={DRAIN_KEY: value})) is True


@pytest.mark.parametrize("value", ["false", "", "0", "no", "drain", "truee"])
def test_a_drain_annotation_that_is_not_true_asks_for_nothing(value):
    assert node_drain_requested(node(annotations={DRAIN_KEY: value})) is False


@pytest.mark.parametrize("obj", [None, {}, {"metadata": None, "spec": None}, {"metadata": {"annotations": None}},
                                 {"spec": {"unschedulable": "true"}}, "worker-1", []])
def test_missing_null_or_odd_parts_of_a_node_count_as_not_asking(obj):
    assert node_drain_requested(obj) is False


def test_node_info_and_node_drain_requested_agree_on_the_annotation():
    for value in ["true", "True", "1", "yes", "false", "", "no", "truee"]:
        obj = node(annotations={DRAIN_KEY: value})
        info = node_info("worker-1", {}, obj["metadata"]["annotations"], [], False)
        assert info.draining is node_drain_requested(obj), value
