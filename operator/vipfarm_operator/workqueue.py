"""A keyed work queue, as in client-go: each Farm name is queued at most once and processed
by at most one worker at a time, however many events ask for it.

Handlers only add names; workers always reconcile from the newest cached objects. Events
that arrive while a Farm is still queued (or within a delayed add's window) cost it no extra
reconcile, and a Node change fans out to all workers at once.
"""
from __future__ import annotations

import heapq
import itertools
import threading
from collections import deque
import time
from typing import Callable, Hashable


class WorkQueue:
    def __init__(self, clock: Callable[[], float] = time.monotonic):
        self._clock = clock
        self._cv = threading.Condition()
        self._ready: deque[Hashable] = deque()          # FIFO of keys ready now
        self._queued: set[Hashable] = set()       # keys in _ready
        self._processing: set[Hashable] = set()
        self._again: set[Hashable] = set()        # added while processing: requeue on done()
        self._delayed: list[tuple[float, int, Hashable]] = []   # (when, seq, key) heap
        self._seq = itertools.count()
        self._shutdown = False

    def add(self, key: Hashable, delay: float = 0.0) -> None:
        """Queue key now, or after delay seconds (an earlier add wins; duplicates merge)."""
        with self._cv:
            if self._shutdown:
                return
            if delay > 0:
                heapq.heappush(self._delayed, (self._clock() + delay, next(self._seq), key))
            else:
                self._enqueue(key)
            self._cv.notify_all()

    def get(self, timeout: float | None = None) -> Hashable | None:
        """The next key to process (the caller must call done(key)), or None on shutdown/timeout."""
        deadline = None if timeout is None else self._clock() + timeout
        with self._cv:
            while True:
                self._promote_due()
                if self._shutdown:
                    return None
                if self._ready:
                    key = self._ready.popleft()
                    self._queued.discard(key)
                    self._processing.add(key)
                    return key
                wait = self._delayed[0][0] - self._clock() if self._delayed else None
                if deadline is not None:
                    left = deadline - self._clock()
                    if left <= 0:
                        return None
                    wait = left if wait is None else min(wait, left)
                self._cv.wait(wait)

    def done(self, key: Hashable) -> None:
        with self._cv:
            self._processing.discard(key)
            if key in self._again:
                self._again.discard(key)
                self._enqueue(key)
            self._cv.notify_all()     # a worker for the requeued key, or wait_idle()

    def idle(self) -> bool:
        with self._cv:
            return not self._ready and not self._processing

    def wait_idle(self, timeout: float) -> bool:
        """Block until nothing is queued or processing (delayed keys do not count)."""
        deadline = self._clock() + timeout
        with self._cv:
            while self._ready or self._processing:
                left = deadline - self._clock()
                if left <= 0:
                    return False
                self._cv.wait(left)
            return True

    def __len__(self) -> int:
        with self._cv:
            return len(self._ready) + len(self._processing)

    def shutdown(self) -> None:
        with self._cv:
            self._shutdown = True
            self._cv.notify_all()

    def _promote_due(self) -> None:
        now = self._clock()
        while self._delayed and self._delayed[0][0] <= now:
            _, _, key = heapq.heappop(self._delayed)
            self._enqueue(key)

    def _enqueue(self, key: Hashable) -> None:
        """Make key ready once; if a worker has it, it comes back when that worker is done."""
        if key in self._processing:
            self._again.add(key)
        elif key not in self._queued:
            self._queued.add(key)
            self._ready.append(key)
