"""Lab tier, xdpMode native: the filter passes ARP/NS for a VIP up (neigh_punted) and the
agent's AF_PACKET responder (nodeagent/neighbour_responder.py) answers; traffic is filtered exactly as in generic mode."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from nodeagent.pinned_maps import read_counters
from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml
from vipfarm.spec import default_virtual_mac

pytestmark = pytest.mark.lab
VIP, VIP6 = "203.0.113.40", "2001:db8::40"


@pytest.fixture(scope="module")
def native_lab():
    with Lab(nodes=2, clients=40) as lab:
        f = lab.write_farm("nat", farm_yaml("nat", [VIP, VIP6], {"n1": 1, "n2": 1}, xdp_mode="native",
                                                key_file=lab.key_file))
        lab.start_servers(tcp_ports=(80,), udp_ports=())
        procs = {k: lab.start_agent(k, [f]) for k in (1, 2)}
        for k, p in procs.items():
            lab.wait_agent_ready(k, p, timeout=180)
        yield lab


def test_native_mode_is_attached_in_driver_mode(native_lab):
    for k in (1, 2):
        assert "mode=native" in native_lab.agent_log(k)
        link = native_lab.run(native_lab.node(k), ["ip", "-d", "link", "show", "dev", "eth0"]).stdout
        assert "xdp " in link or "xdpdrv" in link, link      # not xdpgeneric


@pytest.mark.parametrize("vip", [VIP, VIP6])
def test_the_agent_answers_arp_and_ns_that_the_filter_punts(native_lab, vip):
    lab = native_lab
    pin = lambda k: f"{lab.pin_root}/n{k}/eth0"   # noqa: E731
    before = [read_counters(pin(k), 0)["neigh_punted"] for k in (1, 2)]
    answers = json.loads(lab.python(lab.client, "nodeagent.lab.traffic", "neigh", "--vip", vip).stdout)["answers"]
    vmac = default_virtual_mac("nat", "unicast-flood")
    assert len(answers) == 2 and {a["mac"] for a in answers} == {vmac}, answers
    assert all(a.get("checksum_ok", True) for a in answers)
    after = [read_counters(pin(k), 0)["neigh_punted"] for k in (1, 2)]
    assert all(a > b for a, b in zip(after, before)), (before, after)


def test_native_mode_spreads_tcp_with_no_failure(native_lab):
    args = ["tcp", "--vip", VIP, "--port", "80", "--per-src", "5"]
    for s in client_ips(40):
        args += ["--src", s]
    results = json.loads(native_lab.python(native_lab.client, "nodeagent.lab.traffic", *args).stdout)
    assert [r for r in results if r["error"]] == []
    assert set(Counter(r["node"] for r in results)) == {"n1", "n2"}


def test_graceful_leave_in_native_mode_removes_the_tc_helper_and_xdp(native_lab):
    import signal
    lab = native_lab
    tc = lab.run(lab.node(2), ["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
    assert "vipfarm_host" in tc, tc
    agent = [p for p in lab.procs if "--node" in p.args and "n2" in p.args][0]
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(30) == 0, lab.agent_log(2)[-3000:]
    assert "vipfarm_host" not in lab.run(lab.node(2), ["tc", "filter", "show", "dev", "eth0", "ingress"]).stdout
    assert "xdp" not in lab.run(lab.node(2), ["ip", "-o", "link", "show", "dev", "eth0"]).stdout
