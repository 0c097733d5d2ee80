"""Test-only: agents' `GET /status` documents shaped as the observability contract says
(schemaVersion 1, README "Metrics and health endpoints"), and real local HTTP servers that
serve them, so the status CLI, the console and the lab tests read what a real agent sends.

    doc = status_document("n1", [farm_entry("web", node="n1", members=members(...), ...)])
    with StatusServer(doc) as srv:          # 127.0.0.1:<free port>, GET /status
        run(["vipfarm", "status", "--agent", srv.address])

In a lab namespace, as a process: `python -m tests.support.status_docs HOST PORT DOC.json`.

`farm_entry` fills every field an agent writes, derived consistently: the owners map deals
the buckets to the Serving members of the view by weight (round robin), each member's
`buckets` counts its entries in it and `ownedBuckets` is the node's own count, so a test
can assert shares without repeating the arithmetic.
"""
from __future__ import annotations

import http.server
import json
import socket
import sys
import threading
from typing import Any, Iterable, Mapping

from nodeagent.bpf_consts import COUNTER_NAMES

GENERATED_AT = "2026-12-02T10:00:00Z"


def member(name: str, address: str, *, weight: int = 1, state: str = "Serving", reason: str = "",
           last_heard_ms: int | None = 12, handing_over: bool = False) -> dict[str, Any]:
    return {"name": name, "address": address, "weight": weight, "state": state, "reason": reason,
            "buckets": 0, "lastHeardMs": last_heard_ms, "handingOver": handing_over}


def deal_owners(members: Iterable[Mapping[str, Any]], view: Iterable[str], buckets: int) -> list[str | None]:
    """Bucket -> owner: the Serving members of the view, each `weight` slots per round."""
    view = set(view)
    slots = [m["name"] for m in members if m["state"] == "Serving" and m["name"] in view
             for _ in range(int(m.get("weight", 1)))]
    return [slots[b % len(slots)] if slots else None for b in range(buckets)]


def farm_entry(name: str, *, node: str, members: list[dict[str, Any]], vips: Iterable[str] = ("203.0.113.10",),
               buckets: int = 16, view: Iterable[str] | None = None, agreed: bool = True, base_epoch: int = 3,
               owners: list[str | None] | None = None, counters: Mapping[str, int] | None = None,
               checks: list[dict] | None = None, flows_left: int = 0, last_failover: Mapping | None = None,
               events: list[dict] | None = None, interface: str = "eth0") -> dict[str, Any]:
    """One farm as agent `node` reports it."""
    view = sorted(view if view is not None else (m["name"] for m in members if m["state"] != "Out"))
    owners = list(owners) if owners is not None else deal_owners(members, view, buckets)
    members = [{**m, "buckets": owners.count(m["name"])} for m in members]
    if node in {m["name"] for m in members}:
        members = [{**m, "lastHeardMs": None} if m["name"] == node else m for m in members]
    all_counters = {c: 0 for c in COUNTER_NAMES}
    all_counters.update(counters or {})
    return {
        "name": name, "vips": list(vips), "interface": interface, "buckets": buckets, "view": view,
        "agreed": agreed, "baseEpoch": base_epoch, "members": members, "owners": owners,
        "ownedBuckets": owners.count(node), "counters": all_counters,
        "heartbeats": {"sent": 100, "received": 200, "rejected": {"bad_mac": 0, "replay": 0, "malformed": 0}},
        "checks": list(checks or ()),
        "handover": {"active": flows_left > 0, "flowsLeft": flows_left, "flowsDrained": 0, "flowsCut": 0},
        "lastFailover": dict(last_failover) if last_failover else None,
        "events": list(events or ()),
    }


def status_document(node: str, farms: Iterable[Mapping[str, Any]], *, mode: str = "standalone",
                    ready: bool = True, generated_at: str = GENERATED_AT) -> dict[str, Any]:
    return {"schemaVersion": 1, "node": node, "mode": mode, "ready": ready, "generatedAt": generated_at,
            "farms": list(farms)}


class StatusServer:
    """A real HTTP server on `host` (default 127.0.0.1, a free port) answering GET /status with `doc` (JSON,
    application/json) and 404 elsewhere, as the agent's endpoint does. `doc` may be replaced
    while it runs (`srv.doc = ...`). Context manager; close() stops and frees the port."""

    def __init__(self, doc: Mapping[str, Any], host: str = "127.0.0.1", port: int = 0):
        self.doc = doc
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path != "/status":
                    self.send_response(404)
                    self.end_headers()
                    self.wfile.write(b"not found\n")
                    return
                body = json.dumps(outer.doc).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass

        server_class = http.server.ThreadingHTTPServer
        if ":" in host:
            server_class = type("V6Server", (http.server.ThreadingHTTPServer,), {"address_family": socket.AF_INET6})
        self._server = server_class((host, port), Handler)
        self.port = self._server.server_address[1]
        self.address = f"[{host}]:{self.port}" if ":" in host else f"{host}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._server.server_close()
            self._thread = None

    def __enter__(self) -> "StatusServer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def dead_address() -> str:
    """127.0.0.1:<a port nothing listens on> (bound, then released)."""
    srv = http.server.HTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    port = srv.server_address[1]
    srv.server_close()
    return f"127.0.0.1:{port}"


def main(argv: list[str]) -> None:
    """HOST PORT DOC.json: serve that document until killed (a lab node's stand-in agent)."""
    host, port, path = argv
    with open(path) as f:
        doc = json.load(f)
    srv = StatusServer(doc, host=host, port=int(port))
    print(f"serving /status on {srv.address}", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    main(sys.argv[1:])
