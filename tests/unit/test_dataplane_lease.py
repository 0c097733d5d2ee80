"""set_lease on one interface and on the node: routing by farm name, and safety against an
apply() running on another thread (the heartbeat thread renews leases while farms change);
LeaseWriter's two ways to the map, and the two deadlines the heartbeat thread renews."""
from __future__ import annotations

import struct
import threading

from nodeagent import leases, netconfig
from nodeagent.dataplane import InterfaceDataplane
from nodeagent.filter_plan import FarmOwnership
from nodeagent.node_dataplanes import NodeDataplanes
from vipfarm.spec import parse_farm

WAIT_S = 5.0


def farm(name: str, vip: str, iface: str = "eth0"):
    return parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": name},
                       "spec": {"virtualIPs": [vip], "buckets": 16, "interface": iface}})


WEB, DNS = farm("web", "203.0.113.10"), farm("dns", "203.0.113.20")


class RecordingTables:
    """The lease map and slot clearing of FilterTables, in memory."""

    def __init__(self):
        self.leases: dict[int, tuple[int, int]] = {}
        self.during_apply = None           # called inside apply(), after the removed slots are cleared

    def write_lease(self, slot: int, syn_deadline_ns: int, deadline_ns: int) -> None:
        self.leases[slot] = (syn_deadline_ns, deadline_ns)

    def apply(self, plan, previous_slots):
        for slot in set(previous_slots) - {f.slot for f in plan.farms}:
            self.leases[slot] = (0, 0)     # clear_farm
        if self.during_apply:
            self.during_apply()


def quiet_host(monkeypatch):
    m = monkeypatch
    m.setattr(netconfig, "link_info", lambda iface: (7, b"\x02\x00\x00\x00\x00\x01", "veth"))
    for name in ("add_vip", "del_vip"):
        m.setattr(netconfig, name, lambda ip: None)
    for name in ("add_mac_filter", "del_mac_filter", "send_frames"):
        m.setattr(netconfig, name, lambda iface, x: None)
    m.setattr(netconfig, "vips_on_lo", lambda: set())


def programmed(tmp_path, monkeypatch, farms, iface="eth0") -> InterfaceDataplane:
    quiet_host(monkeypatch)
    dp = InterfaceDataplane("n1", iface, "auto", str(tmp_path / "pins"), str(tmp_path / "state"))
    dp.tables = RecordingTables()
    dp.apply([FarmOwnership(f, frozenset({1})) for f in farms])
    return dp


def test_set_lease_writes_both_deadlines_into_the_farms_slot(tmp_path, monkeypatch):
    dp = programmed(tmp_path, monkeypatch, [WEB, DNS])
    slots = dict(dp.state.slots)
    assert dp.set_lease("dns", 123, 223) is True
    assert dp.set_lease("web", 456, 556) is True
    assert dp.tables.leases == {slots["dns"]: (123, 223), slots["web"]: (456, 556)}


def test_set_lease_for_a_farm_without_a_slot_here_writes_nothing_and_says_false(tmp_path, monkeypatch):
    dp = programmed(tmp_path, monkeypatch, [WEB])
    assert dp.set_lease("dns", 123, 223) is False
    assert dp.tables.leases == {}


def test_set_lease_before_start_says_false(tmp_path, monkeypatch):
    quiet_host(monkeypatch)
    dp = InterfaceDataplane("n1", "eth0", "auto", str(tmp_path / "pins"), str(tmp_path / "state"))
    assert dp.set_lease("web", 123, 223) is False


def test_a_lease_renewed_while_apply_removes_its_farm_never_lands_in_the_freed_slot(tmp_path, monkeypatch):
    """The heartbeat thread calls set_lease for dns just after apply() (on this thread) cleared
    dns's slot and before it published the new plan. The renewal must wait for apply() and then
    find dns gone: otherwise the next farm given that slot would inherit dns's deadline."""
    dp = programmed(tmp_path, monkeypatch, [WEB, DNS])
    dns_slot = dp.state.slots["dns"]
    result: list[bool] = []
    renewal = threading.Thread(target=lambda: result.append(dp.set_lease("dns", 999, 1099)))

    def renew_from_another_thread():
        renewal.start()
        # set_lease must not finish while apply() is mid-way; give it the time it would need.
        renewal.join(timeout=0.2)
        assert renewal.is_alive() or result == [], "set_lease ran while apply() was rewriting the maps"

    dp.tables.during_apply = renew_from_another_thread
    dp.apply([FarmOwnership(WEB, frozenset({1}))])
    renewal.join(timeout=WAIT_S)
    assert not renewal.is_alive(), f"set_lease still blocked {WAIT_S} s after apply() returned"
    assert result == [False], "set_lease reported a lease written for a farm apply() removed"
    assert dp.tables.leases.get(dns_slot, (0, 0)) == (0, 0), (
        f"dns's deadline was written into slot {dns_slot} after apply() freed it")


def test_node_set_lease_routes_to_the_interface_that_serves_the_farm(tmp_path, monkeypatch):
    eth0 = programmed(tmp_path, monkeypatch, [WEB], "eth0")
    eth1 = programmed(tmp_path, monkeypatch, [farm("dns", "203.0.113.20", "eth1")], "eth1")
    node = NodeDataplanes("n1", str(tmp_path / "pins"), str(tmp_path / "state"))
    node.by_iface = {"eth0": eth0, "eth1": eth1}
    assert node.set_lease("dns", 77, 177) is True
    assert eth1.tables.leases == {eth1.state.slots["dns"]: (77, 177)} and eth0.tables.leases == {}
    assert node.set_lease("gone", 77, 177) is False


class RecordingNode:
    def __init__(self):
        self.calls = []

    def set_lease(self, farm, syn_deadline_ns, deadline_ns):
        self.calls.append((farm, syn_deadline_ns, deadline_ns))
        return True


def test_lease_writer_renews_both_deadlines_through_a_started_interface():
    node = RecordingNode()
    assert leases.LeaseWriter(node).renew("web", 1_000, 1_100) is True
    assert node.calls == [("web", 1_000, 1_100)]


def test_lease_writer_writes_a_16_byte_struct_vf_lease_into_an_adopted_pin(monkeypatch):
    """Before this agent compiled anything, the renewal goes to the adopted filter's pinned map:
    syn_deadline then deadline, little-endian u64s, as struct vf_lease lays them out."""
    writes = []
    monkeypatch.setattr(leases, "obj_get", lambda path: 42 if path == "/pins/n1/eth0/vf_lease" else 0)
    monkeypatch.setattr(leases, "map_update", lambda fd, key, value: writes.append((fd, key, value)))
    w = leases.LeaseWriter()
    w.publish({"web": ("/pins/n1/eth0", 3)})
    assert w.renew("web", 5 * 10**9, 5 * 10**9 + 100_000_000) is True
    assert writes == [(42, struct.pack("<I", 3), struct.pack("<QQ", 5 * 10**9, 5 * 10**9 + 100_000_000))]
    w._fds.clear()                         # the fake fd is not a real one to close


def test_heartbeats_renew_both_stages_from_the_last_quorum_contact():
    from tests.unit.test_heartbeat_engine import MS, Net
    net = Net("abc", interval=100, timeout=300)
    net.run(500)
    syn_deadline, deadline = net.leases["a"].leases["web"]
    assert syn_deadline > net.now, "a node in a quorum view did not renew its lease"
    # the whole lease ends a timeout after the last contact, less min(interval / 4, 10 ms) for
    # the filter's coarse clock; the SYN stage half an interval before that
    assert deadline <= net.now + (300 - 10) * MS
    assert deadline - syn_deadline == 50 * MS, f"the SYN stage ends {(deadline - syn_deadline) / MS} ms early, not 50"
def test_a_farm_of_one_renews_no_lease_in_either_stage():
    from tests.unit.test_heartbeat_engine import Net
    net = Net("a")
    net.run(300)
    assert net.leases["a"].leases["web"] == (0, 0)
