"""BPF tier: an agent that adopts pins made by a filter with another map layout (an upgrade
across a change such as a new counter) re-creates what may restart empty and refuses the rest.

bcc itself adopts a pin of any size (pinned_layout.py says what was seen), so these tests pin
maps of the old shapes by hand, then compile the real filter against them."""
from __future__ import annotations

import ipaddress
import logging
import os
import shutil
import uuid

import pytest

from nodeagent.bpf_consts import GLOBAL_SLOT, MAX_FARMS, MAX_UDP_FLOWS, NCOUNTERS
from nodeagent.bpf_program import DataplaneError, compile_filter, import_bcc
from nodeagent.bpf_syscall import obj_get
from nodeagent.dataplane import is_bpffs
from nodeagent.filter_tables import FilterTables
from nodeagent.pinned_layout import fd_shape
from tests.bpf.test_filter_vs_model import OWN_MAC
from vipfarm.udp_flows import UdpFlow, UdpRecord

OLD_NCOUNTERS = 6                       # vf_stats before lease_expired
OLD_LEASE_VALUE = "__u64"               # vf_lease before the second stage (struct vf_lease)


@pytest.fixture
def pin_dir():
    if not is_bpffs("/sys/fs/bpf"):
        pytest.skip("/sys/fs/bpf is not a BPF filesystem (mount -t bpf bpf /sys/fs/bpf)")
    path = f"/sys/fs/bpf/vipfarm-test-{uuid.uuid4().hex[:8]}/n1/eth0"
    os.makedirs(path)
    yield path
    shutil.rmtree(os.path.dirname(os.path.dirname(path)), ignore_errors=True)


def pin_map(path: str, kind: str, value: str, entries: int) -> None:
    """Pin a map of the given shape at path, as an older filter would have left it."""
    bcc = import_bcc()
    name = os.path.basename(path)
    b = bcc.BPF(text=(f'BPF_TABLE_PINNED("{kind}", __u32, {value}, {name}, {entries}, "{path}");\n'
                      f'int p(struct xdp_md *c) {{ __u32 k = 0; {name}.lookup(&k); return XDP_PASS; }}').encode())
    b.load_func(b"p", bcc.BPF.XDP)
    b.cleanup()
    assert os.path.exists(path)


def test_an_adopted_counter_map_of_the_old_size_is_recreated_with_the_new_one(pin_dir, caplog):
    old = os.path.join(pin_dir, "vf_stats")
    pin_map(old, "percpu_array", "__u64", (MAX_FARMS + 1) * OLD_NCOUNTERS)
    with caplog.at_level(logging.WARNING, logger="vipfarm.pins"):
        bpf = compile_filter(OWN_MAC, True, pin_dir=pin_dir)
    try:
        assert fd_shape(bpf[b"vf_stats"].map_fd).max_entries == (GLOBAL_SLOT + 1) * NCOUNTERS
        # The pin is the new map, so the next agent and `vipfarm stats` see the same one.
        with open(f"/proc/self/fdinfo/{bpf[b'vf_stats'].map_fd}") as f:
            map_id = [ln for ln in f if ln.startswith("map_id:")][0]
        fd = obj_get(old)
        try:
            with open(f"/proc/self/fdinfo/{fd}") as f:
                assert map_id in f.read()
        finally:
            os.close(fd)
    finally:
        bpf.cleanup()
    lines = [r.getMessage() for r in caplog.records if "event=pin_recreated" in r.getMessage()]
    assert len(lines) == 1 and f"path={old}" in lines[0], lines
    assert f"max_entries={(MAX_FARMS + 1) * OLD_NCOUNTERS}->{(GLOBAL_SLOT + 1) * NCOUNTERS}" in lines[0], lines


def test_an_adopted_one_stage_lease_map_is_recreated_with_both_stages(pin_dir, caplog):
    """An agent from before the lease's second stage pinned an 8-byte vf_lease; the new filter
    reads 16 bytes per slot, so adopting it would read past each deadline into the next slot's."""
    old = os.path.join(pin_dir, "vf_lease")
    pin_map(old, "array", OLD_LEASE_VALUE, MAX_FARMS)
    with caplog.at_level(logging.WARNING, logger="vipfarm.pins"):
        bpf = compile_filter(OWN_MAC, True, pin_dir=pin_dir)
    try:
        assert fd_shape(bpf[b"vf_lease"].map_fd).value_size == 16
        fd = obj_get(old)
        try:
            assert fd_shape(fd).value_size == 16, "the pin still is the old 8-byte lease map"
        finally:
            os.close(fd)
        t = FilterTables(bpf)
        t.write_lease(3, 42, 43)
        assert t.read_lease(3) == (42, 43)
    finally:
        bpf.cleanup()
    lines = [r.getMessage() for r in caplog.records if "event=pin_recreated" in r.getMessage()]
    assert len(lines) == 1 and f"path={old}" in lines[0] and "value_size=8->16" in lines[0], lines
    assert "lost=lease" in lines[0], lines


def test_an_adopted_ownership_map_of_another_shape_stops_the_agent_with_the_pin_and_the_fix(pin_dir):
    owner = os.path.join(pin_dir, "vf_owner")
    pin_map(owner, "array", "__u64", 64)
    with pytest.raises(DataplaneError) as e:
        compile_filter(OWN_MAC, True, pin_dir=pin_dir)
    msg = str(e.value)
    assert owner in msg and "max_entries pinned=64" in msg and f"remove {pin_dir}" in msg
    assert os.path.exists(owner), "the ownership pin was removed although the agent refused it"


def test_adopted_pins_of_the_same_shape_are_kept(pin_dir):
    first = compile_filter(OWN_MAC, True, pin_dir=pin_dir)
    FilterTables(first).write_lease(3, 42, 43)
    first.cleanup()
    second = compile_filter(OWN_MAC, True, pin_dir=pin_dir)
    try:
        assert FilterTables(second).read_lease(3) == (42, 43)
    finally:
        second.cleanup()


def test_an_adopted_ownership_map_from_before_handover_is_migrated_keeping_every_owned_bucket(pin_dir, caplog):
    """An agent from before handover pinned vf_owner with one u64 of owned bits per word; the new
    filter's words are struct vf_bits (owned, moving). The upgrade copies the owned bits (no
    bucket moving) into the new map before the program loads, so the node serves what it served."""
    from nodeagent.bpf_consts import TABLE_WORDS
    from nodeagent.bpf_syscall import map_update
    old = os.path.join(pin_dir, "vf_owner")
    entries = MAX_FARMS * 2 * TABLE_WORDS
    pin_map(old, "array", "__u64", entries)
    words = {0: 0x5, 1: 1 << 63, TABLE_WORDS + 3: 0xFFFF_0000_FFFF_0000, entries - 1: 0x8000_0001}
    fd = obj_get(old)
    try:
        for k, v in words.items():
            map_update(fd, k.to_bytes(4, "little"), v.to_bytes(8, "little"))
    finally:
        os.close(fd)
    with caplog.at_level(logging.WARNING, logger="vipfarm.pins"):
        bpf = compile_filter(OWN_MAC, True, pin_dir=pin_dir)
    try:
        owner = bpf[b"vf_owner"]
        assert fd_shape(owner.map_fd).value_size == 16
        fd = obj_get(old)
        try:
            assert fd_shape(fd).value_size == 16, "the pin still is the old 8-byte ownership map"
        finally:
            os.close(fd)
        import ctypes
        got = {k: (owner[ctypes.c_uint32(k)].owned, owner[ctypes.c_uint32(k)].moving) for k in words}
        assert got == {k: (v, 0) for k, v in words.items()}
        assert all(owner[ctypes.c_uint32(k)].owned == 0 for k in (2, TABLE_WORDS, entries - 2))
    finally:
        bpf.cleanup()
    lines = [r.getMessage() for r in caplog.records if "event=pin_migrated" in r.getMessage()]
    assert len(lines) == 1 and f"path={old}" in lines[0] and "value_size=8->16" in lines[0], lines
    assert f"words_kept={len(words)}" in lines[0], lines


def test_vipfarm_stats_reads_owned_and_moving_buckets_from_the_pins(pin_dir):
    """pinned_maps (`vipfarm stats`, the lab) reads struct vf_bits words: owned, then moving."""
    from nodeagent.pinned_maps import read_moving, read_owned
    bpf = compile_filter(OWN_MAC, True, pin_dir=pin_dir)
    try:
        FilterTables(bpf).swap_ownership(3, 7, 256, frozenset({0, 64, 255}), frozenset({1, 64, 200}))
        assert read_owned(pin_dir, 3) == {0, 64, 255}
        assert read_moving(pin_dir, 3) == {1, 64, 200}
    finally:
        bpf.cleanup()


def test_an_adopted_udp_flow_table_of_another_shape_is_recreated_losing_only_the_udp_handovers(pin_dir, caplog):
    """vf_udp_flows and vf_udp_farm may restart empty: that ends the UDP handovers in progress
    (their flows go to the owners) and nothing else."""
    old = os.path.join(pin_dir, "vf_udp_flows")
    pin_map(old, "lru_hash", "__u64", 1024)
    with caplog.at_level(logging.WARNING, logger="vipfarm.pins"):
        bpf = compile_filter(OWN_MAC, True, pin_dir=pin_dir)
    try:
        shape = fd_shape(bpf[b"vf_udp_flows"].map_fd)
        assert (shape.key_size, shape.value_size, shape.max_entries) == (44, 16, MAX_UDP_FLOWS)
        fd = obj_get(old)
        try:
            assert fd_shape(fd).key_size == 44, "the pin still is the old table"
        finally:
            os.close(fd)
    finally:
        bpf.cleanup()
    lines = [r.getMessage() for r in caplog.records if "event=pin_recreated" in r.getMessage()]
    assert len(lines) == 1 and f"path={old}" in lines[0] and "lost=udp_flows" in lines[0], lines


def test_udp_records_and_settings_survive_a_restart_and_pins_from_before_udp_handover_get_them(pin_dir):
    flow = UdpFlow(ipaddress.ip_address("2001:db8:1::7"), 40000, ipaddress.ip_address("2001:db8::10"), 5000)
    rec = UdpRecord(flow, 12345, True, 77)
    first = compile_filter(OWN_MAC, True, pin_dir=pin_dir)
    t = FilterTables(first)
    t.write_udp_config(3, 30 * 10**9, 42)
    t.put_udp_records(3, [rec])
    first.cleanup()
    second = compile_filter(OWN_MAC, True, pin_dir=pin_dir)
    try:
        t = FilterTables(second)
        assert t.read_udp_config(3) == (30 * 10**9, 42) and t.udp_records(3) == [rec]
    finally:
        second.cleanup()
    # An agent from before UDP handover left no vf_udp_* pins: the new filter pins them, empty.
    for name in ("vf_udp_flows", "vf_udp_farm"):
        os.unlink(os.path.join(pin_dir, name))
    third = compile_filter(OWN_MAC, True, pin_dir=pin_dir)
    try:
        t = FilterTables(third)
        assert t.udp_records(3) == [] and t.read_udp_config(3) == (0, 0)
        assert all(os.path.exists(os.path.join(pin_dir, n)) for n in ("vf_udp_flows", "vf_udp_farm"))
    finally:
        third.cleanup()
