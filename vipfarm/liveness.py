"""What one node knows of its farm peers from their heartbeats: who it hears, whose heartbeat
is a replay, and the freshest reachability row of every member. No I/O; the caller passes
the time (CLOCK_MONOTONIC nanoseconds), so tests drive it with a fake clock.

Replay protection that survives restarts, with nothing persisted:
  * every agent start picks a random 64-bit boot id, and numbers its heartbeats from 1;
  * within one boot, a sequence number at or below the highest accepted is a replay;
  * a boot id seen before and since replaced is a replay of an older run (`retired`);
  * a boot id never seen is accepted only when the heartbeat echoes *this* node's current
    boot id (every heartbeat echoes, per peer, the boot id it last heard from that peer): a
    capture from before either side restarted cannot echo a boot id that did not exist yet.
A fresh peer's first heartbeats therefore wait one exchange (it must hear us, then echo us),
which is one interval; a replay is never counted, whatever its age.

Rows: each member's row lists whom it hears, with that member's (boot, seq) and its
agreement digest. A row arrives directly (the sender's own, age 0) or relayed by another
member (with the relayer's age of it). The newest row of each member wins: its time of
origin is receive time minus age. A row older than the timeout counts as absent.
"""
from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol

RETIRED_BOOTS_KEPT = 16


class RowLike(Protocol):
    node_id: int
    boot: int
    seq: int
    age_ms: int
    heard: frozenset[int]
    agree: bytes
    flags: int


@dataclass
class KnownRow:
    boot: int
    seq: int
    origin_ns: int            # when the row's owner produced it, on our clock
    heard: frozenset[int]
    agree: bytes
    flags: int = 0


@dataclass
class Peer:
    boot: int = 0                 # the confirmed boot id (0: none yet)
    max_seq: int = 0
    last_heard_ns: int | None = None
    claimed_boot: int = 0         # what we echo back: the boot id of the newest accepted or pending claim
    retired: deque = field(default_factory=lambda: deque(maxlen=RETIRED_BOOTS_KEPT))


ACCEPTED = "accepted"
PENDING_ECHO = "pending_echo"     # a new boot that has not yet echoed ours: not counted, echoed back
REPLAYED = "replayed"
OLD_BOOT = "old_boot"
NOT_MEMBER = "not_member"
SELF = "self"


class PeerTable:
    """One farm's peers as this node hears them. Not thread-safe: one owner thread."""

    def __init__(self, self_id: int, boot: int, members: Mapping[int, str], timeout_ns: int):
        self.self_id = self_id
        self.boot = boot
        self.timeout_ns = timeout_ns
        self.members: dict[int, str] = dict(members)
        self.peers: dict[int, Peer] = {i: Peer() for i in self.members if i != self_id}
        self.rows: dict[int, KnownRow] = {}

    def set_members(self, members: Mapping[int, str]) -> None:
        """A configuration change: keep what is known of members that stay."""
        self.members = dict(members)
        self.peers = {i: self.peers.get(i, Peer()) for i in self.members if i != self.self_id}
        self.rows = {i: r for i, r in self.rows.items() if i in self.members}

    def receive(self, sender_id: int, boot: int, seq: int, echoes: Iterable[tuple[int, int]],
                rows: Iterable[RowLike], now_ns: int) -> str:
        """Account for one authenticated heartbeat; returns its verdict (ACCEPTED, ...)."""
        if sender_id == self.self_id:
            return SELF
        peer = self.peers.get(sender_id)
        if peer is None:
            return NOT_MEMBER
        if boot == peer.boot:
            if seq <= peer.max_seq:
                return REPLAYED
        elif boot in peer.retired:
            return OLD_BOOT
        else:
            echoed = dict(echoes).get(self.self_id)
            if echoed != self.boot:
                peer.claimed_boot = boot      # echo it, so its next heartbeat can confirm it
                return PENDING_ECHO
            if peer.boot:
                peer.retired.append(peer.boot)
            peer.boot, peer.max_seq = boot, 0
        peer.max_seq = seq
        peer.last_heard_ns = now_ns
        peer.claimed_boot = boot
        for r in rows:
            self._merge_row(r, now_ns, direct=(r.node_id == sender_id))
        return ACCEPTED

    def _merge_row(self, r: RowLike, now_ns: int, direct: bool) -> None:
        if r.node_id == self.self_id or r.node_id not in self.members:
            return
        peer = self.peers[r.node_id]
        if r.boot in peer.retired:
            return
        if not direct and peer.boot and r.boot != peer.boot and peer.last_heard_ns is not None \
                and now_ns - peer.last_heard_ns <= self.timeout_ns:
            return            # we hear that member ourselves, as another boot: ours is first-hand
        origin = now_ns - min(max(int(r.age_ms), 0), 0xFFFFFFFF) * 1_000_000
        old = self.rows.get(r.node_id)
        if old is not None:
            if old.boot == r.boot and r.seq <= old.seq:
                return
            if old.boot != r.boot and origin <= old.origin_ns:
                return
        self.rows[r.node_id] = KnownRow(r.boot, r.seq, origin, frozenset(r.heard), bytes(r.agree), r.flags)

    def heard(self, now_ns: int) -> frozenset[int]:
        """Members heard directly within the timeout, and this node."""
        return frozenset({self.self_id} | {i for i, p in self.peers.items()
                                            if p.last_heard_ns is not None and now_ns - p.last_heard_ns <= self.timeout_ns})

    def echoes(self) -> tuple[tuple[int, int], ...]:
        return tuple(sorted((i, p.claimed_boot) for i, p in self.peers.items() if p.claimed_boot))

    def fresh_rows(self, now_ns: int) -> dict[int, KnownRow]:
        return {i: r for i, r in self.rows.items() if now_ns - r.origin_ns <= self.timeout_ns}

    def matrix(self, now_ns: int, own_heard: frozenset[int]) -> dict[str, frozenset[str]]:
        """Fresh rows by member name (this node's own row included), for agreement.agreed_view."""
        names = self.members
        out = {names[i]: frozenset(names[h] for h in r.heard if h in names)
               for i, r in self.fresh_rows(now_ns).items()}
        out[names[self.self_id]] = frozenset(names[h] for h in own_heard if h in names)
        return out

    def agrees(self, view_ids: Iterable[int], digest: bytes, now_ns: int) -> bool:
        """Whether every other member of the view advertises `digest` in a fresh row."""
        fresh = self.fresh_rows(now_ns)
        return all(i == self.self_id or (i in fresh and fresh[i].agree == digest) for i in view_ids)

    def next_expiry_ns(self, now_ns: int) -> int | None:
        """When the next heard peer or fresh row expires (to wake up exactly then)."""
        times = [p.last_heard_ns + self.timeout_ns for p in self.peers.values()
                 if p.last_heard_ns is not None and p.last_heard_ns + self.timeout_ns >= now_ns]
        times += [r.origin_ns + self.timeout_ns for r in self.rows.values() if r.origin_ns + self.timeout_ns >= now_ns]
        return min(times) + 1 if times else None
