"""Writing a FilterPlan into the filter's BPF maps, and reading its counters.

The lease (vf_lease, one struct vf_lease per farm slot) is two deadlines in bpf_ktime_get_ns()'s
clock, CLOCK_MONOTONIC, which is Python's time.monotonic_ns(): past syn_deadline the filter drops
new TCP flows (SYN without ACK) to this node's buckets of that farm; past deadline it drops every
packet to them. 0 in either means that stage is not in use; (0, 0) is no lease: always valid.

Ownership changes never open a window with zero or two owners on this node: the new bitmaps
(with their seed and mask) are written into the idle half of the farm's double-buffered table,
then one aligned 4-byte write to vf_active flips the farm to it. A packet reads vf_active
once, so it sees the old table or the new one, never a mix. Each word of a half holds 64
buckets' owned bits and their moving bits (handover) side by side (struct vf_bits), so owned
and moving change together in the same flip: there is no half-applied handover state.

UDP handover (vipfarm/udp_flows.py has the design): per farm slot, vf_udp_farm holds
(idle_ns, hold_until) (write_udp_config; idle 0 = off), and vf_udp_flows, one LRU table for
all farms of the interface, the UdpRecords user space hands the filter (put_udp_records,
udp_records, delete_udp_flows). The filter moves a record's last_ns forward on each packet of
the flow in a moving bucket and never deletes one: removing stale records is the caller's job
(the LRU evicts the least recently used when the table is full).
"""
from __future__ import annotations

import ctypes
import ipaddress
import socket
from dataclasses import dataclass
from typing import Iterable

from vipfarm.udp_flows import UdpFlow, UdpRecord, flow_order

from .bpf_consts import (COUNTER_NAMES, FAMILY_V4, FAMILY_V6, GLOBAL_SLOT, MAX_BUCKETS, MAX_FARMS,
                         MAX_UDP_FLOWS, NCOUNTERS, TABLE_WORDS)
from .filter_plan import FarmEntry, FilterPlan, VipEntry


def owner_words(owned: frozenset[int] | set[int], buckets: int) -> list[int]:
    """The bitmap words of one table half (only the words `buckets` needs)."""
    nwords = max(1, (buckets + 63) // 64)
    words = [0] * nwords
    for b in owned:
        if not 0 <= b < buckets:
            raise ValueError(f"bucket {b} is outside 0..{buckets - 1}")
        words[b >> 6] |= 1 << (b & 63)
    return words


def buckets_from_words(words: list[int]) -> set[int]:
    """The inverse of owner_words: the buckets whose bit is set."""
    owned = set()
    for w, bits in enumerate(words):
        while bits:
            low = bits & -bits
            owned.add(w * 64 + low.bit_length() - 1)
            bits ^= low
    return owned


@dataclass
class Counters:
    accepted: int = 0
    dropped: int = 0
    neigh_replied: int = 0
    neigh_punted: int = 0
    malformed: int = 0
    passed: int = 0
    lease_expired: int = 0
    lease_lapsed: int = 0
    handover_kept: int = 0
    handover_unknown_dropped: int = 0
    udp_kept: int = 0
    udp_elsewhere: int = 0
    udp_held: int = 0

    def as_dict(self) -> dict[str, int]:
        return {n: getattr(self, n) for n in COUNTER_NAMES}


class FilterTables:
    """The maps of one loaded filter (a bcc BPF object)."""

    def __init__(self, bpf):
        self.vips = bpf[b"vf_vips"]
        self.farms = bpf[b"vf_farms"]
        self.active = bpf[b"vf_active"]
        self.tables = bpf[b"vf_tables"]
        self.owner = bpf[b"vf_owner"]
        self.stats = bpf[b"vf_stats"]
        self.lease = bpf[b"vf_lease"]
        self.udp_flows = bpf[b"vf_udp_flows"]
        self.udp_farm = bpf[b"vf_udp_farm"]

    # -- reading ------------------------------------------------------------------------
    def vip_keys(self) -> set[tuple[int, bytes]]:
        out = set()
        for k in self.vips.keys():
            size = 4 if k.family == 4 else 16
            out.add((k.family, bytes(k.addr[:size])))
        return out

    def active_half(self, slot: int) -> int:
        return self.active[ctypes.c_uint32(slot)].value & 1

    def _live_words(self, slot: int, field: str) -> list[int]:
        half = slot * 2 + self.active_half(slot)
        mask = self.tables[ctypes.c_uint32(half)].mask
        return [getattr(self.owner[ctypes.c_uint32(half * TABLE_WORDS + w)], field)
                for w in range((mask + 64) // 64)]

    def owned_buckets(self, slot: int) -> set[int]:
        return buckets_from_words(self._live_words(slot, "owned"))

    def moving_buckets(self, slot: int) -> set[int]:
        """The slot's buckets in handover, in the live half."""
        return buckets_from_words(self._live_words(slot, "moving"))

    def read_lease(self, slot: int) -> tuple[int, int]:
        """The slot's lease, (syn_deadline, deadline) in ns, CLOCK_MONOTONIC; 0 = stage not in use."""
        _check_slot(slot)
        leaf = self.lease[ctypes.c_uint32(slot)]
        return leaf.syn_deadline, leaf.deadline

    def read_udp_config(self, slot: int) -> tuple[int, int]:
        """The slot's UDP handover settings, (idle_ns, hold_until_ns); idle 0 = off."""
        _check_slot(slot)
        leaf = self.udp_farm[ctypes.c_uint32(slot)]
        return leaf.idle_ns, leaf.hold_until

    def udp_records(self, slot: int) -> list[UdpRecord]:
        """Every entry of the slot in the UDP flow table, stale ones too, sorted by flow
        (vipfarm.udp_flows.flow_order)."""
        _check_slot(slot)
        out = [UdpRecord(_udp_flow(k), v.last, bool(v.mine), v.bucket)
               for k, v in self._udp_entries() if k.farm == slot]
        return sorted(out, key=lambda r: flow_order(r.flow))

    def udp_record(self, slot: int, flow: UdpFlow) -> UdpRecord | None:
        """The slot's record of one flow (one lookup), or None."""
        _check_slot(slot)
        _check_udp_flow(slot, flow)
        try:
            v = self.udp_flows[self._udp_key(slot, flow)]
        except KeyError:
            return None
        return UdpRecord(flow, v.last, bool(v.mine), v.bucket)

    def _udp_entries(self) -> list:
        """(key, leaf) of every entry of the table: one batch syscall where the kernel has it."""
        try:
            return list(self.udp_flows.items_lookup_batch())
        except Exception:  # older kernels/bcc without batch ops
            return list(self.udp_flows.items())

    def counters(self, slot: int) -> Counters:
        c = Counters()
        for i, name in enumerate(COUNTER_NAMES):
            values = self.stats[ctypes.c_uint32(slot * NCOUNTERS + i)]
            setattr(c, name, sum(v.value if hasattr(v, "value") else int(v) for v in values))
        return c

    def global_counters(self) -> Counters:
        return self.counters(GLOBAL_SLOT)

    # -- writing ------------------------------------------------------------------------
    def _vip_key(self, family: int, addr: bytes):
        k = self.vips.Key()
        k.family = family
        for i, b in enumerate(addr):
            k.addr[i] = b
        return k

    def _vip_leaf(self, v: VipEntry):
        leaf = self.vips.Leaf()
        leaf.farm = v.slot
        leaf.nrules = len(v.rules)
        for i, r in enumerate(v.rules):
            leaf.rules[i].proto = r.proto
            leaf.rules[i].affinity = r.affinity
            leaf.rules[i].port_lo = r.port_lo
            leaf.rules[i].port_hi = r.port_hi
        return leaf

    def write_lease(self, slot: int, syn_deadline_ns: int, deadline_ns: int) -> None:
        """Set the slot's lease (ns, CLOCK_MONOTONIC; 0 = that stage not in use). One map
        update of both deadlines: cheap enough for every heartbeat. The kernel copies the 16
        bytes without a lock, so a packet may read one deadline of this renewal and one of the
        previous: each is a deadline the agent wrote, at most one renewal old, so nothing is
        dropped that a lease in force would take."""
        _check_slot(slot)
        check_lease(slot, syn_deadline_ns, deadline_ns)
        leaf = self.lease.Leaf()
        leaf.syn_deadline = syn_deadline_ns
        leaf.deadline = deadline_ns
        self.lease[ctypes.c_uint32(slot)] = leaf

    def write_udp_config(self, slot: int, idle_ns: int, hold_until_ns: int) -> None:
        """Set the slot's UDP handover: idle_ns (a record is fresh while now - last_ns <= idle_ns;
        0 turns UDP handover off for the farm) and hold_until_ns (CLOCK_MONOTONIC ns: until
        then, a UDP packet in a moving bucket with no fresh record is dropped; 0 = no hold).
        One map update. The kernel copies the 16 bytes without a lock, so a packet may read one
        field of this write and the other of the previous one: write the hold before turning
        idle on, and idle off before clearing the hold, when the order matters."""
        _check_slot(slot)
        check_udp_config(slot, idle_ns, hold_until_ns)
        leaf = self.udp_farm.Leaf()
        leaf.idle_ns = idle_ns
        leaf.hold_until = hold_until_ns
        self.udp_farm[ctypes.c_uint32(slot)] = leaf

    def put_udp_records(self, slot: int, records: Iterable[UdpRecord]) -> None:
        """Insert or overwrite the slot's records (keyed by flow). Every record is checked
        before the first is written, so a bad one writes nothing."""
        _check_slot(slot)
        records = list(records)
        for r in records:
            check_udp_record(slot, r)
        if not records:
            return
        Key, Leaf = self.udp_flows.Key, self.udp_flows.Leaf
        keys = [self._udp_key(slot, r.flow) for r in records]
        leaves = [Leaf(r.last_ns, int(r.mine), r.bucket) for r in records]
        for start in range(0, len(keys), MAX_UDP_FLOWS):
            k, v = keys[start:start + MAX_UDP_FLOWS], leaves[start:start + MAX_UDP_FLOWS]
            try:
                self.udp_flows.items_update_batch((Key * len(k))(*k), (Leaf * len(v))(*v))
            except Exception:  # older kernels/bcc without batch ops
                for key, leaf in zip(k, v):
                    self.udp_flows[key] = leaf

    def delete_udp_flows(self, slot: int, flows: Iterable[UdpFlow]) -> None:
        """Remove the slot's records of `flows`; flows without a record are ignored."""
        _check_slot(slot)
        flows = list(flows)
        for f in flows:
            _check_udp_flow(slot, f)
        self._delete_udp_keys([self._udp_key(slot, f) for f in flows])

    def _delete_udp_keys(self, keys: list) -> None:
        if not keys:
            return
        try:
            for start in range(0, len(keys), MAX_UDP_FLOWS):
                chunk = keys[start:start + MAX_UDP_FLOWS]
                self.udp_flows.items_delete_batch((self.udp_flows.Key * len(chunk))(*chunk))
        except Exception:   # a missing key stops the batch (ENOENT), or no batch ops: one by one
            for key in keys:
                try:
                    del self.udp_flows[key]
                except KeyError:
                    pass

    def _udp_key(self, slot: int, flow: UdpFlow):
        k = self.udp_flows.Key()
        k.farm = slot
        k.family = FAMILY_V4 if flow.client.version == 4 else FAMILY_V6
        client, vip = flow.client.packed, flow.vip.packed
        k.client[:len(client)] = client
        k.vip[:len(vip)] = vip
        k.sport = socket.htons(flow.client_port)     # network order in memory, as in the packet
        k.dport = socket.htons(flow.vip_port)
        return k

    def write_farm(self, f: FarmEntry) -> None:
        """Farm MAC, then the idle table half, then the flip. Idempotent."""
        leaf = self.farms.Leaf()
        for i, b in enumerate(f.vmac):
            leaf.vmac[i] = b
        leaf.flags = 1
        self.farms[ctypes.c_uint32(f.slot)] = leaf
        self.swap_ownership(f.slot, f.seed, f.buckets, f.owned, f.moving)

    def swap_ownership(self, slot: int, seed: int, buckets: int, owned: frozenset[int],
                       moving: frozenset[int] = frozenset()) -> bool:
        """Make `owned` and `moving` (the buckets in handover) live for `slot` in one flip;
        False if they already were (nothing written)."""
        cur = self.active_half(slot)
        cur_meta = self.tables[ctypes.c_uint32(slot * 2 + cur)]
        if (cur_meta.seed == seed and cur_meta.mask == buckets - 1
                and self.owned_buckets(slot) == set(owned) and self.moving_buckets(slot) == set(moving)):
            return False
        owned_w = owner_words(owned, buckets)
        try:
            moving_w = owner_words(moving, buckets)
        except ValueError as e:
            raise ValueError(f"moving buckets of farm slot {slot}: {e}; pass buckets of this farm "
                             f"(0..{buckets - 1})") from None
        idle = 1 - cur
        half = slot * 2 + idle
        # Words past buckets/64 may hold stale bits; the mask keeps packets from reading them.
        base = half * TABLE_WORDS
        Leaf = self.owner.Leaf
        keys = (ctypes.c_uint32 * len(owned_w))(*(base + i for i in range(len(owned_w))))
        vals = (Leaf * len(owned_w))(*(Leaf(o, m) for o, m in zip(owned_w, moving_w)))
        try:
            self.owner.items_update_batch(keys, vals)
        except Exception:  # older kernels/bcc without batch ops
            for i, (o, m) in enumerate(zip(owned_w, moving_w)):
                self.owner[ctypes.c_uint32(base + i)] = Leaf(o, m)
        meta = self.tables.Leaf()
        meta.seed = seed
        meta.mask = buckets - 1
        self.tables[ctypes.c_uint32(half)] = meta
        self.active[ctypes.c_uint32(slot)] = ctypes.c_uint32(idle)   # the flip
        return True

    def apply(self, plan: FilterPlan, previous_slots: set[int] = frozenset()) -> None:
        """Bring the maps to `plan`: farms first, then VIPs, then removal of the rest.

        VIPs are added only after their farm's table is live, and removed before their farm
        is cleared, so a VIP never points at a half-written farm.
        """
        for f in plan.farms:
            self.write_farm(f)
        wanted = {v.key: v for v in plan.vips}
        for v in plan.vips:
            self.vips[self._vip_key(v.family, v.addr)] = self._vip_leaf(v)
        for key in self.vip_keys() - set(wanted):
            del self.vips[self._vip_key(*key)]
        live_slots = {f.slot for f in plan.farms}
        for slot in set(previous_slots) - live_slots:
            self.clear_farm(slot)

    def clear_farm(self, slot: int) -> None:
        """Empty the slot: no buckets, no MAC, no lease, no UDP handover settings and no UDP
        records (the next farm in it starts without any)."""
        _check_slot(slot)
        self.swap_ownership(slot, 0, 1, frozenset())
        self.farms[ctypes.c_uint32(slot)] = self.farms.Leaf()
        self.write_lease(slot, 0, 0)
        self.write_udp_config(slot, 0, 0)
        self._delete_udp_keys([k for k, _ in self._udp_entries() if k.farm == slot])


def check_lease(slot: int, syn_deadline_ns: int, deadline_ns: int) -> None:
    """Pure: raise ValueError unless the two deadlines make a lease the filter can hold."""
    for name, value in (("syn_deadline", syn_deadline_ns), ("deadline", deadline_ns)):
        if not 0 <= value < 1 << 64:
            raise ValueError(f"lease {name} {value} for farm slot {slot} is not a u64 nanosecond time; "
                             f"pass time.monotonic_ns() + the lease length, or 0 for none")
    if syn_deadline_ns and deadline_ns and syn_deadline_ns > deadline_ns:
        raise ValueError(f"lease for farm slot {slot}: syn_deadline {syn_deadline_ns} is after deadline "
                         f"{deadline_ns}, so the node would drop every packet before it stopped taking "
                         f"new flows; pass deadline = syn_deadline + the heartbeat interval")


def check_udp_config(slot: int, idle_ns: int, hold_until_ns: int) -> None:
    """Pure: raise ValueError unless (idle_ns, hold_until_ns) is a UDP setting the filter can hold.
    idle_ns must fit an s64: the filter compares now - last with it as signed numbers."""
    if isinstance(idle_ns, bool) or not isinstance(idle_ns, int) or not 0 <= idle_ns < 1 << 63:
        raise ValueError(f"UDP idle_ns {idle_ns!r} for farm slot {slot} is not a duration in ns "
                         f"0..2**63-1; pass udpIdleSeconds * 10**9 (vipfarm.udp_flows.idle_ns), or 0 for off")
    if isinstance(hold_until_ns, bool) or not isinstance(hold_until_ns, int) or not 0 <= hold_until_ns < 1 << 64:
        raise ValueError(f"UDP hold_until {hold_until_ns!r} for farm slot {slot} is not a u64 nanosecond "
                         f"time; pass time.monotonic_ns() + the hold, or 0 for none")


def check_udp_record(slot: int, record: UdpRecord) -> None:
    """Pure: raise ValueError unless `record` is a UdpRecord the filter's table can hold."""
    if not isinstance(record, UdpRecord) or not isinstance(record.flow, UdpFlow):
        raise ValueError(f"UDP record for farm slot {slot}: {record!r} is not a UdpRecord of a UdpFlow; "
                         f"build it with vipfarm.udp_flows.UdpRecord(UdpFlow(...), last_ns, mine, bucket)")
    if isinstance(record.last_ns, bool) or not isinstance(record.last_ns, int) or not 0 <= record.last_ns < 1 << 64:
        raise ValueError(f"UDP record {record.flow} for farm slot {slot}: last_ns {record.last_ns!r} is not a "
                         f"u64 CLOCK_MONOTONIC time; pass time.monotonic_ns() less the flow's age")
    if not isinstance(record.mine, bool):
        raise ValueError(f"UDP record {record.flow} for farm slot {slot}: mine {record.mine!r} is not True or False")
    if isinstance(record.bucket, bool) or not isinstance(record.bucket, int) or not 0 <= record.bucket < MAX_BUCKETS:
        raise ValueError(f"UDP record {record.flow} for farm slot {slot}: bucket {record.bucket!r} is outside "
                         f"0..{MAX_BUCKETS - 1}; pass vipfarm.udp_flows.udp_bucket(farm, flow)")


def _check_udp_flow(slot: int, flow: UdpFlow) -> None:
    if not isinstance(flow, UdpFlow):
        raise ValueError(f"UDP flow for farm slot {slot}: {flow!r} is not a UdpFlow; pass "
                         f"vipfarm.udp_flows.UdpFlow values (a record's .flow)")


def _udp_flow(key) -> UdpFlow:
    """The UdpFlow of a vf_udp_flows key (the inverse of FilterTables._udp_key)."""
    if key.family == FAMILY_V4:
        make, size = ipaddress.IPv4Address, 4
    else:
        make, size = ipaddress.IPv6Address, 16
    return UdpFlow(make(bytes(key.client[:size])), socket.ntohs(key.sport),
                   make(bytes(key.vip[:size])), socket.ntohs(key.dport))


def _check_slot(slot: int) -> None:
    if not 0 <= slot < MAX_FARMS:
        raise ValueError(f"farm slot {slot} out of range 0..{MAX_FARMS - 1}")
