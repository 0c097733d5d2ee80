"""Unit tier: the agents' handover tracker (nodeagent/handover_tracker.py), with the census
given and a fake engine: what it plans at each programming and what it tells the engine."""
from __future__ import annotations

import logging

from nodeagent.handover_tracker import HandoverTracker
from vipfarm.spec import parse_farm

MS = 1_000_000
FARM = parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "web"},
                   "spec": {"virtualIPs": ["203.0.113.10"], "interface": "eth0", "buckets": 16,
                            "nodes": [{"name": "n1", "address": "198.51.100.1"},
                                      {"name": "n2", "address": "198.51.100.2"}],
                            "heartbeat": {"keyFile": "/k", "intervalMs": 100, "timeoutMs": 300}}},
                  require_nodes=True)


class Engine:
    def __init__(self):
        self.said = []

    def handing_over(self, farm, still):
        self.said.append((farm, still))


def test_a_release_drains_from_the_flip_then_by_census_and_the_engine_is_told_both_ways(caplog):
    caplog.set_level(logging.INFO, "vipfarm.agent")
    e = Engine()
    t = HandoverTracker("n1", e)
    mine = frozenset(range(8))
    assert t.plan([FARM], {"web": mine}, {}, None, {"web": {}}, now_ns=0) == {"web": mine}, \
        "a starting agent keeps what it serves pending (its peers may still drain)"
    t.commit(False)
    moving = t.plan([FARM], {"web": frozenset(range(4))}, {}, {"web": mine}, None, now_ns=1000 * MS)
    assert moving["web"] >= frozenset(range(4, 8)), "released buckets are on the slow path from the flip"
    t.commit(True)
    assert t.census_due and e.said[-1] == ("web", True)
    t.plan([FARM], {"web": frozenset(range(4))}, {}, {"web": frozenset(range(4))}, {"web": {5: 2}},
           now_ns=1100 * MS)
    t.commit(False)
    assert t.drains["web"].buckets == {5} and t.flows_left("web") == 2
    t.plan([FARM], {"web": frozenset(range(4))}, {}, {"web": frozenset(range(4))}, {"web": {}}, now_ns=1200 * MS)
    t.commit(False)
    assert not t.active() and e.said[-1] == ("web", False)
    text = caplog.text
    assert "event=handover_started node=n1 farm=web buckets=4" in text
    assert "event=handover_finished node=n1 farm=web" in text


def test_a_farm_no_longer_served_ends_its_handover():
    e = Engine()
    t = HandoverTracker("n1", e)
    t.plan([FARM], {"web": frozenset()}, {}, None, {"web": {3: 1}}, now_ns=0)
    t.commit(False)
    assert t.active()
    t.plan([], {}, {}, {}, {}, now_ns=MS)
    t.commit(False)
    assert not t.active() and e.said[-1] == ("web", False)
