"""The VIP conflict rule, the one place it is written.

Two Farms claiming one virtual IP: the earlier one (by creationTimestamp, then name) keeps
it, and the later one is in Conflict, so no node serves it. Addresses are compared in
canonical form: `2001:DB8::10` and `2001:db8::0:10` are the same VIP. A Farm being deleted
claims nothing. The operator applies the rule to set the Conflict phase, and every agent
applies it too, so a conflicting Farm never reaches a node's dataplane, even before the
operator has marked it.
"""
from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def canonical_vips(raw: Iterable[Any]) -> frozenset[IPAddress]:
    """The addresses in a spec.virtualIPs list (text or address objects); entries that are not
    addresses are left out (such a Farm is invalid and serves nothing anyway)."""
    out = set()
    for v in raw or ():
        try:
            out.add(ipaddress.ip_address(v))
        except ValueError:
            continue
    return frozenset(out)


@dataclass(frozen=True)
class FarmRef:
    """A Farm, as far as the conflict rule needs it."""
    name: str
    created: str                   # RFC 3339 creationTimestamp; sorts chronologically
    vips: frozenset[IPAddress]
    deleting: bool = False

    def precedes(self, other: "FarmRef") -> bool:
        return (self.created, self.name) < (other.created, other.name)


def farm_ref(body: Mapping[str, Any]) -> FarmRef:
    """A Farm object (as the API returns it), reduced to what the conflict rule reads."""
    md = body.get("metadata") or {}
    return FarmRef(md.get("name", ""), md.get("creationTimestamp", ""),
                   canonical_vips((body.get("spec") or {}).get("virtualIPs") or ()),
                   deleting=bool(md.get("deletionTimestamp")))


def claimed_elsewhere(me: FarmRef, others: Iterable[FarmRef]) -> list[str]:
    """This Farm's VIPs that an earlier, live Farm holds, as 'VIP (Farm other)', sorted."""
    out = []
    for o in others:
        if o.name == me.name or o.deleting or not o.precedes(me):
            continue
        out.extend(f"{v} (Farm {o.name})" for v in sorted(me.vips & o.vips, key=_order))
    return sorted(out)


def share_a_vip(a: FarmRef, b: FarmRef) -> bool:
    """Whether two Farms claim a common VIP (a change to one can start or end the other's conflict)."""
    return a.name != b.name and bool(a.vips & b.vips)


def first_duplicate(claims: Iterable[tuple[str, Iterable[IPAddress]]]) -> tuple[IPAddress, str, str] | None:
    """(vip, first farm, second farm) for the first VIP claimed twice in (farm, vips) pairs, else None."""
    seen: dict[IPAddress, str] = {}
    for name, vips in claims:
        for v in canonical_vips(vips):
            if v in seen:
                return v, seen[v], name
            seen[v] = name
    return None


def _order(ip: IPAddress) -> tuple[int, int]:
    return ip.version, int(ip)
