"""The operator's keyed work queue: one queued copy per key, one worker per key at a time."""
from __future__ import annotations

import threading
import time

from vipfarm_operator.workqueue import WorkQueue


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_a_key_added_many_times_is_processed_once():
    q = WorkQueue()
    for _ in range(5):
        q.add("web")
    q.add("mc")
    assert [q.get(timeout=0), q.get(timeout=0), q.get(timeout=0)] == ["web", "mc", None]


def test_a_key_added_while_processing_comes_back_after_done_not_before():
    q = WorkQueue()
    q.add("web")
    assert q.get(timeout=0) == "web"
    q.add("web")
    assert q.get(timeout=0) is None          # never two workers on one Farm
    q.done("web")
    assert q.get(timeout=0) == "web"
    q.done("web")
    assert q.get(timeout=0) is None


def test_delayed_adds_wait_and_merge_with_the_queued_copy():
    clock = FakeClock()
    q = WorkQueue(clock)
    q.add("web", delay=0.2)
    q.add("web", delay=0.2)
    assert q.get(timeout=0) is None
    clock.now += 0.25
    assert q.get(timeout=0) == "web"
    q.done("web")
    assert q.get(timeout=0) is None


def test_idle_means_nothing_queued_or_processing():
    q = WorkQueue()
    assert q.idle()
    q.add("web")
    assert not q.idle()
    key = q.get(timeout=0)
    assert not q.idle() and not q.wait_idle(0.01)
    threading.Timer(0.05, q.done, args=(key,)).start()
    assert q.wait_idle(5)


def test_workers_share_the_keys_and_shutdown_releases_them():
    q = WorkQueue()
    seen, lock = [], threading.Lock()

    def work():
        while (key := q.get()) is not None:
            with lock:
                seen.append(key)
            time.sleep(0.001)
            q.done(key)

    workers = [threading.Thread(target=work) for _ in range(4)]
    for w in workers:
        w.start()
    for i in range(200):
        q.add(f"farm-{i}")
    assert q.wait_idle(10)
    q.shutdown()
    for w in workers:
        w.join(5)
    assert sorted(seen) == sorted(f"farm-{i}" for i in range(200))
    assert not any(w.is_alive() for w in workers)
