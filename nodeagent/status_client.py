"""Ask agents for their /status (README "Metrics and health endpoints"). The shell around
vipfarm/status_view.py: HTTP GETs with a timeout, errors that say what to check."""
from __future__ import annotations

import ipaddress
import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from vipfarm.spec import load_farm_file
from vipfarm.status_view import StatusFormatError, check_status

AGENT_PORT = 9478                       # vipfarm-agent --observe-address's default port
DEFAULT_AGENT = f"http://127.0.0.1:{AGENT_PORT}"


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
    """Every agent's /status, asked at the same time (a dead node costs one timeout, not one per
    dead node), in the order given; the ones that fail become error lines, not exceptions."""
    agents = list(agents)
    if not agents:
        return Answers([], [])

    def one(agent: str):
        try:
            return fetch_status(agent, timeout), None
        except StatusUnavailable as e:
            return None, str(e)
    with ThreadPoolExecutor(max_workers=min(len(agents), 16), thread_name_prefix="status-fetch") as pool:
        results = list(pool.map(one, agents))
    return Answers([doc for doc, _ in results if doc is not None], [err for _, err in results if err is not None])


def agents_of_farm_files(paths: Iterable[str], port: int = AGENT_PORT) -> list[str]:
    """HOST:PORT of every member of the standalone farm files (spec.nodes[].address), each once,
    in file order: where the members' agents answer /status when their --observe-address is
    their farm address at the default port. Raises vipfarm.spec.FarmSpecError naming the file."""
    out: list[str] = []
    for path in paths:
        for node in load_farm_file(path, require_nodes=True).nodes:
            host = str(node.address)
            out.append(f"[{host}]:{port}" if ipaddress.ip_address(host).version == 6 else f"{host}:{port}")
    return list(dict.fromkeys(out))
