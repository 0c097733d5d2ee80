"""A standby operator replica writes nothing: the peering signal (replica.py) read from Kopf's
own toggles, and the gate every write goes through (kube.py), without an API server.

The API is a fake CustomObjectsApi/CoreV1Api that records calls; Kopf's orchestrator and
peering processor are the real ones (kopf 1.45.2), driven with hand-made peering events.
"""
from __future__ import annotations

import asyncio
import datetime
import threading

import pytest

from vipfarm_operator import handlers, kube, replica
from vipfarm_operator.workqueue import WorkQueue


class FakeApi:
    """Records every write; `fail` makes status patches fail as a restarting API would."""

    def __init__(self):
        self.writes: list[tuple] = []
        self.fail = False

    def patch_cluster_custom_object_status(self, group, version, plural, name, body, **_):
        self.writes.append(("patch", plural, name))
        if self.fail:
            raise RuntimeError("connection refused")

    def create_namespaced_event(self, namespace, ev):
        self.writes.append(("create", "events", ev.reason))


def farm(name="web"):
    return {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm",
            "metadata": {"name": name, "generation": 1, "creationTimestamp": "2026-11-25T00:00:00Z"},
            "spec": {"virtualIPs": ["203.0.113.10"], "nodeSelector": {"vipfarm.io/member": "true"},
                     "rules": [{"protocol": "TCP", "ports": "80"}]},
            "status": {}}


def node(name):
    return {"metadata": {"name": name, "labels": {"vipfarm.io/member": "true"}}, "spec": {},
            "status": {"conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.fixture
def api(monkeypatch):
    fake = FakeApi()
    monkeypatch.setattr(kube, "custom", lambda: fake)
    monkeypatch.setattr(kube, "core", lambda: fake)
    for cache in ("_nodes", "_farms", "_reports", "_farm_seen", "_failures", "_interned"):
        monkeypatch.setattr(handlers, cache, {})
    monkeypatch.setattr(handlers, "_queue", WorkQueue())
    return fake


class Peering:
    """This replica's view of peering: a switch the tests flip (the Kopf-driven signal is
    tested on its own below)."""

    def __init__(self, active: bool):
        self.is_active = active

    def __call__(self) -> bool:
        return self.is_active


def run_workers_until_idle(q: WorkQueue, timeout: float = 10.0) -> None:
    """One worker thread until nothing is queued, processing or delayed, then stop it."""
    t = threading.Thread(target=handlers._work, daemon=True)
    t.start()
    with q._cv:
        ok = q._cv.wait_for(lambda: not (q._ready or q._processing or q._delayed), timeout)
    q.shutdown()
    t.join(timeout)
    assert ok, f"the work queue did not drain in {timeout}s: delayed={q._delayed} ready={list(q._ready)}"


def test_a_standby_replica_reconciles_nothing_and_writes_nothing(api, monkeypatch):
    monkeypatch.setattr(replica, "active", Peering(False))
    handlers.node_event(name="n1", body=node("n1"), type=None)
    handlers.farm_event(name="web", body=farm(), type=None)
    run_workers_until_idle(handlers._queue)
    assert api.writes == []


def test_a_replica_demoted_while_a_write_is_failing_stops_retrying_it(api, monkeypatch):
    peering = Peering(True)
    monkeypatch.setattr(replica, "active", peering)
    monkeypatch.setattr(handlers, "RETRY_MAX", 0.01)
    handlers.node_event(name="n1", body=node("n1"), type=None)
    handlers.farm_event(name="web", body=farm(), type=None)
    api.fail = True
    q = handlers._queue
    t = threading.Thread(target=handlers._work, daemon=True)
    t.start()
    with q._cv:       # the active replica retries the failing write (the API is restarting)
        assert q._cv.wait_for(lambda: len(api.writes) >= 3, 10), api.writes
        peering.is_active = False          # a peer with a higher priority took over
        tried = len(api.writes)
    with q._cv:
        drained = q._cv.wait_for(lambda: not (q._ready or q._processing or q._delayed), 10)
    q.shutdown()
    t.join(10)
    assert drained, f"still retrying after the demotion: {q._delayed}"
    assert len(api.writes) <= tried + 1, api.writes[tried:]     # at most the one in flight
    assert "web" not in handlers._failures


def test_the_gate_is_read_at_the_moment_of_the_write_not_only_when_queued(api, monkeypatch):
    """Active when the reconcile starts, demoted before its status patch is sent: not sent."""
    answers = iter([True])
    monkeypatch.setattr(replica, "active", lambda: next(answers, False))
    handlers.node_event(name="n1", body=node("n1"), type=None)
    handlers.farm_event(name="web", body=farm(), type=None)
    with pytest.raises(kube.Standby, match="Farm web"):
        handlers.reconcile("web")
    assert api.writes == []


def test_a_standby_posts_no_event(api, monkeypatch):
    monkeypatch.setattr(replica, "active", Peering(False))
    with pytest.raises(kube.Standby, match="Event Rebalanced about Farm web"):
        kube.post_event(farm(), "Rebalanced", "buckets moved")
    monkeypatch.setattr(replica, "active", Peering(True))
    kube.post_event(farm(), "Rebalanced", "buckets moved")
    assert api.writes == [("create", "events", "Rebalanced")]


def test_becoming_active_queues_every_farm_of_kopfs_new_listing(api):
    handlers.farm_event(name="web", body=farm(), type=None)
    handlers.farm_event(name="db", body=farm("db"), type=None)
    while (k := handlers._queue.get(timeout=0)) is not None:
        handlers._queue.done(k)
    # Paused, then active again: Kopf lists the Farms again, unchanged since last seen.
    handlers.on_replica_change(True)
    handlers.farm_event(name="web", body=farm(), type=None)
    handlers.farm_event(name="db", body=farm("db"), type=None)
    got = sorted(k for k in iter(lambda: handlers._queue.get(timeout=0), None))
    assert got == ["db", "web"]


# -- the signal itself, from Kopf's real orchestrator and peering processor ----------------
def _peering_event(name: str, peers: dict[str, int]) -> dict:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat()
    return {"type": "MODIFIED", "object": {
        "metadata": {"name": name},
        "status": {ident: {"priority": prio, "lifetime": 60, "lastseen": now} for ident, prio in peers.items()}}}


def test_active_follows_kopfs_pause_toggles_through_the_installed_hooks(monkeypatch):
    """The wrapped functions are the ones Kopf calls; active() is False before peering decides,
    False while a higher-priority peer lives, True when this replica is the highest."""
    from kopf._cogs.aiokits import aiotoggles
    from kopf._cogs.configs import configuration
    from kopf._cogs.structs import references
    from kopf._core.engines import peering
    from kopf._core.reactor import orchestration

    monkeypatch.setattr(orchestration, "orchestrator", orchestration.orchestrator)
    monkeypatch.setattr(peering, "process_peering_event", peering.process_peering_event)
    monkeypatch.setattr(replica, "_installed", False)
    monkeypatch.setattr(replica, "_paused", None)
    monkeypatch.setattr(replica, "_peering", [])
    seen: list[bool] = []
    monkeypatch.setattr(replica, "_listeners", [seen.append])
    replica.install()
    assert orchestration.orchestrator.__module__ == replica.__name__
    assert peering.process_peering_event.__module__ == replica.__name__

    settings = configuration.OperatorSettings()
    settings.peering.name, settings.peering.priority, settings.peering.mandatory = "vipfarm", 100, True
    resource = references.Resource("kopf.dev", "v1", "clusterkopfpeerings", namespaced=False)

    async def scenario() -> list[bool]:
        paused = aiotoggles.ToggleSet(any)
        orch = asyncio.create_task(orchestration.orchestrator(
            processor=None, settings=settings, identity="me", insights=references.Insights(),
            operator_paused=paused))
        await asyncio.sleep(0)
        states = [replica.active()]                 # the set is empty (off): peering not started
        # As Kopf's spawn_missing_peerings does: the toggle starts "on" (peering mandatory).
        conflicts = await paused.make_toggle(True, name="vipfarm@None")
        pressure = asyncio.Event()
        pressure.set()                              # no sleeping until the peers expire

        async def event(peers):
            await peering.process_peering_event(
                raw_event=_peering_event("vipfarm", peers), namespace=None, resource=resource,
                identity="me", settings=settings, autoclean=False, stream_pressure=pressure,
                conflicts_found=conflicts)
            for _ in range(3):
                await asyncio.sleep(0)             # let the follower log and publish
            states.append(replica.active())

        await event({"me": 100, "other": 200})      # a higher-priority peer: standby
        await event({"me": 100, "other": 50})       # only a lower one: active
        await event({"me": 100, "other": 200})      # the higher one is back: standby again
        orch.cancel()
        await asyncio.gather(orch, return_exceptions=True)
        return states

    assert asyncio.run(scenario()) == [False, False, True, False]
    assert seen == [False, True, False]


def test_install_refuses_a_kopf_whose_hooks_changed(monkeypatch):
    from kopf._core.reactor import orchestration

    async def orchestrator(*, processor, settings):   # no operator_paused any more
        pass

    monkeypatch.setattr(orchestration, "orchestrator", orchestrator)
    monkeypatch.setattr(replica, "_installed", False)
    with pytest.raises(replica.KopfIncompatible, match="operator_paused.*standby must never write"):
        replica.install()
