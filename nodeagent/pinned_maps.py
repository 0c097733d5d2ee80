"""Read-only access to a running filter's pinned maps (for `vipfarm stats` and the lab tests).

Uses the bpf(2) syscall directly (nodeagent/bpf_syscall.py), so reading counters needs
neither bcc nor a compile.
"""
from __future__ import annotations

import ctypes
import os

from .bpf_consts import COUNTER_NAMES, NCOUNTERS, TABLE_WORDS
from .bpf_syscall import map_lookup, obj_get
from .filter_tables import buckets_from_words


def possible_cpus() -> int:
    with open("/sys/devices/system/cpu/possible") as f:
        text = f.read().strip()
    count = 0
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        count += int(hi or lo) - int(lo) + 1
    return count


class PinnedMap:
    def __init__(self, path: str):
        self.fd = obj_get(path)

    def lookup(self, key: int, value_size: int) -> bytes:
        return map_lookup(self.fd, bytes(ctypes.c_uint32(key)), value_size)

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_counters(pin_dir: str, slot: int) -> dict[str, int]:
    ncpu = possible_cpus()
    out = {}
    with PinnedMap(os.path.join(pin_dir, "vf_stats")) as m:
        for i, name in enumerate(COUNTER_NAMES):
            raw = m.lookup(slot * NCOUNTERS + i, 8 * ncpu)
            out[name] = sum(int.from_bytes(raw[c * 8:(c + 1) * 8], "little") for c in range(ncpu))
    return out


OWNER_VALUE_SIZE = 16      # struct vf_bits: owned u64, then moving u64


def _read_bits(pin_dir: str, slot: int, offset: int) -> set[int]:
    with PinnedMap(os.path.join(pin_dir, "vf_active")) as m:
        half = slot * 2 + (int.from_bytes(m.lookup(slot, 4), "little") & 1)
    with PinnedMap(os.path.join(pin_dir, "vf_tables")) as m:
        mask = int.from_bytes(m.lookup(half, 8)[4:8], "little")
    with PinnedMap(os.path.join(pin_dir, "vf_owner")) as m:
        return buckets_from_words([
            int.from_bytes(m.lookup(half * TABLE_WORDS + w, OWNER_VALUE_SIZE)[offset:offset + 8], "little")
            for w in range((mask + 64) // 64)])


def read_owned(pin_dir: str, slot: int) -> set[int]:
    return _read_bits(pin_dir, slot, 0)


def read_moving(pin_dir: str, slot: int) -> set[int]:
    """The slot's buckets in handover (the moving bits of the live half)."""
    return _read_bits(pin_dir, slot, 8)
