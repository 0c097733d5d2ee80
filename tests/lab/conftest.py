"""The lab fixture: 3 node namespaces on a bridge, a client namespace with 60 addresses,
a named echo server on every node, and real agents serving three farms:
  web  203.0.113.10 + 2001:db8::10, unicast-flood, weights n1=1 n2=2 n3=1
  mc   203.0.113.20, multicast virtual MAC, weights 1/1/1
  w0   203.0.113.30, weights n1=1 n2=1 n3=0
"""
from __future__ import annotations

import json
import os

import pytest

from nodeagent.pinned_maps import read_counters, read_owned
from nodeagent.lab.namespaces import Lab, client_ips, farm_yaml

FARMS = {
    "web": dict(vips=["203.0.113.10", "2001:db8::10"], weights={"n1": 1, "n2": 2, "n3": 1}),
    "mc": dict(vips=["203.0.113.20"], weights={"n1": 1, "n2": 1, "n3": 1}, vmac_mode="multicast"),
    "w0": dict(vips=["203.0.113.30"], weights={"n1": 1, "n2": 1, "n3": 0}),
}


# The dataplane tests' farms heartbeat slowly: an agent restart (kill, 1 s, start) must stay
# inside the timeout, so no failover happens (tests/lab/test_failover.py tests failover).
HB_INTERVAL_MS, HB_TIMEOUT_MS = 200, 4000


class FarmLab:
    def __init__(self, lab: Lab):
        self.lab = lab
        self.files = [lab.write_farm(name, farm_yaml(name, f["vips"], f["weights"],
                                                     vmac_mode=f.get("vmac_mode", "unicast-flood"),
                                                     key_file=lab.key_file, interval_ms=HB_INTERVAL_MS,
                                                     timeout_ms=HB_TIMEOUT_MS))
                      for name, f in FARMS.items()]
        self.agents = {}

    def start_agent(self, k: int, after: int = 0):
        p = self.lab.start_agent(k, self.files)
        self.agents[k] = p
        self.lab.wait_agent_ready(k, p, after=after)
        return p

    def wait_converged(self, nodes=(1, 2, 3)) -> None:
        """Every farm's buckets owned by exactly one of `nodes` (the agents agreed)."""
        for name, f in FARMS.items():
            idle = tuple(int(n[1:]) for n, w in f["weights"].items() if w == 0)
            self.lab.wait_converged(name, list(nodes), idle=idle)

    def sources(self, n: int = 60) -> list[str]:
        return client_ips(n)

    def traffic(self, kind: str, vip: str, port: int, sources: list[str], **opts) -> list[dict]:
        args = [kind, "--vip", vip, "--port", str(port)]
        for s in sources:
            args += ["--src", s]
        for k, v in opts.items():
            args += [f"--{k.replace('_', '-')}", str(v)]
        res = self.lab.python(self.lab.client, "nodeagent.lab.traffic", *args, timeout=300)
        return json.loads(res.stdout)

    def pin_dir(self, k: int) -> str:
        return os.path.join(self.lab.pin_root, f"n{k}", "eth0")

    def slot(self, k: int, farm: str) -> int:
        with open(os.path.join(self.lab.state_root, f"n{k}", "eth0.json")) as f:
            return json.load(f)["slots"][farm]

    def counters(self, k: int, farm: str) -> dict[str, int]:
        return read_counters(self.pin_dir(k), self.slot(k, farm))

    def owned(self, k: int, farm: str) -> set[int]:
        return read_owned(self.pin_dir(k), self.slot(k, farm))


@pytest.fixture(scope="package")
def farm_lab():
    with Lab(nodes=3, clients=60) as lab:
        fl = FarmLab(lab)
        lab.start_servers(tcp_ports=(80, 8080), udp_ports=(5000,))
        procs = [lab.start_agent(k, fl.files) for k in (1, 2, 3)]
        for k, p in enumerate(procs, 1):
            fl.agents[k] = p
            lab.wait_agent_ready(k, p, timeout=180)
        fl.wait_converged()
        yield fl
