"""Renewing each farm's lease in the XDP filter from the heartbeat thread.

The lease has two stages, both deadlines per farm in the pinned `vf_lease` map (bpf/): once
bpf_ktime_get_ns() passes syn_deadline, the filter stops accepting new TCP flows (SYN) for this
node's buckets of the farm; once the clock passes deadline (the heartbeat thread writes
syn_deadline + one interval), it drops every packet to them, so a node whose agent is gone does
not answer its successor's clients with RSTs. The heartbeat thread renews both while its node
is in a quorum view, so an agent that is frozen, stuck, killed or cut off stops taking new flows
by itself, then steps out, before its peers take its buckets over.

Two ways to the map, one writer:
  * a started interface: NodeDataplanes.set_lease, which takes the interface's slot lock, so
    a renewal never lands in a slot that apply() is freeing for another farm;
  * before this agent has compiled anything (a restart adopts the previous agent's filter):
    the pinned map itself, with the bpf(2) syscall, at the slot the state file names, so the
    adopted filter keeps taking new flows through the ~10 s compile. The main thread
    publishes those locations (`publish`, a plain attribute swap) and withdraws them once
    its own dataplane runs.
"""
from __future__ import annotations

import ctypes
import logging
import os
import struct
from typing import Mapping

from .bpf_syscall import map_lookup, map_update, obj_get

log = logging.getLogger("vipfarm.lease")

LEASE_MAP = "vf_lease"


class LeaseWriter:
    def __init__(self, dataplanes=None) -> None:
        self.dataplanes = dataplanes          # NodeDataplanes (None in tests)
        self._where: Mapping[str, tuple[str, int]] = {}
        self._published = 0       # bumped by publish(); the renewing thread reopens its fds after
        self._opened_for = 0
        self._fds: dict[str, int] = {}
        self.failures = 0

    def publish(self, where: Mapping[str, tuple[str, int]]) -> None:
        """farm -> (pin dir, slot) of an adopted filter this agent has not started yet."""
        self._where = dict(where)
        self._published += 1      # a restarted interface has new maps under the same pin paths

    def renew(self, farm: str, syn_deadline_ns: int, deadline_ns: int) -> bool:
        """Write both deadlines (CLOCK_MONOTONIC ns; 0 = that stage not in use). False when the
        farm has no filter yet or the write failed (logged once per failure streak)."""
        if self.dataplanes is not None:
            try:
                if self.dataplanes.set_lease(farm, syn_deadline_ns, deadline_ns):
                    self.failures = 0
                    return True
            except Exception as e:            # a map write failing must not kill the heartbeats
                if self.failures == 0:
                    log.warning("event=lease_write_failed farm=%s error=%r", farm, str(e))
                self.failures += 1
                return False
        if self._opened_for != self._published:
            self.close()
            self._opened_for = self._published
        where = self._where.get(farm)
        if where is None:
            return False
        pin_dir, slot = where
        try:
            fd = self._fds.get(pin_dir)
            if fd is None:
                fd = self._fds[pin_dir] = obj_get(os.path.join(pin_dir, LEASE_MAP))
            # struct vf_lease: syn_deadline then deadline, u64 each. An adopted filter from before
            # the second stage has an 8-byte value; the kernel copies only value_size bytes, so
            # it gets syn_deadline, which is what its single deadline meant.
            map_update(fd, bytes(ctypes.c_uint32(slot)), lease_value(syn_deadline_ns, deadline_ns))
        except OSError as e:
            stale = self._fds.pop(pin_dir, None)
            if stale is not None:
                os.close(stale)
            if self.failures == 0:
                log.warning("event=lease_write_failed farm=%s pin_dir=%s error=%r", farm, pin_dir, str(e))
            self.failures += 1
            return False
        self.failures = 0
        return True

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()


def adopted_lease_live(pin_dir: str, slot: int, now_ns: int) -> bool:
    """Whether a previous agent's lease on an adopted filter still runs (its SYN stage not
    past): the restart came before the peers could take the filter's buckets over, so the new
    agent may go on renewing it. Past it, the peers may own those buckets now (a failover),
    and the adopted filter, whose moving bits know nothing of their flows, must not be brought
    back to life: it waits for the new agent's own first programming. Unreadable: not live."""
    try:
        fd = obj_get(os.path.join(pin_dir, LEASE_MAP))
    except OSError:
        return False
    try:
        value = map_lookup(fd, bytes(ctypes.c_uint32(slot)), 16)
    except OSError:
        return False
    finally:
        os.close(fd)
    syn_deadline = int.from_bytes(value[:8], "little")
    return syn_deadline == 0 or syn_deadline > now_ns


def lease_value(syn_deadline_ns: int, deadline_ns: int) -> bytes:
    """The 16 bytes of a struct vf_lease (bpf/vipfarm_structs.h), as the map stores them."""
    return struct.pack("<QQ", syn_deadline_ns, deadline_ns)
