"""The checks FilterTables applies to UDP handover input before it writes a map (pure), and the
order its udp_records() come in. The map writes themselves: tests/bpf/test_udp_handover.py."""
from __future__ import annotations

import ipaddress

import pytest

from nodeagent.bpf_consts import COUNTER_NAMES
from nodeagent.filter_tables import Counters, check_udp_config, check_udp_record
from vipfarm.udp_flows import UdpFlow, UdpRecord, flow_order

V4 = UdpFlow(ipaddress.ip_address("198.51.100.7"), 40000, ipaddress.ip_address("203.0.113.10"), 5000)
V6 = UdpFlow(ipaddress.ip_address("2001:db8:1::7"), 40000, ipaddress.ip_address("2001:db8::10"), 5000)


@pytest.mark.parametrize("idle,hold", [(0, 0), (30 * 10**9, 0), (30 * 10**9, 123), ((1 << 63) - 1, (1 << 64) - 1)])
def test_udp_settings_the_filter_can_hold_pass(idle, hold):
    check_udp_config(3, idle, hold)


@pytest.mark.parametrize("idle,hold,match", [
    (-1, 0, r"idle_ns -1 for farm slot 3 is not a duration in ns 0\.\.2\*\*63-1; pass udpIdleSeconds"),
    (1 << 63, 0, r"idle_ns 9223372036854775808 for farm slot 3"),   # the filter compares it as an s64
    (30.0, 0, r"idle_ns 30\.0"),
    (True, 0, r"idle_ns True"),
    (0, -1, r"hold_until -1 for farm slot 3 is not a u64 nanosecond time; pass time\.monotonic_ns\(\)"),
    (0, 1 << 64, r"hold_until 18446744073709551616"),
    (0, None, r"hold_until None"),
])
def test_udp_settings_out_of_range_are_refused_naming_the_slot_the_value_and_the_fix(idle, hold, match):
    with pytest.raises(ValueError, match=match):
        check_udp_config(3, idle, hold)


@pytest.mark.parametrize("rec", [UdpRecord(V4, 0, True, 0), UdpRecord(V6, (1 << 64) - 1, False, 65535)])
def test_records_the_table_can_hold_pass(rec):
    check_udp_record(1, rec)


@pytest.mark.parametrize("rec,match", [
    (V4, r"UDP record for farm slot 1: UdpFlow\(.*\) is not a UdpRecord"),
    (UdpRecord("198.51.100.7", 0, True, 0), r"is not a UdpRecord of a UdpFlow"),
    (UdpRecord(V4, -5, True, 0), r"UDP record .*198\.51\.100\.7.* for farm slot 1: last_ns -5 is not a u64"),
    (UdpRecord(V4, 1 << 64, True, 0), r"last_ns 18446744073709551616"),
    (UdpRecord(V4, 1.5, True, 0), r"last_ns 1\.5"),
    (UdpRecord(V4, 5, 1, 0), r"mine 1 is not True or False"),
    (UdpRecord(V4, 5, True, 65536), r"bucket 65536 is outside 0\.\.65535; pass vipfarm\.udp_flows\.udp_bucket"),
    (UdpRecord(V4, 5, True, -1), r"bucket -1 is outside"),
    (UdpRecord(V4, 5, True, False), r"bucket False is outside"),
])
def test_bad_records_are_refused_naming_the_flow_the_value_and_the_fix(rec, match):
    with pytest.raises(ValueError, match=match):
        check_udp_record(1, rec)


def test_flow_order_sorts_flows_of_both_families():
    """UdpFlow's own order raises TypeError between IPv4 and IPv6 addresses; a farm's VIPs may
    be of both families, so udp_records() (and the model's) sort by flow_order."""
    other = UdpFlow(ipaddress.ip_address("198.51.100.6"), 1, ipaddress.ip_address("203.0.113.10"), 5000)
    with pytest.raises(TypeError):
        sorted([V6, V4])
    assert sorted([V6, V4, other], key=flow_order) == [other, V4, V6]


def test_counters_have_the_udp_handover_counters_in_the_filter_order():
    c = Counters(udp_kept=1, udp_elsewhere=2, udp_held=3)
    assert list(c.as_dict()) == list(COUNTER_NAMES)
    assert COUNTER_NAMES[-3:] == ("udp_kept", "udp_elsewhere", "udp_held")
    assert (c.as_dict()["udp_kept"], c.as_dict()["udp_elsewhere"], c.as_dict()["udp_held"]) == (1, 2, 3)
