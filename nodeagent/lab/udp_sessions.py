"""A bounded UDP client for the lab: many UDP flows, each a socket of its own, each sending a
datagram every --interval-ms while its plan says it is active, and the node that answered each
one (traffic.py `serve --udp` answers every datagram with a first line holding its node's name).

Run inside the lab's client namespace (spawned, so it measures while a test moves buckets):

  python -m nodeagent.lab.udp_sessions --vip 203.0.113.10 --port 5000 --plan plan.json --out out.json

plan.json: {"seconds": S, "interval_ms": 100,
            "flows": [{"id": "steady-0", "src": "198.51.100.100", "active": [[0, 20]]}, ...]}
`active` lists [from_s, to_s) spans, counted from the start. The output is written once, at the
end (or on SIGTERM): {"start_ns", "end_ns", "flows": [{"id", "src", "sport", "sent": [t_ns...],
"answers": [[t_ns, node]...]}]}. CLOCK_MONOTONIC ns, as the agents' logs and the lab. A line
"started <start_ns>" goes to stdout once every socket is bound.
"""
from __future__ import annotations

import argparse
import os
import json
import selectors
import signal
import socket
import sys
import time


def run(vip: str, port: int, plan: dict, out: str) -> int:
    interval_ns = int(plan.get("interval_ms", 100) * 1_000_000)
    seconds = float(plan["seconds"])
    family = socket.AF_INET6 if ":" in vip else socket.AF_INET
    sel = selectors.DefaultSelector()
    flows = []
    for spec in plan["flows"]:
        s = socket.socket(family, socket.SOCK_DGRAM)
        s.bind((spec["src"], 0))
        s.connect((vip, port))
        s.setblocking(False)
        f = {"id": spec["id"], "src": spec["src"], "sport": s.getsockname()[1], "active": spec["active"],
             "sent": [], "answers": [], "sock": s, "next_ns": 0}
        sel.register(s, selectors.EVENT_READ, f)
        flows.append(f)
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    start = time.monotonic_ns()
    print(f"started {start}", flush=True)
    end = start + int(seconds * 1e9)
    seq = 0
    while not stop:
        now = time.monotonic_ns()
        if now >= end:
            break
        rel = (now - start) / 1e9
        wake = end
        for f in flows:
            if now >= f["next_ns"]:
                if any(a <= rel < b for a, b in f["active"]):
                    seq += 1
                    try:
                        f["sock"].send(f"{f['id']} {seq}\n".encode())
                        f["sent"].append(now)
                    except OSError:
                        f["sent"].append(now)          # counted as sent: its answer will be missing
                f["next_ns"] = now + interval_ns
            wake = min(wake, f["next_ns"])
        for key, _ in sel.select(max(0.0, (wake - time.monotonic_ns()) / 1e9)):
            f = key.data
            while True:
                try:
                    data = f["sock"].recv(512)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                f["answers"].append([time.monotonic_ns(), data.decode(errors="replace").split("\n", 1)[0].strip()])
    result = {"start_ns": start, "end_ns": time.monotonic_ns(),
              "flows": [{k: v for k, v in f.items() if k not in ("sock", "next_ns", "active")} for f in flows]}
    with open(out + ".tmp", "w") as fh:
        json.dump(result, fh)

    os.replace(out + ".tmp", out)
    for f in flows:
        f["sock"].close()
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodeagent.lab.udp_sessions")
    p.add_argument("--vip", required=True)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--plan", required=True, help="JSON plan file (see the module docstring)")
    p.add_argument("--out", required=True, help="JSON result file, written at the end")
    a = p.parse_args(argv)
    with open(a.plan) as fh:
        plan = json.load(fh)
    if not 0 < float(plan.get("seconds", 0)) <= 600:
        print(f"udp_sessions: plan seconds {plan.get('seconds')!r} must be in (0, 600]", file=sys.stderr)
        return 2
    return run(a.vip, a.port, plan, a.out)


if __name__ == "__main__":
    sys.exit(main())
