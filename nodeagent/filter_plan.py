"""What the XDP filter on one interface should contain: a pure function of farms and ownership.

The agent writes a FilterPlan into the BPF maps (filter_tables.py); the reference model
(tests/support/filter_model.py) predicts verdicts from the same FilterPlan, so both read one description.
"""
from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

from vipfarm.addresses import parse_mac
from vipfarm.conflicts import first_duplicate
from vipfarm.spec import Farm

from .bpf_consts import AFF_CLIENTIP, AFF_CLIENTIPPORT, MAX_FARMS, MAX_VIPS_PER_IFACE, FAMILY_V4, FAMILY_V6

PROTO_NUMBERS = {"TCP": socket.IPPROTO_TCP, "UDP": socket.IPPROTO_UDP}
AFFINITY_CODES = {"ClientIP": AFF_CLIENTIP, "ClientIPPort": AFF_CLIENTIPPORT}


@dataclass(frozen=True)
class RuleEntry:
    proto: int
    affinity: int
    port_lo: int
    port_hi: int


@dataclass(frozen=True)
class VipEntry:
    family: int                 # FAMILY_V4 / FAMILY_V6
    addr: bytes                 # 4 or 16 bytes, network order
    slot: int
    rules: tuple[RuleEntry, ...]

    @property
    def key(self) -> tuple[int, bytes]:
        return (self.family, self.addr)


@dataclass(frozen=True)
class FarmEntry:
    slot: int
    name: str
    vmac: bytes                 # 6 bytes
    seed: int
    buckets: int
    owned: frozenset[int]       # the buckets this node owns
    # The buckets in handover (the same set on every node while some node still drains flows
    # from them): there the filter takes a TCP packet of a flow this kernel knows, whoever owns
    # the bucket, and drops an unknown non-SYN; a UDP packet follows the filter's UDP flow
    # table when the farm has UDP handover (bpf/vipfarm_xdp.c, "Handover"; README, "Planned moves").
    moving: frozenset[int] = frozenset()


@dataclass(frozen=True)
class FilterPlan:
    """Desired contents of one interface's filter."""
    farms: tuple[FarmEntry, ...] = ()
    vips: tuple[VipEntry, ...] = ()

    def farm_by_slot(self) -> dict[int, FarmEntry]:
        return {f.slot: f for f in self.farms}

    def vip_by_key(self) -> dict[tuple[int, bytes], VipEntry]:
        return {v.key: v for v in self.vips}


@dataclass(frozen=True)
class FarmOwnership:
    farm: Farm
    owned: frozenset[int]
    moving: frozenset[int] = frozenset()     # buckets in handover; see FarmEntry.moving


def vip_key(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> tuple[int, bytes]:
    return (FAMILY_V4 if ip.version == 4 else FAMILY_V6, ip.packed)


def allocate_slots(names: list[str], previous: dict[str, int]) -> dict[str, int]:
    """Keep each farm's previous slot; give new farms the lowest free slots, in name order."""
    out = {n: s for n, s in previous.items() if n in names}
    used = set(out.values())
    free = (s for s in range(MAX_FARMS) if s not in used)
    for n in sorted(names):
        if n not in out:
            try:
                out[n] = next(free)
            except StopIteration:
                raise ValueError(f"too many farms on one interface: at most {MAX_FARMS}; "
                                 f"farm {n!r} does not fit") from None
    return out


def build_plan(items: list[FarmOwnership], slots: dict[str, int]) -> FilterPlan:
    """The filter contents for the farms of one interface."""
    ordered = sorted(items, key=lambda i: i.farm.name)
    duplicate = first_duplicate((i.farm.name, i.farm.virtual_ips) for i in ordered)
    if duplicate:
        vip, first, second = duplicate
        raise ValueError(f"virtual IP {vip} is claimed by farms {first!r} and {second!r}; "
                         f"remove it from one of them")
    farms: list[FarmEntry] = []
    vips: list[VipEntry] = []
    for item in ordered:
        f = item.farm
        slot = slots[f.name]
        outside = sorted(b for b in item.moving if not 0 <= b < f.buckets)
        if outside:
            raise ValueError(f"farm {f.name!r}: moving bucket {outside[0]} is outside 0..{f.buckets - 1} "
                             f"({len(outside)} such); pass buckets of this farm's table")
        rules = tuple(RuleEntry(PROTO_NUMBERS[r.protocol], AFFINITY_CODES[r.affinity],
                                r.ports.low, r.ports.high) for r in f.rules)
        farms.append(FarmEntry(slot, f.name, parse_mac(f.virtual_mac), f.seed, f.buckets, item.owned,
                               frozenset(item.moving)))
        for ip in f.virtual_ips:
            family, addr = vip_key(ip)
            vips.append(VipEntry(family, addr, slot, rules))
    if len(vips) > MAX_VIPS_PER_IFACE:
        raise ValueError(f"{len(vips)} virtual IPs on one interface; the filter holds {MAX_VIPS_PER_IFACE}")
    return FilterPlan(tuple(farms), tuple(vips))
