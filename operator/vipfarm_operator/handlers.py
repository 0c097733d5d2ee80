"""Kopf handlers: thin adapters from Kubernetes events to vipfarm.decisions.decide().

Everything the operator decides is in the core (vipfarm.decisions and the modules it
composes; pure, unit-tested). Here:

* watch handlers keep three caches (Nodes reduced to NodeInfo, Farms, and each FarmNode's
  reports reduced to what decisions read) and queue the names of the Farms an event can
  affect;
* a pool of workers (VIPFARM_WORKERS, 8) takes Farm names from the queue, decides from the
  newest caches and writes the status when it changed. A name is queued at most once and
  processed by one worker at a time (workqueue.py), so a burst of events costs each Farm one
  reconcile, and a Node change keeps 8 status writes in flight;
* Kubernetes Events go out after the status writes: they wait while the queue is busy
  (at most EVENT_DELAY seconds), so they never slow down the writes the agents act on;
* Kopf provides the watches, the finalizer (deletion waits for every agent's `released`),
  the periodic resync timer, and peering (one active replica; a paused replica's handlers
  and timers do not run, so it queues nothing);
* our own threads (workers, events poster, prune) run in every replica, and Kopf's pause
  does not reach them: every write asks replica.active() at the moment of writing
  (kube.py), so a standby, or a replica demoted with work queued, writes nothing and drops
  that work. When a replica becomes active, Kopf lists every kind again and each Farm of
  that listing is queued (on_replica_change forgets what was seen before);
* the caches are shared by Kopf's handler threads and the workers: each read-modify-write
  and each snapshot a reconcile takes is made under _lock (short sections, no API calls);
* staleness: each FarmNode's reportedAt is cached apart from its reports (it changes on every
  refresh and must not queue anything) and added to each report when deciding. A report
  older than VIPFARM_REPORT_STALE_AFTER seconds (180, 3 x the agents' default refresh) makes
  its member ineligible (AgentStale); after a failed API call the operator counts ages from
  when the API server answered again, so an outage is not blamed on the agents. A Farm is
  queued again when its freshest-expiring report would turn stale (Decision.recheck_in).
"""
from __future__ import annotations

import datetime
import json
import logging
import os
import queue
import random
import threading
import time
from typing import Any

import kopf

from vipfarm.conflicts import farm_ref, share_a_vip
from vipfarm.decisions import decide
from vipfarm.membership import node_info, selects
from vipfarm.reports import decision_view, farms_changed
from vipfarm.timestamps import utc_now
from vipfarm.spec import GROUP, PLURAL, REPORT_PLURAL, VERSION, FarmSpecError, parse_farm

from . import kube, metrics, replica
from .workqueue import WorkQueue

FINALIZER = "vipfarm.io/release"
RECONCILE_INTERVAL = float(os.environ.get("VIPFARM_RECONCILE_INTERVAL", "60"))
WORKERS = int(os.environ.get("VIPFARM_WORKERS", "8"))
RELEASE_TIMEOUT = float(os.environ.get("VIPFARM_RELEASE_TIMEOUT", "60"))
PRUNE_INTERVAL = float(os.environ.get("VIPFARM_PRUNE_INTERVAL", "300"))
API_PROBE_INTERVAL = 5.0  # seconds between two reads that tell whether the API server answers (staleness)
REPORT_COALESCE = 0.2     # agent reports arrive in bursts: let them merge
EVENT_DELAY = 10.0        # events wait at most this long for the status writes to finish
RETRY_MAX = float(os.environ.get("VIPFARM_RETRY_MAX", "30"))   # longest wait between retries of a failed write
RELEASE_WAIT = 10.0       # the finalizer waits this long in one go for the agents' `released`
STALE_AFTER = float(os.environ.get("VIPFARM_REPORT_STALE_AFTER", "180"))   # seconds; see decisions.STALE_AFTER

log = logging.getLogger("vipfarm.operator")

# -- caches, written by the watch handlers, read by the workers, all under _lock -----------
_nodes: dict[str, Any] = {}            # node name -> NodeInfo
_farms: dict[str, dict] = {}           # farm name -> {metadata, spec, status, ours}
_reports: dict[str, dict] = {}         # node name -> {farm name -> report (decision fields)}
_reported_at: dict[str, str] = {}      # node name -> its FarmNode's status.reportedAt
_api_back_at: list[str] = [""]         # when the API server answered again after a failed call ("" = none failed)
_farm_seen: dict[str, tuple] = {}      # farm name -> what in it makes a reconcile necessary
_failures: dict[str, int] = {}
_interned: dict[str, dict] = {}        # one shared dict per distinct report (most are alike)
_META = ("name", "uid", "generation", "creationTimestamp", "deletionTimestamp", "resourceVersion")
_lock = threading.RLock()
_released = threading.Condition(_lock)   # notified when an agent's `released` changes

_queue = WorkQueue()
_events: "queue.Queue[tuple[float, dict, str, str, str]]" = queue.Queue(maxsize=10000)
_started = threading.Event()


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
    log.info("event=operator_starting peering=%s priority=%s workers=%d", settings.peering.name,
             settings.peering.priority, WORKERS)


@kopf.on.startup()
def prime_caches(**_):
    """Fill the caches from one LIST of each kind before any reconcile: a Farm decided on a
    partial view of the Nodes would move buckets for nothing. Kopf retries this on failure,
    and its watches start only after it. Nothing is queued here: a standby replica runs this
    too, and only the active one's watch handlers queue work (Kopf pauses the others). The
    threads start in every replica; what they write is gated by replica.active()."""
    try:
        nodes, reports, farms = kube.list_nodes(), kube.list_farmnodes(), kube.list_farms()
    except Exception as e:
        raise kopf.TemporaryError(f"listing Nodes, FarmNodes and Farms failed: {e}", delay=2)
    with _lock:
        for body in nodes:
            _cache_node(body["metadata"]["name"], body)
        for body in reports:
            _reports[body["metadata"]["name"]] = _view(body)
            _reported_at[body["metadata"]["name"]] = _reported(body)
        for body in farms:
            _cache_farm(body["metadata"]["name"], body)
    log.info("event=caches_primed nodes=%d farmnodes=%d farms=%d", len(nodes), len(reports), len(farms))
    if not _started.is_set():
        _started.set()
        for i in range(WORKERS):
            threading.Thread(target=_work, name=f"reconcile-{i}", daemon=True).start()
        threading.Thread(target=_post_events, name="events", daemon=True).start()
        threading.Thread(target=_prune_forever, name="prune", daemon=True).start()
        threading.Thread(target=_probe_api_forever, name="api-probe", daemon=True).start()


@kopf.on.cleanup()
def stop(**_):
    _queue.shutdown()


def on_replica_change(active: bool) -> None:
    """Becoming active: Kopf lists every kind again (its watches were paused); forget which
    Farms were seen, so that listing queues every one of them. Runs in Kopf's event loop,
    before the watchers resume."""
    if active:
        with _lock:
            _farm_seen.clear()


replica.on_change(on_replica_change)


# -- watch handlers: update a cache, queue what it affects -------------------------------
@kopf.on.event("", "v1", "nodes")
def node_event(name, body, type, **_):
    with metrics.reconciling("node"):
        _node_event(name, body, type)


def _node_event(name, body, type) -> None:
    """Queue the Farms that select a Node (before or after), when what membership reads changed."""
    with _lock:
        old = _nodes.get(name)
        if type == "DELETED":
            _nodes.pop(name, None)
            new = None
        else:
            new = _cache_node(name, body)
    if old == new:
        return
    log.info("event=node_changed node=%s ready=%s", name, new and new.ready)
    _queue_selecting(old, new)


def _queue_selecting(*nodes) -> None:
    """Queue every Farm whose nodeSelector matches one of these NodeInfos."""
    labels = [n.labels for n in nodes if n is not None]
    with _lock:
        farms = list(_farms.items())
    for farm, f in farms:
        selector = (f.get("spec") or {}).get("nodeSelector") or {}
        if any(selects(selector, lab) for lab in labels):
            _queue.add(farm)


def _cache_node(name: str, body) -> Any:     # under _lock
    md, spec, status = body.get("metadata", {}), body.get("spec", {}), body.get("status", {})
    _nodes[name] = node_info(name, md.get("labels"), md.get("annotations"), status.get("conditions"),
                             spec.get("unschedulable"))
    return _nodes[name]


@kopf.on.event(GROUP, VERSION, REPORT_PLURAL)
def farmnode_event(name, body, type, **_):
    with metrics.reconciling("farmnode"):
        _farmnode_event(name, body, type)


def _farmnode_event(name, body, type) -> None:
    """Queue the Farms whose report from this node changed in substance (not appliedEpoch,
    not reportedAt: those change all the time and decide nothing)."""
    new = {} if type == "DELETED" else _view(body)
    with _released:
        old = _reports.get(name, {})
        if type == "DELETED":
            _reports.pop(name, None)
            _reported_at.pop(name, None)
        else:
            _reports[name] = new
            _reported_at[name] = _reported(body)
        changed = farms_changed(old, new)
        if any((old.get(f) or {}).get("released") != (new.get(f) or {}).get("released") for f in changed):
            _released.notify_all()        # a finalizer may be waiting for this (farm_deleted)
    for farm in changed:
        _queue.add(farm, delay=REPORT_COALESCE)


@kopf.on.event(GROUP, VERSION, PLURAL)
def farm_event(name, body, type, **_):
    """Cache the Farm; queue it when first seen or when its spec (generation) or deletion
    changed, not for our own status writes, which come back here as events too."""
    if type == "DELETED":
        _requeue_conflicting(name)
        _forget_farm(name)
        return
    md = body.get("metadata", {})
    seen = (md.get("generation"), md.get("creationTimestamp"), bool(md.get("deletionTimestamp")))
    with _lock:
        _cache_farm(name, body)
        new = _farm_seen.get(name) != seen
        _farm_seen[name] = seen
    if new:
        _queue.add(name)
        _requeue_conflicting(name)


def _view(farmnode) -> dict[str, dict]:
    """A FarmNode's reports as decisions read them. 200 Farms x 64 nodes of reports are mostly
    the same few dicts: share one object per distinct report (operator RSS, bench/RESULTS.md).
    Cached reports are never changed in place: a new report is a new dict."""
    view = decision_view((farmnode.get("status") or {}).get("farms"))
    with _lock:
        if len(_interned) > 10000:
            _interned.clear()
        return {f: _interned.setdefault(json.dumps(r, sort_keys=True), r) for f, r in view.items()}


def _reported(farmnode) -> str:
    return str((farmnode.get("status") or {}).get("reportedAt") or "")


def _cache_farm(name: str, body) -> None:
    """Keep what reconciles read. The status is the newest one known: a watch event can lag
    behind our own write, and minimal movement needs the newest previous assignment, so a
    status we wrote is kept until an event brings a newer epoch. An entry is replaced, never
    changed in place, so a worker's snapshot of it stays whole. Called under _lock."""
    md = body.get("metadata") or {}
    status, ours = dict(body.get("status") or {}), False
    with _lock:
        old = _farms.get(name)
        if old and old["ours"] and _epoch(old["status"]) >= _epoch(status):
            status, ours = old["status"], True
        entry = {"metadata": {k: md[k] for k in _META if k in md}, "spec": dict(body.get("spec") or {}),
                 "status": status, "ours": ours, "apiVersion": body.get("apiVersion"), "kind": body.get("kind")}
        entry["ref"] = farm_ref(entry)      # conflict detection reads it for every Farm, every reconcile
        _farms[name] = entry


def _farm_bodies() -> list[dict]:
    """The cached Farms, for the operator's gauges (metrics.py), taken under the lock."""
    with _lock:
        return list(_farms.values())


metrics.farm_source = _farm_bodies


def _epoch(status: dict) -> int:
    return int((status or {}).get("epoch", 0) or 0)


def _remember_written(name: str, status: dict) -> None:
    with _lock:
        cur = _farms.get(name)
        if cur is not None:
            _farms[name] = dict(cur, status=status, ours=True)


def _forget_farm(name: str) -> None:
    with _lock:
        for cache in (_farms, _farm_seen, _failures):
            cache.pop(name, None)


def _requeue_conflicting(name: str) -> None:
    """A new, changed or vanishing Farm can start or end another one's VIP conflict."""
    with _lock:
        cached = _farms.get(name)
        farms = list(_farms.items())
    if cached is None:
        return
    mine = cached["ref"]
    for other, f in farms:
        if share_a_vip(mine, f["ref"]):
            _queue.add(other)


@kopf.timer(GROUP, VERSION, PLURAL, interval=RECONCILE_INTERVAL, initial_delay=RECONCILE_INTERVAL)
def periodic(name, body, **_):
    """Resync: a missed event, or a status someone else edited, is repaired within the interval."""
    if not body["metadata"].get("deletionTimestamp"):
        _queue.add(name)


# -- workers ---------------------------------------------------------------------------------
def _work() -> None:
    while True:
        name = _queue.get()
        if name is None:
            return
        try:
            with metrics.reconciling("farm"):
                reconcile(name)
            with _lock:
                if _failures.pop(name, None) is not None:
                    _api_back_at[0] = utc_now()     # ages of reports count from now (see decide)
        except kube.Standby:
            # Demoted (or never active): drop the work, no retry. The replica that is active
            # reconciles every Farm; so does this one if it becomes active again.
            log.info("event=reconcile_dropped farm=%s reason=standby", name)
            with _lock:
                _failures.pop(name, None)
        except Exception as e:     # retried with backoff; the API may be restarting
            with _lock:
                n = _failures[name] = _failures.get(name, 0) + 1
            delay = min(RETRY_MAX, 0.5 * 2 ** n)
            log.warning("event=reconcile_failed farm=%s attempt=%d retry_in=%.1fs error=%s",
                        name, n, delay, str(e).replace("\n", " ")[:300])
            _queue.add(name, delay=delay)
        finally:
            _queue.done(name)


def reconcile(name: str) -> None:
    if not replica.active():
        raise kube.Standby(f"not reconciling Farm {name}: this replica is a standby")
    with _lock:     # one consistent snapshot; decide() and the API call run without the lock
        body = _farms.get(name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return
        nodes = list(_nodes.values())
        refs = [f["ref"] for f in _farms.values()]
        reports = {node: dict(farms[name], reportedAt=_reported_at.get(node, ""))
                   for node, farms in _reports.items() if name in farms}
        counted_from = _api_back_at[0] or None
    status = dict(body.get("status") or {})
    generation = int(body["metadata"].get("generation", 0))
    try:
        farm = parse_farm(body)
    except FarmSpecError as e:
        # Admission normally stops this; a Farm stored before a CRD upgrade can still get here.
        invalid = {"phase": "Invalid", "observedGeneration": generation,
                   "conditions": [{"type": "Ready", "status": "False", "reason": "InvalidSpec",
                                   "message": str(e)[:30000], "lastTransitionTime": utc_now()}]}
        if status.get("phase") != "Invalid" or status.get("observedGeneration") != generation:
            kube.patch_status(name, invalid)
            _remember_written(name, invalid)
            _event(body, "InvalidSpec", str(e)[:1000], "Warning")
        return
    d = decide(farm, generation, body["metadata"].get("creationTimestamp", ""), nodes, refs, status,
               reports, utc_now(), stale_after=STALE_AFTER, stale_counted_from=counted_from)
    if d.recheck_in is not None:
        _queue.add(name, delay=d.recheck_in)      # a report turns stale then: decide again
    current = {k: v for k, v in status.items() if k in d.status}
    if _strip_times(current) != _strip_times(d.status):
        if not kube.patch_status(name, d.status):
            with _lock:
                _farms.pop(name, None)       # deleted meanwhile
            return
        _remember_written(name, d.status)
        log.info("event=status_written farm=%s phase=%s epoch=%s ready=%s",
                 name, d.status["phase"], d.status["epoch"], d.status["readyText"])
    for ev in d.events:
        _event(body, ev.reason, ev.message, ev.type)


def _strip_times(status: dict) -> dict:
    out = dict(status)
    out["conditions"] = [{k: v for k, v in c.items() if k != "lastTransitionTime"}
                         for c in status.get("conditions") or []]
    return out


# -- is the API server there (for staleness) ---------------------------------------------
def _probe_api_forever() -> None:
    """While the API server is away the agents cannot write their reports: when it answers
    again, report ages count from then (decide's stale_counted_from), so an outage longer
    than the staleness threshold does not make every member AgentStale at once."""
    failing = False
    while True:
        time.sleep(API_PROBE_INTERVAL)
        try:
            kube.ping()
        except Exception as e:
            if not failing:
                log.warning("event=api_unreachable error=%s action=report_ages_paused",
                            str(e).replace("\n", " ")[:200])
            failing = True
            continue
        if failing:
            failing = False
            with _lock:
                _api_back_at[0] = utc_now()
            log.info("event=api_reachable action=report_ages_count_from_now")


# -- stale cache entries ----------------------------------------------------------------
def _prune_forever() -> None:
    while True:
        time.sleep(PRUNE_INTERVAL)
        try:
            prune_stale()
        except Exception as e:
            log.warning("event=prune_failed error=%s", str(e).replace("\n", " ")[:300])


def prune_stale() -> None:
    """Drop cache entries for objects that no longer exist.

    A paused (standby) replica stops watching; when it takes over, Kopf lists again, which
    brings every live object back but says nothing of those deleted meanwhile. An entry
    missing from a LIST is dropped only after a GET confirms it is gone (404), so an object
    created after the LIST is never lost. It only reads, and queues nothing (this thread also
    runs in a standby replica): the active replica's periodic resync reconciles the Farms
    within VIPFARM_RECONCILE_INTERVAL.
    """
    for kind, cache, listing in (("Node", _nodes, kube.list_nodes), ("FarmNode", _reports, kube.list_farmnodes),
                                 ("Farm", _farms, kube.list_farms)):
        live = {b["metadata"]["name"] for b in listing()}
        with _lock:
            missing = [n for n in cache if n not in live]
        for name in missing:
            if kube.exists(kind, name):
                continue
            log.info("event=cache_pruned kind=%s name=%s", kind, name)
            if kind == "Farm":
                _forget_farm(name)
            else:
                with _released:
                    cache.pop(name, None)
                    if kind == "FarmNode":
                        _reported_at.pop(name, None)
                    _released.notify_all()


# -- events ----------------------------------------------------------------------------------
def _event(body: dict, reason: str, message: str, type_: str = "Normal") -> None:
    try:
        _events.put_nowait((time.monotonic(), body, reason, message, type_))
    except queue.Full:
        log.warning("event=event_dropped reason=%s farm=%s (event queue full)", reason,
                    body["metadata"].get("name"))


def _post_events() -> None:
    while True:
        queued_at, body, reason, message, type_ = _events.get()
        # Status writes first: the agents act on them, events are for people.
        _queue.wait_idle(max(0.0, queued_at + EVENT_DELAY - time.monotonic()))
        try:
            kube.post_event(body, reason, message, type_)
        except kube.Standby:      # demoted meanwhile: the active replica tells the story
            log.info("event=event_dropped reason=%s farm=%s cause=standby", reason, body["metadata"].get("name"))


# -- deletion ----------------------------------------------------------------------------------
@kopf.on.delete(GROUP, VERSION, PLURAL)
def farm_deleted(body, meta, logger, **_):
    """Hold the finalizer until every member's agent has released the VIP and filter entries."""
    name = meta["name"]
    with _lock:
        known = (_farms.get(name) or {}).get("status") or {}
    members = sorted({m.get("node") for m in ((body.get("status") or {}).get("members") or [])
                      + (known.get("members") or [])})

    def unreleased() -> list[str]:     # under _lock
        return [n for n in members if not (_reports.get(n, {}).get(name) or {"released": True}).get("released")]

    # Agents usually release within a second or two: wait here (woken by farmnode_event when a
    # report's `released` changes) rather than have Kopf log a temporary failure (at ERROR)
    # and retry.
    with _released:
        _released.wait_for(lambda: not unreleased(), timeout=RELEASE_WAIT)
        pending = unreleased()
    waited = 0.0
    if meta.get("deletionTimestamp"):
        t = datetime.datetime.fromisoformat(meta["deletionTimestamp"].replace("Z", "+00:00"))
        waited = (datetime.datetime.now(datetime.timezone.utc) - t).total_seconds()
    if pending and waited < RELEASE_TIMEOUT:
        raise kopf.TemporaryError(f"waiting for agents to release Farm {name}: {', '.join(pending)}", delay=1)
    if pending:
        try:
            kube.post_event(body, "ReleaseTimeout", f"gave up waiting for {', '.join(pending)} after "
                                                    f"{RELEASE_TIMEOUT:.0f}s; their nodes may keep the VIP", "Warning")
        except kube.Standby:
            pass
    with _lock:
        _failures.pop(name, None)
    _requeue_conflicting(name)
    logger.info("event=farm_released farm=%s", name)
