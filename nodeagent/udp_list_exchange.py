"""The heartbeat thread's part of UDP handover (vipfarm/udp_flows.py): asking the peers for the
UDP flows they keep, answering their asks, and handing what arrives to the flow table.

A new owner that acquired moving buckets of a farm with UDP handover holds new UDP flows in
them (the filter's hold) and asks every other member of the view for its list (FlowRequest).
Each member answers with the fresh flows it keeps (FlowChunks, whole lines each). A complete
answer is written into this node's filter at once, as the sender's flows; when every member
asked has answered, or at the hold's deadline, the hold ends. Unanswered members are asked
again every heartbeat interval until then. A member that leaves the view has its flows
forgotten (its flows died with it; left in the table they would be refused by every node).

The flow table (UdpHandover, nodeagent/udp_handover.py) is called from this thread; it only
writes maps and must not block.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Protocol

from vipfarm.heartbeat_wire import MAX_CHUNK_DATA, FlowChunk, FlowRequest
from vipfarm.udp_flows import UdpFlow, decode_list, split_chunks

log = logging.getLogger("vipfarm.heartbeat")
MS = 1_000_000


class UdpFlowPort(Protocol):
    def own_list(self, farm: str) -> bytes: ...
    def take_list(self, farm: str, sender: str, flows: list[tuple[UdpFlow, int]]) -> None: ...
    def end_hold(self, farm: str, missing: frozenset[str]) -> None: ...
    def forget(self, farm: str, sender: str) -> None: ...


@dataclass
class Ask:
    """One outstanding ask of a farm's peers."""
    until_ns: int
    asked: frozenset[str]
    seq: int = 0                          # the FlowRequest's seq: answers must name it
    sent_ns: int = 0
    parts: dict = field(default_factory=dict)       # (sender name, count) -> {index: data}
    answered: set = field(default_factory=set)

    @property
    def missing(self) -> frozenset[str]:
        return self.asked - self.answered


class UdpListExchange:
    def __init__(self, node: str, port: UdpFlowPort | None, count):
        self.node = node
        self.port = port
        self.count = count                 # the engine's counter
        self.asks: dict[str, Ask] = {}     # farm -> the outstanding ask
        self.sources: dict[str, set[str]] = {}   # farm -> members whose lists were taken

    def want(self, farm: str, peers: frozenset[str], until_ns: int) -> None:
        """Ask `peers` (the view without this node); an ask still open is replaced."""
        if not peers:
            if self.port is not None:
                self.port.end_hold(farm, frozenset())
            self.asks.pop(farm, None)
            return
        self.asks[farm] = Ask(until_ns, frozenset(peers))

    def due_ns(self, farm: str, interval_ns: int) -> int | None:
        a = self.asks.get(farm)
        if a is None:
            return None
        return min(a.until_ns, a.sent_ns + interval_ns) if a.sent_ns else 0

    def tick(self, farm: str, now: int, interval_ns: int, send_request) -> None:
        """Resend to the members that have not answered, every interval; end at the deadline."""
        a = self.asks.get(farm)
        if a is None:
            return
        if now >= a.until_ns:
            self._finish(farm, a)
            return
        if not a.sent_ns or now - a.sent_ns >= interval_ns:
            a.sent_ns = now
            a.seq = send_request(a.missing)
            a.parts = {}
            self.count("udp_list_request_sent")

    def answer(self, farm: str, req: FlowRequest, send_chunk) -> None:
        """A peer's ask: our list in whole-line chunks (one empty chunk for none)."""
        self.count("udp_list_request")
        data = b""
        if self.port is not None:
            try:
                data = self.port.own_list(farm)
            except Exception as e:        # never let a map read kill the heartbeat thread
                log.warning("event=udp_list_failed node=%s farm=%s error=%r", self.node, farm, str(e))
                data = b""
        pieces = split_chunks(data, MAX_CHUNK_DATA)
        for k, piece in enumerate(pieces):
            send_chunk(k, len(pieces), piece)

    def take(self, farm: str, sender: str | None, c: FlowChunk, boot: int) -> None:
        self.count("udp_list_chunk")
        a = self.asks.get(farm)
        if a is None or sender is None or c.request_boot != boot or c.request_seq != a.seq or sender not in a.asked:
            self.count("udp_list_chunk_unasked")
            return
        if sender in a.answered:
            return
        parts = a.parts.setdefault((sender, c.count), {})
        parts[c.index] = c.data
        if len(parts) < c.count:
            return
        data = b"".join(parts[i] for i in range(c.count))
        try:
            flows = decode_list(data)
        except ValueError as e:
            self.count("udp_list_rejected")
            log.warning("event=udp_list_rejected node=%s farm=%s sender=%s error=%r", self.node, farm, sender, str(e))
            return
        a.answered.add(sender)
        if self.port is not None:
            self.port.take_list(farm, sender, flows)
            self.sources.setdefault(farm, set()).add(sender)
        log.info("event=udp_list_taken node=%s farm=%s sender=%s flows=%d", self.node, farm, sender, len(flows))
        if not a.missing:
            self._finish(farm, a)

    def view_changed(self, farm: str, view: frozenset[str]) -> None:
        """Members out of the view: their flows are forgotten, and nobody waits for their list."""
        for sender in sorted(self.sources.get(farm, set()) - view):
            self.sources[farm].discard(sender)
            if self.port is not None:
                self.port.forget(farm, sender)
            log.info("event=udp_list_forgotten node=%s farm=%s sender=%s reason=left_view", self.node, farm, sender)
        a = self.asks.get(farm)
        if a is not None and a.asked - view:
            a.asked = a.asked & view
            if not a.missing:
                self._finish(farm, a)

    def drop_farm(self, farm: str) -> None:
        self.asks.pop(farm, None)
        self.sources.pop(farm, None)

    def _finish(self, farm: str, a: Ask) -> None:
        del self.asks[farm]
        if a.missing:
            log.warning("event=udp_lists_incomplete node=%s farm=%s missing=%s action=end_hold", self.node, farm,
                        ",".join(sorted(a.missing)))
            self.count("udp_lists_incomplete")
        if self.port is not None:
            self.port.end_hold(farm, a.missing)
