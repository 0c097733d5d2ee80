"""vipfarm.addresses: one spelling per IP address after parsing, the unicast classes, and the
MAC helpers."""
from __future__ import annotations

import ipaddress

import pytest

from vipfarm.addresses import (NotAnIPAddress, address_class, format_mac, is_group_mac, parse_ip, parse_mac,
                               unicast_problem)


@pytest.mark.parametrize("text,expected", [("203.0.113.10", "203.0.113.10"), ("2001:DB8:0::A", "2001:db8::a"),
                                           ("2001:db8::10", "2001:db8::10")])
def test_parse_ip_returns_the_canonical_address(text, expected):
    assert parse_ip(text) == ipaddress.ip_address(expected)
    assert str(parse_ip(text)) == expected


@pytest.mark.parametrize("text", ["203.0.113.300", "", " 203.0.113.10", "203.0.113.10\n", "example.com",
                                  None, 3405803786, ["203.0.113.10"], True])
def test_parse_ip_refuses_what_is_not_an_address(text):
    with pytest.raises(NotAnIPAddress, match="not an IPv4 or IPv6 address"):
        parse_ip(text)


@pytest.mark.parametrize("text", ["fe80::1%eth0", "2001:db8::1%1", "::ffff:203.0.113.10", "::FFFF:cb00:710a"])
def test_parse_ip_refuses_zoned_and_ipv4_mapped_forms_naming_the_fix(text):
    with pytest.raises(ValueError, match="write the plain IPv4 or IPv6 address") as info:
        parse_ip(text)
    assert not isinstance(info.value, NotAnIPAddress)


@pytest.mark.parametrize("text,kind", [("0.0.0.0", "unspecified"), ("::", "unspecified"),
                                       ("255.255.255.255", "broadcast"), ("224.0.0.1", "multicast"),
                                       ("239.1.2.3", "multicast"), ("ff02::1", "multicast"),
                                       ("127.0.0.1", "loopback"), ("127.9.9.9", "loopback"), ("::1", "loopback"),
                                       ("198.51.100.1", None), ("2001:db8::1", None), ("169.254.1.1", None),
                                       ("fe80::1", None), ("203.0.113.255", None)])
def test_address_class_names_every_non_unicast_class(text, kind):
    assert address_class(ipaddress.ip_address(text)) == kind


def test_unicast_problem_says_what_the_address_is_and_link_local_only_when_asked():
    assert unicast_problem(ipaddress.ip_address("255.255.255.255")) == "the IPv4 broadcast address"
    assert unicast_problem(ipaddress.ip_address("::")) == "the unspecified address"
    assert unicast_problem(ipaddress.ip_address("ff02::1")) == "a multicast address"
    assert unicast_problem(ipaddress.ip_address("198.51.100.7")) is None
    assert unicast_problem(ipaddress.ip_address("fe80::1")) is None
    assert unicast_problem(ipaddress.ip_address("fe80::1"), allow_link_local=False) == "a link-local address"
    assert unicast_problem(ipaddress.ip_address("169.254.0.9"), allow_link_local=False) == "a link-local address"


@pytest.mark.parametrize("text", ["02:00:5e:10:00:01", "02:00:5E:10:00:01", "02:00:5e:10:00:01".upper()])
def test_parse_mac_accepts_either_case_and_format_mac_writes_lower_case(text):
    mac = parse_mac(text)
    assert mac == bytes([0x02, 0x00, 0x5E, 0x10, 0x00, 0x01])
    assert format_mac(mac) == "02:00:5e:10:00:01"


@pytest.mark.parametrize("text", ["02:00:5e:10:00", "02:00:5e:10:00:01:02", "02-00-5e-10-00-01", "0200.5e10.0001",
                                  "02:00:5e:10:00:01\n", "02:00:5e:10:00:0g", " 02:00:5e:10:00:01", "", None, 2])
def test_parse_mac_refuses_anything_but_six_colon_separated_hex_octets(text):
    with pytest.raises(ValueError, match="MAC such as 02:00:5e:10:00:01"):
        parse_mac(text)


def test_format_mac_refuses_a_wrong_length():
    with pytest.raises(ValueError, match="6 bytes, got 5"):
        format_mac(b"\x02\x00\x00\x00\x00")


def test_is_group_mac_reads_the_low_bit_of_the_first_octet():
    assert is_group_mac(parse_mac("03:00:5e:10:00:01"))
    assert is_group_mac(parse_mac("ff:ff:ff:ff:ff:ff"))
    assert is_group_mac(parse_mac("01:00:5e:00:00:01"))
    assert not is_group_mac(parse_mac("02:00:5e:10:00:01"))
    assert not is_group_mac(parse_mac("fe:00:00:00:00:01"))
