"""The heartbeat thread: UDP heartbeats with every farm peer, the agreed view, the lease.

One thread per agent runs every farm's heartbeats. It does nothing else: no API calls, no
compiling, no file writes. It sends each farm's heartbeat every intervalMs (at once when its
view or agreement digest changes), reads every datagram as it arrives (kernel receive
timestamps, so a stall of this thread never makes a peer look older than it is), keeps the
peer table (vipfarm/liveness.py), computes the view and the buckets to serve
(vipfarm/agreement.py), renews the farm's lease in the filter while the node is in a quorum
view (leases.py), and hands each new decision to the main thread, which programs the
filter (`on_decision`; it must only queue and return).

Datagrams that fail authentication or parsing, replays and heartbeats of non-members are
counted by reason and dropped; they cost at most one HMAC each.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import os
import secrets
import selectors
import socket
import struct
import threading
import time
from dataclasses import dataclass, field, replace
from typing import Callable, Mapping

from vipfarm.agreement import (Serving, agreed_view, agreement_digest, buckets_to_serve, effective_assignment, quorum,
                               serving_weights)
from vipfarm.assignment import Assignment
from vipfarm.base_assignment import Base, config_digest, first_base
from vipfarm.heartbeat_keys import Keyring
from vipfarm.heartbeat_wire import (ROW_DRAINING, ROW_HANDING_OVER, ROW_HEARS_WITNESS, ROW_RELEASED, ROW_WITHDRAWN,
                                    BaseChunk, BaseRequest, FlowChunk, FlowRequest, Heartbeat, Row, WireError, decode,
                                    encode, node_id)
from vipfarm.liveness import ACCEPTED, PeerTable

from .leases import LeaseWriter
from .udp_list_exchange import UdpFlowPort, UdpListExchange
from .witness import WitnessProbe

log = logging.getLogger("vipfarm.heartbeat")

SO_TIMESTAMPNS = 35          # linux/asm-generic/socket.h (SCM_TIMESTAMPNS has the same value)
RECV_BATCH = 256             # datagrams read per wakeup per socket, at most
HEARTBEAT_RT_PRIORITY = 10   # SCHED_RR priority of the heartbeat thread (1-99; kernel threads use 50)
MS = 1_000_000


@dataclass(frozen=True)
class FarmPeers:
    """What the heartbeat thread needs of one farm."""
    farm: str
    node: str
    weights: Mapping[str, int]            # every configured member (this node too) -> weight
    addresses: Mapping[str, str]          # member -> heartbeat address (IPv4 or IPv6)
    port: int
    interval_ms: int
    timeout_ms: int
    keyring: Keyring | None               # None only for a farm of one member
    buckets: int
    base: Base | None                     # None: ask the peers first (no persisted base)
    may_start_chain: bool = True          # standalone: with no base anywhere, compute the first one
    withdrawn: bool = False               # this node's checkers fail: it stays in the view, serves nothing
    draining: bool = False                # this node drains (drain: true, a cordoned Node): no new flows
    adopted: frozenset[int] = frozenset()  # what the filter serves when the engine first sees the farm
    interface: str = ""                   # the farm interface (the witness is probed on it)
    witness: str = ""                     # spec.heartbeat.witness: an IPv4 address whose ARP replies vote


@dataclass(frozen=True)
class Decision:
    """What the main thread should program for one farm, and why."""
    farm: str
    buckets: frozenset[int]
    view: frozenset[str]
    withdrawn: frozenset[str]
    agreed: bool
    base_epoch: int
    digest: bytes
    released: int
    withheld: int
    peers_handing_over: bool = False      # some other member still serves flows in buckets it gave up
    draining: frozenset[str] = frozenset()
    # For the observability endpoint (observe.py): the configured members and their weights,
    # when each peer's last heartbeat was accepted (monotonic ns; a failover's duration starts
    # there), and the effective assignment the buckets come from (None outside the view).
    weights: Mapping[str, int] = field(default_factory=dict)
    last_heard_ns: Mapping[str, int] = field(default_factory=dict)
    target: Assignment | None = None


@dataclass(frozen=True)
class FarmHeartbeats:
    """One farm's heartbeats as the thread last published them (HeartbeatEngine.snapshot())."""
    interval_ms: int
    timeout_ms: int
    members: int                          # configured members, this node included
    last_heard_ns: Mapping[str, int]      # peer -> when its last heartbeat was accepted (never: absent)
    flags: Mapping[str, int]              # peer -> the flags of its freshest row (ROW_HANDING_OVER ...)
    counts: Mapping[str, int]             # this farm's share of HeartbeatEngine.stats()
    # Agreement now (every member of the view advertises this node's digest), not as of the last
    # Decision: a Decision is handed over only when the buckets change, so one taken before the
    # agreement with the same buckets would say `agreed: false` for good.
    agreed: bool = False


@dataclass(frozen=True)
class HeartbeatSnapshot:
    """What the heartbeat thread publishes for readers on other threads: immutable, swapped
    whole (a reference assignment), so a reader never takes a lock the thread waits on."""
    at_ns: int                            # when it was taken (the thread's liveness, for /healthz)
    farms: Mapping[str, FarmHeartbeats]
    counts: Mapping[str, int]             # every farm's, and datagrams no farm could claim


PUBLISH_EVERY_NS = 2 * MS                 # a snapshot at most this often (each loop pass, rate-limited)


@dataclass(frozen=True)
class Membership:
    """A farm's agreed membership as this node sees it (what the cluster agent reports)."""
    farm: str
    base_epoch: int
    view: frozenset[str]
    digest: bytes
    agreed: bool
    withdrawn: frozenset[str]


@dataclass
class _Farm:
    cfg: FarmPeers
    ids: dict[int, str]
    table: PeerTable
    boot: int
    seq: int = 0
    next_send_ns: int = 0
    current: frozenset[int] = frozenset()
    decided: bool = False                 # a first decision has been handed over
    last_sent_ns: int = 0
    started_ns: int = 0
    view: frozenset[str] = frozenset()
    digest: bytes = b"\0" * 8
    pending_base: dict = field(default_factory=dict)   # (sender, epoch, digest) -> {index: data}
    last_request_ns: int = 0
    said: Membership | None = None        # the last membership handed to on_membership
    peers_handing_over: bool = False      # in the last decision handed over
    agreed: bool = False                  # at the last evaluation
    sent_released: bool = False           # ROW_RELEASED in the last heartbeat sent
    counts: dict[str, int] = field(default_factory=dict)   # this farm's counts (observe.py's metrics)


class HeartbeatEngine:
    def __init__(self, node: str, on_decision: Callable[[Decision], None],
                 on_base: Callable[[str, Base], None], leases: LeaseWriter,
                 base_from_chunks: Callable[[bytes], Base | None], base_to_bytes: Callable[[Base], bytes],
                 clock: Callable[[], int] = time.monotonic_ns,
                 on_membership: Callable[[Membership], None] | None = None,
                 udp_flows: UdpFlowPort | None = None):
        self.node = node
        self.on_decision = on_decision
        self.on_membership = on_membership      # every change of view, digest, agreement or withdrawals
        self.on_base = on_base
        self.leases = leases
        self.base_from_chunks = base_from_chunks
        self.base_to_bytes = base_to_bytes
        self.clock = clock
        self.boot = int.from_bytes(secrets.token_bytes(8), "big") or 1
        self.farms: dict[str, _Farm] = {}
        self.sockets: dict[tuple[str, int], socket.socket] = {}
        self.witnesses: dict[tuple[str, str], WitnessProbe] = {}
        self.selector = selectors.DefaultSelector()
        self.counts: dict[str, int] = {}
        self.worst_send_delay_ns = 0
        self._lock = threading.Lock()
        self._pending: list[FarmPeers] | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)     # a full pipe already wakes the thread
        self.selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._stop = False
        self._thread: threading.Thread | None = None
        self._goodbye = False
        self._programmed: dict[str, frozenset[int]] = {}      # replaced whole by programmed(): no lock
        self._renewed_for: dict[str, frozenset[int]] | None = None   # the _programmed last renewed for
        self._handing_over: frozenset[str] = frozenset()    # farms whose drain is not over (handing_over())
        self._sent_handing_over: frozenset[str] = frozenset()
        self.udp = UdpListExchange(node, udp_flows, self._count)     # UDP handover's flow lists
        self._udp_wanted: dict[str, int] = {}      # farm -> hold deadline: ask the peers (want_udp_lists)
        self._snapshot = HeartbeatSnapshot(0, {}, {})

    # -- called from other threads -------------------------------------------------------
    def configure(self, farms: list[FarmPeers]) -> None:
        """Replace the farm set (start-up, SIGHUP, a Farm change). Applied by the thread."""
        with self._lock:
            self._pending = list(farms)
        self._poke()

    def programmed(self, farm: str, buckets: frozenset[int]) -> None:
        """The main thread says what the filter now holds for `farm` (after each programming).
        The thread renews the farm's lease at once: a renewal withheld while the filter held
        buckets it had to release is owed as soon as it no longer does."""
        self._programmed = {**self._programmed, farm: frozenset(buckets)}
        self._poke()

    def handing_over(self, farm: str, still: bool) -> None:
        """The main thread says whether this node still serves flows in buckets of `farm` it
        no longer owns (its drain): the heartbeats say so, so the new owners keep those
        buckets on the filter's slow path. A change is sent at once."""
        now = farm in self._handing_over
        if still == now:
            return
        self._handing_over = (self._handing_over | {farm}) if still else (self._handing_over - {farm})
        self._poke()

    def want_udp_lists(self, farm: str, until_ns: int) -> None:
        """The main thread has just put a hold on new UDP flows in buckets of `farm` it acquired
        while they move: ask every other member of the view for the UDP flows it keeps, and end
        the hold (UdpFlowPort.end_hold) when all have answered or at `until_ns`."""
        with self._lock:
            self._udp_wanted[farm] = until_ns
        self._poke()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="vipfarm-heartbeat", daemon=True)
        self._thread.start()

    def stop(self, goodbye: bool = True) -> None:
        """Stop; with goodbye, first tell the peers this node leaves (its row then lists only
        itself), so they take its buckets over at once instead of after the timeout."""
        self._goodbye = goodbye
        self._stop = True
        self._poke()
        if self._thread is not None:
            self._thread.join(5)
        for s in self.sockets.values():
            s.close()
        self.sockets.clear()
        for w in self.witnesses.values():
            w.stop()
        os.close(self._wake_r)
        os.close(self._wake_w)

    def stats(self) -> dict[str, int]:
        return dict(self.counts, worst_send_delay_us=self.worst_send_delay_ns // 1000)

    def snapshot(self) -> HeartbeatSnapshot:
        """The latest published state (for the observability endpoint; any thread, no lock)."""
        return self._snapshot

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _poke(self) -> None:
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass

    # -- the thread ------------------------------------------------------------------------
    def _count(self, what: str, f: "_Farm | None" = None) -> None:
        self.counts[what] = self.counts.get(what, 0) + 1
        if f is not None:
            f.counts[what] = f.counts.get(what, 0) + 1

    def _publish(self, now: int) -> None:
        """Swap in a new snapshot (at most every PUBLISH_EVERY_NS): copies of this thread's own
        state, so readers never touch what it mutates."""
        if now - self._snapshot.at_ns < PUBLISH_EVERY_NS:
            return
        farms = {}
        for name, f in self.farms.items():
            heard = {f.ids[i]: p.last_heard_ns for i, p in f.table.peers.items()
                     if p.last_heard_ns is not None and i in f.ids}
            flags = {f.ids[i]: r.flags for i, r in f.table.rows.items() if i in f.ids}
            farms[name] = FarmHeartbeats(f.cfg.interval_ms, f.cfg.timeout_ms, len(f.cfg.weights), heard, flags,
                                         dict(f.counts), f.agreed)
        self._snapshot = HeartbeatSnapshot(now, farms, dict(self.counts))

    def _run(self) -> None:
        self._raise_priority()
        try:
            while not self._stop:
                self._take_config()
                self._take_udp_wants()
                for key, _ in self.selector.select(self._seconds_to_next(self.clock())):
                    if key.data is None:
                        try:
                            os.read(self._wake_r, 4096)
                        except BlockingIOError:
                            pass
                    else:
                        self._drain(key.fileobj)
                self._renew_if_reprogrammed(self.clock())
                self._send_if_handover_changed(self.clock())
                self.tick(self.clock())
                self._publish(self.clock())
            if self._goodbye:
                self.say_goodbye(self.clock())
        except Exception:          # the thread dying silently would be the worst outcome
            log.exception("event=heartbeat_thread_failed node=%s action=exit", self.node)
            os._exit(70)

    def _send_if_handover_changed(self, now: int) -> None:
        handing_over = self._handing_over
        if handing_over is self._sent_handing_over:
            return
        for name in handing_over ^ self._sent_handing_over:
            f = self.farms.get(name)
            if f is not None:
                f.next_send_ns = now             # the peers' slow path waits on this flag
        self._sent_handing_over = handing_over

    def _renew_if_reprogrammed(self, now: int) -> None:
        """After the main thread's programming: the lease withheld meanwhile, and a heartbeat at
        once when the filter has just given up what it had to (the new owners wait for it)."""
        programmed = self._programmed
        if programmed is self._renewed_for:
            return
        self._renewed_for = programmed
        for f in self.farms.values():
            self._renew_lease(f, now)
            released = self._released(f)
            if released != f.sent_released:
                f.next_send_ns = now

    def _raise_priority(self) -> None:
        """Real-time round-robin scheduling for this thread only: a CPU hog at normal priority
        (the node's own workload) must not delay a heartbeat past a peer's timeout. The thread
        sleeps almost all the time, so it cannot starve anything. Without CAP_SYS_NICE it
        stays at normal priority and says so."""
        try:
            os.sched_setscheduler(threading.get_native_id(), os.SCHED_RR, os.sched_param(HEARTBEAT_RT_PRIORITY))
            log.info("event=heartbeat_thread_priority node=%s policy=SCHED_RR priority=%d", self.node,
                     HEARTBEAT_RT_PRIORITY)
        except (OSError, AttributeError) as e:
            log.warning("event=heartbeat_thread_priority node=%s policy=normal error=%r fix=%r", self.node, str(e),
                        "run the agent with CAP_SYS_NICE (the chart grants it in agent.securityContext) so heartbeats "
                        "keep their pace when the CPUs are saturated")

    def _take_udp_wants(self) -> None:
        with self._lock:
            wanted, self._udp_wanted = self._udp_wanted, {}
        for name, until in wanted.items():
            f = self.farms.get(name)
            if f is not None:
                self.udp.want(name, frozenset(f.view) - {f.cfg.node}, until)

    def _seconds_to_next(self, now: int) -> float:
        wake = [f.next_send_ns for f in self.farms.values()]
        wake += [t for t in (self.udp.due_ns(f.cfg.farm, f.cfg.interval_ms * MS) for f in self.farms.values())
                 if t is not None]
        wake += [t for t in (f.table.next_expiry_ns(now) for f in self.farms.values()) if t]
        wake += [f.started_ns + self._grace_ns(f) for f in self.farms.values() if not f.decided]
        return min(1.0, max(0.0, (min(wake) - now) / 1e9)) if wake else 1.0

    def tick(self, now: int) -> None:
        """Send what is due, re-decide every farm (expiries), renew leases. Public for tests."""
        for f in list(self.farms.values()):
            self.udp.tick(f.cfg.farm, now, f.cfg.interval_ms * MS, lambda who, f=f: self._send_flow_request(f, who))
            if now >= f.next_send_ns:
                late = now - f.next_send_ns
                step = f.cfg.interval_ms * MS
                f.next_send_ns = f.next_send_ns + step if late < step else now + step
                self._evaluate(f, now)
                self._send_heartbeat(f, now)
                self._renew_lease(f, now)
            else:
                self._evaluate(f, now)

    def say_goodbye(self, now: int) -> None:
        for f in self.farms.values():
            for _ in range(3):
                self._send_heartbeat(f, now, goodbye=True)

    def _grace_ns(self, f: _Farm) -> int:
        """How long a starting agent keeps what the pins say before acting on its own view:
        long enough to hear every peer and agree (the timeout plus two exchanges)."""
        return (f.cfg.timeout_ms + 2 * f.cfg.interval_ms) * MS

    def _take_config(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, None
        if pending is None:
            return
        now = self.clock()
        wanted = {p.farm: p for p in pending}
        for name in list(self.farms):
            if name not in wanted:
                del self.farms[name]
                self.udp.drop_farm(name)
        for p in pending:
            ids = {node_id(n): n for n in p.weights}
            if len(ids) != len(p.weights):
                raise ValueError(f"farm {p.farm}: two member names hash to one node id; rename one")
            old = self.farms.get(p.farm)
            if old is None:
                table = PeerTable(node_id(p.node), self.boot, ids, p.timeout_ms * MS)
                self.farms[p.farm] = _Farm(p, ids, table, self.boot, next_send_ns=now, started_ns=now,
                                           current=frozenset(p.adopted))
                if p.farm not in self._programmed:
                    self.programmed(p.farm, p.adopted)   # the filter holds what it was adopted with
            else:
                old.table.set_members(ids)
                old.table.timeout_ns = p.timeout_ms * MS
                if p.base is None and old.cfg.base is not None and p.weights == old.cfg.weights:
                    p = replace(p, base=old.cfg.base)      # keep a base adopted from peers meanwhile
                old.cfg, old.ids = p, ids
                old.next_send_ns = now                     # tell the peers at once
            self._ensure_socket(p)
            self._ensure_witness(p)

    def _ensure_socket(self, p: FarmPeers) -> None:
        addr = p.addresses.get(p.node)
        if addr is None or len(p.weights) < 2:
            return
        key = (addr, p.port)
        if key in self.sockets:
            return
        ip = ipaddress.ip_address(addr)
        s = socket.socket(socket.AF_INET6 if ip.version == 6 else socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        s.bind((addr, p.port))
        s.setblocking(False)
        self.sockets[key] = s
        self.selector.register(s, selectors.EVENT_READ, key)

    def _ensure_witness(self, p: FarmPeers) -> None:
        if not p.witness or len(p.weights) < 2 or (p.interface, p.witness) in self.witnesses:
            return
        from .netconfig import link_info
        probe = WitnessProbe(p.interface, link_info(p.interface)[1], p.addresses[p.node], p.witness,
                             p.interval_ms / 1000, p.timeout_ms / 1000, clock=self.clock)
        probe.start()
        self.witnesses[(p.interface, p.witness)] = probe

    def _hears_witness(self, cfg: FarmPeers, now: int) -> bool:
        probe = self.witnesses.get((cfg.interface, cfg.witness)) if cfg.witness else None
        return probe is not None and probe.heard(now)

    def _socket_for(self, f: _Farm) -> socket.socket | None:
        addr = f.cfg.addresses.get(f.cfg.node)
        return self.sockets.get((addr, f.cfg.port)) if addr else None

    def _drain(self, s: socket.socket) -> None:
        offset = time.clock_gettime_ns(time.CLOCK_REALTIME) - self.clock()
        for _ in range(RECV_BATCH):
            try:
                data, anc, _flags, source = s.recvmsg(65535, 64)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as e:
                if e.errno in (errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH):
                    continue        # an ICMP error of an earlier send: the peer is down, as we will see
                raise
            when = self.clock()
            for level, kind, value in anc:
                if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(value) >= 16:
                    sec, nsec = struct.unpack("qq", value[:16])
                    when = min(when, sec * 1_000_000_000 + nsec - offset)
            self._receive(data, when)

    def _receive(self, data: bytes, now: int) -> None:
        msg = None
        for f in self.farms.values():
            if f.cfg.keyring is None:
                continue
            try:
                msg = decode(data, f.cfg.keyring)
                break
            except WireError as e:
                if e.reason != "unknown_key":
                    # past the key lookup (bad_mac, malformed) the farm whose key it named is known
                    self._count(f"rejected_{e.reason}", f if e.reason in ("bad_mac", "malformed") else None)
                    return
        if msg is None:
            self._count("rejected_unknown_key")
            return
        f = self.farms.get(msg.farm)
        if f is None or f.cfg.keyring is None:
            self._count("rejected_unknown_farm")
            return
        if isinstance(msg, Heartbeat):
            verdict = f.table.receive(msg.sender_id, msg.boot, msg.seq, msg.echoes, msg.rows, now)
            self._count(f"heartbeat_{verdict}", f)
            if verdict == ACCEPTED:
                self._maybe_request_base(f, msg, now)
                self._evaluate(f, self.clock())
                # A fresh contact moves the lease's reference time: renew now, not at the next
                # send tick. (Renewing on sends only, a tick skipped while the filter still held
                # released buckets left the SYN stage to lapse for a few ms: SYNs dropped.)
                self._renew_lease(f, self.clock())
        elif isinstance(msg, BaseRequest):
            self._count("base_request")
            self._send_base(f, msg)
        elif isinstance(msg, BaseChunk):
            self._count("base_chunk")
            self._take_chunk(f, msg)
        elif isinstance(msg, FlowRequest):
            self.udp.answer(f.cfg.farm, msg, lambda k, n, piece: self._send_flow_chunk(f, msg, k, n, piece))
        elif isinstance(msg, FlowChunk):
            self.udp.take(f.cfg.farm, f.ids.get(msg.sender_id), msg, f.boot)

    # -- deciding --------------------------------------------------------------------------
    def _evaluate(self, f: _Farm, now: int) -> None:
        cfg = f.cfg
        names = list(cfg.weights)
        if cfg.base is None and cfg.may_start_chain and now >= f.started_ns + self._grace_ns(f):
            cfg = f.cfg = replace(cfg, base=first_base(cfg.weights, cfg.buckets))
            log.info("event=base_started node=%s farm=%s epoch=1 reason=no_persisted_base_and_no_peer_offered_one",
                     cfg.node, cfg.farm)
            self.on_base(cfg.farm, cfg.base)
        heard = f.table.heard(now)
        hears = {f.ids[i] for i, r in f.table.fresh_rows(now).items() if r.flags & ROW_HEARS_WITNESS and i in f.ids}
        if self._hears_witness(cfg, now):
            hears.add(cfg.node)
        votes = quorum(len(names), witness=bool(cfg.witness))
        view = agreed_view(f.table.matrix(now, heard), names, votes, hears)
        withdrawn = self._withdrawn(f, now, view)
        draining = self._draining(f, now, view)
        digest = agreement_digest(cfg.base.digest if cfg.base else b"\0" * 8, view, withdrawn, draining)
        if view != f.view or digest != f.digest:
            if f.view or view:
                log.info("event=view_changed node=%s farm=%s view=%s size=%d votes_needed=%d base_epoch=%s",
                         cfg.node, cfg.farm, ",".join(sorted(view)) or "-", len(view), votes,
                         cfg.base.epoch if cfg.base else "-")
            if view != f.view:
                self.udp.view_changed(cfg.farm, view)
            f.view, f.digest = view, digest
            f.next_send_ns = now                # spread the news now, not in an interval
        if not f.decided and now < f.started_ns + self._grace_ns(f) \
                and not (cfg.base is not None and view and self._agreed(f, now)):
            return                              # starting: keep what the filter does until we know
        in_view = cfg.node in view
        agreed = in_view and self._agreed(f, now)
        f.agreed = agreed
        # Acquire late: not only once every member decided the same (agreed), but once every
        # other member's filter has given up what this assignment takes from it (its row's
        # ROW_RELEASED under this digest). Agreement alone left a few ms in which the old
        # owner's main thread had not yet programmed its release and both answered SYNs.
        may_acquire = agreed and self._released_everywhere(f, now)
        target: Assignment | None = None
        if in_view and cfg.base is not None:
            target = effective_assignment(cfg.base.assignment, serving_weights(cfg.weights, withdrawn, draining), view)
        s: Serving = buckets_to_serve(cfg.node, target, f.current, may_acquire)
        handing_over = self._peers_handing_over(f, now)
        if s.buckets != f.current or not f.decided or handing_over != f.peers_handing_over:
            f.current, f.decided, f.peers_handing_over = s.buckets, True, handing_over
            heard = {f.ids[i]: p.last_heard_ns for i, p in f.table.peers.items()
                     if p.last_heard_ns is not None and i in f.ids}
            self.on_decision(Decision(cfg.farm, s.buckets, view, withdrawn, agreed,
                                      cfg.base.epoch if cfg.base else 0, digest, s.released, s.withheld,
                                      handing_over, draining, dict(cfg.weights), heard, target))
        if self.on_membership is not None:
            m = Membership(cfg.farm, cfg.base.epoch if cfg.base else 0, view, digest, agreed, withdrawn)
            if m != f.said:
                f.said = m
                self.on_membership(m)

    def _peers_handing_over(self, f: _Farm, now: int) -> bool:
        me = node_id(f.cfg.node)
        return any(r.flags & ROW_HANDING_OVER for i, r in f.table.fresh_rows(now).items() if i != me)

    def _draining(self, f: _Farm, now: int, view: frozenset[str]) -> frozenset[str]:
        """The members that drain, each by its own word (its row's flag): a drain starts and
        ends when the draining node says so, whoever else read the configuration first."""
        out = {f.cfg.node} if f.cfg.draining else set()
        for i, r in f.table.fresh_rows(now).items():
            if r.flags & ROW_DRAINING and f.ids.get(i) in view:
                out.add(f.ids[i])
        return frozenset(out & view)

    def _withdrawn(self, f: _Farm, now: int, view: frozenset[str]) -> frozenset[str]:
        out = {f.cfg.node} if f.cfg.withdrawn else set()
        for i, r in f.table.fresh_rows(now).items():
            if r.flags & ROW_WITHDRAWN and f.ids.get(i) in view:
                out.add(f.ids[i])
        return frozenset(out)

    def _released_everywhere(self, f: _Farm, now: int) -> bool:
        fresh = f.table.fresh_rows(now)
        me = node_id(f.cfg.node)
        return all(i == me or (i in fresh and fresh[i].agree == f.digest and fresh[i].flags & ROW_RELEASED)
                   for i, n in f.ids.items() if n in f.view)

    def _released(self, f: _Farm) -> bool:
        held = self._programmed.get(f.cfg.farm)
        return held is not None and held <= f.current

    def _agreed(self, f: _Farm, now: int) -> bool:
        ids = [i for i, n in f.ids.items() if n in f.view]
        return f.table.agrees(ids, f.digest, now)

    def _renew_lease(self, f: _Farm, now: int) -> None:
        """Renew while this node is in a quorum view and its filter holds nothing the view no
        longer gives it (what the main thread last programmed, `programmed`, is within the
        current decision): a filter still holding buckets it should have released, e.g. the
        adopted one of a restarted agent whose peers meanwhile took them, is left to lapse."""
        if len(f.cfg.weights) < 2:
            self.leases.renew(f.cfg.farm, 0, 0)                # a farm of one has nobody to yield to
            return
        held = self._programmed.get(f.cfg.farm)
        if f.cfg.node not in f.view or held is None or not held <= f.current:
            return
        if not f.decided:
            # Starting: the adopted filter's buckets are what the previous agent held, which
            # the peers may have taken since (a restart after a failover). Until the first
            # decision says they are still this node's, the previous agent's lease runs out
            # on its own instead of being extended under the peers' owners (two owners).
            return
        # Counted from the last contact with a quorum, not from now: the view outlives a cut
        # by up to a timeout (the rows age out), the peers' takeover does not wait for that.
        votes = quorum(len(f.cfg.weights), witness=bool(f.cfg.witness))
        probe = self.witnesses.get((f.cfg.interface, f.cfg.witness)) if f.cfg.witness else None
        extra = (probe.last_reply_ns,) if probe is not None and probe.last_reply_ns is not None else ()
        contact = f.table.quorum_contact_ns(votes, extra)
        if contact is None:
            return
        # Both stages end before the peers can have taken over when this agent stops (killed,
        # frozen: its last renewal came after its last contact), and at most one interval after
        # it in a cut (the peers may have last heard it up to an interval before it last heard
        # them): the bound on two owners. The SYN stage ends half an interval earlier, so a
        # stuck agent stops taking new flows first; the slack for late peers' heartbeats is
        # about timeoutMs - 1.5 intervals, which a lease of timeoutMs - intervalMs from the
        # contact (the first design) left at one interval: the soak saw SYNs dropped for every
        # 100 ms-late heartbeat.
        margin = min(f.cfg.interval_ms * MS // 4, 10 * MS)      # the filter's coarse clock, <= 4 ms
        deadline = contact + f.cfg.timeout_ms * MS - margin
        self.leases.renew(f.cfg.farm, deadline - f.cfg.interval_ms * MS // 2, deadline)

    # -- sending ---------------------------------------------------------------------------
    def _send_heartbeat(self, f: _Farm, now: int, goodbye: bool = False) -> None:
        s = self._socket_for(f)
        if s is None or f.cfg.keyring is None:
            return
        me = node_id(f.cfg.node)
        # The delay that matters to a peer: how much longer than an interval the gap between
        # two heartbeats was (a triggered send resets the schedule, so lateness against the
        # schedule would hide a stall that ended in a view change).
        if f.last_sent_ns and not goodbye:
            self.worst_send_delay_ns = max(self.worst_send_delay_ns, now - f.last_sent_ns - f.cfg.interval_ms * MS)
        f.last_sent_ns = now
        f.seq += 1
        heard = frozenset({me}) if goodbye else f.table.heard(now)
        flags = ((ROW_WITHDRAWN if f.cfg.withdrawn else 0) | (ROW_HEARS_WITNESS if self._hears_witness(f.cfg, now) else 0)
                 | (ROW_DRAINING if f.cfg.draining else 0) | (ROW_RELEASED if self._released(f) else 0)
                 | (ROW_HANDING_OVER if f.cfg.farm in self._handing_over else 0))
        f.sent_released = bool(flags & ROW_RELEASED)
        own = Row(me, f.boot, f.seq, 0, heard, f.digest, flags)
        rows = [own] + [Row(i, r.boot, r.seq, max(0, (now - r.origin_ns) // MS), r.heard, r.agree, r.flags)
                        for i, r in sorted(f.table.fresh_rows(now).items())]
        base = f.cfg.base
        msg = Heartbeat(f.cfg.farm, me, f.boot, f.seq, base.epoch if base else 0,
                        base.digest if base else b"\0" * 8, f.table.echoes(), tuple(rows))
        self._send_all(f, s, encode(msg, f.cfg.keyring.signing))

    def _send_all(self, f: _Farm, s: socket.socket, data: bytes, only: str | None = None) -> None:
        for name, addr in f.cfg.addresses.items():
            if name == f.cfg.node or (only and name != only):
                continue
            try:
                s.sendto(data, (addr, f.cfg.port))
                self._count("sent", f)
            except OSError:
                self._count("send_failed", f)      # no route / link down: the peer tables will tell

    # -- UDP handover's flow lists (udp_list_exchange.py) -------------------------------------
    def _send_flow_request(self, f: _Farm, who: frozenset[str]) -> int:
        s = self._socket_for(f)
        f.seq += 1
        if s is None or f.cfg.keyring is None:
            return f.seq
        base = f.cfg.base
        req = FlowRequest(f.cfg.farm, node_id(f.cfg.node), f.boot, f.seq, base.epoch if base else 0,
                          base.digest if base else b"\0" * 8)
        data = encode(req, f.cfg.keyring.signing)
        for name in sorted(who):
            self._send_all(f, s, data, only=name)
        return req.seq

    def _send_flow_chunk(self, f: _Farm, req: FlowRequest, index: int, count: int, piece: bytes) -> None:
        s, asker = self._socket_for(f), f.ids.get(req.sender_id)
        if s is None or asker is None or f.cfg.keyring is None:
            return
        f.seq += 1
        base = f.cfg.base
        msg = FlowChunk(f.cfg.farm, node_id(f.cfg.node), f.boot, f.seq, base.epoch if base else 0,
                        base.digest if base else b"\0" * 8, req.boot, req.seq, index, count, piece)
        self._send_all(f, s, encode(msg, f.cfg.keyring.signing), only=asker)

    # -- base sync -------------------------------------------------------------------------
    def _maybe_request_base(self, f: _Farm, msg: Heartbeat, now: int) -> None:
        base = f.cfg.base
        wants = msg.base_epoch and (base is None or (msg.base_epoch, msg.base_digest) > (base.epoch, base.digest))
        if not wants or now - f.last_request_ns < f.cfg.interval_ms * MS:
            return
        f.last_request_ns = now
        s = self._socket_for(f)
        if s is None:
            return
        sender = f.ids.get(msg.sender_id)
        f.seq += 1
        req = BaseRequest(f.cfg.farm, node_id(f.cfg.node), f.boot, f.seq, msg.base_epoch, msg.base_digest)
        self._send_all(f, s, encode(req, f.cfg.keyring.signing), only=sender)

    def _send_base(self, f: _Farm, req: BaseRequest) -> None:
        base, s = f.cfg.base, self._socket_for(f)
        asker = f.ids.get(req.sender_id)
        if base is None or s is None or asker is None:
            return
        data = self.base_to_bytes(base)
        size = 1200
        chunks = [data[i:i + size] for i in range(0, len(data), size)] or [b""]
        for k, piece in enumerate(chunks):
            f.seq += 1
            msg = BaseChunk(f.cfg.farm, node_id(f.cfg.node), f.boot, f.seq, base.epoch, base.digest, k, len(chunks), piece)
            self._send_all(f, s, encode(msg, f.cfg.keyring.signing), only=asker)

    def _take_chunk(self, f: _Farm, c: BaseChunk) -> None:
        key = (c.sender_id, c.base_epoch, c.base_digest, c.count)
        parts = f.pending_base.setdefault(key, {})
        parts[c.index] = c.data
        if len(parts) < c.count:
            return
        del f.pending_base[key]
        base = self.base_from_chunks(b"".join(parts[i] for i in range(c.count)))
        if base is None or base.digest != c.base_digest \
                or base.config != config_digest(f.cfg.weights, f.cfg.buckets):
            self._count("base_rejected")
            return
        mine = f.cfg.base
        if mine is not None and not base.newer_than(mine.epoch, mine.digest):
            return
        f.cfg = replace(f.cfg, base=base)
        log.info("event=base_adopted node=%s farm=%s epoch=%d from=%s", f.cfg.node, f.cfg.farm, base.epoch,
                 f.ids.get(c.sender_id, "?"))
        self.on_base(f.cfg.farm, base)
        self._evaluate(f, self.clock())
