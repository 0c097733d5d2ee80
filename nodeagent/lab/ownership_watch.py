"""Watch every lab node's pinned ownership tables of one farm, and report double and zero ownership.

From the test process (the bpffs mount is shared by every namespace), a background thread
reads each node's active table of the farm every ~2 ms through the bpf(2) syscall: the same
maps as pinned_maps.read_owned (vf_active, vf_tables, vf_owner), at the farm's slot from the
node's state file, plus the per-slot lease `vf_lease` when that pin exists (its syn_deadline,
CLOCK_MONOTONIC, 0 = no lease; a node whose lease has passed takes no new flows,
so it counts as not accepting any of its buckets). A bucket's acceptors are the nodes that
own it, accept, and are not excluded (a test excludes a node whose link it took down, since
its table still says it owns buckets no client can reach).

For every bucket it records the spells with 0 or >= 2 acceptors. report() gives the longest
of each kind (which bucket, when), and covered_at() when a set of buckets had acceptors again
after a fault. Times are time.monotonic_ns(), comparable with the prober's t_ns.

    w = OwnershipWatcher.for_lab(lab, "web").start()
    ...; w.exclude("n3"); ...
    report = w.stop()
"""
from __future__ import annotations

import ctypes
import json
import os
import threading
import time
from dataclasses import dataclass, field

from nodeagent.bpf_consts import TABLE_WORDS
from nodeagent.bpf_syscall import map_lookup, obj_get
from nodeagent.pinned_maps import OWNER_VALUE_SIZE

LEASE_MAP = "vf_lease"
LEASE_VALUE_BYTES = 16       # struct vf_lease (bpf/vipfarm_structs.h): syn_deadline, deadline
REOPEN_NS = 500_000_000        # reopen the pins this often: a restarted agent pins new maps


@dataclass(frozen=True)
class WatchedNode:
    name: str
    pin_dir: str               # <pin root>/<node>/<iface>
    state_file: str            # <state root>/<node>/<iface>.json, names the farm's slot


@dataclass(frozen=True)
class Spell:
    bucket: int
    kind: str                  # "zero" or "double"
    start_ns: int              # first sample that saw it
    end_ns: int                # first sample that no longer saw it (or the stop time)
    open_at_stop: bool = False

    @property
    def ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


@dataclass
class OwnershipReport:
    samples: int
    read_errors: int
    spells: list[Spell]
    started_ns: int
    stopped_ns: int
    period_ms: float = 0.0     # the mean time between samples

    def _worst(self, kind: str) -> Spell | None:
        return max((s for s in self.spells if s.kind == kind), key=lambda s: s.ms, default=None)

    @property
    def max_double_ms(self) -> float:
        w = self._worst("double")
        return w.ms if w else 0.0

    @property
    def max_zero_ms(self) -> float:
        w = self._worst("zero")
        return w.ms if w else 0.0

    @property
    def worst_double(self) -> Spell | None:
        return self._worst("double")

    @property
    def worst_zero(self) -> Spell | None:
        return self._worst("zero")

    def buckets(self, kind: str, since_ns: int = 0) -> set[int]:
        return {s.bucket for s in self.spells if s.kind == kind and s.end_ns > since_ns}

    def covered_at(self, buckets: set[int], since_ns: int) -> int | None:
        """When every bucket in `buckets` had an acceptor again after since_ns (the end of its
        zero spell overlapping since_ns, or since_ns if it had none); None if one never did."""
        latest = since_ns
        for s in self.spells:
            if s.kind == "zero" and s.bucket in buckets and s.end_ns > since_ns:
                if s.open_at_stop:
                    return None
                latest = max(latest, s.end_ns)
        return latest

    def summary(self) -> str:
        def where(s: Spell | None) -> str:
            return f" bucket={s.bucket} start_ns={s.start_ns}" if s else ""
        return (f"samples={self.samples} period_ms={self.period_ms:.2f} read_errors={self.read_errors} "
                f"max_double_ms={self.max_double_ms:.1f}{where(self.worst_double)} "
                f"max_zero_ms={self.max_zero_ms:.1f}{where(self.worst_zero)}")


class _NodeReader:
    def __init__(self, node: WatchedNode, farm: str):
        self.node, self.farm = node, farm
        self.fds: dict[str, int] = {}
        self.slot: int | None = None
        self.opened_ns = 0

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds = {}

    def _open(self, now: int) -> None:
        self.close()
        with open(self.node.state_file) as f:
            self.slot = json.load(f)["slots"][self.farm]
        for name in ("vf_active", "vf_tables", "vf_owner"):
            self.fds[name] = obj_get(os.path.join(self.node.pin_dir, name))
        lease = os.path.join(self.node.pin_dir, LEASE_MAP)
        if os.path.exists(lease):
            self.fds[LEASE_MAP] = obj_get(lease)
        self.opened_ns = now

    def _lookup(self, name: str, key: int, size: int) -> bytes:
        return map_lookup(self.fds[name], bytes(ctypes.c_uint32(key)), size)

    def accepting_mask(self, now: int) -> int:
        """The buckets this node owns and accepts new flows for, as a bit mask."""
        if not self.fds or now - self.opened_ns >= REOPEN_NS:
            self._open(now)
        slot = self.slot
        if LEASE_MAP in self.fds:
            try:       # struct vf_lease {u64 syn_deadline; u64 deadline}: the whole value, or the
                #         kernel writes past the buffer
                syn_deadline = int.from_bytes(self._lookup(LEASE_MAP, slot, LEASE_VALUE_BYTES)[:8], "little")
            except OSError:
                syn_deadline = 0
            if syn_deadline and time.monotonic_ns() > syn_deadline:     # takes no new flow
                return 0
        half = slot * 2 + (int.from_bytes(self._lookup("vf_active", slot, 4), "little") & 1)
        mask = int.from_bytes(self._lookup("vf_tables", half, 8)[4:8], "little")
        bits = 0
        for w in range((mask + 64) // 64):
            # struct vf_bits {u64 owned; u64 moving}: the whole value, the owned half of it
            word = self._lookup("vf_owner", half * TABLE_WORDS + w, OWNER_VALUE_SIZE)[:8]
            bits |= int.from_bytes(word, "little") << (64 * w)
        return bits


@dataclass
class OwnershipWatcher:
    nodes: list[WatchedNode]
    farm: str
    buckets: int = 1024
    period_s: float = 0.002
    max_seconds: float = 600.0
    _excluded: set[str] = field(default_factory=set)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    _report: OwnershipReport | None = None
    _zero_now: int = -1            # the last sample's buckets with no acceptor (-1: none yet)
    error: BaseException | None = None

    @classmethod
    def for_lab(cls, lab, farm: str, buckets: int = 1024, iface: str = "eth0", **kw) -> "OwnershipWatcher":
        nodes = [WatchedNode(f"n{k}", os.path.join(lab.pin_root, f"n{k}", iface),
                             os.path.join(lab.state_root, f"n{k}", f"{iface}.json"))
                 for k in range(1, lab.nodes + 1)]
        return cls(nodes, farm, buckets, **kw)

    def exclude(self, name: str) -> None:
        """From the next sample on, `name`'s table no longer counts (its link is down)."""
        if name not in {n.name for n in self.nodes}:
            raise ValueError(f"exclude: no watched node {name!r}; watched: {[n.name for n in self.nodes]}")
        with self._lock:
            self._excluded.add(name)

    def include(self, name: str) -> None:
        with self._lock:
            self._excluded.discard(name)

    def unowned_now(self) -> set[int] | None:
        """The buckets with no acceptor at the latest sample (None before the first one)."""
        with self._lock:
            mask = self._zero_now
        return None if mask < 0 else set(_bits(mask))

    def start(self) -> "OwnershipWatcher":
        if self._thread is not None:
            raise RuntimeError("OwnershipWatcher.start: already started; make a new watcher per run")
        self._thread = threading.Thread(target=self._run, name=f"ownership-watch-{self.farm}", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> OwnershipReport:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.error is not None:
            raise RuntimeError(f"ownership watcher of farm {self.farm} failed: {self.error!r}") from self.error
        assert self._report is not None
        return self._report

    def _run(self) -> None:
        readers = [_NodeReader(n, self.farm) for n in self.nodes]
        full = (1 << self.buckets) - 1
        open_since: dict[str, dict[int, int]] = {"zero": {}, "double": {}}
        prev = {"zero": 0, "double": 0}
        spells: list[Spell] = []
        samples = errors = 0
        started = time.monotonic_ns()
        bound = started + int(self.max_seconds * 1e9)
        now = started
        try:
            while not self._stop.is_set() and now < bound:
                now = time.monotonic_ns()
                with self._lock:
                    excluded = set(self._excluded)
                once = twice = 0
                for r in readers:
                    if r.node.name in excluded:
                        continue
                    try:
                        m = r.accepting_mask(now)
                    except (OSError, KeyError, ValueError):
                        errors += 1
                        r.close()
                        m = 0
                    twice |= once & m
                    once |= m
                state = {"zero": full & ~once, "double": twice}
                for kind, bits in state.items():
                    began, ended = bits & ~prev[kind], prev[kind] & ~bits
                    for b in _bits(began):
                        open_since[kind][b] = now
                    for b in _bits(ended):
                        spells.append(Spell(b, kind, open_since[kind].pop(b), now))
                    prev[kind] = bits
                with self._lock:
                    self._zero_now = state["zero"]
                samples += 1
                self._stop.wait(self.period_s)
        except BaseException as e:       # noqa: BLE001 - reported by stop()
            self.error = e
        finally:
            stopped = time.monotonic_ns()
            for kind, opened in open_since.items():
                for b, t in opened.items():
                    spells.append(Spell(b, kind, t, stopped, open_at_stop=True))
            for r in readers:
                r.close()
            period = (stopped - started) / 1e6 / samples if samples else 0.0
            self._report = OwnershipReport(samples, errors, spells, started, stopped, period)


def _bits(mask: int):
    while mask:
        low = mask & -mask
        yield low.bit_length() - 1
        mask ^= low
