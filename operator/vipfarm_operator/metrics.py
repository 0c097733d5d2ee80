"""The operator's Prometheus endpoint (`vipfarm-operator --metrics-address`, default
0.0.0.0:9479, `off` disables it): reconcile time per kind, API writes, and the Farms and
their members as the operator's cache holds them.

  vipfarm_operator_reconcile_seconds{kind}                 histogram: farm (a reconcile: decide +
                                                           status write), node, farmnode (a watch event
                                                           absorbed into the caches, Farms queued)
  vipfarm_operator_api_writes_total{resource,verb,result}  counter: farms/status patch, events create;
                                                           result ok | not_found | error | standby
  vipfarm_operator_farms{phase}                            gauge, at scrape time from the Farm cache
  vipfarm_operator_farm_members{farm,state}                gauge: Ready, or the member's reason

The two event-driven families live in this module's own registry (one place, no globals of
prometheus_client's default registry); the gauges are a custom collector that reads the
cache through the function handlers.py registers (farm_source), so they are never stale.
"""
from __future__ import annotations

import contextlib
import logging
import time
from typing import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily

log = logging.getLogger("vipfarm.operator.metrics")

DEFAULT_METRICS_ADDRESS = "0.0.0.0:9479"
REGISTRY = CollectorRegistry(auto_describe=False)
RECONCILE = Histogram("vipfarm_operator_reconcile_seconds", "Time to handle one object, by kind",
                      ["kind"], registry=REGISTRY,
                      buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0))
API_WRITES = Counter("vipfarm_operator_api_writes", "API writes by resource, verb and result",
                     ["resource", "verb", "result"], registry=REGISTRY)

# handlers.py sets it: a snapshot of the cached Farm bodies (taken under its lock).
farm_source: Callable[[], Iterable[dict]] = lambda: ()     # noqa: E731


@contextlib.contextmanager
def reconciling(kind: str):
    """Time one handling of `kind` (farm, node, farmnode), failures included."""
    start = time.perf_counter()
    try:
        yield
    finally:
        RECONCILE.labels(kind).observe(time.perf_counter() - start)


def api_write(resource: str, verb: str, result: str) -> None:
    API_WRITES.labels(resource, verb, result).inc()


def member_state(member: dict) -> str:
    return "Ready" if member.get("ready") else str(member.get("reason") or "NotReady")


def farm_families(bodies: Iterable[dict]) -> list:
    """vipfarm_operator_farms and vipfarm_operator_farm_members from Farm bodies (pure)."""
    phases: dict[str, int] = {}
    members: dict[tuple[str, str], int] = {}
    for body in bodies:
        status = body.get("status") or {}
        phase = str(status.get("phase") or "Pending")
        phases[phase] = phases.get(phase, 0) + 1
        name = (body.get("metadata") or {}).get("name", "")
        for m in status.get("members") or []:
            if isinstance(m, dict):
                key = (name, member_state(m))
                members[key] = members.get(key, 0) + 1
    farms = GaugeMetricFamily("vipfarm_operator_farms", "Farms by status.phase", labels=["phase"])
    for phase, n in sorted(phases.items()):
        farms.add_metric([phase], n)
    per_state = GaugeMetricFamily("vipfarm_operator_farm_members", "A Farm's members by state (Ready, or the "
                                  "reason it is not: HeartbeatLost, Cordoned, AgentStale ...)", labels=["farm", "state"])
    for (farm, state), n in sorted(members.items()):
        per_state.add_metric([farm, state], n)
    return [farms, per_state]


class _FarmCollector:
    def collect(self):
        return farm_families(farm_source())

    def describe(self):
        return []


REGISTRY.register(_FarmCollector())


def serve(address: tuple[str, int] | None) -> None:
    """Start the endpoint on its own daemon thread (prometheus_client's server); None: off."""
    if address is None:
        return
    host, port = address
    start_http_server(port, addr=host, registry=REGISTRY)
    log.info("event=metrics_listening address=%s", f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
