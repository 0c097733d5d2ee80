"""Standalone mode: the agent serves Farm files whose spec.nodes lists the members (no Kubernetes).

  vipfarm-agent --farm-file farm.yaml --node n1
Runs in the foreground. SIGTERM/SIGINT: graceful leave (VIPs removed, XDP detached,
sysctls restored). SIGHUP: re-read the farm files and move only the buckets that must move.
SIGKILL leaves the pinned dataplane in place for the next agent to adopt; that agent also
removes what farms dropped from the files meanwhile left behind (node_dataplanes.py).
"""
from __future__ import annotations

import logging
import signal
import threading

from vipfarm.assignment import Assignment, Member, assign
from vipfarm.conflicts import first_duplicate
from vipfarm.spec import Farm, FarmSpecError, load_farm_file

from .bpf_program import DataplaneError
from .node_dataplanes import NodeDataplanes
from .filter_plan import FarmOwnership

log = logging.getLogger("vipfarm.agent")


def members_of(farm: Farm) -> list[Member]:
    return [Member(n.name, n.weight, True) for n in farm.nodes]


def standalone_ownership(farms: list[Farm], node: str,
                         previous: dict[str, Assignment]) -> tuple[list[FarmOwnership], dict[str, Assignment]]:
    """Each farm's assignment from its member list, and the buckets `node` owns."""
    items, assignments = [], {}
    for farm in farms:
        farm.node(node)   # raises with a clear message when this node is not a member
        a = assign(previous.get(farm.name), members_of(farm), farm.buckets)
        assignments[farm.name] = a
        items.append(FarmOwnership(farm, frozenset(a.owned_by(node))))
    return items, assignments


def load_farms(paths: list[str], node: str) -> list[Farm]:
    farms = [load_farm_file(p, require_nodes=True) for p in paths]
    names = [f.name for f in farms]
    dupes = {n for n in names if names.count(n) > 1}
    if dupes:
        raise FarmSpecError(",".join(sorted(dupes)), ["the same farm name appears in two --farm-file files"])
    # The VIP conflict rule across every file, whatever interface each farm uses: the filter
    # would catch a clash on one interface only, and two interfaces would both answer.
    clash = first_duplicate((f.name, f.virtual_ips) for f in farms)
    if clash:
        vip, first, second = clash
        raise FarmSpecError(second, [f"spec.virtualIPs: {vip} is also claimed by farm {first!r}; a virtual IP "
                                     f"belongs to one farm: remove it from one of the two files"])
    for f in farms:
        f.node(node)
    return farms


class StandaloneAgent:
    def __init__(self, paths: list[str], node: str, pin_root: str, state_root: str):
        self.paths = paths
        self.node = node
        self.dataplanes = NodeDataplanes(node, pin_root, state_root)
        self.assignments: dict[str, Assignment] = {}
        self.wake = threading.Event()
        self.stopping = False
        self.reload_requested = False

    def program(self, farms: list[Farm]) -> None:
        items, assignments = standalone_ownership(farms, self.node, self.assignments)
        self.dataplanes.program(items)
        self.assignments = assignments

    def run(self) -> int:
        farms = load_farms(self.paths, self.node)   # all validation before any change
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        self.program(farms)
        log.info("event=agent_ready node=%s farms=%s mode=standalone", self.node,
                 ",".join(f.name for f in farms))
        print(f"vipfarm-agent: node {self.node} serving {', '.join(f.name for f in farms)}", flush=True)
        while not self.stopping:
            self.wake.wait(30)
            self.wake.clear()
            if self.reload_requested and not self.stopping:
                self.reload_requested = False
                self._reload()
            elif not self.stopping:
                self._log_counters()
        self.dataplanes.stop()
        log.info("event=agent_stopped node=%s", self.node)
        return 0

    def _reload(self) -> None:
        try:
            farms = load_farms(self.paths, self.node)
            self.program(farms)
            log.info("event=reloaded node=%s farms=%d", self.node, len(farms))
        except (FarmSpecError, KeyError, ValueError, DataplaneError) as e:
            log.error("event=reload_rejected node=%s error=%r action=keep_serving_previous", self.node, str(e))

    def _log_counters(self) -> None:
        for iface, per_farm in self.dataplanes.counters().items():
            for farm, c in per_farm.items():
                log.info("event=counters iface=%s farm=%s %s", iface, farm,
                         " ".join(f"{k}={v}" for k, v in c.as_dict().items()))

    def _on_stop(self, signum, frame) -> None:
        self.stopping = True
        self.wake.set()

    def _on_reload(self, signum, frame) -> None:
        self.reload_requested = True
        self.wake.set()
