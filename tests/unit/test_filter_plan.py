"""nodeagent.filter_plan: farm slots and the filter plan built from farms and ownership."""
from __future__ import annotations

import ipaddress

import pytest

from nodeagent.bpf_consts import AFF_CLIENTIP, AFF_CLIENTIPPORT, FAMILY_V4, FAMILY_V6, MAX_FARMS, MAX_VIPS_PER_IFACE
from nodeagent.filter_plan import FarmOwnership, RuleEntry, allocate_slots, build_plan
from vipfarm.addresses import parse_mac
from vipfarm.spec import parse_farm


def farm(name, vips, rules=(), **spec):
    return parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": name},
                       "spec": {"virtualIPs": list(vips), "rules": list(rules), **spec}})


# -- slots -----------------------------------------------------------------------------------

def test_new_farms_get_the_lowest_slots_in_name_order():
    assert allocate_slots(["web", "api", "dns"], {}) == {"api": 0, "dns": 1, "web": 2}


def test_previous_slots_are_kept_and_new_farms_fill_the_lowest_free_ones():
    previous = {"web": 0, "dns": 2, "mail": 5}
    slots = allocate_slots(["web", "dns", "mail", "zeta", "api", "ftp"], previous)
    assert slots["web"] == 0 and slots["dns"] == 2 and slots["mail"] == 5
    assert slots["api"] == 1 and slots["ftp"] == 3 and slots["zeta"] == 4


def test_slots_of_removed_farms_are_freed_for_new_ones():
    slots = allocate_slots(["web", "new"], {"gone": 0, "web": 1})
    assert slots == {"web": 1, "new": 0}


def test_allocation_is_stable_when_nothing_changes():
    first = allocate_slots(["c", "a", "b"], {})
    assert allocate_slots(["a", "b", "c"], first) == first


def test_slots_are_unique_and_within_range_for_max_farms():
    names = [f"farm{i:02d}" for i in range(MAX_FARMS)]
    slots = allocate_slots(names, {})
    assert sorted(slots.values()) == list(range(MAX_FARMS))


def test_more_than_max_farms_is_refused_naming_the_farm_that_does_not_fit():
    names = [f"farm{i:02d}" for i in range(MAX_FARMS + 1)]
    with pytest.raises(ValueError, match=f"at most {MAX_FARMS}") as info:
        allocate_slots(names, {})
    assert f"farm{MAX_FARMS:02d}" in str(info.value)


def test_a_new_farm_is_refused_when_previous_farms_hold_every_slot():
    previous = {f"old{i:02d}": i for i in range(MAX_FARMS)}
    with pytest.raises(ValueError, match="'extra' does not fit"):
        allocate_slots(list(previous) + ["extra"], previous)


# -- plan --------------------------------------------------------------------------------------

def test_one_vip_claimed_by_two_farms_is_refused_naming_both_and_the_ip():
    web = farm("web", ["203.0.113.10", "203.0.113.11"])
    api = farm("api", ["203.0.113.11"])
    with pytest.raises(ValueError) as info:
        build_plan([FarmOwnership(web, frozenset()), FarmOwnership(api, frozenset())],
                   {"web": 0, "api": 1})
    message = str(info.value)
    assert "203.0.113.11" in message
    assert "'web'" in message and "'api'" in message


def test_one_ipv6_vip_claimed_by_two_farms_is_refused():
    a = farm("a", ["2001:db8::10"])
    b = farm("b", ["2001:0db8:0000::0010"])
    with pytest.raises(ValueError, match=r"2001:db8::10 is claimed by farms 'a' and 'b'"):
        build_plan([FarmOwnership(b, frozenset()), FarmOwnership(a, frozenset())], {"a": 0, "b": 1})


def test_plan_holds_each_farm_and_each_vip_with_its_slot_and_rules():
    web = farm("web", ["203.0.113.10", "2001:db8::10"], buckets=256, seed=99, rules=[
        {"protocol": "TCP", "ports": "80", "affinity": "ClientIPPort"},
        {"protocol": "UDP", "ports": "5000-5100", "affinity": "ClientIP"}])
    dns = farm("dns", ["203.0.113.53"])
    owned = frozenset({1, 2, 3})
    plan = build_plan([FarmOwnership(web, owned), FarmOwnership(dns, frozenset())], {"web": 3, "dns": 7})
    by_slot = plan.farm_by_slot()
    assert set(by_slot) == {3, 7}
    w = by_slot[3]
    assert (w.name, w.seed, w.buckets, w.owned) == ("web", 99, 256, owned)
    assert w.vmac == parse_mac(web.virtual_mac) and len(w.vmac) == 6
    vips = plan.vip_by_key()
    v4 = vips[(FAMILY_V4, ipaddress.IPv4Address("203.0.113.10").packed)]
    v6 = vips[(FAMILY_V6, ipaddress.IPv6Address("2001:db8::10").packed)]
    assert v4.slot == v6.slot == 3
    assert v4.rules == v6.rules == (RuleEntry(6, AFF_CLIENTIPPORT, 80, 80),
                                    RuleEntry(17, AFF_CLIENTIP, 5000, 5100))
    assert vips[(FAMILY_V4, bytes([203, 0, 113, 53]))].slot == 7
    assert vips[(FAMILY_V4, bytes([203, 0, 113, 53]))].rules == ()


def test_plan_does_not_depend_on_the_order_of_farms():
    a, b = farm("a", ["203.0.113.1"]), farm("b", ["203.0.113.2"])
    items = [FarmOwnership(a, frozenset({0})), FarmOwnership(b, frozenset({1}))]
    assert build_plan(items, {"a": 0, "b": 1}) == build_plan(items[::-1], {"a": 0, "b": 1})


def test_more_vips_than_the_filter_holds_is_refused():
    per_farm = 16
    farms = []
    for f in range(MAX_VIPS_PER_IFACE // per_farm + 1):
        vips = [str(ipaddress.IPv4Address(f"10.{f}.0.1") + i) for i in range(per_farm)]
        farms.append(FarmOwnership(farm(f"f{f}", vips), frozenset()))
    slots = {item.farm.name: i for i, item in enumerate(farms)}
    with pytest.raises(ValueError, match=f"holds {MAX_VIPS_PER_IFACE}"):
        build_plan(farms, slots)


def test_farm_entries_carry_the_virtual_mac_as_bytes_whatever_its_case():
    # (MAC text rules themselves: tests/unit/test_addresses.py)
    assert parse_mac("02:AB:cd:00:10:ff") == bytes([0x02, 0xAB, 0xCD, 0x00, 0x10, 0xFF])
