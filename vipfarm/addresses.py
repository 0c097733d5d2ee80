"""Address rules: what an IP address or a MAC address in a Farm may be. Pure functions, no I/O.

One home for these rules, so the spec validator, the agent and the CLI agree (the CRD's CEL
rules in crds/farms.vipfarm.io.yaml mirror them). IP texts are parsed canonically: the
zoned form (fe80::1%eth0) and the IPv4-mapped IPv6 form (::ffff:203.0.113.10) are refused,
as the API server's CEL ip() refuses them, so one address has one spelling after parsing.
"""
from __future__ import annotations

import ipaddress
import re
from typing import Any, Union

IPAddress = Union[ipaddress.IPv4Address, ipaddress.IPv6Address]

BROADCAST_V4 = ipaddress.IPv4Address("255.255.255.255")
_MAC_RE = re.compile(r"([0-9a-fA-F]{2}:){5}[0-9a-fA-F]{2}")


class NotAnIPAddress(ValueError):
    """The text is not an IPv4 or IPv6 address at all (as opposed to a refused form of one)."""


def parse_ip(text: Any) -> IPAddress:
    """An IP address text into an address; ValueError with the reason.

    Raises NotAnIPAddress when the text is not an address; ValueError for the zoned and
    IPv4-mapped forms.
    """
    if not isinstance(text, str):
        raise NotAnIPAddress("not an IPv4 or IPv6 address; write e.g. \"203.0.113.10\" or \"2001:db8::10\"")
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        raise NotAnIPAddress("not an IPv4 or IPv6 address; write e.g. \"203.0.113.10\" or "
                             "\"2001:db8::10\"") from None
    if "%" in text or (ip.version == 6 and ip.ipv4_mapped is not None):
        raise ValueError("zoned (%iface) and IPv4-mapped IPv6 addresses are not accepted; "
                         "write the plain IPv4 or IPv6 address")
    return ip


def address_class(ip: IPAddress) -> str | None:
    """The non-unicast class of an address ("unspecified", "broadcast", "multicast",
    "loopback"), or None for a unicast address."""
    if ip.is_unspecified:
        return "unspecified"
    if ip == BROADCAST_V4:
        return "broadcast"
    if ip.is_multicast:
        return "multicast"
    if ip.is_loopback:
        return "loopback"
    return None


def unicast_problem(ip: IPAddress, *, allow_link_local: bool = True) -> str | None:
    """None if the address is a unicast address a host can own, else what it is instead
    (e.g. "the IPv4 broadcast address"). allow_link_local=False also refuses link-local
    addresses (virtual IPs must be routable beyond the link)."""
    kind = address_class(ip)
    if kind == "broadcast":
        return "the IPv4 broadcast address"
    if kind == "unspecified":
        return "the unspecified address"
    if kind is not None:
        return f"a {kind} address"
    if not allow_link_local and ip.is_link_local:
        return "a link-local address"
    return None


def parse_mac(text: Any) -> bytes:
    """A MAC text such as "02:00:5E:10:00:01" (either case) into its 6 bytes; ValueError with
    the reason."""
    if not isinstance(text, str) or not _MAC_RE.fullmatch(text):
        raise ValueError("must be a MAC such as 02:00:5e:10:00:01 (six hex octets separated by ':')")
    return bytes(int(part, 16) for part in text.split(":"))


def format_mac(mac: bytes) -> str:
    """6 bytes into the lower-case colon form, e.g. 02:00:5e:10:00:01."""
    if len(mac) != 6:
        raise ValueError(f"a MAC has 6 bytes, got {len(mac)}")
    return ":".join(f"{b:02x}" for b in mac)


def is_group_mac(mac: bytes) -> bool:
    """Whether a MAC is a group (multicast/broadcast) address: the low bit of the first octet."""
    return bool(mac[0] & 1)
