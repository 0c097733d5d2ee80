"""`vipfarm demo` / `make demo`: a farm of network namespaces with real agents and traffic.

Builds the lab (a bridge, N nodes, one client namespace with 60 addresses), starts a named
echo server and a vipfarm agent on every node, then shows:
  1. ARP for the VIP: every node answers with the virtual MAC;
  2. TCP connections to the VIP from 60 client addresses, and which node answered each;
  3. a ping to the VIP answered exactly once;
  4. the filter counters of each node.
Everything is torn down at the end, on Ctrl-C and on failure.
"""
from __future__ import annotations

import json
import time
from collections import Counter

from nodeagent.pinned_maps import read_counters, read_owned

from . import faults
from .namespaces import Lab, client_ips, farm_yaml

VIP = "203.0.113.10"
VIP6 = "2001:db8::10"


def step(msg: str) -> None:
    print(f"\n== {msg}", flush=True)


def bar(n: int, total: int, width: int = 40) -> str:
    return "#" * round(width * n / total) if total else ""


def run_demo(nodes: int = 3, connections: int = 600) -> int:
    weights = {f"n{k}": (2 if k == 2 else 1) for k in range(1, nodes + 1)}
    with Lab(nodes=nodes, clients=60) as lab:
        step(f"lab {lab.prefix}*: bridge, {nodes} nodes (198.51.100.1-{nodes}), client with 60 addresses")
        farm = lab.write_farm("web", farm_yaml("web", [VIP, VIP6], weights, key_file=lab.key_file))
        with open(farm) as f:
            print(f.read())
        step("starting echo servers and agents (each agent compiles the XDP filter: ~10 s)")
        lab.start_servers()
        procs = {k: lab.start_agent(k, [farm]) for k in range(1, nodes + 1)}
        t0 = time.time()
        for k, p in procs.items():
            lab.wait_agent_ready(k, p, timeout=180)
            print(f"  n{k} ready after {time.time() - t0:.1f}s")
        lab.wait_converged("web", list(range(1, nodes + 1)))
        print(f"  heartbeats agreed, every bucket has one owner after {time.time() - t0:.1f}s")

        step(f"ARP who-has {VIP} from the client")
        res = lab.python(lab.client, "nodeagent.lab.traffic", "neigh", "--vip", VIP)
        for a in json.loads(res.stdout)["answers"]:
            print(f"  reply from node MAC {a['eth_src']}: {VIP} is-at {a['mac']} (the virtual MAC)")

        per_src = max(1, connections // 60)
        pin = lambda k: f"{lab.pin_root}/n{k}/eth0"   # noqa: E731

        def spread(title: str, alive: list[int]) -> Counter:
            step(f"{per_src * 60} TCP connections to {VIP}:80 from 60 client addresses{title}")
            args = ["tcp", "--vip", VIP, "--port", "80", "--per-src", str(per_src)]
            for s in client_ips(60):
                args += ["--src", s]
            results = json.loads(lab.python(lab.client, "nodeagent.lab.traffic", *args, timeout=600).stdout)
            counts = Counter(r["node"] or "FAILED" for r in results)
            total = len(results)
            for k in alive:
                owned = len(read_owned(pin(k), 0))
                n = counts.get(f"n{k}", 0)
                print(f"  n{k} weight {weights[f'n{k}']}  buckets {owned:4d}/1024  "
                      f"connections {n:4d} ({100 * n / total:5.1f}%)  {bar(n, total)}")
            print(f"  failed: {counts.get('FAILED', 0)}")
            return counts

        per_src = max(1, connections // 60)
        counts = spread("", list(range(1, nodes + 1)))

        step(f"ping {VIP} (each echo request is accepted by exactly one node)")
        res = lab.run(lab.client, ["ping", "-n", "-c", "3", "-i", "0.2", "-I", client_ips(1)[0], VIP], check=False)
        print("  " + "\n  ".join(l for l in res.stdout.splitlines() if "bytes from" in l or "received" in l))

        step("filter counters per node (vipfarm stats)")
        for k in range(1, nodes + 1):
            c = read_counters(pin(k), 0)
            print(f"  n{k}: " + "  ".join(f"{name}={v}" for name, v in c.items()))
        lost = nodes
        step(f"node n{lost} crashes (every process in it killed, its link down)")
        before = read_owned(pin(lost), 0)
        t_crash = time.monotonic()
        faults.crash(lab, lost)
        survivors = [k for k in range(1, nodes + 1) if k != lost]
        lab.wait_converged("web", survivors, timeout=30)
        print(f"  the survivors' heartbeats noticed, agreed, and took its {len(before)} buckets over "
              f"{1000 * (time.monotonic() - t_crash):.0f} ms after the crash (heartbeat timeout 300 ms)")
        after = spread(f", n{lost} down", survivors)
        step("tearing the lab down")
    print("done: namespaces deleted, nothing left behind")
    return 0 if counts.get("FAILED", 0) == 0 and after.get("FAILED", 0) == 0 else 1
