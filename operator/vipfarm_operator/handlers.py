"""Kopf handlers: thin adapters from Kubernetes events to vipfarm.reconcile.decide().

Everything the operator decides is in vipfarm.reconcile (pure, unit-tested). Here we only
collect inputs (the Farm, the Nodes, the other Farms), write the status when it changed,
and post the events.
"""
from __future__ import annotations

import contextvars
import datetime
import logging
import os
import random
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import kopf

from vipfarm.reconcile import FarmRef, NodeInfo, decide, farm_ref, node_info, utc_now
from vipfarm.spec import GROUP, PLURAL, VERSION, FarmSpecError, parse_farm

from . import kube

FINALIZER = "vipfarm.io/release"
RECONCILE_INTERVAL = float(os.environ.get("VIPFARM_RECONCILE_INTERVAL", "60"))
FANOUT_WORKERS = int(os.environ.get("VIPFARM_FANOUT_WORKERS", "8"))
RELEASE_TIMEOUT = float(os.environ.get("VIPFARM_RELEASE_TIMEOUT", "60"))

log = logging.getLogger("vipfarm.operator")
_locks: dict[str, threading.Lock] = {}
_locks_guard = threading.Lock()
# The status this operator last wrote per Farm: watch events may lag behind our own writes,
# and the previous assignment must be the newest one for minimal movement.
_written: dict[str, dict[str, Any]] = {}
_node_summaries: dict[str, Any] = {}


def _lock(name: str) -> threading.Lock:
    with _locks_guard:
        return _locks.setdefault(name, threading.Lock())


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_):
    settings.persistence.finalizer = FINALIZER
    settings.posting.level = logging.WARNING        # our own events carry the story
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    settings.peering.name = os.environ.get("VIPFARM_PEERING_NAME", "vipfarm")
    settings.peering.mandatory = True
    settings.peering.lifetime = int(os.environ.get("VIPFARM_PEERING_LIFETIME", "20"))
    prio = os.environ.get("VIPFARM_PEERING_PRIORITY", "")
    # Kopf pauses every replica when two live ones share a priority: pick a random one.
    settings.peering.priority = int(prio) if prio else random.randint(1, 2**30)
    settings.peering.clusterwide = True
    log.info("event=operator_starting peering=%s priority=%s", settings.peering.name,
             settings.peering.priority)


# -- inputs -----------------------------------------------------------------------------------
def _node_summary(name: str, body) -> NodeInfo:
    md, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    return node_info(name, md.get("labels"), md.get("annotations"), status.get("conditions"),
                     spec.get("unschedulable"))


@kopf.index("", "v1", "nodes")
def node_index(name, body, **_):
    return {name: _node_summary(name, body)}


@kopf.index(GROUP, VERSION, PLURAL)
def farm_bodies(name, body, **_):
    return {name: {"metadata": dict(body.get("metadata", {})), "spec": dict(body.get("spec", {})),
                   "status": dict(body.get("status", {})), "apiVersion": body.get("apiVersion"),
                   "kind": body.get("kind")}}


def _nodes(node_index) -> list:
    return [next(iter(v)) for v in node_index.values()]


def _others(farm_bodies) -> list[FarmRef]:
    return [farm_ref(next(iter(v))) for v in farm_bodies.values()]


# -- the reconcile ------------------------------------------------------------------------
def reconcile(body: dict, node_index, farm_bodies, logger=log) -> None:
    name = body["metadata"]["name"]
    with _lock(name):
        status = dict(body.get("status") or {})
        mine = _written.get(name)
        if mine and int(mine.get("epoch", 0)) >= int(status.get("epoch", 0) or 0):
            status.update({k: v for k, v in mine.items() if k != "agents"})
        try:
            farm = parse_farm(body)
        except FarmSpecError as e:
            # Admission normally stops this; a Farm stored before a CRD upgrade can still get here.
            kube.patch_status(name, {"phase": "Invalid", "observedGeneration": body["metadata"].get("generation", 0),
                                     "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec",
                                                     "message": str(e)[:30000], "lastTransitionTime": utc_now()}]})
            kube.post_event(body, "InvalidSpec", str(e)[:1000], "Warning")
            return
        d = decide(farm, int(body["metadata"].get("generation", 0)),
                   body["metadata"].get("creationTimestamp", ""), _nodes(node_index),
                   _others(farm_bodies), status, utc_now())
        current = {k: v for k, v in status.items() if k in d.status}
        if _strip_times(current) != _strip_times(d.status):
            kube.patch_status(name, d.status)
            _written[name] = d.status
            logger.info("event=status_written farm=%s phase=%s epoch=%s ready=%s",
                        name, d.status["phase"], d.status["epoch"], d.status["readyText"])
        for ev in d.events:
            kube.post_event(body, ev.reason, ev.message, ev.type)


def _strip_times(status: dict) -> dict:
    out = dict(status)
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                         for c in status.get("conditions") or []]
    return out


@kopf.on.resume(GROUP, VERSION, PLURAL)
@kopf.on.create(GROUP, VERSION, PLURAL)
@kopf.on.update(GROUP, VERSION, PLURAL)
def farm_changed(body, node_index, farm_bodies, logger, **_):
    reconcile(kube.get_farm(body["metadata"]["name"]) or dict(body), node_index, farm_bodies, logger)


def agents_view(status: dict | None) -> dict:
    """What of the agents' reports the decisions read (not reportedAt, which a refresh bumps)."""
    agents = (status or {}).get("agents") or {}
    return {n: {k: v for k, v in (r or {}).items() if k != "reportedAt"} for n, r in agents.items()}


_agents_seen: dict[str, dict] = {}


@kopf.on.event(GROUP, VERSION, PLURAL)
def agents_reported(type, body, node_index, farm_bodies, logger, **_):
    """Reconcile when an agent's report changed in substance.

    A raw event handler, not on.field: Kopf then keeps no per-object record of status, so an
    agent's periodic refresh costs the operator no API call at all.
    """
    if type in (None, "DELETED") or body["metadata"].get("deletionTimestamp"):
        return
    name = body["metadata"]["name"]
    view = agents_view(body.get("status"))
    if _agents_seen.get(name) == view:
        return
    _agents_seen[name] = view
    reconcile(dict(body), node_index, farm_bodies, logger)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL)
def periodic(body, node_index, farm_bodies, logger, **_):
    if body["metadata"].get("deletionTimestamp"):
        return
    reconcile(dict(body), node_index, farm_bodies, logger)


@kopf.on.event("", "v1", "nodes")
def node_event(name, body, type, node_index, farm_bodies, logger, **_):
    """Reconcile the Farms a Node affects, only when what membership reads has changed."""
    if type is None:      # the initial listing; resume handlers cover it
        return
    summary = None if type == "DELETED" else _node_summary(name, body)
    if _node_summaries.get(name) == summary:
        return
    _node_summaries[name] = summary
    logger.info("event=node_changed node=%s ready=%s", name, summary and summary.ready)
    nodes = _with(node_index, name, summary)
    bodies = [next(iter(b)) for b in list(farm_bodies.values())]
    bodies = [b for b in bodies if not b["metadata"].get("deletionTimestamp")]
    # Status writes dominate (one PATCH per affected Farm): keep several in flight.
    with ThreadPoolExecutor(max_workers=FANOUT_WORKERS, thread_name_prefix="fanout") as pool:
        # Each task runs in a copy of this handler's context, which carries Kopf's event queue.
        for f in [pool.submit(contextvars.copy_context().run, reconcile, b, nodes, farm_bodies, logger)
                  for b in bodies]:
            f.result()


def _with(node_index, name, summary):
    """The node index with one node replaced by its newest summary (indexes may lag)."""
    out = {k: v for k, v in node_index.items() if k != name}
    if summary is not None:
        out[name] = [summary]
    return out


@kopf.on.delete(GROUP, VERSION, PLURAL)
def farm_deleted(body, meta, logger, **_):
    """Hold the finalizer until every member's agent has released the VIP and filter entries."""
    name = meta["name"]
    fresh = kube.get_farm(name) or dict(body)
    status = fresh.get("status") or {}
    members = [m.get("node") for m in status.get("members") or []]
    agents = status.get("agents") or {}
    pending = [n for n in members if n in agents and not agents[n].get("released")]
    deleted_at = meta.get("deletionTimestamp")
    waited = 0.0
    if deleted_at:
        t = datetime.datetime.fromisoformat(deleted_at.replace("Z", "+00:00"))
        waited = (datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()
    if pending and waited < RELEASE_TIMEOUT:
        raise kopf.TemporaryError(f"waiting for agents to release Farm {name}: {', '.join(pending)}", delay=1)
    if pending:
        kube.post_event(fresh, "ReleaseTimeout", f"gave up waiting for {', '.join(pending)} after "
                                                 f"{RELEASE_TIMEOUT:.0f}s; their nodes may keep the VIP", "Warning")
    _written.pop(name, None)
    _agents_seen.pop(name, None)
    logger.info("event=farm_released farm=%s", name)
