"""Lab tier: the agents' observability endpoints, scraped from the client namespace.

A 3-node farm `ob` (203.0.113.60, UDP 5000 ClientIPPort) whose agents listen on their lab
address (`--observe-address 198.51.100.K:9478`), so the client reaches them the way a
Prometheus server on the segment would. Counters are compared with traffic really sent,
/status with what the filters really hold (pinned maps), and a crash with the survivors'
timeline and failover counter.
"""
from __future__ import annotations

import json
import subprocess
import sys
import time

import pytest
from prometheus_client.parser import text_string_to_metric_families

from nodeagent.lab import faults
from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml, node_ip

pytestmark = pytest.mark.lab
FARM, VIP, UDP_PORT, OBSERVE_PORT = "ob", "203.0.113.60", 5000, 9478
CLIENTS = client_ips(20)
PER_CLIENT = 15
RULES = f'    - {{protocol: UDP, ports: "{UDP_PORT}", affinity: ClientIPPort}}\n'

# Runs in the client namespace: GET each URL, print {url: [status, body]} as JSON.
FETCH = """
import json, sys, urllib.error, urllib.request
out = {}
for url in sys.argv[1:]:
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            out[url] = [r.status, r.read().decode(), r.headers.get("Content-Type")]
    except urllib.error.HTTPError as e:
        out[url] = [e.code, e.read().decode(), e.headers.get("Content-Type")]
print(json.dumps(out))
"""


class ObserveLab:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.file = lab.write_farm(FARM, farm_yaml(FARM, [VIP], {"n1": 1, "n2": 1, "n3": 1}, rules=RULES,
                                                   key_file=lab.key_file))
        self.agents: dict[int, subprocess.Popen] = {}

    def url(self, k: int, path: str) -> str:
        return f"http://{node_ip(k)}:{OBSERVE_PORT}{path}"

    def get(self, pairs: list[tuple[int, str]]) -> dict[tuple[int, str], tuple[int, str, str]]:
        """GET each (node, path) from the client namespace: (status, body, content type)."""
        urls = [self.url(k, p) for k, p in pairs]
        res = self.lab.run(self.lab.client, [sys.executable, "-c", FETCH, *urls], timeout=60)
        got = json.loads(res.stdout)
        return {pair: tuple(got[url]) for pair, url in zip(pairs, urls)}

    def metrics(self, nodes) -> dict[int, dict[tuple[str, tuple], float]]:
        """Each node's samples: (sample name, sorted labels) -> value."""
        out = {}
        for (k, _), (status, body, ctype) in self.get([(k, "/metrics") for k in nodes]).items():
            assert status == 200 and ctype.startswith("text/plain"), (k, status, ctype)
            out[k] = {(s.name, tuple(sorted(s.labels.items()))): s.value
                      for fam in text_string_to_metric_families(body) for s in fam.samples}
        return out

    def status(self, nodes) -> dict[int, dict]:
        out = {}
        for (k, _), (code, body, ctype) in self.get([(k, "/status") for k in nodes]).items():
            assert code == 200 and ctype == "application/json", (k, code, ctype)
            out[k] = json.loads(body)
        return out


def sample(m: dict, name: str, **labels) -> float:
    return m[(name, tuple(sorted(labels.items())))]


@pytest.fixture(scope="module")
def ob_lab():
    with Lab(nodes=3, clients=len(CLIENTS)) as lab:
        ol = ObserveLab(lab)
        lab.start_servers(tcp_ports=(), udp_ports=(UDP_PORT,))
        for k in (1, 2, 3):
            ol.agents[k] = lab.start_agent(k, [ol.file], ("--observe-address", f"{node_ip(k)}:{OBSERVE_PORT}"))
        for k in (1, 2, 3):
            lab.wait_agent_ready(k, ol.agents[k], timeout=180)
        lab.wait_converged(FARM, [1, 2, 3])
        yield ol


def test_accepted_packet_counters_add_up_to_the_datagrams_sent_and_buckets_match_the_filters(ob_lab):
    before = ob_lab.metrics((1, 2, 3))
    res = ob_lab.lab.python(ob_lab.lab.client, "nodeagent.lab.traffic", "udp", "--vip", VIP, "--port",
                            str(UDP_PORT), *[a for c in CLIENTS for a in ("--src", c)], "--per-src", str(PER_CLIENT), "--timeout", "1.0")
    sent = len(CLIENTS) * PER_CLIENT
    replies = sum(len(r["replies"]) for r in json.loads(res.stdout))
    after = ob_lab.metrics((1, 2, 3))
    deltas = {k: sample(after[k], "vipfarm_packets_total", farm=FARM, iface="eth0", verdict="accepted")
              - sample(before[k], "vipfarm_packets_total", farm=FARM, iface="eth0", verdict="accepted")
              for k in (1, 2, 3)}
    assert sum(deltas.values()) == sent, (deltas, sent)
    assert replies == sent                      # each datagram answered once: one acceptor each
    assert all(deltas.values()), deltas         # every node took its share
    for k in (1, 2, 3):
        owned = ob_lab.lab.owned(k, FARM)
        assert sample(after[k], "vipfarm_buckets_owned", farm=FARM) == len(owned)
        assert sample(after[k], "vipfarm_buckets", farm=FARM) == 1024
        assert sample(after[k], "vipfarm_members_in_view", farm=FARM) == 3
        assert sample(after[k], "vipfarm_agent_ready", farm=FARM) == 1
        assert sample(after[k], "vipfarm_heartbeats_received_total", farm=FARM) > 0
        assert sample(after[k], "vipfarm_heartbeats_sent_total", farm=FARM) > 0
        assert sample(after[k], "vipfarm_heartbeats_rejected_total", farm=FARM, reason="bad_mac") == 0
        for peer in {1, 2, 3} - {k}:
            assert sample(after[k], "vipfarm_heartbeat_gap_seconds", farm=FARM, peer=f"n{peer}") < 0.3


def test_status_owners_are_what_each_filter_holds(ob_lab):
    # The filters partition the buckets (the fixture waited for that) a little before every
    # agent has heard every other advertise the same digest: wait for the agreement itself.
    deadline = time.monotonic() + 15
    while True:
        docs = ob_lab.status((1, 2, 3))
        if all(d["farms"] and d["farms"][0]["agreed"] for d in docs.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    for k, doc in docs.items():
        assert doc["schemaVersion"] == 1 and doc["node"] == f"n{k}" and doc["mode"] == "standalone"
        assert doc["ready"] is True
        (farm,) = doc["farms"]
        assert farm["name"] == FARM and farm["vips"] == [VIP] and farm["view"] == ["n1", "n2", "n3"]
        assert farm["agreed"] is True and len(farm["owners"]) == 1024
        owned = ob_lab.lab.owned(k, FARM)
        assert {b for b, o in enumerate(farm["owners"]) if o == f"n{k}"} == owned
        assert farm["ownedBuckets"] == len(owned)
        states = {m["name"]: (m["state"], m["buckets"]) for m in farm["members"]}
        assert states == {f"n{j}": ("Serving", len(ob_lab.lab.owned(j, FARM))) for j in (1, 2, 3)}
        assert [m["lastHeardMs"] for m in farm["members"] if m["name"] == f"n{k}"] == [None]
    # every node's view of the assignment is the same one
    assert len({tuple(d["farms"][0]["owners"]) for d in docs.values()}) == 1


def test_health_readiness_and_unknown_paths(ob_lab):
    got = ob_lab.get([(1, "/healthz"), (1, "/readyz"), (2, "/readyz"), (1, "/nope")])
    assert got[(1, "/healthz")][:2] == (200, "ok\n")
    assert got[(1, "/readyz")][:2] == (200, "ok\n")
    assert got[(2, "/readyz")][0] == 200
    assert got[(1, "/nope")][0] == 404


def test_a_crash_shows_as_a_failover_with_its_duration_on_the_survivors(ob_lab):
    before = ob_lab.metrics((1, 2))
    faults.crash(ob_lab.lab, 3)
    ob_lab.lab.wait_converged(FARM, [1, 2], timeout=30)
    deadline = time.monotonic() + 15
    while True:
        docs = ob_lab.status((1, 2))
        if all(d["farms"][0]["lastFailover"] for d in docs.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    after = ob_lab.metrics((1, 2))
    for k, doc in docs.items():
        farm = doc["farms"][0]
        lf = farm["lastFailover"]
        assert lf is not None, f"n{k}: no lastFailover in {farm}"
        assert lf["lost"] == ["n3"] and lf["durationMs"] > 0, lf
        assert farm["events"][-1]["kind"] == "Failover" and farm["events"][-1]["nodes"] == ["n3"]
        assert farm["view"] == ["n1", "n2"]
        n3 = next(m for m in farm["members"] if m["name"] == "n3")
        assert n3["state"] == "Out" and n3["reason"] == "HeartbeatTimeout" and n3["buckets"] == 0
        assert {b for b, o in enumerate(farm["owners"]) if o == f"n{k}"} == ob_lab.lab.owned(k, FARM)
        assert sample(after[k], "vipfarm_failovers_total", farm=FARM) \
            == sample(before[k], "vipfarm_failovers_total", farm=FARM) + 1
        assert sample(after[k], "vipfarm_failover_duration_seconds_count", farm=FARM) \
            == sample(before[k], "vipfarm_failover_duration_seconds_count", farm=FARM) + 1
        assert sample(after[k], "vipfarm_members_in_view", farm=FARM) == 2
    got = ob_lab.get([(1, "/readyz")])
    assert got[(1, "/readyz")][0] == 200          # a survivor still hears its peer
