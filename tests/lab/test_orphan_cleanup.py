"""Lab tier: farms dropped while an agent was down are cleaned up when it comes back.

Node n1 serves three farms: keep (eth0, with n2), gone (eth0, with n2) and side (on a second
interface, side0, n1 only). n1's agent is SIGKILLed under steady load on keep and restarted
with the keep farm file alone: gone's VIP, slot and MAC filter must go from n1, side0 must
lose its XDP program and get its sysctls back, keep must not fail one connection, and n2 (which
shares the bpffs and the state root) must keep all of its own.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections import Counter
from types import SimpleNamespace

import pytest
from pyroute2 import IPRoute

from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml

pytestmark = pytest.mark.lab
KEEP, GONE, SIDE = "203.0.113.60", "203.0.113.61", "203.0.113.62"


def lo_addrs(lab: Lab, k: int) -> str:
    return lab.run(lab.node(k), ["ip", "-o", "addr", "show", "dev", "lo"]).stdout


def tcp(lab: Lab, vip: str, seconds: float = 2, rate: float = 20) -> list[dict]:
    """Concurrent connections from 20 sources; those no node answers time out after 1 s."""
    args = ["steady", "--vip", vip, "--port", "80", "--seconds", str(seconds), "--rate", str(rate),
            "--timeout", "1"]
    for s in client_ips(20):
        args += ["--src", s]
    return json.loads(lab.python(lab.client, "nodeagent.lab.traffic", *args).stdout)


def sysctls(lab: Lab, k: int, iface: str) -> dict[str, str]:
    return {key: lab.run(lab.node(k), ["cat", f"/proc/sys/net/ipv4/conf/{iface}/{key}"]).stdout.strip()
            for key in ("arp_ignore", "arp_announce")}


def xdp_attached(lab: Lab, k: int, iface: str) -> bool:
    with IPRoute(netns=lab.node(k)) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=iface)[0])[0]
    xdp = link.get("IFLA_XDP")
    return bool(xdp and xdp.get("IFLA_XDP_ATTACHED"))


@pytest.fixture(scope="module")
def restarted():
    with Lab(nodes=2, clients=20) as lab:
        with IPRoute(netns=lab.node(1)) as ipr:    # a second farm interface, inside n1 only
            ipr.link("add", ifname="side0", kind="veth", peer={"ifname": "side1"})
            for name in ("side0", "side1"):
                ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
        weights = {"n1": 1, "n2": 1}
        keep = lab.write_farm("keep", farm_yaml("keep", [KEEP], weights, key_file=lab.key_file))
        # `gone` names a witness (the client, which answers ARP): once n1 drops the farm, n2
        # keeps a quorum (itself + the witness) and serves all of it.
        gone = lab.write_farm("gone", farm_yaml("gone", [GONE], weights, key_file=lab.key_file,
                                                witness=client_ips(1)[0]))
        side = lab.write_farm("side", farm_yaml("side", [SIDE], {"n1": 1}).replace(
            "interface: eth0", "interface: side0"))
        lab.start_servers(tcp_ports=(80,), udp_ports=())
        agents = {1: lab.start_agent(1, [keep, gone, side]), 2: lab.start_agent(2, [keep, gone])}
        for k, p in agents.items():
            lab.wait_agent_ready(k, p, timeout=180)
        for farm in ("keep", "gone"):
            lab.wait_converged(farm, [1, 2])
        before = SimpleNamespace(lo=lo_addrs(lab, 1), side_xdp=xdp_attached(lab, 1, "side0"),
                                 side_sysctls=sysctls(lab, 1, "side0"),
                                 gone_nodes=Counter(r["node"] for r in tcp(lab, GONE)))
        load = subprocess.Popen(
            lab.command(lab.client, [sys.executable, "-m", "nodeagent.lab.traffic", "steady", "--vip", KEEP,
                                     "--port", "80", "--seconds", "25", "--rate", "20", "--timeout", "3"]
                        + sum((["--src", s] for s in client_ips(20)), [])),
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        agents[1].send_signal(signal.SIGKILL)
        agents[1].wait(10)
        agents[1] = lab.start_agent(1, [keep])
        lab.wait_agent_ready(1, agents[1], timeout=180, after=1)
        out, _ = load.communicate(timeout=90)
        yield SimpleNamespace(lab=lab, before=before, keep_results=json.loads(out), log=lab.agent_log(1))


def test_the_setup_served_all_three_farms_on_n1_before_the_restart(restarted):
    b = restarted.before
    assert KEEP in b.lo and GONE in b.lo and SIDE in b.lo, b.lo
    assert b.side_xdp and b.side_sysctls == {"arp_ignore": "1", "arp_announce": "2"}
    assert b.gone_nodes["n1"] > 0 and b.gone_nodes["n2"] > 0, b.gone_nodes


def test_a_farm_dropped_while_the_agent_was_down_loses_its_vip_on_that_node(restarted):
    lo = lo_addrs(restarted.lab, 1)
    assert GONE not in lo and SIDE not in lo, lo
    assert KEEP in lo, lo
    assert f"event=orphan_removed kind=vip node=n1 iface=eth0 vip={GONE}" in restarted.log
    assert "event=orphan_removed kind=farm_slot node=n1 iface=eth0 farm=gone" in restarted.log


def test_the_dropped_farms_traffic_is_no_longer_answered_by_that_node(restarted):
    nodes = Counter(r["node"] for r in tcp(restarted.lab, GONE))
    assert nodes["n1"] == 0, nodes
    # n2 still has the farm, and with the witness's vote it has a quorum alone: it serves it all.
    assert nodes["n2"] == sum(nodes.values()), nodes


def test_the_remaining_farm_is_served_through_the_restart_with_no_failed_connection(restarted):
    results = restarted.keep_results
    assert len(results) >= 25 * 20 * 0.8
    assert [r for r in results if r["error"]] == []
    assert set(Counter(r["node"] for r in results)) == {"n1", "n2"}


def test_an_interface_no_farm_uses_gets_its_xdp_detached_and_sysctls_restored(restarted):
    lab = restarted.lab
    assert not xdp_attached(lab, 1, "side0")
    assert "xdp" not in lab.run(lab.node(1), ["ip", "-d", "link", "show", "dev", "side0"]).stdout
    assert sysctls(lab, 1, "side0") == {"arp_ignore": "0", "arp_announce": "0"}
    assert not os.path.exists(os.path.join(lab.pin_root, "n1", "side0"))
    assert not os.path.exists(os.path.join(lab.state_root, "n1", "side0.json"))
    for kind in ("xdp", "vip", "mac_filter", "sysctls", "pin_dir", "state_file"):
        assert f"event=orphan_removed kind={kind} node=n1 iface=side0" in restarted.log, kind


def test_the_cleanup_leaves_the_other_nodes_pins_and_record_alone(restarted):
    lab = restarted.lab
    assert os.path.isdir(os.path.join(lab.pin_root, "n2", "eth0"))
    with open(os.path.join(lab.state_root, "n2", "eth0.json")) as f:
        assert set(json.load(f)["slots"]) == {"keep", "gone"}
    assert GONE in lo_addrs(lab, 2)
