"""Ask agents for their /status (README "Metrics and health endpoints"). The shell around
vipfarm/status_view.py: HTTP GETs with a timeout, errors that say what to check."""
from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from vipfarm.status_view import StatusFormatError, check_status

DEFAULT_AGENT = "http://127.0.0.1:9478"


class StatusUnavailable(RuntimeError):
    """An agent that did not answer /status with a document this code reads."""


def status_url(agent: str) -> str:
    """http://HOST:PORT[/status] from HOST:PORT or a URL."""
    base = agent if "://" in agent else f"http://{agent}"
    return base.rstrip("/") + ("" if base.rstrip("/").endswith("/status") else "/status")


def fetch_status(agent: str, timeout: float = 2.0) -> Mapping[str, Any]:
    url = status_url(agent)
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            body = r.read()
    except urllib.error.HTTPError as e:
        raise StatusUnavailable(f"{url}: HTTP {e.code} {e.reason}") from None
    except (urllib.error.URLError, OSError) as e:
        reason = getattr(e, "reason", e)
        raise StatusUnavailable(f"{url}: {reason}; is vipfarm-agent running there with "
                                f"--observe-address (default 127.0.0.1:9478)?") from None
    try:
        return check_status(json.loads(body), url)
    except (ValueError, StatusFormatError) as e:
        raise StatusUnavailable(str(e) if isinstance(e, StatusFormatError) else f"{url}: not JSON ({e})") from None


@dataclass(frozen=True)
class Answers:
    statuses: list[Mapping[str, Any]]
    errors: list[str]          # one line per agent that did not answer


def fetch_all(agents: Iterable[str], timeout: float = 2.0) -> Answers:
    """Every agent's /status, asked at once (a farm with several unreachable members costs one
    timeout, not one each), in the order given; the ones that fail become error lines, not
    exceptions."""
    agents = list(agents)

    def ask(agent: str):
        try:
            return fetch_status(agent, timeout), None
        except StatusUnavailable as e:
            return None, str(e)
    if not agents:
        return Answers([], [])
    with ThreadPoolExecutor(max_workers=min(16, len(agents))) as pool:
        results = list(pool.map(ask, agents))
    return Answers([s for s, _ in results if s is not None], [e for _, e in results if e is not None])
