"""API failures as episodes: retry with bounded backoff, say so once when it starts, once when it ends.

Pure code, the caller passes the clock. One episode per key (an object plus what is done to
it, e.g. "node/n1 read"): the first failure opens it and is the one to log, with the object
and the reason; retries wait FIRST, 2*FIRST, 4*FIRST ... up to CAP seconds and are not
logged; the first success closes it and is logged once more (how many attempts failed and
for how long). A retry loop therefore costs two log lines per outage, not one per attempt.
"""
from __future__ import annotations

from dataclasses import dataclass

FIRST = 1.0
CAP = 30.0


@dataclass
class Episode:
    reason: str          # the first failure's reason
    since: float
    failures: int
    retry_at: float


@dataclass(frozen=True)
class Failure:
    started: bool        # the first failure of an episode: log it
    retry_in: float
    failures: int


@dataclass(frozen=True)
class Recovery:
    failures: int
    lasted: float
    reason: str          # the reason the episode started with


def delay_after(failures: int, first: float = FIRST, cap: float = CAP) -> float:
    """Seconds to wait after the n-th consecutive failure (n >= 1)."""
    return min(cap, first * 2.0 ** max(0, failures - 1))


class Backoff:
    def __init__(self, first: float = FIRST, cap: float = CAP):
        self.first = first
        self.cap = cap
        self.episodes: dict[str, Episode] = {}

    def failed(self, key: str, reason: str, now: float) -> Failure:
        ep = self.episodes.get(key)
        started = ep is None
        if ep is None:
            ep = self.episodes[key] = Episode(reason, now, 0, now)
        ep.failures += 1
        wait = delay_after(ep.failures, self.first, self.cap)
        ep.retry_at = now + wait
        return Failure(started, wait, ep.failures)

    def succeeded(self, key: str, now: float) -> Recovery | None:
        """Close the episode of `key`; the Recovery to log, or None if it was not failing."""
        ep = self.episodes.pop(key, None)
        if ep is None:
            return None
        return Recovery(ep.failures, now - ep.since, ep.reason)

    def failing(self, key: str) -> bool:
        return key in self.episodes

    def wait(self, key: str, now: float) -> float:
        """Seconds until `key` may be tried again (0: now, or it is not failing)."""
        ep = self.episodes.get(key)
        return max(0.0, ep.retry_at - now) if ep else 0.0
