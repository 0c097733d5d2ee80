"""BPF_PROG_TEST_RUN: run a loaded XDP program on one frame inside the kernel.

Used by the BPF test tier (verdicts against the reference model) and by the benchmarks
(ns per packet, measured by the kernel over `repeat` runs).
"""
from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass

_SYS_BPF = 321            # x86_64
_BPF_PROG_TEST_RUN = 10
_libc = ctypes.CDLL(None, use_errno=True)


class _TestAttr(ctypes.Structure):
    _fields_ = [
        ("prog_fd", ctypes.c_uint32),
        ("retval", ctypes.c_uint32),
        ("data_size_in", ctypes.c_uint32),
        ("data_size_out", ctypes.c_uint32),
        ("data_in", ctypes.c_uint64),
        ("data_out", ctypes.c_uint64),
        ("repeat", ctypes.c_uint32),
        ("duration", ctypes.c_uint32),
        ("ctx_size_in", ctypes.c_uint32),
        ("ctx_size_out", ctypes.c_uint32),
        ("ctx_in", ctypes.c_uint64),
        ("ctx_out", ctypes.c_uint64),
        ("flags", ctypes.c_uint32),
        ("cpu", ctypes.c_uint32),
        ("batch_size", ctypes.c_uint32),
        ("_pad", ctypes.c_uint32),
    ]


@dataclass(frozen=True)
class RunResult:
    verdict: int
    frame: bytes
    duration_ns: int      # average per run, as the kernel measured it


def run_xdp(prog_fd: int, frame: bytes, repeat: int = 1, out_room: int = 512) -> RunResult:
    if len(frame) < 14:
        raise ValueError("BPF_PROG_TEST_RUN needs at least an Ethernet header (14 bytes)")
    data_in = ctypes.create_string_buffer(frame, len(frame))
    out_size = len(frame) + out_room
    data_out = ctypes.create_string_buffer(out_size)
    attr = _TestAttr()
    attr.prog_fd = prog_fd
    attr.data_size_in = len(frame)
    attr.data_size_out = out_size
    attr.data_in = ctypes.addressof(data_in)
    attr.data_out = ctypes.addressof(data_out)
    attr.repeat = repeat
    rc = _libc.syscall(_SYS_BPF, _BPF_PROG_TEST_RUN, ctypes.byref(attr), ctypes.sizeof(attr))
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"BPF_PROG_TEST_RUN failed: {os.strerror(err)}")
    return RunResult(attr.retval, data_out.raw[:attr.data_size_out], attr.duration)
