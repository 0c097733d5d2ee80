"""The agent's side of UDP handover (the rules: vipfarm/udp_flows.py): one object per agent,
used by the main thread around each flip and by the heartbeat thread for the flow lists.

Main thread, at each programming (both agents, standalone.py and cluster.py):

    holds = udp.before_flip(farms, before, owned, moving)   # own flows written, holds set
    ... program (owned, moving) in one flip ...
    udp.after_flip(farms, holds)                            # ask the peers for their lists

  - a flip that gives buckets of a UDP farm away first reads connection tracking
    (nodeagent/conntrack.py) and writes the flows this node served in them within
    udpIdleSeconds into the filter's UDP table as its own, so from the flip on it keeps them;
  - a flip that takes buckets while they move (the old owner may keep flows in them) holds new
    UDP flows in them until every peer's list is in (HeartbeatEngine.want_udp_lists), so no
    packet of a flow the old owner keeps is taken here meanwhile.

The handover tracker's census (handover_tracker.py) adds census() to its socket count: a
bucket stays in this node's drain while any of its own UDP flows there is fresh. census()
also deletes stale entries.

Heartbeat thread (UdpFlowPort, udp_list_exchange.py): own_list, take_list, end_hold, forget.
Map writes go through NodeDataplanes.with_farm_tables, under the interface's slot lock.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Mapping

from vipfarm.spec import Farm
from vipfarm.udp_flows import UdpFlow, UdpRecord, encode_list, fresh, idle_ns, udp_bucket, udp_handover_on

from .conntrack import ConntrackError, ensure_udp_tracking, remove_udp_tracking, udp_flows

log = logging.getLogger("vipfarm.agent")
MS = 1_000_000
S = 1_000_000_000


def hold_ns(farm: Farm) -> int:
    """How long a new owner waits for its peers' lists at most: two heartbeat timeouts and an
    interval (the ask is repeated every interval), so one lost datagram costs no stickiness."""
    return (2 * farm.heartbeat.timeout_ms + farm.heartbeat.interval_ms) * MS


class UdpHandover:
    def __init__(self, node: str, dataplanes, clock=time.monotonic_ns,
                 read_flows=udp_flows, ensure_tracking=ensure_udp_tracking, remove_tracking=remove_udp_tracking):
        self.node = node
        self.dataplanes = dataplanes
        self.clock = clock
        self._read_flows = read_flows
        self._ensure_tracking = ensure_tracking
        self._remove_tracking = remove_tracking
        self._lock = threading.Lock()
        self.farms: dict[str, Farm] = {}                      # the UDP farms (udp_handover_on)
        self.mine: dict[str, set[UdpFlow]] = {}               # farm -> flows written as this node's
        self.theirs: dict[str, dict[str, set[UdpFlow]]] = {}  # farm -> sender -> flows written as theirs
        self.hold_until: dict[str, int] = {}                  # farm -> the hold this node put (0: none)
        self.tracking = False
        self.unavailable = ""                                 # why conntrack cannot be used ("" = it can)
        self._configured: set[str] = set()                    # farms whose filter config this object wrote

    # -- main thread -----------------------------------------------------------------------
    def configure(self, farms: list[Farm]) -> None:
        """The farms this agent serves now; turns connection tracking on while one of them
        hands UDP flows over, off when none does."""
        udp = {f.name: f for f in farms if udp_handover_on(f)}
        with self._lock:
            for name in set(self.farms) - set(udp):
                self.mine.pop(name, None)
                self.theirs.pop(name, None)
                self.hold_until.pop(name, None)
            self.farms = udp
        if udp and not self.tracking:
            try:
                self._ensure_tracking()
                self.tracking, self.unavailable = True, ""
                log.info("event=udp_tracking_on node=%s farms=%s", self.node, ",".join(sorted(udp)))
            except ConntrackError as e:
                if self.unavailable != str(e):
                    log.error("event=udp_handover_unavailable node=%s farms=%s error=%r action=udp_flows_rehashed",
                              self.node, ",".join(sorted(udp)), str(e))
                self.unavailable = str(e)
        elif not udp and self.tracking:
            self.stop()

    def stop(self) -> None:
        if self.tracking:
            self._remove_tracking()
            self.tracking = False
            log.info("event=udp_tracking_off node=%s", self.node)

    def before_flip(self, farms: list[Farm], before: Mapping[str, frozenset[int]] | None,
                    owned: Mapping[str, frozenset[int]], moving: Mapping[str, frozenset[int]]) -> dict[str, int]:
        """Before the flip to (owned, moving): this node's own flows in the buckets it gives
        away are written as its own; returns {farm: hold deadline} for the farms in which it
        takes buckets that move (the hold is written here when the farm has a slot already,
        else by after_flip)."""
        self.configure(farms)
        now = self.clock()
        holds: dict[str, int] = {}
        for farm in farms:
            if farm.name not in self.farms:
                if farm.name in self._configured:          # UDP handover turned off: the filter forgets it
                    self._configured.discard(farm.name)
                    self.dataplanes.with_farm_tables(farm.name, lambda t, slot: t.write_udp_config(slot, 0, 0))
                continue
            prev = before.get(farm.name, frozenset()) if before is not None else None
            released = (prev or frozenset()) - owned[farm.name]
            acquired = owned[farm.name] - (prev or frozenset()) if prev is not None else owned[farm.name]
            if released and self.tracking:
                self._keep_own_flows(farm, released, now)
            if acquired & moving.get(farm.name, frozenset()):
                holds[farm.name] = now + hold_ns(farm)
            with self._lock:
                if farm.name in holds:
                    self.hold_until[farm.name] = holds[farm.name]
                hold = self.hold_until.get(farm.name, 0)
            self._write_config(farm, hold)
        return holds

    def after_flip(self, farms: list[Farm], holds: Mapping[str, int], engine) -> None:
        """After the flip: the configuration of farms that got their slot with it, and the asks."""
        for farm in farms:
            if farm.name in self.farms:
                with self._lock:
                    hold = self.hold_until.get(farm.name, 0)
                self._write_config(farm, hold)
        for name, until in holds.items():
            log.info("event=udp_hold node=%s farm=%s hold_ms=%d action=ask_peers_for_flow_lists", self.node, name,
                     (until - self.clock()) // MS)
            engine.want_udp_lists(name, until)

    def census(self, farms: list[Farm]) -> dict[str, dict[int, int]]:
        """Per UDP farm, {bucket: this node's fresh own flows}; stale entries are deleted."""
        now = self.clock()
        out: dict[str, dict[int, int]] = {}
        for farm in farms:
            if farm.name not in self.farms:
                continue
            idle = idle_ns(farm)
            found, records = self.dataplanes.with_farm_tables(farm.name, lambda t, slot: t.udp_records(slot))
            if not found:
                continue
            stale = [r.flow for r in records if not fresh(r, now, idle)]
            if stale:
                self.dataplanes.with_farm_tables(farm.name, lambda t, slot: t.delete_udp_flows(slot, stale))
                gone = set(stale)
                with self._lock:
                    self.mine.get(farm.name, set()).difference_update(gone)
                    for flows in self.theirs.get(farm.name, {}).values():
                        flows.difference_update(gone)
            counts: dict[int, int] = {}
            for r in records:
                if r.mine and fresh(r, now, idle):
                    counts[r.bucket] = counts.get(r.bucket, 0) + 1
            out[farm.name] = counts
        return out

    # -- heartbeat thread (UdpFlowPort) -----------------------------------------------------
    def own_list(self, farm: str) -> bytes:
        f = self.farms.get(farm)
        if f is None:
            return b""
        now = self.clock()
        found, records = self.dataplanes.with_farm_tables(farm, lambda t, slot: t.udp_records(slot))
        if not found:
            return b""
        return encode_list([r for r in records if r.mine and fresh(r, now, idle_ns(f))], now)

    def take_list(self, farm: str, sender: str, flows: list[tuple[UdpFlow, int]]) -> None:
        """`sender`'s list replaces what it said before: its flows are written as someone else's
        (never over this node's own), the ones it no longer keeps are deleted."""
        f = self.farms.get(farm)
        if f is None:
            return
        now = self.clock()
        with self._lock:
            mine = set(self.mine.get(farm, set()))
            by_sender = self.theirs.setdefault(farm, {})
            old = by_sender.get(sender, set())
            others = set().union(*(v for k, v in by_sender.items() if k != sender)) if by_sender else set()
        records = [UdpRecord(flow, now - age_ms * MS, False, udp_bucket(f, flow))
                   for flow, age_ms in flows if flow not in mine]
        new = {r.flow for r in records}
        gone = old - new - others - mine
        self.dataplanes.with_farm_tables(farm, lambda t, slot: (t.put_udp_records(slot, records),
                                                               t.delete_udp_flows(slot, gone) if gone else None))
        with self._lock:
            self.theirs.setdefault(farm, {})[sender] = new

    def end_hold(self, farm: str, missing: frozenset[str]) -> None:
        f = self.farms.get(farm)
        with self._lock:
            self.hold_until[farm] = 0
        if f is not None:
            self._write_config(f, 0)
        log.info("event=udp_hold_ended node=%s farm=%s missing=%s", self.node, farm, ",".join(sorted(missing)) or "-")

    def forget(self, farm: str, sender: str) -> None:
        with self._lock:
            by_sender = self.theirs.get(farm, {})
            flows = by_sender.pop(sender, set())
            keep = set().union(*by_sender.values()) if by_sender else set()
            gone = flows - keep - self.mine.get(farm, set())
        if gone:
            self.dataplanes.with_farm_tables(farm, lambda t, slot: t.delete_udp_flows(slot, gone))

    # -- internals -------------------------------------------------------------------------
    def _keep_own_flows(self, farm: Farm, released: frozenset[int], now: int) -> None:
        idle_s = farm.handover.udp_idle_seconds
        started = time.monotonic()
        try:
            flows = self._read_flows(farm.virtual_ips)
        except ConntrackError as e:
            log.error("event=udp_flows_unreadable node=%s farm=%s error=%r action=udp_flows_rehashed",
                      self.node, farm.name, str(e))
            return
        records = []
        for flow, age_s in flows:
            b = udp_bucket(farm, flow)
            if b in released and age_s <= idle_s:
                records.append(UdpRecord(flow, now - age_s * S, True, b))
        with self._lock:
            theirs = set().union(*self.theirs.get(farm.name, {}).values()) if self.theirs.get(farm.name) else set()
        records = [r for r in records if r.flow not in theirs]
        if records:
            self.dataplanes.with_farm_tables(farm.name, lambda t, slot: t.put_udp_records(slot, records))
            with self._lock:
                self.mine.setdefault(farm.name, set()).update(r.flow for r in records)
        log.info("event=udp_flows_kept node=%s farm=%s buckets=%d flows=%d tracked=%d read_ms=%.1f", self.node,
                 farm.name, len(released), len(records), len(flows), (time.monotonic() - started) * 1000)

    def _write_config(self, farm: Farm, hold_until: int) -> None:
        idle = idle_ns(farm) if self.tracking else 0
        found, _ = self.dataplanes.with_farm_tables(farm.name, lambda t, slot: t.write_udp_config(slot, idle, hold_until))
        if found:
            self._configured.add(farm.name)
