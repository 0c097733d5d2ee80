"""The bpf(2) system call, for the few commands vipfarm issues without bcc.

Reading a running filter's pinned maps (`vipfarm stats`, the lab) needs neither bcc nor a
compile, and BPF_PROG_TEST_RUN (the BPF test tier, the benchmarks) has no bcc wrapper. The
syscall number depends on the architecture; an unknown one is a clear error, not a wrong call.
"""
from __future__ import annotations

import ctypes
import os
import platform

# __NR_bpf per architecture (arch/*/include/uapi/asm/unistd*.h; asm-generic for arm64/riscv).
SYSCALL_NUMBERS = {"x86_64": 321, "i686": 357, "i386": 357, "aarch64": 280, "arm64": 280,
                   "riscv64": 280, "armv7l": 386, "armv8l": 386, "ppc64le": 361, "ppc64": 361,
                   "s390x": 351, "loongarch64": 280}

BPF_MAP_LOOKUP_ELEM = 1
BPF_MAP_UPDATE_ELEM = 2
BPF_OBJ_GET = 7
BPF_PROG_TEST_RUN = 10
BPF_F_TEST_XDP_LIVE_FRAMES = 1 << 1

_libc = ctypes.CDLL(None, use_errno=True)


def syscall_number(machine: str | None = None) -> int:
    machine = machine or platform.machine()
    try:
        return SYSCALL_NUMBERS[machine]
    except KeyError:
        raise OSError(f"bpf(2): no syscall number known for machine {machine!r}; add it to "
                      f"nodeagent/bpf_syscall.py SYSCALL_NUMBERS (see the kernel's unistd.h)") from None


def bpf(cmd: int, attr: ctypes.Structure, what: str) -> int:
    """Issue bpf(cmd, &attr); OSError naming `what` on failure."""
    rc = _libc.syscall(syscall_number(), cmd, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return rc


class ObjGetAttr(ctypes.Structure):
    _fields_ = [("pathname", ctypes.c_uint64), ("bpf_fd", ctypes.c_uint32),
                ("file_flags", ctypes.c_uint32), ("path_fd", ctypes.c_int32), ("_pad", ctypes.c_uint32)]


class MapElemAttr(ctypes.Structure):
    _fields_ = [("map_fd", ctypes.c_uint32), ("_pad", ctypes.c_uint32), ("key", ctypes.c_uint64),
                ("value", ctypes.c_uint64), ("flags", ctypes.c_uint64)]


class ProgTestRunAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32), ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32), ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64), ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32), ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32), ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64), ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32), ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32), ("_pad", ctypes.c_uint32),
    ]


def obj_get(path: str) -> int:
    """A file descriptor for a pinned BPF object (the caller closes it)."""
    name = ctypes.create_string_buffer(path.encode())
    return bpf(BPF_OBJ_GET, ObjGetAttr(pathname=ctypes.addressof(name)), f"cannot open pinned map {path}")


def map_update(map_fd: int, key: bytes, value: bytes) -> None:
    """BPF_MAP_UPDATE_ELEM with BPF_ANY (the only writer without bcc: the lease renewals)."""
    k, v = ctypes.create_string_buffer(key, len(key)), ctypes.create_string_buffer(value, len(value))
    attr = MapElemAttr(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(v), flags=0)
    bpf(BPF_MAP_UPDATE_ELEM, attr, "BPF_MAP_UPDATE_ELEM")


def map_lookup(map_fd: int, key: bytes, value_size: int) -> bytes:
    k = ctypes.create_string_buffer(key, len(key))
    v = ctypes.create_string_buffer(value_size)
    bpf(BPF_MAP_LOOKUP_ELEM, MapElemAttr(map_fd=map_fd, key=ctypes.addressof(k), value=ctypes.addressof(v)),
        "map lookup")
    return v.raw


def prog_test_run(attr: ProgTestRunAttr, what: str = "BPF_PROG_TEST_RUN") -> ProgTestRunAttr:
    bpf(BPF_PROG_TEST_RUN, attr, what)
    return attr
