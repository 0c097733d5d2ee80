"""Posts the agent's Kubernetes Events (vipfarm/farm_events.py builds them) from a thread of its own.

Nothing waits for it: submit() puts the Event on a bounded queue and returns (a full queue
drops the Event and says so), so the main loop, the report writes and the heartbeats never
wait for the API server. The thread applies the rate limit (EventLimiter, a per-(farm,
checker, reason) minimum interval), then creates each Event with bounded retries: ATTEMPTS
tries, RETRY_DELAYS apart, for errors worth retrying (no answer, 429, 5xx). Each try sends the
same name, so a create that succeeded but whose answer was lost comes back 409 and counts as
posted. An Event that cannot be posted is logged once (event=k8s_event_failed) and given up:
Events are for people, the FarmNode `checks` entry and the log line carry the same news.
"""
from __future__ import annotations

import datetime
import json
import logging
import queue
import threading
import time
from typing import Callable

from vipfarm.farm_events import EVENTS_NAMESPACE, Due, EventLimiter, FarmEvent, event_body

log = logging.getLogger("vipfarm.agent.events")
ATTEMPTS = 3
RETRY_DELAYS = (1.0, 2.0)
QUEUE_SIZE = 256


def _kv(value: str) -> str:
    value = " ".join(str(value).split()).replace('"', "'")
    return f'"{value}"' if (not value or " " in value) else value


def _error(e: Exception) -> str:
    """The HTTP status and the API server's message, or the exception (refused, timed out ...)."""
    status = getattr(e, "status", None)
    if not status:
        return f"{type(e).__name__}: {e}"[:300]
    try:
        message = json.loads(getattr(e, "body", "") or "{}").get("message", "")
    except (ValueError, TypeError, AttributeError):
        message = ""
    head = f"HTTP {status} {getattr(e, 'reason', '') or ''}".strip()
    return (f"{head}: {message}" if message else head)[:300]


def _retryable(e: Exception) -> bool:
    status = getattr(e, "status", None)
    return not status or status == 429 or status >= 500


class EventPoster:
    """create(namespace, body) makes one API call (EventsV1Api.create_namespaced_event)."""

    def __init__(self, node: str, create: Callable[[str, dict], object], limiter: EventLimiter | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 wall: Callable[[], datetime.datetime] = lambda: datetime.datetime.now(datetime.timezone.utc),
                 retry_delays: tuple[float, ...] = RETRY_DELAYS, queue_size: int = QUEUE_SIZE):
        self.node = node
        self._create = create
        self._limiter = limiter or EventLimiter()
        self._clock = clock
        self._wall = wall
        self._delays = retry_delays
        self._queue: queue.Queue = queue.Queue(maxsize=queue_size)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self.posted = 0
        self.failed = 0

    def submit(self, ev: FarmEvent) -> None:
        """Queue an occurrence and return at once (any thread)."""
        try:
            self._queue.put_nowait((ev, self._clock(), self._wall()))
        except queue.Full:
            log.warning("event=k8s_event_dropped node=%s farm=%s reason=%s cause=queue_full size=%d",
                        self.node, ev.farm, ev.reason, self._queue.maxsize)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="k8s-events", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Stop soon; held and queued Events are not posted (the log has them)."""
        self._stopping.set()
        try:
            self._queue.put_nowait(None)      # wake the thread
        except queue.Full:
            pass
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                item = self._queue.get(timeout=self._limiter.next_due(self._clock()))
            except queue.Empty:
                due = self._limiter.due(self._clock())
            else:
                if item is None:
                    continue
                ev, now, at = item
                due = self._limiter.offer(ev, now, at)
            for d in due:
                if self._stopping.is_set():
                    return
                self.post(d)

    def post(self, d: Due) -> bool:
        """Create one Event, with the bounded retries; False when it was given up."""
        body = event_body(d.ev, self.node, d.first, d.count, d.last)
        name = body["metadata"]["name"]
        for attempt in range(1, len(self._delays) + 2):
            try:
                self._create(EVENTS_NAMESPACE, body)
            except Exception as e:
                if getattr(e, "status", None) == 409:     # an earlier try of this same Event got through
                    break
                if attempt > len(self._delays) or not _retryable(e) or \
                        self._stopping.wait(self._delays[attempt - 1]):
                    self.failed += 1
                    log.warning("event=k8s_event_failed node=%s farm=%s reason=%s name=%s attempts=%d "
                                "error=%s action=given_up", self.node, d.ev.farm, d.ev.reason, name, attempt,
                                _kv(_error(e)))
                    return False
                continue
            break
        self.posted += 1
        log.info("event=k8s_event_posted node=%s farm=%s reason=%s type=%s count=%d name=%s/%s", self.node,
                 d.ev.farm, d.ev.reason, d.ev.type, d.count, EVENTS_NAMESPACE, name)
        return True
