"""Orphan cleanup: what an earlier agent left that no current Farm claims is removed on the
first programming, and only on this node's own records.

find_orphans is pure; the shell tests run NodeDataplanes over a temporary state root and pin
root, with the host calls replaced by in-memory fakes (no real netlink, sysctl or bcc call).
"""
from __future__ import annotations

import logging
import os
import sys
import types

import pytest

from nodeagent import netconfig
from nodeagent import node_dataplanes as node
from nodeagent.local_state import InterfaceState
from nodeagent.node_dataplanes import NodeDataplanes, read_local_records
from nodeagent.orphans import LocalRecords, OrphanEntry, OrphanInterface, find_orphans
from nodeagent.filter_plan import FarmOwnership
from vipfarm.spec import parse_farm


def farm(name, vips, iface="eth0"):
    return parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": name},
                       "spec": {"virtualIPs": vips, "interface": iface}})


WEB, GONE, SIDE = farm("web", ["203.0.113.10"]), farm("gone", ["203.0.113.20"]), farm("side", ["203.0.113.30"], "eth1")


def state(iface, *farms, **kw):
    return InterfaceState("n1", iface, mode="generic", slots={f.name: s for s, f in enumerate(farms)},
                          saved_sysctls={"arp_ignore": "0", "arp_announce": "0"},
                          vips=sorted(str(v) for f in farms for v in f.virtual_ips),
                          macs=sorted(f.virtual_mac for f in farms), **kw)


# -- pure ---------------------------------------------------------------------------------------

def test_an_interface_no_farm_uses_is_orphaned_with_its_record():
    side = state("eth1", SIDE)
    o = find_orphans(LocalRecords({"eth0": state("eth0", WEB), "eth1": side}, pinned=frozenset({"eth0", "eth1"})),
                     [FarmOwnership(WEB, frozenset())])
    assert o.interfaces == (OrphanInterface("eth1", side, pinned=True, corrupt=False),)
    assert o.entries == ()


def test_pins_or_a_corrupt_file_without_a_record_are_orphans_too():
    o = find_orphans(LocalRecords({}, corrupt=frozenset({"eth2"}), pinned=frozenset({"eth1", "eth2"})), [])
    assert o.interfaces == (OrphanInterface("eth1", None, pinned=True, corrupt=False),
                            OrphanInterface("eth2", None, pinned=True, corrupt=True))


def test_a_gone_farm_on_a_used_interface_is_listed_slot_vip_and_mac():
    o = find_orphans(LocalRecords({"eth0": state("eth0", GONE, WEB)}), [FarmOwnership(WEB, frozenset())])
    assert o.interfaces == ()
    assert o.entries == (OrphanEntry("eth0", "farm_slot", "gone", 0), OrphanEntry("eth0", "vip", "203.0.113.20"),
                         OrphanEntry("eth0", "mac_filter", GONE.virtual_mac))


def test_nothing_is_orphaned_when_every_record_is_claimed():
    o = find_orphans(LocalRecords({"eth0": state("eth0", WEB)}, pinned=frozenset({"eth0"})),
                     [FarmOwnership(WEB, frozenset())])
    assert o.interfaces == () and o.entries == ()


# -- the shell ------------------------------------------------------------------------------------

class Host:
    def __init__(self, monkeypatch, links=("eth0", "eth1")):
        self.lo = {"198.51.100.1"}
        self.macs: dict[str, set[str]] = {l: set() for l in links}
        self.sysctls = {l: {"arp_ignore": "1", "arp_announce": "2"} for l in links}
        self.xdp = {l: "generic" for l in links}
        m = monkeypatch
        m.setattr(netconfig, "link_exists", lambda iface: iface in self.macs)
        m.setattr(netconfig, "del_vip", lambda ip: self.lo.discard(str(ip)))
        m.setattr(netconfig, "del_mac_filter", lambda iface, mac: self.macs[iface].discard(mac))
        m.setattr(netconfig, "restore_sysctls", lambda iface, saved: self.sysctls[iface].update(saved))
        m.setattr(netconfig, "detach_tc_ingress", lambda iface: None)
        fake_bcc = types.ModuleType("bcc")      # never the real bcc: nothing reaches this machine
        fake_bcc.BPF = types.SimpleNamespace(remove_xdp=lambda dev, flags: self.xdp.pop(dev))
        m.setitem(sys.modules, "bcc", fake_bcc)


class FakeDataplane:
    """Stands for InterfaceDataplane on the interfaces farms still use."""
    made: list["FakeDataplane"] = []

    def __init__(self, node_name, iface, mode, pin_root, state_root):
        self.iface, self.applied = iface, []
        FakeDataplane.made.append(self)

    def start(self):
        pass

    def apply(self, group):
        self.applied.append([i.farm.name for i in group])


@pytest.fixture
def roots(tmp_path, monkeypatch):
    FakeDataplane.made = []
    monkeypatch.setattr(node, "InterfaceDataplane", FakeDataplane)
    pins, st = tmp_path / "pins", tmp_path / "state"
    for n, iface in (("n1", "eth0"), ("n1", "eth1"), ("n2", "eth1")):
        (pins / n / iface).mkdir(parents=True)
        (pins / n / iface / "vf_farms").write_text("")
    return str(pins), str(st)


def removed(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "event=orphan_removed" in r.getMessage()]


def test_the_first_program_undoes_an_interface_no_farm_uses_and_logs_each_removal(roots, monkeypatch, caplog):
    pins, st = roots
    host = Host(monkeypatch)
    side = state("eth1", SIDE)
    host.lo |= set(side.vips)
    host.macs["eth1"] |= set(side.macs)
    state("eth0", WEB).save(os.path.join(st, "n1", "eth0.json"))
    side.save(os.path.join(st, "n1", "eth1.json"))
    state("eth1", SIDE).save(os.path.join(st, "n2", "eth1.json"))      # another node's record
    dps = NodeDataplanes("n1", pins, st)
    with caplog.at_level(logging.INFO):
        dps.program([FarmOwnership(WEB, frozenset())])
    assert host.lo == {"198.51.100.1"} and host.macs["eth1"] == set()
    assert "eth1" not in host.xdp and host.sysctls["eth1"] == {"arp_ignore": "0", "arp_announce": "0"}
    assert not os.path.exists(os.path.join(pins, "n1", "eth1"))
    assert not os.path.exists(os.path.join(st, "n1", "eth1.json"))
    kinds = sorted(line.split("kind=")[1].split()[0] for line in removed(caplog))
    assert kinds == ["mac_filter", "pin_dir", "state_file", "sysctls", "vip", "xdp"], removed(caplog)
    assert all("iface=eth1" in line and "node=n1" in line for line in removed(caplog))
    # The used interface is still programmed, and another node's pins and record are untouched.
    assert [d.applied for d in FakeDataplane.made] == [[["web"]]]
    assert "eth0" in host.xdp and os.path.exists(os.path.join(pins, "n1", "eth0"))
    assert os.path.exists(os.path.join(pins, "n2", "eth1")) and os.path.exists(os.path.join(st, "n2", "eth1.json"))


def test_orphans_are_looked_for_only_on_the_first_program(roots, monkeypatch):
    pins, st = roots
    Host(monkeypatch)
    dps = NodeDataplanes("n1", pins, st)
    dps.program([FarmOwnership(WEB, frozenset()), FarmOwnership(SIDE, frozenset())])
    assert os.path.exists(os.path.join(pins, "n1", "eth1"))
    state("eth2", GONE).save(os.path.join(st, "n1", "eth2.json"))   # appears later: not ours to judge
    dps.program([FarmOwnership(WEB, frozenset()), FarmOwnership(SIDE, frozenset())])
    assert os.path.exists(os.path.join(st, "n1", "eth2.json"))


def test_a_gone_farm_on_a_used_interface_is_logged_as_removed(roots, monkeypatch, caplog):
    pins, st = roots
    Host(monkeypatch)
    state("eth0", GONE, WEB).save(os.path.join(st, "n1", "eth0.json"))
    state("eth1", SIDE).save(os.path.join(st, "n1", "eth1.json"))
    with caplog.at_level(logging.INFO):
        NodeDataplanes("n1", pins, st).program([FarmOwnership(WEB, frozenset()), FarmOwnership(SIDE, frozenset())])
    assert removed(caplog) == [
        "event=orphan_removed kind=farm_slot node=n1 iface=eth0 farm=gone slot=0",
        "event=orphan_removed kind=vip node=n1 iface=eth0 vip=203.0.113.20",
        f"event=orphan_removed kind=mac_filter node=n1 iface=eth0 mac={GONE.virtual_mac}"]


def test_an_orphan_without_a_readable_record_keeps_its_pins_and_says_what_is_left(roots, monkeypatch, caplog):
    pins, st = roots
    host = Host(monkeypatch)
    os.makedirs(os.path.join(st, "n1"))
    with open(os.path.join(st, "n1", "eth1.json"), "w") as f:
        f.write('{"node": "n1", "if')
    with caplog.at_level(logging.INFO):
        NodeDataplanes("n1", pins, st).program([FarmOwnership(WEB, frozenset())])
    assert os.path.exists(os.path.join(pins, "n1", "eth1"))      # the only account of what the filter holds
    assert "eth1" in host.xdp and host.sysctls["eth1"] == {"arp_ignore": "1", "arp_announce": "2"}
    assert [n for n in os.listdir(os.path.join(st, "n1")) if n.startswith("eth1.json.corrupt-")]
    text = caplog.text
    assert "event=state_corrupt" in text and "event=orphan_incomplete" in text and "fix=" in text


def test_an_orphan_whose_interface_is_gone_still_loses_its_vips_on_lo(roots, monkeypatch):
    pins, st = roots
    host = Host(monkeypatch, links=("eth0",))
    side = state("eth1", SIDE)
    host.lo |= set(side.vips)
    side.save(os.path.join(st, "n1", "eth1.json"))
    NodeDataplanes("n1", pins, st).program([FarmOwnership(WEB, frozenset())])
    assert host.lo == {"198.51.100.1"}
    assert not os.path.exists(os.path.join(st, "n1", "eth1.json"))


def test_the_scan_reads_this_nodes_records_only(roots):
    pins, st = roots
    state("eth1", SIDE).save(os.path.join(st, "n1", "eth1.json"))
    recs = read_local_records("n1", pins, st)
    assert set(recs.states) == {"eth1"} and recs.pinned == {"eth0", "eth1"}
    assert read_local_records("n3", pins, st) == LocalRecords({}, frozenset(), frozenset())


def test_after_a_restart_the_buckets_served_now_come_from_the_pins_the_previous_agent_left(tmp_path, monkeypatch):
    """A Farm whose stored assignment is unreadable keeps exactly these (farmnode_report.wanted);
    on the first pass nothing is started yet, so they must come from the adopted pins."""
    state("eth0", WEB).save(str(tmp_path / "state" / "n1" / "eth0.json"))
    (tmp_path / "pins" / "n1" / "eth0").mkdir(parents=True)
    seen = []

    def read_owned(pin_dir, slot):
        seen.append((pin_dir, slot))
        return {3, 7}
    monkeypatch.setattr(node, "read_owned", read_owned)
    nd = node.NodeDataplanes("n1", str(tmp_path / "pins"), str(tmp_path / "state"))
    assert nd.serving_now() == {WEB.name: frozenset({3, 7})}
    assert seen == [(str(tmp_path / "pins" / "n1" / "eth0"), 0)]


def test_an_interface_whose_filter_cannot_be_detached_is_not_reported_gone(tmp_path, monkeypatch):
    """Release is reported only after the dataplane let the Farm go: a failed XDP detach must
    raise (after undoing the rest), not be logged and passed over."""
    import bcc
    import pytest

    from nodeagent.bpf_program import DataplaneError
    from nodeagent.dataplane import undo_interface

    def refuse(iface, flags):
        raise RuntimeError("device or resource busy")
    monkeypatch.setattr(bcc.BPF, "remove_xdp", staticmethod(refuse))
    pin_dir, state_path = tmp_path / "pins" / "n1" / "eth0", tmp_path / "eth0.json"
    pin_dir.mkdir(parents=True)
    state_path.write_text("{}")
    removed = []
    with pytest.raises(DataplaneError, match="detaching XDP from eth0 failed .*ip link set dev eth0"):
        undo_interface("eth0", InterfaceState("n1", "eth0", mode="generic"), str(pin_dir), str(state_path),
                       lambda kind, **kv: removed.append(kind))
    assert "xdp" not in removed and "pin_dir" in removed and not state_path.exists()
