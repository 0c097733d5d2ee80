"""What a previous agent left on this node that no current Farm claims: a pure function of
the local records (state files and pin dirs of this node only) and the farms claimed now.

A Farm deleted while the agent was down leaves its VIPs, filter entries, pins and sysctls
behind; the first programming after start removes them (node_dataplanes.py), so both modes get it.
"""
from __future__ import annotations

from dataclasses import dataclass

from .local_state import InterfaceState
from .filter_plan import FarmOwnership


@dataclass(frozen=True)
class LocalRecords:
    """What this node's earlier agents left: read from <state-root>/<node>/ and <pin-root>/<node>/."""
    states: dict[str, InterfaceState]     # readable state files, by interface
    corrupt: frozenset[str] = frozenset()  # interfaces whose state file is unreadable
    pinned: frozenset[str] = frozenset()   # interfaces with a pin dir


@dataclass(frozen=True)
class OrphanInterface:
    """An interface no current farm uses: everything on it is to be undone."""
    iface: str
    state: InterfaceState | None          # None: no readable record (pins only, or corrupt)
    pinned: bool
    corrupt: bool


@dataclass(frozen=True)
class OrphanEntry:
    """A gone farm's leftover on an interface still in use; apply() removes it (the state
    file's slots, VIPs and MACs are its previous programming), and the caller logs it."""
    iface: str
    kind: str                             # farm_slot | vip | mac_filter
    name: str                             # the farm, the VIP or the MAC
    slot: int = -1


@dataclass(frozen=True)
class Orphans:
    interfaces: tuple[OrphanInterface, ...] = ()
    entries: tuple[OrphanEntry, ...] = ()

    def entries_on(self, iface: str) -> list[OrphanEntry]:
        return [e for e in self.entries if e.iface == iface]


def find_orphans(records: LocalRecords, items: list[FarmOwnership]) -> Orphans:
    by_iface: dict[str, list[FarmOwnership]] = {}
    for i in items:
        by_iface.setdefault(i.farm.interface, []).append(i)
    interfaces = []
    for iface in sorted(set(records.states) | records.corrupt | records.pinned):
        if iface not in by_iface:
            interfaces.append(OrphanInterface(iface, records.states.get(iface),
                                              iface in records.pinned, iface in records.corrupt))
    entries = []
    for iface, group in sorted(by_iface.items()):
        state = records.states.get(iface)
        if state is None:
            continue
        names = {i.farm.name for i in group}
        vips = {str(ip) for i in group for ip in i.farm.virtual_ips}
        macs = {i.farm.virtual_mac for i in group}
        entries += [OrphanEntry(iface, "farm_slot", n, s) for n, s in sorted(state.slots.items())
                    if n not in names]
        entries += [OrphanEntry(iface, "vip", v) for v in sorted(set(state.vips) - vips)]
        entries += [OrphanEntry(iface, "mac_filter", m) for m in sorted(set(state.macs) - macs)]
    return Orphans(tuple(interfaces), tuple(entries))
