"""`vipfarm console`: a small web page that shows every Farm live (README "The web console").

The shell around vipfarm/console_view.py: a stdlib ThreadingHTTPServer with three routes.

  GET  /                  the page (nodeagent/console_page/index.html: inline CSS and JS, no
                          external asset), which polls the next route and draws what it gets
  GET  /api/farms         console_view.console_document: farms, owners' colours, members,
                          timeline, packet rates, the source's error lines
  POST /api/drain         {"node": NAME}: drain / undrain a member, only when the console was
  POST /api/undrain       started with --allow-actions (else 403), through the source

Where the farm views come from is a ConsoleSource: standalone mode asks the agents' /status
(status_client.fetch_all, status_view.merge_agent_statuses); a cluster source (the Farm status)
plugs into the same fields, with the drain of `vipfarm drain` as its action. The source is
asked at most once per `min_interval` whatever the number of viewers, and packet rates are
the accepted counters' difference between two such asks.
"""
from __future__ import annotations

import base64
import hashlib
import http.server
import ipaddress
import json
import re
import socket
import sys
import threading
import time
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Sequence

from vipfarm.console_view import CounterSample, console_document, counter_sample, packet_rates
from vipfarm.listen_address import parse_listen_address
from vipfarm.status_view import merge_agent_statuses
from vipfarm.timestamps import utc_now

from .status_client import fetch_all

DEFAULT_LISTEN = "127.0.0.1:9480"
MAX_ACTION_BODY = 4096
STANDALONE_NO_ACTIONS = (
    "in standalone mode the farm file is the truth the agents read: drain a member there "
    "(spec.nodes[].drain: true, then SIGHUP every agent), the console does not edit it; run the "
    "console without --allow-actions (read-only), actions exist in cluster mode only")


@dataclass(frozen=True)
class ActionResult:
    ok: bool
    message: str        # what the action printed, for the page to show


@dataclass(frozen=True)
class ConsoleSource:
    """Where the console's farm views come from and what it may change.

    fetch() returns (farm views as vipfarm.status_view.FARM_VIEW_FIELDS, one error line per part
    of the source that did not answer). set_drain(node, drain) drains (True) or undrains (False)
    a member; None where the mode cannot, with `no_actions_reason` saying why."""
    mode: str                                             # "standalone" | "cluster"
    fetch: Callable[[], tuple[list[dict], list[str]]]
    description: str                                      # for the start-up log line
    set_drain: Callable[[str, bool], ActionResult] | None = None
    no_actions_reason: str = ""


def standalone_source(agents: Sequence[str], timeout: float = 1.0) -> ConsoleSource:
    """The agents' /status, merged; no actions (STANDALONE_NO_ACTIONS)."""
    agents = list(agents)

    def fetch() -> tuple[list[dict], list[str]]:
        answers = fetch_all(agents, timeout)
        return merge_agent_statuses(answers.statuses), answers.errors
    return ConsoleSource("standalone", fetch, f"{len(agents)} agent(s): {', '.join(agents)}",
                         no_actions_reason=STANDALONE_NO_ACTIONS)


def cluster_source(kubeconfig_file: str | None, timeout: float = 2.0,
                   set_drain: Callable[[str, bool], ActionResult] | None = None) -> ConsoleSource:
    """The Farms and FarmNodes from the API server (what `vipfarm status --cluster` reads);
    drain and undrain act on the Node as `vipfarm drain|undrain` do."""
    from .status_cli import cluster_views

    def fetch() -> tuple[list[dict], list[str]]:
        views, errors = cluster_views(kubeconfig_file, None, timeout, "vipfarm console")
        return views or [], errors
    return ConsoleSource("cluster", fetch, f"the API server ({kubeconfig_file or 'default credentials'})",
                         set_drain=set_drain, no_actions_reason="" if set_drain else "no drain action given")


class ActionsUnavailable(ValueError):
    """--allow-actions asked of a source that cannot act."""


def _page() -> bytes:
    return (resources.files("nodeagent.console_page") / "index.html").read_bytes()


def content_security_policy(page: bytes) -> str:
    """Only the page's own inline script and style run (by hash), it may fetch from its own
    origin only, and nothing may frame it: an injected tag can neither run nor phone out."""
    def hashes(tag: str) -> str:
        return " ".join("'sha256-%s'" % base64.b64encode(hashlib.sha256(body).digest()).decode()
                        for body in re.findall(rb"<%s>(.*?)</%s>" % (tag.encode(), tag.encode()), page, re.S))
    return (f"default-src 'none'; script-src {hashes('script')}; style-src {hashes('style')}; "
            "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


class Console:
    """The console's state: the source, the last answer (shared by every viewer for
    `min_interval` seconds) and the counter sample the next rates are computed from."""

    def __init__(self, source: ConsoleSource, *, allow_actions: bool = False, min_interval: float = 0.4,
                 clock: Callable[[], float] = time.monotonic, now: Callable[[], str] = utc_now):
        if allow_actions and source.set_drain is None:
            raise ActionsUnavailable(f"--allow-actions is refused in {source.mode} mode: {source.no_actions_reason}")
        self.source = source
        self.allow_actions = allow_actions
        self.min_interval = min_interval
        self._clock, self._now = clock, now
        self._lock = threading.Lock()
        self._answered_at: float | None = None
        self._body = b""
        self._sample: CounterSample | None = None
        self._members: frozenset[str] = frozenset()
        self.page = _page()
        self.csp = content_security_policy(self.page)

    def farms_json(self) -> bytes:
        with self._lock:
            at = self._clock()
            if self._answered_at is None or at - self._answered_at >= self.min_interval:
                try:
                    views, errors = self.source.fetch()
                except Exception as e:          # noqa: BLE001 - a source bug must show, not kill the page
                    views, errors = [], [f"the {self.source.mode} source failed: {type(e).__name__}: {e}"]
                sample = counter_sample(views, at)
                rates = packet_rates(self._sample, sample)
                self._sample = sample if views else self._sample
                self._members = frozenset(m.get("name") for v in views for m in v.get("members") or ())
                doc = console_document(views, errors, rates, mode=self.source.mode, actions=self.allow_actions,
                                       generated_at=self._now())
                self._body = json.dumps(doc).encode()
                self._answered_at = at
            return self._body

    def act(self, node: object, drain: bool) -> tuple[int, dict]:
        """(HTTP status, JSON body) of a drain or undrain request."""
        verb = "drain" if drain else "undrain"
        if not self.allow_actions:
            return 403, {"ok": False, "message": f"{verb} refused: this console is read-only; start `vipfarm console "
                                                 f"--allow-actions` (cluster mode only) to allow drain and undrain"}
        if not isinstance(node, str) or not node:
            return 400, {"ok": False, "message": f'{verb}: the body must be {{"node": "NAME"}}'}
        self.farms_json()
        if node not in self._members:
            return 404, {"ok": False, "message": f"{verb}: no farm has a member named {node!r}; known: "
                                                 f"{', '.join(sorted(self._members)) or 'none'}"}
        result = self.source.set_drain(node, drain)
        print(f"event=console_action action={verb} node={node} ok={str(result.ok).lower()}", file=sys.stderr, flush=True)
        return (200 if result.ok else 502), {"ok": result.ok, "message": result.message}


def _handler(console: Console) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        server_version = "vipfarm-console"
        sys_version = ""

        def _send(self, code: int, body: bytes, content_type: str, extra: dict[str, str] | None = None) -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.send_header("X-Content-Type-Options", "nosniff")
            for k, v in (extra or {}).items():
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _json(self, code: int, doc: dict) -> None:
            self._send(code, json.dumps(doc).encode(), "application/json")

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path in ("/", "/index.html"):
                self._send(200, console.page, "text/html; charset=utf-8",
                           {"Content-Security-Policy": console.csp, "X-Frame-Options": "DENY",
                            "Referrer-Policy": "no-referrer"})
            elif path == "/api/farms":
                self._send(200, console.farms_json(), "application/json")
            else:
                self._json(404, {"ok": False, "message": f"no such page {path!r}: the console serves / and /api/farms"})

        do_HEAD = do_GET

        def do_POST(self) -> None:
            path = self.path.split("?", 1)[0]
            if path not in ("/api/drain", "/api/undrain"):
                self._json(404, {"ok": False, "message": f"no action at {path!r}: POST /api/drain or /api/undrain"})
                return
            drain = path == "/api/drain"
            if not console.allow_actions:
                self._json(*console.act(None, drain))
                return
            # A page of another origin may not act: it cannot send JSON without a preflight this
            # server never answers, and a browser names its origin.
            origin = self.headers.get("Origin")
            if origin is not None and origin != f"http://{self.headers.get('Host')}":
                self._json(403, {"ok": False, "message": f"refused: a request from origin {origin!r}"})
                return
            if (self.headers.get("Content-Type") or "").split(";")[0].strip() != "application/json":
                self._json(415, {"ok": False, "message": "send the action as Content-Type: application/json"})
                return
            try:
                length = int(self.headers.get("Content-Length") or 0)
            except ValueError:
                length = -1
            if not 0 <= length <= MAX_ACTION_BODY:
                self._json(413, {"ok": False, "message": f"send a Content-Length of at most {MAX_ACTION_BODY} bytes"})
                return
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except ValueError:
                body = None
            self._json(*console.act(body.get("node") if isinstance(body, dict) else None, drain))

        def log_message(self, format: str, *args) -> None:    # noqa: A002 - the base class's name
            pass        # the page polls every second: a line per request would drown the log

    return Handler


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class ConsoleServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], console: Console):
        try:
            self.address_family = socket.AF_INET6 if ipaddress.ip_address(address[0]).version == 6 else socket.AF_INET
        except ValueError:
            self.address_family = socket.AF_INET
        super().__init__(address, _handler(console))
        self.console = console

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{'[%s]' % host if ':' in host else host}:{port}/"


def make_server(console: Console, listen: str = DEFAULT_LISTEN) -> ConsoleServer:
    return ConsoleServer(parse_listen_address(listen, "--listen", lowest_port=0), console)
