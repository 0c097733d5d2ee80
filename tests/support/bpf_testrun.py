"""BPF_PROG_TEST_RUN: run a loaded XDP program on one frame inside the kernel.

Used by the BPF test tier (verdicts against the reference model) and by the benchmarks
(ns per packet, measured by the kernel over `repeat` runs).
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass

from nodeagent.bpf_syscall import ProgTestRunAttr, prog_test_run


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
    attr = prog_test_run(ProgTestRunAttr(prog_fd=prog_fd, data_size_in=len(frame), data_size_out=out_size,
                                         data_in=ctypes.addressof(data_in), data_out=ctypes.addressof(data_out),
                                         repeat=repeat))
    return RunResult(attr.retval, data_out.raw[:attr.data_size_out], attr.duration)
