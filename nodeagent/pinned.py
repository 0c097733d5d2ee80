"""Read-only access to a running filter's pinned maps (for `vipfarm stats` and the lab tests).

Uses the bpf(2) syscall directly, so reading counters needs neither bcc nor a compile.
"""
from __future__ import annotations

import ctypes
import os

from .bpf_layout import COUNTER_NAMES, NCOUNTERS, TABLE_WORDS
from .filter_tables import buckets_from_words

_SYS_BPF = 321
_BPF_MAP_LOOKUP_ELEM = 1
_BPF_OBJ_GET = 7
_libc = ctypes.CDLL(None, use_errno=True)


class _ObjGet(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32), ("path_fd", ctypes.c_int32), ("_pad", ctypes.c_uint32)]


class _Lookup(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


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
        name = ctypes.create_string_buffer(path.encode())
        attr = _ObjGet(pathname=ctypes.addressof(name))
        fd = _libc.syscall(_SYS_BPF, _BPF_OBJ_GET, ctypes.byref(attr), ctypes.sizeof(attr))
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"cannot open pinned map {path}: {os.strerror(err)}")
        self.fd = fd

    def lookup(self, key: int, value_size: int) -> bytes:
        k = ctypes.c_uint32(key)
        v = ctypes.create_string_buffer(value_size)
        attr = _Lookup(map_fd=self.fd, key=ctypes.addressof(k), value=ctypes.addressof(v))
        if _libc.syscall(_SYS_BPF, _BPF_MAP_LOOKUP_ELEM, ctypes.byref(attr), ctypes.sizeof(attr)) != 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return v.raw

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


def read_owned(pin_dir: str, slot: int) -> set[int]:
    with PinnedMap(os.path.join(pin_dir, "vf_active")) as m:
        half = slot * 2 + (int.from_bytes(m.lookup(slot, 4), "little") & 1)
    with PinnedMap(os.path.join(pin_dir, "vf_tables")) as m:
        mask = int.from_bytes(m.lookup(half, 8)[4:8], "little")
    with PinnedMap(os.path.join(pin_dir, "vf_owner")) as m:
        return buckets_from_words([int.from_bytes(m.lookup(half * TABLE_WORDS + w, 8), "little")
                                   for w in range((mask + 64) // 64)])
