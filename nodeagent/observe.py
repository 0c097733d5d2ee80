"""The agent's observability endpoint: /metrics, /status, /healthz and /readyz over HTTP.

    vipfarm-agent ... --observe-address 127.0.0.1:9478     (the default; `off` disables it)

One ThreadingHTTPServer (stdlib) on a daemon thread of its own, never the heartbeat thread,
never the main loop. A request reads only immutable snapshots that the other threads publish
by swapping a reference (no lock any of them waits on):
  * the main thread's Observer.programmed() after each programming (the farms, their
    decision, what the filter holds, where its pins are, each farm's timeline, folded here
    on the main thread: vipfarm/farm_timeline.py);
  * the heartbeat thread's HeartbeatEngine.snapshot() (last accepted heartbeat per peer,
    rows' flags, counts);
  * each CheckRunner's `observed`, the HandoverTracker's `totals` and drains;
and, per request, the filter's pinned counters and owner bits (pinned_maps.py, bpf(2) only:
no bcc, no compile). The documents themselves are pure: vipfarm/agent_status.py (/status,
readiness) and agent_metrics.py (the Prometheus families, through a custom Collector).
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable, Mapping

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from vipfarm.agent_status import AgentInput, CheckInput, FarmInput, MemberInput, farm_not_ready, status_document
from vipfarm.farm_timeline import Programmed, Timeline, record
from vipfarm.handover import HandoverTotals
from vipfarm.heartbeat_wire import ROW_HANDING_OVER
from vipfarm.spec import Farm
from vipfarm.timestamps import utc_now

from .agent_metrics import metric_families
from .heartbeat import Decision, FarmPeers
from .pinned_maps import read_counters, read_owned

log = logging.getLogger("vipfarm.observe")

DEFAULT_OBSERVE_ADDRESS = "127.0.0.1:9478"
STARTUP_BUDGET_S = 120.0       # the main loop's allowance before its first pass (a first compile)
HEARTBEAT_LOOP_S = 1.0         # the heartbeat thread passes its loop at least this often
MS = 1_000_000


@dataclass(frozen=True)
class FarmPublished:
    """One farm as the main thread last programmed it."""
    farm: Farm
    decision: Decision | None
    programmed: bool
    owned: frozenset[int]
    pin: tuple[str, int] | None            # (pin dir, slot) of the filter serving it
    timeline: Timeline
    self_reason: str                       # why this node is withdrawn, if it is


class ObserveError(Exception):
    """The endpoint cannot listen where it was told (the address is taken or not local)."""


def listen(address: tuple[str, int] | None, observer: "Observer") -> "ObserveServer | None":
    """Bind and start the endpoint (None: --observe-address off); ObserveError names the fix."""
    if address is None:
        return None
    host, port = address
    shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        server = ObserveServer(address, observer)
    except OSError as e:
        raise ObserveError(f"--observe-address {shown}: cannot listen there ({e.strerror or e}); pick a free "
                           f"port or an address of this host, or pass --observe-address off") from None
    server.start()
    return server


class Observer:
    """What the endpoint shows, published by the agent's threads. Main thread: configured(),
    programmed(), main_loop_alive(). Any thread: observation(), health_problem()."""

    def __init__(self, node: str, mode: str, engine, runners, handover, clock: Callable[[], int] = time.monotonic_ns):
        self.node = node
        self.mode = mode
        self.engine = engine
        self.runners = runners
        self.handover = handover
        self.clock = clock
        self._peers: Mapping[str, FarmPeers] = {}
        self._farms: tuple[FarmPublished, ...] = ()
        self._started = False
        self._timelines: dict[str, Timeline] = {}       # main thread only
        self._folded: dict[str, Decision] = {}          # main thread only: the decision last folded
        self._main = (clock(), STARTUP_BUDGET_S)

    # -- the main thread ---------------------------------------------------------------------
    def main_loop_alive(self, wake_s: float) -> None:
        """The main loop passed, and will pass again within wake_s (unless it is stuck)."""
        self._main = (self.clock(), wake_s)

    def configured(self, peers: list[FarmPeers]) -> None:
        """The heartbeat configuration just given to the engine (members, addresses, weights)."""
        self._peers = {p.farm: p for p in peers}

    def programmed(self, farms: list[Farm], decisions: Mapping[str, Decision], owned: Mapping[str, frozenset[int]],
                   pins: Mapping[str, tuple[str, int]], self_reasons: Mapping[str, str]) -> None:
        """After a programming (or a pass that found the filter already right): fold each new
        decision into its farm's timeline, publish everything."""
        now = self.clock()
        at = utc_now()
        out = []
        for farm in farms:
            d = decisions.get(farm.name)
            t = self._timelines.get(farm.name, Timeline())
            if d is not None and self._folded.get(farm.name) is not d:
                self._folded[farm.name] = d
                t = record(t, Programmed(now, at, d.weights, d.view, d.draining, d.last_heard_ns))
                self._timelines[farm.name] = t
            out.append(FarmPublished(farm, d, farm.name in owned, frozenset(owned.get(farm.name, frozenset())),
                                     pins.get(farm.name), t, self_reasons.get(farm.name, "")))
        for name in set(self._timelines) - {f.name for f in farms}:
            del self._timelines[name]
            self._folded.pop(name, None)
        self._farms = tuple(out)
        self._started = True

    # -- any thread (the HTTP server's) ----------------------------------------------------
    def observation(self) -> AgentInput:
        now = self.clock()
        hb = self.engine.snapshot()
        peers = self._peers
        farms = []
        for p in self._farms:
            name = p.farm.name
            fh = hb.farms.get(name)
            heard = {peer: max(0, (now - t) // MS) for peer, t in fh.last_heard_ns.items()} if fh else {}
            drain = self.handover.drains.get(name)
            handing_over = {peer for peer, flags in fh.flags.items() if flags & ROW_HANDING_OVER} if fh else set()
            if drain is not None and drain.since:
                handing_over.add(self.node)
            counters, owned = {}, len(p.owned)
            if p.pin is not None:
                try:
                    counters = read_counters(*p.pin)
                    owned = len(read_owned(*p.pin))
                except OSError as e:        # pins gone under us (a leave): show what was programmed
                    log.debug("event=observe_pins_unreadable farm=%s error=%s", name, e)
            cfg = peers.get(name)
            if cfg is not None:
                members = tuple(MemberInput(n, cfg.addresses.get(n, ""), w) for n, w in sorted(cfg.weights.items()))
            else:
                members = tuple(MemberInput(n.name, str(n.address), n.weight) for n in p.farm.nodes)
            runner = self.runners.get(name)
            checks = tuple(CheckInput(c.name, c.state, c.last_run, c.runs, c.recovery_runs)
                           for c in (runner.observed if runner is not None else ()))
            d = p.decision
            farms.append(FarmInput(
                name=name, vips=tuple(str(v) for v in p.farm.virtual_ips), interface=p.farm.interface,
                buckets=p.farm.buckets, members=members, programmed=p.programmed,
                view=d.view if d else frozenset(), agreed=fh.agreed if fh else (d.agreed if d else False),
                base_epoch=d.base_epoch if d else 0, withdrawn=d.withdrawn if d else frozenset(),
                draining=d.draining if d else frozenset(), handing_over=frozenset(handing_over),
                owners=tuple(d.target.owner_names()) if d is not None and d.target is not None else (),
                owned=owned, counters=counters, heartbeat_counts=fh.counts if fh else {}, last_heard_ms=heard,
                timeout_ms=fh.timeout_ms if fh else p.farm.heartbeat.timeout_ms, self_reason=p.self_reason,
                checks=checks, handover=self.handover.totals.get(name, HandoverTotals()),
                flows_left=drain.flows_left if drain is not None else 0, timeline=p.timeline))
        return AgentInput(self.node, self.mode, utc_now(), tuple(farms), dict(hb.counts))

    def health_problem(self) -> str | None:
        """Why the agent is not healthy (/healthz 503), None when its main loop and heartbeat
        thread are alive: the main loop passed within 3x its wake interval, the heartbeat
        thread within 3x its longest sleep."""
        now = self.clock()
        at, wake = self._main
        if now - at > 3 * wake * 1e9:
            return f"main loop stuck: last pass {(now - at) / 1e9:.1f} s ago (wakes every {wake:.1f} s)"
        if not self.engine.alive():
            return "heartbeat thread not running"
        hb = self.engine.snapshot()
        if now - hb.at_ns > 3 * HEARTBEAT_LOOP_S * 1e9:
            return f"heartbeat thread stuck: last pass {(now - hb.at_ns) / 1e9:.1f} s ago"
        return None

    def readiness_problems(self, a: AgentInput) -> list[str]:
        if not self._started:
            return ["agent: nothing programmed yet (starting, or waiting for the Farm list)"]
        return [r for r in (farm_not_ready(f) for f in a.farms) if r]


class _Collector:
    """Builds every family from one observation per scrape (prometheus_client custom collector)."""

    def __init__(self, observer: Observer):
        self.observer = observer

    def collect(self):
        return metric_families(self.observer.observation())

    def describe(self):
        return []       # no collect() at registration


class ObserveServer:
    """The HTTP endpoint. The constructor binds (so a taken port fails before the agent
    changes anything); start() serves from a daemon thread."""

    def __init__(self, address: tuple[str, int], observer: Observer):
        self.observer = observer
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(observer))
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):       # noqa: N802 (http.server's name)
                server._serve(self)

            def log_message(self, fmt, *args):
                log.debug("event=observe_request client=%s %s", self.address_string(), fmt % args)

        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET

        class Server(ThreadingHTTPServer):
            address_family = family
            daemon_threads = True

        self.httpd = Server(address, Handler)
        self.address = address
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.httpd.serve_forever, name="observe-http", daemon=True)
        self._thread.start()
        host, port = self.address
        log.info("event=observe_listening address=%s", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")

    def stop(self) -> None:
        if self._thread is not None:
            self.httpd.shutdown()
        self.httpd.server_close()

    def _serve(self, req: BaseHTTPRequestHandler) -> None:
        path = req.path.split("?", 1)[0]
        try:
            if path == "/metrics":
                self._reply(req, 200, generate_latest(self.registry), CONTENT_TYPE_LATEST)
            elif path == "/status":
                body = json.dumps(status_document(self.observer.observation()), indent=1).encode()
                self._reply(req, 200, body + b"\n", "application/json")
            elif path == "/healthz":
                problem = self.observer.health_problem()
                self._reply(req, 503 if problem else 200, f"{problem or 'ok'}\n".encode(), "text/plain; charset=utf-8")
            elif path == "/readyz":
                problems = self.observer.readiness_problems(self.observer.observation())
                text = "\n".join(problems) if problems else "ok"
                self._reply(req, 503 if problems else 200, f"{text}\n".encode(), "text/plain; charset=utf-8")
            else:
                self._reply(req, 404, f"no such endpoint {path!r}: try /metrics, /status, /healthz or /readyz\n"
                            .encode(), "text/plain; charset=utf-8")
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as e:      # a rendering bug must not kill the thread, nor go unseen
            log.exception("event=observe_failed path=%s", path)
            try:
                self._reply(req, 500, f"internal error rendering {path}: {type(e).__name__}: {e}\n".encode(),
                            "text/plain; charset=utf-8")
            except OSError:
                pass

    @staticmethod
    def _reply(req: BaseHTTPRequestHandler, code: int, body: bytes, content_type: str) -> None:
        req.send_response(code)
        req.send_header("Content-Type", content_type)
        req.send_header("Content-Length", str(len(body)))
        req.send_header("Cache-Control", "no-store")
        req.end_headers()
        req.wfile.write(body)
