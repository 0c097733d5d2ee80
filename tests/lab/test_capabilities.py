"""The agent runs unprivileged with exactly the chart's capabilities, and says which one is
missing when it is not given one.

The chart's set is read from charts/vipfarm/values.yaml (agent.securityContext), so this test
and the DaemonSet cannot drift apart. The agent runs as root (uid 0, as in the image) under
`setpriv --bounding-set=-all,+<the set>`: an exec'd root process then holds exactly that set,
as a container with `capabilities: {drop: [ALL], add: [...]}` does. Node n1 runs with every
capability, as a reference; n2 is the agent under test.

Measured on this kernel (6.x) with each capability taken away from the chart's set in turn
(charts/vipfarm/values.yaml records the same):
  NET_ADMIN  bcc: "Failed to load program: Operation not permitted" / the kernel: "Need
             super-user privileges" (XDP programs); nft: "cache initialization failed:
             Operation not permitted" (the conntrack table for UDP handover)
  NET_RAW    PermissionError from socket(AF_PACKET) (the VIP announcements, the native-mode
             ARP/NS responder, the witness probe)
  BPF        bcc: "could not open bpf map: vf_stats, error: Operation not permitted" (map create)
  PERFMON    bcc: "Failed to load BPF program b'vipfarm_xdp': Permission denied" (verifier)
  SYS_ADMIN  a FRESH start serves, but the restart after a SIGKILL fails: bcc adopts a pinned
             map by id (BPF_MAP_GET_FD_BY_ID, CAP_SYS_ADMIN only): "could not open bpf map:
             vf_stats, error: Operation not permitted". CAP_SYS_ADMIN also covers BPF and
             PERFMON (bpf_capable, perfmon_capable), so those two matter only without it.
  SYS_NICE   a warning (event=heartbeat_thread_priority policy=normal): heartbeats at normal
             priority
Not needed (the agent serves and restarts without them): SYS_RESOURCE (kernel memcg
accounting of BPF memory, no RLIMIT_MEMLOCK), DAC_OVERRIDE, SYS_PTRACE, and any mount
(bpffs is mounted beforehand, by the chart's init container).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest
import yaml

from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml
from vipfarm.spec import default_virtual_mac

pytestmark = pytest.mark.lab

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
VIP = "203.0.113.10"


def chart_capabilities() -> list[str]:
    with open(os.path.join(REPO, "charts", "vipfarm", "values.yaml")) as f:
        values = yaml.safe_load(f)
    caps = values["agent"]["securityContext"]["capabilities"]
    assert caps["drop"] == ["ALL"], caps
    return list(caps["add"])


def setpriv(caps: list[str]) -> list[str]:
    """Run as root holding exactly `caps` (names as in a securityContext, e.g. NET_ADMIN)."""
    spec = ",".join(["-all"] + [f"+{c.lower()}" for c in caps])
    return ["setpriv", f"--inh-caps={spec}", f"--bounding-set={spec}", "--"]


class CapLab:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.farm = lab.write_farm("web", farm_yaml("web", [VIP], {"n1": 1, "n2": 1}, key_file=lab.key_file,
                                                    interval_ms=100, timeout_ms=3000))
        self.n1 = lab.start_agent(1, [self.farm])
        lab.wait_agent_ready(1, self.n1, timeout=180)

    def start_n2(self, caps: list[str]) -> subprocess.Popen:
        return self.lab.start_agent(2, [self.farm], wrap=setpriv(caps))

    def wait_n2_ready(self, p: subprocess.Popen, after: int) -> None:
        self.lab.wait_agent_ready(2, p, timeout=180, after=after)

    def tcp(self, n: int = 5) -> list[dict]:
        args = ["tcp", "--vip", VIP, "--port", "80", "--per-src", str(n)]
        for s in client_ips(4):
            args += ["--src", s]
        return json.loads(self.lab.python(self.lab.client, "nodeagent.lab.traffic", *args).stdout)

    def arp_answers(self) -> list[dict]:
        res = self.lab.python(self.lab.client, "nodeagent.lab.traffic", "neigh", "--vip", VIP)
        return json.loads(res.stdout)["answers"]


@pytest.fixture(scope="module")
def cap_lab():
    with Lab(nodes=2, clients=4) as lab:
        lab.start_servers(tcp_ports=(80,), udp_ports=())
        yield CapLab(lab)


def test_the_chart_grants_no_privileged_mode_only_named_capabilities():
    caps = chart_capabilities()
    assert {"NET_ADMIN", "NET_RAW", "SYS_ADMIN"} <= set(caps), caps
    assert "ALL" not in caps


def test_the_agent_with_exactly_the_charts_capabilities_serves_answers_arp_and_survives_a_restart(cap_lab):
    lab, caps = cap_lab.lab, chart_capabilities()
    p = cap_lab.start_n2(caps)
    cap_lab.wait_n2_ready(p, after=0)
    # Heartbeats both ways: a 2-node farm has a view only when each hears the other.
    lab.wait_converged("web", [1, 2], timeout=60)
    assert "event=heartbeat_thread_priority node=n2 policy=SCHED_RR" in lab.agent_log(2)
    answers = cap_lab.arp_answers()
    assert {a["mac"] for a in answers} == {default_virtual_mac("web", "unicast-flood")}
    assert len(answers) == 2, answers                        # n2's filter answers, as n1's does
    results = cap_lab.tcp()
    assert [r for r in results if r["error"]] == []
    assert {r["node"] for r in results} == {"n1", "n2"}, results
    # The restart that needs CAP_SYS_ADMIN: the new agent adopts the pinned filter.
    p.send_signal(signal.SIGKILL)
    p.wait(10)
    p = cap_lab.start_n2(caps)
    cap_lab.wait_n2_ready(p, after=1)
    log = lab.agent_log(2)
    assert "event=xdp_attached" in log and "adopted=True" in log.split("event=agent_ready")[1], log[-3000:]
    lab.wait_converged("web", [1, 2], timeout=60)
    results = cap_lab.tcp()
    assert [r for r in results if r["error"]] == [] and {r["node"] for r in results} == {"n1", "n2"}
    p.send_signal(signal.SIGTERM)
    p.wait(30)


@pytest.mark.parametrize("dropped", ["NET_ADMIN", "NET_RAW", "SYS_ADMIN"])
def test_without_a_needed_capability_the_agent_refuses_to_start_and_names_it(cap_lab, dropped):
    lab = cap_lab.lab
    before = len(lab.agent_log(2))
    p = cap_lab.start_n2([c for c in chart_capabilities() if c != dropped])
    assert p.wait(60) == 1
    err = lab.agent_log(2)[before:]
    assert f"missing capability CAP_{dropped}: needed to" in err, err
    assert "agent.securityContext" in err and "Nothing was changed on this node." in err, err
    assert "Traceback" not in err, err
    # It refused before touching anything: no VIP of its own on lo.
    res = lab.run(lab.node(2), ["ip", "-o", "addr", "show", "dev", "lo"])
    assert VIP not in res.stdout, res.stdout
