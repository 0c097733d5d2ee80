"""All of one node's dataplanes (one per farm interface), driven by a list of farms + ownership.

The first program() after construction also removes what an earlier agent on this node left
and no current farm claims (orphans.py decides; this module does the removals). Callers make
that first call with the complete set of farms (standalone: the farm files; cluster mode:
after the first full Farm LIST), or it would remove farms it merely has not heard of yet.
"""
from __future__ import annotations

import logging
import os
from collections import defaultdict

from . import netconfig
from .bpf_program import DataplaneError, PROGRAM_FUNCTION
from .dataplane import InterfaceDataplane, merge_xdp_modes, undo_interface
from .local_state import StateCorrupt, quarantine, read_state
from .pinned_maps import read_owned
from .orphans import LocalRecords, OrphanInterface, Orphans, find_orphans
from .filter_plan import FarmOwnership

log = logging.getLogger("vipfarm.node")


def read_local_records(node: str, pin_root: str, state_root: str) -> LocalRecords:
    """This node's state files and pin dirs, and nothing of any other node's (in the lab,
    several agents share one bpffs and one state root)."""
    state_dir, pin_dir = os.path.join(state_root, node), os.path.join(pin_root, node)
    states, corrupt = {}, set()
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        names = []
    for name in sorted(names):
        if not name.endswith(".json"):
            continue                      # tmp files of a save, quarantined .corrupt-* files
        iface = name[:-len(".json")]
        try:
            state = read_state(os.path.join(state_dir, name), node, iface)
        except StateCorrupt:
            corrupt.add(iface)
            continue
        if state is not None:
            states[iface] = state
    try:
        pinned = {e.name for e in os.scandir(pin_dir) if e.is_dir(follow_symlinks=False)}
    except FileNotFoundError:
        pinned = set()
    return LocalRecords(states, frozenset(corrupt), frozenset(pinned))


class NodeDataplanes:
    def __init__(self, node: str, pin_root: str, state_root: str):
        self.node = node
        self.pin_root = pin_root
        self.state_root = state_root
        self.by_iface: dict[str, InterfaceDataplane] = {}
        self.orphans_checked = False

    def program(self, items: list[FarmOwnership]) -> None:
        """Make the node serve exactly these farms with these buckets."""
        orphans = Orphans()
        if not self.orphans_checked:
            self.orphans_checked = True   # once: a failure below is logged, not retried
            orphans = find_orphans(read_local_records(self.node, self.pin_root, self.state_root), items)
            for o in orphans.interfaces:
                self._remove_orphaned_interface(o)
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
            for e in orphans.entries_on(iface):   # apply() has just removed them
                log.info("event=orphan_removed kind=%s node=%s iface=%s %s=%s%s", e.kind, self.node, iface,
                         {"farm_slot": "farm", "vip": "vip", "mac_filter": "mac"}[e.kind], e.name,
                         f" slot={e.slot}" if e.kind == "farm_slot" else "")
        for iface in sorted(set(self.by_iface) - set(groups)):
            self.by_iface[iface].stop()      # raises if its filter is still attached: then it is kept
            del self.by_iface[iface]         # and the next program() tries again

    def _remove_orphaned_interface(self, o: OrphanInterface) -> None:
        pin_dir = os.path.join(self.pin_root, self.node, o.iface)
        state_path = os.path.join(self.state_root, self.node, f"{o.iface}.json")

        def report(kind: str, **details) -> None:
            log.info("event=orphan_removed kind=%s node=%s iface=%s%s", kind, self.node, o.iface,
                     "".join(f" {k}={v}" for k, v in details.items()))

        try:
            if o.state is not None:
                present = netconfig.link_exists(o.iface)
                if not present:
                    log.info("event=orphan_interface_gone node=%s iface=%s", self.node, o.iface)
                undo_interface(o.iface, o.state, pin_dir, state_path, report, link_present=present)
                return
            # No readable record: remove nothing. The pins are the only account left of what a
            # filter that may still be attached holds (an agent that serves the interface again
            # rebuilds its record from them); the unreadable file is kept aside for inspection.
            if o.corrupt:
                try:
                    read_state(state_path, self.node, o.iface)
                except StateCorrupt as e:
                    quarantine(state_path, e)
            log.warning("event=orphan_incomplete node=%s iface=%s reason=no_readable_state_file "
                        "left=xdp,pins,vips,mac_filters,sysctls fix=%r", self.node, o.iface,
                        f"check `ip -d link show dev {o.iface}` for an XDP program named {PROGRAM_FUNCTION} and "
                        f"`ip addr show dev lo` for VIPs of deleted farms, remove them by hand, then remove "
                        f"{pin_dir}")
        except Exception as e:        # one interface's failure must not stop the others
            log.error("event=orphan_removal_failed node=%s iface=%s error=%r", self.node, o.iface, str(e))

    def serving_now(self) -> dict[str, frozenset[int]]:
        """The buckets each farm holds right now: as this agent last programmed them, or, for an
        interface it has not started yet (the first pass after a restart), as the pinned maps
        that the previous agent left say (the state file names each farm's slot)."""
        out = {f.name: f.owned for dp in self.by_iface.values() for f in dp.plan.farms}
        if self.orphans_checked:
            return out        # after the first program(), every adopted interface is started or gone
        for iface, state in read_local_records(self.node, self.pin_root, self.state_root).states.items():
            if iface in self.by_iface:
                continue
            pin_dir = os.path.join(self.pin_root, self.node, iface)
            for farm, slot in state.slots.items():
                try:
                    out.setdefault(farm, frozenset(read_owned(pin_dir, slot)))
                except OSError as e:     # no pins to read: nothing is served there
                    log.info("event=adopted_buckets_unreadable node=%s iface=%s farm=%s error=%s",
                             self.node, iface, farm, e)
        return out

    def set_lease(self, farm_name: str, syn_deadline_ns: int, deadline_ns: int) -> bool:
        """Set the farm's lease on the interface that serves it (InterfaceDataplane.set_lease);
        False when no interface here has the farm in a slot. Safe from the heartbeat thread:
        the interface dict is read from a snapshot."""
        for dp in list(self.by_iface.values()):
            if dp.set_lease(farm_name, syn_deadline_ns, deadline_ns):
                return True
        return False

    def with_farm_tables(self, farm_name: str, use):
        """InterfaceDataplane.with_farm_tables on the interface that serves the farm; (False,
        None) when none does. Safe from the heartbeat thread (a snapshot of the interfaces)."""
        for dp in list(self.by_iface.values()):
            found, result = dp.with_farm_tables(farm_name, use)
            if found:
                return True, result
        return False, None

    def pins(self) -> dict[str, tuple[str, int]]:
        """farm -> (pin dir, slot) of the interface serving it (for pinned_maps' readers)."""
        return {farm: (dp.pin_dir, slot) for dp in list(self.by_iface.values())
                for farm, slot in dict(dp.state.slots).items()}

    def mode_of(self, iface: str) -> str:
        dp = self.by_iface.get(iface)
        return dp.mode if dp else ""

    def counters(self):
        return {iface: dp.counters() for iface, dp in self.by_iface.items()}

    def stop(self) -> None:
        """Graceful leave of every interface; one that fails is logged and the others still go."""
        for iface, dp in sorted(self.by_iface.items()):
            try:
                dp.stop()
            except DataplaneError as e:
                log.error("event=leave_incomplete node=%s iface=%s error=%s", self.node, iface, e)
        self.by_iface.clear()
