"""What the operator's watch handlers queue, and the stale-cache pruning, without an API server.

The handlers are plain functions under Kopf's decorators; the API calls (operator kube.py)
are replaced by fakes here. The real-server behaviour is in tests/cluster.
"""
from __future__ import annotations

import pytest

from vipfarm_operator import handlers, kube
from vipfarm_operator.workqueue import WorkQueue


def node(name, ready=True, labels=None):
    return {"metadata": {"name": name, "labels": labels or {"vipfarm.io/member": "true"}},
            "spec": {}, "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def farm(name, vips=("203.0.113.10",), generation=1, selector=None):
    return {"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm",
            "metadata": {"name": name, "generation": generation, "creationTimestamp": "2026-11-25T00:00:00Z"},
            "spec": {"virtualIPs": list(vips), "nodeSelector": selector or {"vipfarm.io/member": "true"}},
            "status": {"observedGeneration": generation}}


def drain(q: WorkQueue) -> list[str]:
    out = []
    while (key := q.get(timeout=0)) is not None:
        out.append(key)
        q.done(key)
    return sorted(out)


@pytest.fixture(autouse=True)
def fresh_state(monkeypatch):
    for cache in ("_nodes", "_farms", "_reports", "_farm_seen", "_failures", "_interned"):
        monkeypatch.setattr(handlers, cache, {})
    monkeypatch.setattr(handlers, "_queue", WorkQueue())
    monkeypatch.setattr(handlers, "REPORT_COALESCE", 0.0)
    yield


def test_a_node_change_queues_only_the_farms_that_select_it():
    handlers.farm_event(name="web", body=farm("web"), type=None)
    handlers.farm_event(name="db", body=farm("db", vips=("203.0.113.11",), selector={"role": "db"}), type=None)
    handlers.node_event(name="n1", body=node("n1"), type=None)
    drain(handlers._queue)
    handlers.node_event(name="n1", body=node("n1", ready=False), type="MODIFIED")
    assert drain(handlers._queue) == ["web"]
    handlers.node_event(name="n1", body=node("n1", ready=False), type="MODIFIED")   # nothing new
    assert drain(handlers._queue) == []


def test_a_label_change_queues_the_farms_the_node_leaves_and_joins():
    handlers.farm_event(name="web", body=farm("web"), type=None)
    handlers.farm_event(name="db", body=farm("db", vips=("203.0.113.11",), selector={"role": "db"}), type=None)
    handlers.node_event(name="n1", body=node("n1"), type=None)
    drain(handlers._queue)
    handlers.node_event(name="n1", body=node("n1", labels={"role": "db"}), type="MODIFIED")
    assert drain(handlers._queue) == ["db", "web"]


def test_our_own_status_writes_do_not_requeue_a_farm_but_a_spec_change_does():
    handlers.farm_event(name="web", body=farm("web"), type=None)
    assert drain(handlers._queue) == ["web"]
    written = farm("web")
    written["status"].update(phase="Ready", epoch=1)
    handlers.farm_event(name="web", body=written, type="MODIFIED")
    assert drain(handlers._queue) == []
    handlers.farm_event(name="web", body=farm("web", generation=2), type="MODIFIED")
    assert drain(handlers._queue) == ["web"]


def test_a_farm_sharing_a_vip_is_requeued_when_the_other_comes_or_goes():
    handlers.farm_event(name="web", body=farm("web"), type=None)
    drain(handlers._queue)
    handlers.farm_event(name="copy", body=farm("copy"), type="ADDED")
    assert drain(handlers._queue) == ["copy", "web"]
    handlers.farm_event(name="copy", body=farm("copy"), type="DELETED")
    assert drain(handlers._queue) == ["web"]


def test_farmnode_reports_queue_only_farms_whose_decision_fields_changed():
    report = {"status": {"farms": {"web": {"ready": True, "appliedEpoch": 1}, "db": {"ready": True}}}}
    handlers.farmnode_event(name="n1", body=report, type=None)
    assert drain(handlers._queue) == ["db", "web"]
    report["status"]["farms"]["web"]["appliedEpoch"] = 2          # after every rebalance
    report["status"]["reportedAt"] = "2026-11-25T00:01:00Z"      # every refresh
    handlers.farmnode_event(name="n1", body=report, type="MODIFIED")
    assert drain(handlers._queue) == []
    report["status"]["farms"]["db"] = {"ready": False, "reason": "DataplaneError"}
    handlers.farmnode_event(name="n1", body=report, type="MODIFIED")
    assert drain(handlers._queue) == ["db"]
    handlers.farmnode_event(name="n1", body=report, type="DELETED")
    assert drain(handlers._queue) == ["db", "web"] and "n1" not in handlers._reports


def test_prune_drops_only_what_a_get_confirms_is_gone_and_queues_nothing(monkeypatch):
    handlers.farm_event(name="web", body=farm("web"), type=None)
    for n in ("n1", "n2", "n3"):
        handlers.node_event(name=n, body=node(n), type=None)
    drain(handlers._queue)
    # n2 was deleted while this replica was paused; n3 was created after the LIST was taken.
    monkeypatch.setattr(kube, "list_nodes", lambda: [node("n1")])
    monkeypatch.setattr(kube, "list_farmnodes", lambda: [])
    monkeypatch.setattr(kube, "list_farms", lambda: [farm("web")])
    monkeypatch.setattr(kube, "exists", lambda kind, name: (kind, name) == ("Node", "n3"))
    handlers.prune_stale()
    assert sorted(handlers._nodes) == ["n1", "n3"]
    assert drain(handlers._queue) == []      # it may run in a standby: the resync timer reconciles


def test_a_status_we_wrote_is_kept_until_an_event_brings_a_newer_epoch():
    handlers.farm_event(name="web", body=farm("web"), type=None)
    ours = {"epoch": 5, "phase": "Ready"}
    handlers._remember_written("web", ours)
    lagging = farm("web")
    lagging["status"].update(epoch=4, phase="Degraded")
    handlers.farm_event(name="web", body=lagging, type="MODIFIED")
    assert handlers._farms["web"]["status"] == ours
    newer = farm("web")
    newer["status"].update(epoch=6, phase="Degraded")
    handlers.farm_event(name="web", body=newer, type="MODIFIED")
    assert handlers._farms["web"]["status"]["epoch"] == 6 and not handlers._farms["web"]["ours"]


def test_identical_reports_share_one_object():
    same = {"ready": True, "dataplaneMode": "native", "appliedEpoch": 1}
    handlers.farmnode_event(name="n1", body={"status": {"farms": {"a": dict(same), "b": dict(same)}}}, type=None)
    handlers.farmnode_event(name="n2", body={"status": {"farms": {"a": dict(same, appliedEpoch=2)}}}, type=None)
    assert handlers._reports["n1"]["a"] is handlers._reports["n1"]["b"] is handlers._reports["n2"]["a"]


def test_a_status_write_racing_a_lagging_watch_event_is_not_lost(monkeypatch):
    """The watch handler's read-modify-write of a Farm and a worker's remembered write are
    atomic with respect to each other: the handler is held in the middle of its update
    while the worker records epoch 5; the lagging epoch-4 event must not overwrite it."""
    import threading
    handlers.farm_event(name="web", body=farm("web"), type=None)
    handlers._remember_written("web", {"epoch": 3, "phase": "Ready"})
    inside, go = threading.Event(), threading.Event()
    real_epoch = handlers._epoch

    def held_epoch(status):
        if not inside.is_set():
            inside.set()
            assert go.wait(10), "the test never released the watch handler"
        return real_epoch(status)

    monkeypatch.setattr(handlers, "_epoch", held_epoch)
    lagging = farm("web")
    lagging["status"].update(epoch=4, phase="Degraded")
    handler = threading.Thread(target=handlers.farm_event, kwargs=dict(name="web", body=lagging, type="MODIFIED"))
    handler.start()
    assert inside.wait(10)
    worker = threading.Thread(target=handlers._remember_written, args=("web", {"epoch": 5, "phase": "Ready"}))
    worker.start()
    worker.join(0.5)     # unlocked, it is done at once; locked, it waits for the handler
    go.set()
    handler.join(10)
    worker.join(10)
    assert handlers._farms["web"]["status"] == {"epoch": 5, "phase": "Ready"}


def test_the_finalizer_is_woken_by_the_release_report_and_never_polls(monkeypatch):
    import threading

    def no_sleep(_):
        raise AssertionError("farm_deleted polled with time.sleep instead of waiting on the release")

    monkeypatch.setattr(handlers.time, "sleep", no_sleep)
    monkeypatch.setattr(handlers, "RELEASE_WAIT", 30.0)
    body = farm("web")
    body["status"]["members"] = [{"node": "n1"}, {"node": "n2"}]
    handlers.farm_event(name="web", body=body, type=None)
    for n in ("n1", "n2"):
        handlers.farmnode_event(name=n, body={"status": {"farms": {"web": {"ready": False, "released": False}}}},
                                type=None)
    outcome: list = []

    def delete():
        try:
            handlers.farm_deleted(body=body, meta=body["metadata"], logger=handlers.log)
            outcome.append("released")
        except BaseException as e:      # noqa: BLE001 (reported below)
            outcome.append(e)

    t = threading.Thread(target=delete)
    t.start()
    handlers.farmnode_event(name="n1", body={"status": {"farms": {"web": {"ready": False, "released": True}}}},
                            type="MODIFIED")
    handlers.farmnode_event(name="n2", body={"status": {"farms": {}}}, type="MODIFIED")   # entry dropped
    t.join(10)
    assert not t.is_alive(), "farm_deleted still waiting 10 s after both agents released"
    assert outcome == ["released"], outcome
