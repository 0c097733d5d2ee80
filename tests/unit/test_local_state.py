"""The agent's state file: an unreadable one is kept aside and never replaced by guesses.

The shell tests drive the real InterfaceDataplane with the host calls (netlink, sysctls, bcc)
replaced by in-memory fakes, against a temporary state root and pin root.
"""
from __future__ import annotations

import json
import logging
import os
import sys
import types

import pytest

from nodeagent import dataplane, netconfig
from nodeagent.dataplane import InterfaceDataplane, record_from_filter, recovered_slots, undo_interface
from nodeagent.local_state import (InterfaceState, StateCorrupt, choose_sysctl_originals, parse_state,
                                   quarantine)
from nodeagent.filter_plan import FarmOwnership
from vipfarm.spec import parse_farm


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


def _write(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)

VIPFARM_VALUES = {"arp_ignore": "1", "arp_announce": "2"}
GOOD = InterfaceState("n1", "eth0", mode="generic", slots={"web": 0}, saved_sysctls={"arp_ignore": "0",
                      "arp_announce": "0"}, vips=["203.0.113.10"], macs=["02:00:00:00:00:01"])


def good_text() -> str:
    from dataclasses import asdict
    return json.dumps(asdict(GOOD))


# -- parsing: how a file can be corrupt ---------------------------------------------------------

def test_a_well_formed_record_reads_back_as_written():
    assert parse_state(good_text(), "n1", "eth0") == GOOD


@pytest.mark.parametrize("text, says", [
    ("", "empty"),
    ("   \n", "empty"),
    (good_text()[:40], "not valid JSON"),                     # truncated (a torn write)
    ("\x00\x00\x00garbage{", "not valid JSON"),
    ("[1, 2]", "top level is a list"),
    ('"eth0"', "top level is a str"),
    (good_text().replace('"slots": {"web": 0}', '"slots": {"web": "0"}'), "slots"),
    (good_text().replace('"slots": {"web": 0}', '"slots": [0]'), "slots"),
    (good_text().replace('"vips": ["203.0.113.10"]', '"vips": "203.0.113.10"'), "vips"),
    (good_text().replace('"tc_fixup": false', '"tc_fixup": 0'), "tc_fixup"),
    (good_text().replace('"arp_ignore": "0"', '"arp_ignore": 0'), "saved_sysctls"),
    (good_text().replace('"arp_ignore": "0"', '"rp_filter": "0"'), "saved_sysctls"),
    (good_text().replace('"mode": "generic"', '"mode": null'), "mode"),
    (good_text()[:-1] + ', "future_field": 1}', "unknown keys future_field"),
    (good_text().replace('"node": "n1"', '"node": "n2"'), "node='n2'"),
])
def test_a_corrupt_record_is_rejected_naming_what_is_wrong(text, says):
    with pytest.raises(StateCorrupt) as e:
        parse_state(text, "n1", "eth0")
    assert says in str(e.value)


def test_save_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    path = str(tmp_path / "n1" / "eth0.json")
    GOOD.save(path)
    InterfaceState("n1", "eth0", mode="native").save(path)
    assert parse_state(_read(path), "n1", "eth0").mode == "native"
    assert os.listdir(tmp_path / "n1") == ["eth0.json"]


def test_a_save_that_fails_halfway_keeps_the_previous_record(tmp_path, monkeypatch):
    path = str(tmp_path / "eth0.json")
    GOOD.save(path)

    def full_disk(fd):           # the new content is written, then the disk refuses it
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("nodeagent.atomic_file.os.fsync", full_disk)
    with pytest.raises(OSError):
        InterfaceState("n1", "eth0", mode="native").save(path)
    assert parse_state(_read(path), "n1", "eth0") == GOOD
    assert os.listdir(tmp_path) == ["eth0.json"]


def test_quarantine_never_overwrites_an_earlier_quarantined_file(tmp_path):
    path = str(tmp_path / "eth0.json")
    moved = []
    for text in ("first", "second"):
        _write(path, text)
        moved.append(quarantine(path, StateCorrupt("x"), now=1_700_000_000))
    assert moved[0].endswith(".corrupt-20231114T221320Z") and moved[1] != moved[0]
    assert [_read(m) for m in moved] == ["first", "second"]
    assert not os.path.exists(path)


# -- which sysctl values are the originals ------------------------------------------------------

def test_known_originals_are_kept():
    c = choose_sysctl_originals(VIPFARM_VALUES, GOOD, record_lost=True)
    assert c.saved == {"arp_ignore": "0", "arp_announce": "0"} and not c.unknown


def test_a_lost_record_with_vipfarm_values_in_place_records_no_originals():
    c = choose_sysctl_originals(VIPFARM_VALUES, InterfaceState("n1", "eth0"), record_lost=True)
    assert c.saved == {} and c.unknown
    assert "lost" in c.reason


def test_a_lost_record_with_other_values_in_place_records_those_values():
    # vipfarm would have set 1/2: anything else is the interface's own setting.
    now = {"arp_ignore": "0", "arp_announce": "1"}
    c = choose_sysctl_originals(now, InterfaceState("n1", "eth0"), record_lost=True)
    assert c.saved == now and not c.unknown


def test_a_first_start_records_the_values_it_finds_even_vipfarm_like_ones():
    # No earlier run on this interface: 1/2 were set by the operator (kube-proxy strictARP).
    c = choose_sysctl_originals(VIPFARM_VALUES, InterfaceState("n1", "eth0"), record_lost=False)
    assert c.saved == VIPFARM_VALUES and not c.unknown


def test_originals_once_unknown_stay_unknown_across_restarts():
    state = InterfaceState("n1", "eth0", sysctl_originals_unknown=True)
    c = choose_sysctl_originals(VIPFARM_VALUES, state, record_lost=False)
    assert c.saved == {} and c.unknown


# -- what the pinned maps tell ------------------------------------------------------------------

def farm(name, vips, mac=None, iface="eth0"):
    spec = {"virtualIPs": vips, "interface": iface}
    if mac:
        spec["virtualMAC"] = mac
    return parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": name},
                       "spec": spec})


def test_the_pinned_maps_give_each_farm_its_slot_back_by_virtual_mac():
    web, mc = farm("web", ["203.0.113.10"]), farm("mc", ["203.0.113.20"])
    live = {2: bytes.fromhex(web.virtual_mac.replace(":", "")), 0: b"\x02\x00\x00\x00\x00\x99"}
    by_mac, vips = record_from_filter(live, {(4, bytes([203, 0, 113, 10])), (6, bytes(15) + b"\x10")})
    assert by_mac == {web.virtual_mac: 2, "02:00:00:00:00:99": 0}
    assert vips == ["203.0.113.10", "::10"]
    items = [FarmOwnership(web, frozenset()), FarmOwnership(mc, frozenset())]
    assert recovered_slots(items, by_mac, {}) == {"web": 2}
    assert recovered_slots(items, by_mac, {"web": 5}) == {}          # the state file wins


def test_a_virtual_mac_found_in_two_slots_places_no_farm():
    by_mac, _ = record_from_filter({0: b"\x02" * 6, 1: b"\x02" * 6}, set())
    assert by_mac == {}


# -- the shell: InterfaceDataplane over a corrupt file ---------------------------------------------

class FakeMap:
    def __init__(self, entries):
        self.entries = entries

    def items(self):
        return self.entries


class FakeKey:
    def __init__(self, v):
        self.value = v


class FakeFarm:
    def __init__(self, vmac, flags=1):
        self.vmac, self.flags = list(vmac), flags


class FakeTables:
    """The adopted maps of a filter that served web in slot 3 and a gone farm in slot 1."""
    web_mac = farm("web", ["203.0.113.10"]).virtual_mac

    def __init__(self, bpf):
        self.farms = FakeMap([(FakeKey(3), FakeFarm(bytes.fromhex(self.web_mac.replace(":", "")))),
                              (FakeKey(1), FakeFarm(b"\x02\x00\x00\x00\x00\x77")),
                              (FakeKey(0), FakeFarm(bytes(6), flags=0))])
        self.applied = []

    def vip_keys(self):
        return {(4, bytes([203, 0, 113, 10])), (4, bytes([203, 0, 113, 99]))}

    def apply(self, plan, previous_slots):
        self.applied.append((plan, set(previous_slots)))


class Host:
    """In-memory sysctls, lo addresses and MAC filters of one interface."""
    def __init__(self, monkeypatch, sysctls, lo=()):
        self.sysctls, self.lo, self.macs, self.frames = dict(sysctls), set(lo), set(), []
        m = monkeypatch
        m.setattr(netconfig, "link_info", lambda iface: (7, b"\x02\x00\x00\x00\x00\x01", "veth"))
        m.setattr(netconfig, "read_sysctl", lambda iface, k: self.sysctls[k])
        m.setattr(netconfig, "write_sysctl", lambda iface, k, v: self.sysctls.__setitem__(k, v))
        m.setattr(netconfig, "vips_on_lo", lambda: set(self.lo))
        m.setattr(netconfig, "add_vip", lambda ip: (str(ip) not in self.lo, self.lo.add(str(ip)))[0])
        m.setattr(netconfig, "del_vip", lambda ip: self.lo.discard(str(ip)))
        m.setattr(netconfig, "add_mac_filter", lambda iface, mac: self.macs.add(mac))
        m.setattr(netconfig, "del_mac_filter", lambda iface, mac: self.macs.discard(mac))
        m.setattr(netconfig, "send_frames", lambda iface, frames: self.frames.extend(frames))
        m.setattr(netconfig, "detach_tc_ingress", lambda iface: None)
        m.setattr(dataplane, "ensure_bpffs", lambda: None)
        m.setattr(dataplane, "FilterTables", FakeTables)
        # Never the real bcc: a detach must not reach this machine's interfaces.
        self.xdp_removed = []
        fake_bcc = types.ModuleType("bcc")
        fake_bcc.BPF = types.SimpleNamespace(remove_xdp=lambda dev, flags: self.xdp_removed.append(dev))
        m.setitem(sys.modules, "bcc", fake_bcc)


def make_dp(tmp_path, monkeypatch, pins: bool) -> InterfaceDataplane:
    dp = InterfaceDataplane("n1", "eth0", "auto", str(tmp_path / "pins"), str(tmp_path / "state"))
    if pins:
        os.makedirs(dp.pin_dir, exist_ok=True)
        _write(os.path.join(dp.pin_dir, "vf_farms"), "")
    monkeypatch.setattr(dp, "_compile_and_attach", lambda mode: setattr(dp, "bpf", object()))
    return dp


def write_corrupt(tmp_path, text='{"node": "n1", "iface": "eth0", "slots": {"we') -> str:
    path = tmp_path / "state" / "n1" / "eth0.json"
    path.parent.mkdir(parents=True)
    path.write_text(text)
    return str(path)


def test_a_corrupt_state_file_is_moved_aside_and_logged_with_the_fix(tmp_path, monkeypatch, caplog):
    Host(monkeypatch, VIPFARM_VALUES)
    path = write_corrupt(tmp_path)
    with caplog.at_level(logging.ERROR):
        make_dp(tmp_path, monkeypatch, pins=True)
    aside = [n for n in os.listdir(os.path.dirname(path)) if n.startswith("eth0.json.corrupt-")]
    assert len(aside) == 1, os.listdir(os.path.dirname(path))
    assert _read(os.path.join(os.path.dirname(path), aside[0])).endswith('"we')   # kept as it was
    assert not os.path.exists(path)
    line = [r.getMessage() for r in caplog.records if "event=state_corrupt" in r.getMessage()]
    assert len(line) == 1 and f"path={path}" in line[0] and "moved_to=" in line[0] and "fix=" in line[0]


def test_a_corrupt_state_file_never_makes_vipfarm_values_the_originals(tmp_path, monkeypatch, caplog):
    host = Host(monkeypatch, VIPFARM_VALUES)     # the previous run had set them
    path = write_corrupt(tmp_path)
    dp = make_dp(tmp_path, monkeypatch, pins=True)
    with caplog.at_level(logging.ERROR):
        dp.start()
    on_disk = parse_state(_read(path), "n1", "eth0")
    assert on_disk.saved_sysctls == {} and on_disk.sysctl_originals_unknown
    assert host.sysctls == VIPFARM_VALUES
    assert any("event=sysctl_originals_unknown" in r.getMessage() and "fix=" in r.getMessage()
               for r in caplog.records)
    # ...and a graceful leave then leaves the sysctls alone instead of "restoring" 1/2 or 0/0.
    host.sysctls = {"arp_ignore": "1", "arp_announce": "2"}
    undo_interface("eth0", dp.state, dp.pin_dir, dp.state_path, lambda kind, **kv: None)
    assert host.sysctls == VIPFARM_VALUES


def test_a_missing_state_file_beside_adopted_pins_is_a_lost_record_too(tmp_path, monkeypatch):
    Host(monkeypatch, VIPFARM_VALUES)
    dp = make_dp(tmp_path, monkeypatch, pins=True)
    dp.start()
    assert dp.state.saved_sysctls == {} and dp.state.sysctl_originals_unknown


def test_a_first_start_records_the_sysctls_before_changing_them(tmp_path, monkeypatch):
    host = Host(monkeypatch, {"arp_ignore": "0", "arp_announce": "0"})
    seen = []
    real_write = netconfig.write_sysctl
    monkeypatch.setattr(netconfig, "write_sysctl", lambda i, k, v: (seen.append(
        parse_state(_read(dp.state_path), "n1", "eth0").saved_sysctls), real_write(i, k, v)))
    dp = make_dp(tmp_path, monkeypatch, pins=False)
    dp.start()
    assert dp.state.saved_sysctls == {"arp_ignore": "0", "arp_announce": "0"}
    assert seen and all(s == {"arp_ignore": "0", "arp_announce": "0"} for s in seen)
    assert host.sysctls == VIPFARM_VALUES


def test_a_corrupt_state_file_still_adopts_the_pins_and_keeps_each_farm_in_its_slot(tmp_path, monkeypatch):
    host = Host(monkeypatch, VIPFARM_VALUES, lo={"203.0.113.10", "203.0.113.99", "198.51.100.1"})
    write_corrupt(tmp_path, "not json at all")
    dp = make_dp(tmp_path, monkeypatch, pins=True)
    dp.start()
    assert dp.adopted
    web = farm("web", ["203.0.113.10"])
    plan = dp.apply([FarmOwnership(web, frozenset({0, 1}))])
    assert [(f.name, f.slot) for f in plan.farms] == [("web", 3)]      # where the maps had it
    (_, previous), = dp.tables.applied
    assert previous == {1, 3}                                      # the gone farm's slot is cleared
    # 203.0.113.99 was served by the filter, so vipfarm put it on lo: it goes with its farm;
    # the node's own address is not vipfarm's and stays.
    assert host.lo == {"203.0.113.10", "198.51.100.1"}
    assert dp.state.vips == ["203.0.113.10"] and dp.state.slots == {"web": 3}


def test_a_vip_already_on_lo_when_claimed_is_served_but_never_removed(tmp_path, monkeypatch):
    host = Host(monkeypatch, {"arp_ignore": "0", "arp_announce": "0"}, lo={"203.0.113.10"})
    dp = make_dp(tmp_path, monkeypatch, pins=False)
    dp.start()
    dp.apply([FarmOwnership(farm("web", ["203.0.113.10", "203.0.113.11"]), frozenset())])
    assert dp.state.foreign_vips == ["203.0.113.10"] and dp.state.vips == ["203.0.113.11"]
    dp.apply([])
    assert host.lo == {"203.0.113.10"}
