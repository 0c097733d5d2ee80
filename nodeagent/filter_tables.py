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
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

from .bpf_consts import GLOBAL_SLOT, MAX_FARMS, NCOUNTERS, COUNTER_NAMES, TABLE_WORDS
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
        """Empty the slot: no buckets, no MAC, no lease (the next farm in it starts without one)."""
        _check_slot(slot)
        self.swap_ownership(slot, 0, 1, frozenset())
        self.farms[ctypes.c_uint32(slot)] = self.farms.Leaf()
        self.write_lease(slot, 0, 0)


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


def _check_slot(slot: int) -> None:
    if not 0 <= slot < MAX_FARMS:
        raise ValueError(f"farm slot {slot} out of range 0..{MAX_FARMS - 1}")
