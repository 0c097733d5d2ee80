"""All of one node's dataplanes (one per farm interface), driven by a list of farms + ownership."""
from __future__ import annotations

from collections import defaultdict

from .dataplane import InterfaceDataplane, merge_xdp_modes
from .plan import FarmOwnership


class NodeDataplanes:
    def __init__(self, node: str, pin_root: str, state_root: str):
        self.node = node
        self.pin_root = pin_root
        self.state_root = state_root
        self.by_iface: dict[str, InterfaceDataplane] = {}

    def program(self, items: list[FarmOwnership]) -> None:
        """Make the node serve exactly these farms with these buckets."""
        groups: dict[str, list[FarmOwnership]] = defaultdict(list)
        for i in items:
            groups[i.farm.interface].append(i)
        for iface, group in sorted(groups.items()):
            dp = self.by_iface.get(iface)
            if dp is None:
                dp = InterfaceDataplane(self.node, iface, merge_xdp_modes([i.farm for i in group]),
                                        self.pin_root, self.state_root)
                dp.start()
                self.by_iface[iface] = dp
            dp.apply(group)
        for iface in set(self.by_iface) - set(groups):
            self.by_iface.pop(iface).stop()

    def mode_of(self, iface: str) -> str:
        dp = self.by_iface.get(iface)
        return dp.mode if dp else ""

    def counters(self):
        return {iface: dp.counters() for iface, dp in self.by_iface.items()}

    def stop(self) -> None:
        for dp in self.by_iface.values():
            dp.stop()
        self.by_iface.clear()
