"""The Farm files in examples/ load, and say what they do: each file's comments make promises
(the IPv6 farm has only IPv6 VIPs, the weighted farms split their buckets as their comments
list, the commands name files and nodes that exist), and these tests hold them to it.

Cluster-mode examples (examples/*.yaml) are Farm custom resources: they load as the operator
parses them (require_nodes=False) and list no spec.nodes. Standalone examples
(examples/standalone/*.yaml) load as `vipfarm-agent --farm-file` does (require_nodes=True).
tests/cluster/test_examples_apply.py sends the cluster ones to a real API server.
"""
from __future__ import annotations

import glob
import ipaddress
import os
import re

import pytest

from vipfarm.assignment import Member, assign
from vipfarm.membership import WEIGHT_KEY, node_info, selects
from vipfarm.spec import Farm, load_farm_file

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLES = os.path.join(REPO, "examples")
ALL_FILES = sorted(glob.glob(os.path.join(EXAMPLES, "**", "*.yaml"), recursive=True))
STANDALONE = [f for f in ALL_FILES if os.sep + "standalone" + os.sep in f]
CLUSTER = [f for f in ALL_FILES if f not in STANDALONE]
DOCUMENTATION_NETS = [ipaddress.ip_network(n) for n in ("198.51.100.0/24", "203.0.113.0/24", "2001:db8::/32")]


def _rel(path: str) -> str:
    return os.path.relpath(path, REPO)


def _load(path: str) -> Farm:
    return load_farm_file(path, require_nodes=path in STANDALONE)


def _comments(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return "\n".join(line.split("#", 1)[1] for line in f if "#" in line)


def _example(name: str) -> str:
    path = os.path.join(EXAMPLES, name)
    assert os.path.exists(path), f"{_rel(path)} is missing: README.md and issue 10 promise it"
    return path


def _bucket_lines(path: str) -> dict[str, int]:
    """The "NAME: N buckets" lines of a file's comments."""
    found = {m.group(1): int(m.group(2)) for m in re.finditer(r"^\s*([a-z0-9.-]+): (\d+) buckets", _comments(path), re.M)}
    assert found, f"{_rel(path)} promises a bucket split in its comments (lines 'NAME: N buckets'), but has none"
    return found


def test_the_examples_cover_every_farm_the_issue_asks_for():
    names = {_rel(f) for f in ALL_FILES}
    for wanted in ("web.yaml", "session-affinity.yaml", "ipv6.yaml", "weighted.yaml", "checkers.yaml",
                   "standalone/web.yaml"):
        assert f"examples/{wanted}" in names, f"examples/{wanted} is missing (have: {sorted(names)})"


@pytest.mark.parametrize("path", ALL_FILES, ids=_rel)
def test_each_example_loads_and_opens_with_a_comment_saying_what_it_is(path):
    farm = _load(path)
    with open(path, encoding="utf-8") as f:
        first = f.readline()
    assert first.startswith("# "), f"{_rel(path)} must open with a comment that says what the farm is for"
    for vip in farm.virtual_ips:
        assert any(vip in net for net in DOCUMENTATION_NETS), (
            f"{_rel(path)}: VIP {vip} is not in a documentation range (198.51.100.0/24, 203.0.113.0/24, "
            f"2001:db8::/32); an example must not claim somebody's real address")


@pytest.mark.parametrize("path", CLUSTER, ids=_rel)
def test_cluster_examples_pick_members_by_node_selector_not_a_node_list(path):
    farm = _load(path)
    assert not farm.nodes, f"{_rel(path)} is a cluster-mode Farm: members come from nodeSelector, not spec.nodes"
    assert farm.node_selector, f"{_rel(path)}: without a nodeSelector every Node is a member; say which"
    assert not farm.heartbeat.key_file, f"{_rel(path)}: cluster mode ignores heartbeat.keyFile (the chart's Secret)"


@pytest.mark.parametrize("path", STANDALONE, ids=_rel)
def test_standalone_examples_list_their_members_and_a_heartbeat_key(path):
    farm = _load(path)
    assert len(farm.nodes) >= 2
    assert farm.heartbeat.key_file, f"{_rel(path)}: a multi-node standalone farm refuses to start without keyFile"


def test_the_cluster_examples_can_all_be_applied_together():
    farms = [_load(f) for f in CLUSTER]
    names = [f.name for f in farms]
    assert len(set(names)) == len(names), f"two cluster examples share a name: {names}"
    vips = [v for f in farms for v in f.virtual_ips]
    assert len(set(vips)) == len(vips), f"two cluster examples claim one VIP (the later would be Conflict): {vips}"


@pytest.mark.parametrize("path", ALL_FILES, ids=_rel)
def test_commands_in_the_comments_name_files_and_nodes_that_exist(path):
    text = _comments(path)
    for mentioned in re.findall(r"examples/[\w./-]+\.yaml", text):
        assert os.path.exists(os.path.join(REPO, mentioned)), f"{_rel(path)} mentions {mentioned}, which does not exist"
    for farm_file, node in re.findall(r"--farm-file (\S+) --node (\S+)", text):
        assert _rel(path) == farm_file, f"{_rel(path)}: its agent command runs another file, {farm_file}"
        listed = [n.name for n in _load(path).nodes]
        assert node in listed, f"{_rel(path)}: its command says --node {node}, but spec.nodes lists {listed}"


def test_the_web_example_spreads_every_connection():
    farm = _load(_example("web.yaml"))
    assert farm.rules and all(r.affinity == "ClientIPPort" and r.protocol == "TCP" for r in farm.rules)
    assert {str(r.ports) for r in farm.rules} == {"80", "443"}


def test_the_session_affinity_example_keeps_each_client_on_one_member():
    farm = _load(_example("session-affinity.yaml"))
    assert farm.rules and all(r.affinity == "ClientIP" for r in farm.rules)
    assert {r.protocol for r in farm.rules} == {"TCP", "UDP"}, "its comments promise HTTPS and QUIC"
    assert farm.handover.drain_timeout_seconds == 3600
    assert farm.handover.udp_idle_seconds == 30


def test_the_ipv6_example_has_only_ipv6_vips():
    farm = _load(_example("ipv6.yaml"))
    assert farm.virtual_ips and all(v.version == 6 for v in farm.virtual_ips), farm.virtual_ips


def test_the_weighted_example_splits_its_buckets_as_its_comments_say():
    path = _example("weighted.yaml")
    farm = _load(path)
    text = _comments(path)
    labelled = re.search(r"kubectl label node ((?:\S+ )+)(\S+)=(\S+)", text)
    assert labelled, "weighted.yaml says how to label its member Nodes"
    nodes, (key, value) = labelled.group(1).split(), labelled.groups()[1:]
    assert selects(farm.node_selector, {key: value}), f"the label {key}={value} does not match {farm.node_selector}"
    annotations: dict[str, dict[str, str]] = {n: {} for n in nodes}
    for node, weight in re.findall(rf"kubectl annotate node (\S+) {re.escape(WEIGHT_KEY)}=(\d+)$", text, re.M):
        annotations[node][WEIGHT_KEY] = weight     # the first, setup command (not the later --overwrite one)
    assert any(annotations.values()), f"weighted.yaml shows no `kubectl annotate node NODE {WEIGHT_KEY}=N`"
    members = []
    for node in nodes:
        info = node_info(node, {key: value}, annotations[node], [{"type": "Ready", "status": "True"}], False)
        assert not info.weight_problem, info.weight_problem
        members.append(Member(node, info.weight))
    assert assign(None, members, farm.buckets).counts() == _bucket_lines(path)


def test_the_standalone_weighted_example_splits_its_buckets_as_its_comments_say():
    path = _example("standalone/weighted.yaml")
    farm = _load(path)
    counts = assign(None, [Member(n.name, n.weight) for n in farm.nodes], farm.buckets).counts()
    promised = _bucket_lines(path)
    assert {n: counts.get(n, 0) for n in promised} == promised
    assert set(promised) == {n.name for n in farm.nodes}


def test_the_checkers_examples_check_and_recover():
    cluster = _load(_example("checkers.yaml"))
    assert {c.type for c in cluster.checkers} == {"http", "interface"}
    assert cluster.recovery is not None and cluster.recovery.max_restarts == 3 and cluster.recovery.window_seconds == 3600
    # It runs in the agent's container (the comments say so): no host command, and the Python
    # one-liner must at least be Python.
    assert cluster.recovery.command[:2] == ("python3", "-c")
    compile(cluster.recovery.command[2], "checkers.yaml recovery", "exec")
    standalone = _load(_example("standalone/checkers.yaml"))
    assert {c.type for c in standalone.checkers} == {"http", "tcp", "exec", "interface"}
    assert standalone.recovery is not None and standalone.recovery.command[0] == "systemctl"
    link = next(c for c in standalone.checkers if c.type == "interface")
    assert link.interface == standalone.interface, "its comment says the link checker defaults to spec.interface"


def test_the_two_node_example_has_a_witness():
    farm = _load(_example("standalone/two-nodes.yaml"))
    assert len(farm.nodes) == 2 and farm.heartbeat.witness


@pytest.mark.parametrize("readme", ["README.md", "charts/vipfarm/README.md"])
def test_every_example_a_readme_mentions_exists(readme):
    with open(os.path.join(REPO, readme), encoding="utf-8") as f:
        text = f.read()
    for mentioned in set(re.findall(r"examples/[\w./-]+\.yaml", text)):
        assert os.path.exists(os.path.join(REPO, mentioned)), f"{readme} mentions {mentioned}, which does not exist"
