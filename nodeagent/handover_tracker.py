"""The agent's side of handover (vipfarm/handover.py holds the rules): per farm, the buckets
this node gave up and still serves flows in (its drain, from the socket table) and the ones it
took while their old owner may still drain them (pending), turned into the filter's moving
bits at each programming. Both agents (standalone.py, cluster.py) use one tracker:

    census = tracker.census(farms) if tracker.census_wanted(first) else None
    moving = tracker.plan(farms, owned, peers_handing_over, before, census)
    ... program (owned, moving) in one flip ...
    tracker.commit(released_any)        # only after the flip succeeded

commit() logs the handover's start, progress, end and cuts, and tells the heartbeat engine
whether this node still hands flows over (ROW_HANDING_OVER). While a handover runs the agent
calls plan() again every CENSUS_INTERVAL_S with a fresh census (`active()`).
"""
from __future__ import annotations

import logging
import time
from typing import Mapping

from vipfarm.handover import Drain, HandoverTotals, Pending, add_step, bucket_runs, drain_begin, drain_step, moving_buckets, pending_step
from vipfarm.spec import Farm

from .flow_census import count_flows, tcp_sockets

log = logging.getLogger("vipfarm.agent")
CENSUS_INTERVAL_S = 0.25      # while a handover runs: how often the socket table is counted again


class HandoverTracker:
    def __init__(self, node: str, engine, udp=None):
        self.node = node
        self.engine = engine
        self.udp = udp                   # UdpHandover: its own fresh UDP flows count like sockets
        self.drains: dict[str, Drain] = {}
        self.pendings: dict[str, Pending] = {}
        self.census_due = False
        self._planned: dict[str, tuple[Drain, Pending]] = {}
        # per farm, replaced whole at each commit (read by observe.py from another thread)
        self.totals: dict[str, HandoverTotals] = {}

    def active(self) -> bool:
        return any(d.since for d in self.drains.values()) or any(p.until for p in self.pendings.values())

    def census_wanted(self, first: bool) -> bool:
        """A census at the first programming (a restarted agent rebuilds its drain from the
        socket table), after a release (the presumed drains), and on each handover tick."""
        return first or self.census_due

    def census(self, farms: list[Farm]) -> dict[str, dict[int, int]]:
        """Per farm, this node's flows per bucket, the buckets with none left out (one read of
        the socket table for every farm, plus its own fresh UDP flows, udp_handover.py). Owned buckets are counted too: which of them are
        still owned after the programming at hand is for drain_step to say."""
        self.census_due = False
        try:
            sockets = tcp_sockets()
        except OSError as e:
            log.error("event=flow_census_failed node=%s error=%r action=keep_draining", self.node, str(e))
            return {}
        out = {f.name: {b: n for b, n in count_flows(f, sockets, range(f.buckets)).items() if n} for f in farms}
        if self.udp is not None:
            for name, counts in self.udp.census(farms).items():
                merged = out.setdefault(name, {})
                for b, n in counts.items():
                    merged[b] = merged.get(b, 0) + n
        return out

    def plan(self, farms: list[Farm], owned: Mapping[str, frozenset[int]], peers_handing_over: Mapping[str, bool],
             before: Mapping[str, frozenset[int]] | None, census: Mapping[str, Mapping[int, int]] | None,
             now_ns: int | None = None) -> dict[str, frozenset[int]]:
        """Each farm's moving buckets for a programming of `owned`; `before` is what the filter
        holds now (None before this agent's first programming)."""
        now_ns = time.monotonic_ns() if now_ns is None else now_ns
        self._planned = {}
        for farm in farms:
            prev = before.get(farm.name) if before is not None else None
            self._planned[farm.name] = self._step(farm, owned[farm.name], peers_handing_over.get(farm.name, False),
                                                  now_ns, prev, census.get(farm.name, {}) if census is not None
                                                  else None)
        return {name: moving_buckets(*step) for name, step in self._planned.items()}

    def commit(self, released_any: bool) -> None:
        """The planned state is now the filter's. A release gets its census at once."""
        for name, (drain, pending) in self._planned.items():
            self._log(name, self.drains.get(name, Drain()), drain)
            totals = add_step(self.totals.get(name, HandoverTotals()), self.drains.get(name, Drain()), drain)
            if totals != self.totals.get(name):
                self.totals = {**self.totals, name: totals}
            self.drains[name], self.pendings[name] = drain, pending
            self.engine.handing_over(name, bool(drain.since))
        for name in set(self.drains) - set(self._planned):      # a farm no longer served
            self.engine.handing_over(name, False)
            del self.drains[name]
            self.pendings.pop(name, None)
        self._planned = {}
        if released_any:
            self.census_due = True

    def flows_left(self, farm: str) -> int:
        return self.drains.get(farm, Drain()).flows_left

    def _step(self, farm: Farm, owned: frozenset[int], peers_handing_over: bool, now_ns: int,
              before: frozenset[int] | None, census: Mapping[int, int] | None) -> tuple[Drain, Pending]:
        timeout_ns = farm.handover.drain_timeout_seconds * 1_000_000_000
        guard_ns = farm.heartbeat.timeout_ms * 1_000_000
        drain = self.drains.get(farm.name, Drain())
        if before is not None:
            drain = drain_begin(drain, before - owned, now_ns, timeout_ns)
        if census is not None:
            drain = drain_step(drain, owned, census, now_ns, timeout_ns)
        if not timeout_ns:
            return drain, Pending()              # handover off: a plain rehash
        # A starting agent cannot tell what it acquired since its predecessor's last flip: every
        # bucket it serves counts as just acquired (pending while a peer hands over).
        pending = pending_step(self.pendings.get(farm.name, Pending()), before or frozenset(), owned, now_ns,
                               guard_ns, peers_handing_over)
        return drain, pending

    def _log(self, name: str, old: Drain, drain: Drain) -> None:
        if drain.cut:
            log.warning("event=handover_cut node=%s farm=%s buckets=%d flows_cut=%d reason=drain_timeout",
                        self.node, name, len(drain.cut), sum(drain.cut.values()))
        if drain.since and not old.since:
            log.info("event=handover_started node=%s farm=%s buckets=%d runs=%s", self.node, name,
                     len(drain.since), runs_text(drain.buckets))
        elif old.since and not drain.since:
            log.info("event=handover_finished node=%s farm=%s", self.node, name)
        if drain.flows_left != old.flows_left and drain.since:
            log.info("event=handover_progress node=%s farm=%s buckets=%d flows_left=%d", self.node, name,
                     len(drain.since), drain.flows_left)


def runs_text(buckets: frozenset[int], limit: int = 8) -> str:
    runs = bucket_runs(buckets)
    text = ",".join(f"{a}" if n == 1 else f"{a}-{a + n - 1}" for a, n in runs[:limit])
    return text + (f",+{len(runs) - limit}" if len(runs) > limit else "")
