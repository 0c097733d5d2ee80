"""Agents' /status documents as the observability contract shapes them (schemaVersion 1), and a
fake agent serving one over real HTTP on 127.0.0.1, for tests of what reads /status (the
console) without real agents."""
from __future__ import annotations

import http.server
import json
import threading
from typing import Any, Iterable, Sequence

from nodeagent.bpf_consts import COUNTER_NAMES

AT = "2026-12-02T10:00:00Z"


def member(name: str, address: str, *, state: str = "Serving", reason: str = "", buckets: int = 0,
           weight: int = 1, last_heard_ms: int | None = 12, handing_over: bool = False) -> dict:
    return {"name": name, "address": address, "weight": weight, "state": state, "reason": reason,
            "buckets": buckets, "lastHeardMs": last_heard_ms, "handingOver": handing_over}


def round_robin(names: Sequence[str], buckets: int) -> list[str]:
    """Bucket b to names[b % len(names)]: an even bucket map without the assignment code."""
    return [names[b % len(names)] for b in range(buckets)]


def farm_doc(name: str, node: str, members: Iterable[dict], owners: Sequence[str | None], *,
             view: Sequence[str] | None = None, accepted: int = 0, checks: Iterable[dict] = (),
             events: Iterable[dict] = (), last_failover: dict | None = None, base_epoch: int = 3,
             agreed: bool = True, vips: Sequence[str] = ("203.0.113.10",)) -> dict:
    """One farm entry of `node`'s /status: its view of every member, and its own filter's part."""
    members = list(members)
    counters = dict.fromkeys(COUNTER_NAMES, 0)
    counters["accepted"] = accepted
    for m in members:
        m["buckets"] = sum(1 for o in owners if o == m["name"])
    return {
        "name": name, "vips": list(vips), "interface": "eth0", "buckets": len(owners),
        "view": list(view if view is not None else [m["name"] for m in members if m["state"] == "Serving"]),
        "agreed": agreed, "baseEpoch": base_epoch, "members": members, "owners": list(owners),
        "ownedBuckets": sum(1 for o in owners if o == node), "counters": counters,
        "heartbeats": {"sent": 0, "received": 0, "rejected": {"bad_mac": 0, "replay": 0, "malformed": 0}},
        "checks": list(checks),
        "handover": {"active": False, "flowsLeft": 0, "flowsDrained": 0, "flowsCut": 0},
        "lastFailover": last_failover, "events": list(events),
    }


def check(name: str, state: str = "Passing", recovery_runs: int = 0) -> dict:
    return {"name": name, "state": state, "lastRun": AT, "recoveryRuns": recovery_runs}


def event(kind: str, nodes: Sequence[str], at: str = AT, duration_ms: int | None = None) -> dict:
    return {"at": at, "kind": kind, "nodes": list(nodes), "durationMs": duration_ms}


def status_doc(node: str, farms: Iterable[dict], *, mode: str = "standalone", ready: bool = True) -> dict:
    return {"schemaVersion": 1, "node": node, "mode": mode, "ready": ready, "generatedAt": AT, "farms": list(farms)}


class FakeAgent:
    """GET /status answers `doc` (replace it at any time); everything else is 404. stop() closes
    the socket, so the agent is then refused like a dead one."""

    def __init__(self, doc: dict[str, Any]):
        self.doc = doc
        agent = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = json.dumps(agent.doc).encode() if self.path == "/status" else b"not found"
                self.send_response(200 if self.path == "/status" else 404)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        self.address = f"127.0.0.1:{self._server.server_address[1]}"

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> "FakeAgent":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
