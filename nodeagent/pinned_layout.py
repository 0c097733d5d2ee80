"""Does an adopted pin still have the shape this program declares?

bcc's BPF_TABLE_PINNED reuses whatever map is pinned at the path: with bcc 0.26 on this
kernel, a pin with fewer entries (or another value size) than the program declares is adopted
silently (checked by hand: a 10-entry pin under a 20-entry declaration loads, and lookups past
entry 9 fail in the program and from Python). An agent upgraded across a layout change, such as
vf_stats growing by a counter, would then count into the wrong cells or not at all.

So after bcc opened the maps and before the program is loaded, each adopted pin is compared with
its declaration. A map that only observes or can restart empty (the counters; the lease, where 0
means none; the UDP handover table and settings, whose loss only ends the UDP handovers in
progress) is re-created, with the loss logged. A map that holds what the node serves
(ownership, VIPs, farms) is never thrown away behind the operator's back: the agent stops with
an error that names the pin and the fix, unless the change is a known one this module migrates:
vf_owner, whose value grew from one u64 of owned bits to struct vf_bits (owned, then moving) for
handover. Its old pin is copied word for word into the new map (owned kept, moving empty: no
bucket was in handover under an agent that had none) before the new program is loaded, so the
node keeps serving exactly what it served; the old program keeps its own copy until the new one
replaces it. The cost of that upgrade: one read of each of the 65,536 old words and one write per
non-zero word, well under a second, once.
"""
from __future__ import annotations

import ctypes
import logging
import os
from dataclasses import dataclass, replace

log = logging.getLogger("vipfarm.pins")

# Maps that may be re-created empty, and what is lost (logged): counters restart at 0; a lease of
# (0, 0) is "no lease" (the heartbeat thread writes the next one within an interval); an empty UDP
# flow table and UDP settings of (0, 0) only end the UDP handovers in progress (their flows go to
# the buckets' owners, as without UDP handover). vf_stats has changed shape by counters
# (lease_expired, lease_lapsed; then handover_kept, handover_unknown_dropped; then udp_kept,
# udp_elsewhere, udp_held), vf_lease from one u64 to struct vf_lease (two stages).
LOST_ON_RECREATION = {"vf_stats": "counters", "vf_lease": "lease", "vf_udp_flows": "udp_flows",
                      "vf_udp_farm": "udp_config"}
RECREATABLE = frozenset(LOST_ON_RECREATION)
FIELDS = ("map_type", "key_size", "value_size", "max_entries")
OLD_OWNER_VALUE_SIZE = 8      # vf_owner before handover: one u64 of owned bits per 64 buckets


@dataclass(frozen=True)
class Shape:
    map_type: int
    key_size: int
    value_size: int
    max_entries: int


@dataclass(frozen=True)
class Mismatch:
    name: str
    path: str
    declared: Shape
    pinned: Shape

    @property
    def differences(self) -> str:
        return ", ".join(f"{f} pinned={getattr(self.pinned, f)} declared={getattr(self.declared, f)}"
                         for f in FIELDS if getattr(self.pinned, f) != getattr(self.declared, f))


def mismatch(name: str, path: str, declared: Shape, pinned: Shape) -> Mismatch | None:
    """Pure: the difference between a declaration and the pinned map, if any."""
    return None if declared == pinned else Mismatch(name, path, declared, pinned)


def migratable(m: Mismatch) -> bool:
    """Pure: whether the pin is vf_owner of the shape before handover, which is copied over."""
    return (m.name == "vf_owner" and m.declared.value_size == 2 * OLD_OWNER_VALUE_SIZE
            and m.pinned == replace(m.declared, value_size=OLD_OWNER_VALUE_SIZE))


def unusable(mismatches: list[Mismatch]) -> str | None:
    """Pure: the error for pins that must not be re-created, or None when all may be."""
    bad = [m for m in mismatches if m.name not in RECREATABLE and not migratable(m)]
    if not bad:
        return None
    pin_dir = os.path.dirname(bad[0].path)
    detail = "; ".join(f"{m.path}: {m.differences}" for m in bad)
    return (f"pinned BPF maps do not match the filter this agent compiles ({detail}): they were "
            f"made by an agent with another map layout, and replacing them would drop what this "
            f"node serves. Stop the old agent gracefully (SIGTERM in standalone mode) so it removes "
            f"its pins, or detach its XDP program and remove {pin_dir}, then start this agent")


def fd_shape(fd: int) -> Shape:
    """The shape of an open map, from /proc/self/fdinfo."""
    values = {}
    with open(f"/proc/self/fdinfo/{fd}", encoding="ascii") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in FIELDS:
                values[key] = int(value.strip())
    return Shape(**values)


def declared_shape(bpf, table) -> Shape:
    from bcc.libbcc import lib
    return Shape(table.ttype, lib.bpf_table_key_size_id(bpf.module, table.map_id),
                 lib.bpf_table_leaf_size_id(bpf.module, table.map_id), table.max_entries)


def adopted_mismatches(bpf, pin_dir: str, adopted: set[str]) -> list[Mismatch]:
    """The maps pinned in pin_dir before this compile whose shape differs from the program's."""
    out = []
    for name in sorted(adopted):
        try:
            table = bpf[name.encode()]
        except KeyError:
            continue                      # a pin this program no longer declares: not ours to judge
        m = mismatch(name, os.path.join(pin_dir, name), declared_shape(bpf, table), fd_shape(table.map_fd))
        if m:
            out.append(m)
    return out


def open_migrations(mismatches: list[Mismatch]) -> dict[str, tuple[Mismatch, int]]:
    """Open the old pins that are migrated (before remove_for_recreation unpins them): name ->
    (mismatch, fd). The caller closes the fds (migrate() does)."""
    from .bpf_syscall import obj_get
    return {m.name: (m, obj_get(m.path)) for m in mismatches if migratable(m)}


def migrate(bpf, opened: dict[str, tuple[Mismatch, int]]) -> None:
    """Copy each opened old pin into the freshly pinned map of the new program, then close it."""
    from .bpf_syscall import map_lookup
    for name, (m, fd) in opened.items():
        try:
            table = bpf[name.encode()]
            kept = 0
            for k in range(m.pinned.max_entries):
                owned = int.from_bytes(map_lookup(fd, bytes(ctypes.c_uint32(k)), OLD_OWNER_VALUE_SIZE), "little")
                if owned:
                    table[ctypes.c_uint32(k)] = table.Leaf(owned, 0)
                    kept += 1
        finally:
            os.close(fd)
        log.warning("event=pin_migrated path=%s value_size=%d->%d words_kept=%d moving=none",
                    m.path, m.pinned.value_size, m.declared.value_size, kept)


def remove_for_recreation(mismatches: list[Mismatch]) -> None:
    """Unpin re-creatable (and migrated) maps of another shape; the next compile pins fresh ones.
    A program still attached keeps its own reference until the new one replaces it."""
    for m in mismatches:
        if migratable(m):
            os.unlink(m.path)           # migrate() logs it, with what it kept
            continue
        log.warning("event=pin_recreated path=%s reason=shape_differs %s lost=%s", m.path,
                    " ".join(f"{f}={getattr(m.pinned, f)}->{getattr(m.declared, f)}"
                             for f in FIELDS if getattr(m.pinned, f) != getattr(m.declared, f)),
                    LOST_ON_RECREATION[m.name])
        os.unlink(m.path)
