"""Standalone mode: the agent serves Farm files whose spec.nodes lists the members (no Kubernetes).

  vipfarm-agent --farm-file farm.yaml --node n1
Runs in the foreground. The heartbeat thread (heartbeat.py) starts first, before anything is
compiled: it agrees with the peers on who is alive and decides the buckets; this thread
programs them. SIGTERM/SIGINT: graceful leave (peers told at once, VIPs removed, XDP detached,
sysctls restored). SIGHUP: re-read the farm files; a changed member list continues the farm's
base chain (vipfarm/base_assignment.py). SIGKILL leaves the pinned dataplane in place for the
next agent to adopt; it keeps serving what it served until the new agent agrees with its peers.
"""
from __future__ import annotations

import logging
import os
import signal
import threading
import time

from vipfarm.base_assignment import Base, decode_base, encode_base, first_base, next_base
from vipfarm.checks import Health
from vipfarm.conflicts import first_duplicate
from vipfarm.heartbeat_keys import HeartbeatKeyError, Keyring, parse_key_text
from vipfarm.spec import Farm, FarmSpecError, load_farm_file

from .base_store import load_base, save_base
from .bpf_program import DataplaneError
from .checkers import CheckRunners
from .filter_plan import FarmOwnership
from .handover_tracker import CENSUS_INTERVAL_S, HandoverTracker
from .heartbeat import Decision, FarmPeers, HeartbeatEngine
from .leases import LeaseWriter, adopted_lease_live
from .node_dataplanes import NodeDataplanes, read_local_records
from .observe import Observer, listen
from .udp_handover import UdpHandover
from .waker import Waker

log = logging.getLogger("vipfarm.agent")


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


def farm_keyring(farm: Farm) -> Keyring | None:
    """The farm's heartbeat key; None for a farm of one member (it has nobody to talk to)."""
    if len(farm.nodes) < 2:
        return None
    path = farm.heartbeat.key_file
    if not path:
        raise FarmSpecError(farm.name, [
            f"spec.heartbeat.keyFile is not set, and a farm of {len(farm.nodes)} nodes authenticates its "
            f"heartbeats with a shared key: run `vipfarm keygen --out /etc/vipfarm/heartbeat.key`, copy the file "
            f"to every node of the farm, and set spec.heartbeat.keyFile: /etc/vipfarm/heartbeat.key"])
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise FarmSpecError(farm.name, [f"spec.heartbeat.keyFile {path!r} cannot be read ({e}); create it with "
                                        f"`vipfarm keygen --out {path}` and copy it to every node"]) from None
    try:
        return parse_key_text(text, path)
    except HeartbeatKeyError as e:
        raise FarmSpecError(farm.name, [f"spec.heartbeat.keyFile: {e}"]) from None


def weights_of(farm: Farm) -> dict[str, int]:
    return {n.name: n.weight for n in farm.nodes}


class StandaloneAgent:
    def __init__(self, paths: list[str], node: str, pin_root: str, state_root: str,
                 observe: tuple[str, int] | None = None):
        self.paths = paths
        self.node = node
        self.pin_root = pin_root
        self.state_root = state_root
        self.dataplanes = NodeDataplanes(node, pin_root, state_root)
        self.leases = LeaseWriter(self.dataplanes)
        self.udp = UdpHandover(node, self.dataplanes)
        self.engine = HeartbeatEngine(node, self._on_decision, self._on_base, self.leases,
                                      base_from_chunks=_decode_or_none, base_to_bytes=encode_base,
                                      udp_flows=self.udp)
        self.farms: list[Farm] = []
        self.keyrings: dict[str, Keyring | None] = {}
        self.bases: dict[str, Base | None] = {}
        self.decisions: dict[str, Decision] = {}
        self.new_bases: dict[str, Base] = {}
        self.lock = threading.Lock()
        self.wake = Waker()                  # set by signal handlers too: no lock (waker.py)
        self.stopping = False
        self.reload_requested = False
        self.reconfigure_requested = False
        self.programmed_once = False
        self.runners = CheckRunners(node, self._on_health, self._checker_started, self._checker_removed)
        self.health: dict[str, Health] = {}
        self.adopted_at_start: dict[str, frozenset[int]] | None = None
        self._programmed: dict[str, frozenset[int]] = {}
        self._moving: dict[str, frozenset[int]] = {}
        self._logged: dict[str, tuple] = {}
        self.handover = HandoverTracker(node, self.engine, self.udp)
        self._adopted_live: set[str] = set()     # farms whose adopted filter's lease still ran at start
        self.observe_address = observe
        self.observer = Observer(node, "standalone", self.engine, self.runners, self.handover)

    # -- heartbeat thread callbacks: queue and return --------------------------------------
    def _on_decision(self, d: Decision) -> None:
        with self.lock:
            self.decisions[d.farm] = d
        self.wake.set()

    def _on_health(self, farm: str, health: Health, events) -> None:
        with self.lock:
            changed = self.health.get(farm) != health
            self.health[farm] = health
        if changed:
            self.reconfigure_requested = True
            self.wake.set()

    def _on_base(self, farm: str, base: Base) -> None:
        with self.lock:
            self.new_bases[farm] = base
        self.wake.set()

    # -- configuration ---------------------------------------------------------------------
    def _peers(self, farm: Farm, adopted: dict[str, frozenset[int]]) -> FarmPeers:
        hb = farm.heartbeat
        return FarmPeers(farm.name, self.node, weights_of(farm), {n.name: str(n.address) for n in farm.nodes},
                         hb.port, hb.interval_ms, hb.timeout_ms, self.keyrings[farm.name], farm.buckets,
                         self.bases.get(farm.name), may_start_chain=True,
                         adopted=adopted.get(farm.name, frozenset()), interface=farm.interface,
                         witness=hb.witness, withdrawn=self._withdrawn(farm) or self._unready(farm),
                         draining=any(n.name == self.node and n.drain for n in farm.nodes))

    def _live_serving_now(self) -> dict[str, frozenset[int]]:
        """What the adopted filters serve, for the farms whose lease still ran at start; the
        others serve nothing (their lease is out) and count as holding nothing, so the peers
        are not kept waiting for this node to "release" buckets it cannot answer for."""
        return {f: b for f, b in self.dataplanes.serving_now().items() if f in self._adopted_live}

    def _unready(self, farm: Farm) -> bool:
        """A node that starts with no live filter of its own for the farm (a join, a reboot, a
        restart after its peers failed it over: the adopted filter's lease had run out) is
        withdrawn until its filter is compiled and programmed: in the view its peers would
        give it buckets at once, and nobody would answer for them while it compiles."""
        return not self.programmed_once and farm.name not in self._adopted_live

    def _withdrawn(self, farm: Farm) -> bool:
        """Whether the checkers keep this node from serving the farm. A checker that has not
        passed yet withdraws a node that starts, but not one that restarted while serving
        (its adopted buckets stay until a checker really fails: a restart moves nothing)."""
        with self.lock:
            health = self.health.get(farm.name)
        if health is None or health.ok:
            return False
        adopted = (self.adopted_at_start or {}).get(farm.name)
        return not (health.reason == "CheckerStarting" and adopted)

    def _configure(self, farms: list[Farm], keyrings: dict[str, Keyring | None]) -> None:
        """Continue each farm's base chain for this configuration, persist it, tell the thread."""
        bases: dict[str, Base | None] = {}
        for farm in farms:
            known = self.bases.get(farm.name) or load_base(self.state_root, self.node, farm.name)
            if known is None and len(farm.nodes) == 1:
                known = first_base(weights_of(farm), farm.buckets)
            base = next_base(known, weights_of(farm), farm.buckets) if known is not None else None
            if base is not None and base is not known:
                log.info("event=base_changed node=%s farm=%s epoch=%d", self.node, farm.name, base.epoch)
            if base is not None:
                save_base(self.state_root, self.node, farm.name, base)
            bases[farm.name] = base
        self.farms, self.keyrings, self.bases = farms, keyrings, bases
        if self.adopted_at_start is None:
            self.adopted_at_start = self._live_serving_now()
        self.runners.update_farms(farms)
        self._tell_engine()

    def _tell_engine(self) -> None:
        serving = self.adopted_at_start if not self.programmed_once else self._programmed
        peers = [self._peers(f, serving or {}) for f in self.farms]
        self.engine.configure(peers)
        self.observer.configured(peers)

    def _checker_started(self, name: str, health: Health) -> None:
        with self.lock:
            self.health[name] = health

    def _checker_removed(self, name: str) -> None:
        with self.lock:
            self.health.pop(name, None)

    def run(self) -> int:
        farms = load_farms(self.paths, self.node)   # all validation before any change
        keyrings = {f.name: farm_keyring(f) for f in farms}
        server = listen(self.observe_address, self.observer)   # before any change: a taken port stops here
        try:
            return self._serve(farms, keyrings)
        finally:
            if server is not None:
                server.stop()

    def _serve(self, farms: list[Farm], keyrings: dict[str, Keyring | None]) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        signal.signal(signal.SIGHUP, self._on_reload)
        self._publish_adopted_leases()
        self._configure(farms, keyrings)
        self.engine.start()
        self._program()                              # compiles: the heartbeats run meanwhile
        log.info("event=agent_ready node=%s farms=%s mode=standalone", self.node,
                 ",".join(f.name for f in farms))
        print(f"vipfarm-agent: node {self.node} serving {', '.join(f.name for f in farms)}", flush=True)
        last_counters = time.monotonic()
        while not self.stopping:
            wake_s = CENSUS_INTERVAL_S if self.handover.active() else 30
            self.observer.main_loop_alive(wake_s)
            woken = self.wake.wait(wake_s)
            self.wake.clear()
            if self.stopping:
                break
            if time.monotonic() - last_counters >= 30:
                last_counters = time.monotonic()
                self._log_counters()
            if not woken:
                if self.handover.active():
                    self.handover.census_due = True
                    self._program()
                continue
            self._take_bases()
            if self.reload_requested:
                self.reload_requested = False
                self._reload()
            elif self.reconfigure_requested:
                self.reconfigure_requested = False
                self._tell_engine()
            self._program()
        self.runners.stop_all()
        self._release_all()                  # first give the buckets up,
        self.engine.stop(goodbye=True)       # then tell the peers, who take them at once,
        self.dataplanes.stop()               # then take the VIPs and the filter away
        self.udp.stop()
        self.leases.close()
        log.info("event=agent_stopped node=%s", self.node)
        return 0

    def _release_all(self) -> None:
        if not self.programmed_once:
            return
        try:
            self.dataplanes.program([FarmOwnership(f, frozenset()) for f in self.farms])
        except DataplaneError as e:
            log.error("event=release_failed node=%s error=%r", self.node, str(e))

    def _take_bases(self) -> None:
        with self.lock:
            new, self.new_bases = self.new_bases, {}
        for farm, base in new.items():
            self.bases[farm] = base
            save_base(self.state_root, self.node, farm, base)

    def _program(self) -> None:
        with self.lock:
            decisions = dict(self.decisions)
        now = self._live_serving_now() if not self.programmed_once else {}
        owned_by, peers = {}, {}
        for farm in self.farms:
            d = decisions.get(farm.name)
            if d is not None:
                owned = d.buckets
            elif not self.programmed_once:
                owned = now.get(farm.name, frozenset())   # keep what the adopted filter serves
            else:
                owned = self._programmed.get(farm.name, frozenset())
            owned_by[farm.name] = frozenset(owned)
            peers[farm.name] = d.peers_handing_over if d else False
        # No census before a flip that gives buckets up: the lease is not renewed while the
        # filter holds them, and a census of a large socket table would delay that flip (the
        # release presumes the drain; its census comes right after).
        releasing = self.programmed_once and any(self._programmed.get(n, frozenset()) - o for n, o in owned_by.items())
        census = (self.handover.census(self.farms)
                  if self.handover.census_wanted(not self.programmed_once) and not releasing else None)
        moving = self.handover.plan(self.farms, owned_by, peers, self._programmed if self.programmed_once else None,
                                    census)
        items = [FarmOwnership(f, owned_by[f.name], moving[f.name]) for f in self.farms]
        if self.programmed_once and all(i.owned == self._programmed.get(i.farm.name)
                                        and i.moving == self._moving.get(i.farm.name) for i in items):
            self.handover.commit(False)
            self._observe(decisions)
            return                               # nothing to flip (a census that changed nothing)
        try:
            holds = self.udp.before_flip(self.farms, self._programmed if self.programmed_once else None, owned_by,
                                         moving)
            self.dataplanes.program(items)
        except DataplaneError as e:
            if not self.programmed_once:
                raise
            log.error("event=program_failed node=%s error=%r action=keep_serving_previous", self.node, str(e))
            return
        self.udp.after_flip(self.farms, holds, self.engine)
        first = not self.programmed_once
        self.programmed_once = True
        self._programmed = {i.farm.name: i.owned for i in items}
        self._moving = {i.farm.name: i.moving for i in items}
        self.handover.commit(releasing)
        if releasing:
            self.wake.set()                      # the presumed drains get their census at once
        for i in items:
            self.engine.programmed(i.farm.name, i.owned)
        if first and any(f.name not in self._adopted_live for f in self.farms):
            self._tell_engine()                  # compiled: a node that started empty may take buckets now
        self.leases.publish({})          # every farm now has a started interface (set_lease)
        self._observe(decisions)
        for farm in self.farms:
            d = decisions.get(farm.name)
            if d is not None and self._logged.get(farm.name) != (d.buckets, d.view, d.agreed):
                self._logged[farm.name] = (d.buckets, d.view, d.agreed)
                log.info("event=buckets_programmed node=%s farm=%s buckets=%d view=%s agreed=%s base_epoch=%d "
                         "released=%d withheld=%d", self.node, farm.name, len(d.buckets),
                         ",".join(sorted(d.view)) or "-", str(d.agreed).lower(), d.base_epoch, d.released, d.withheld)

    def _observe(self, decisions: dict[str, Decision]) -> None:
        """Publish this programming to the observability endpoint (observe.py)."""
        with self.lock:
            health = dict(self.health)
        reasons = {f.name: (health[f.name].reason if f.name in health and not health[f.name].ok else "")
                   for f in self.farms}
        self.observer.programmed(self.farms, decisions, self._programmed, self.dataplanes.pins(), reasons)

    def _publish_adopted_leases(self) -> None:
        """Before compiling anything: where the previous agent's leases are, so the heartbeat
        thread renews them and the adopted filter keeps taking new flows through the restart."""
        where = {}
        now = time.monotonic_ns()
        for iface, state in read_local_records(self.node, self.pin_root, self.state_root).states.items():
            for farm, slot in state.slots.items():
                pin_dir = os.path.join(self.pin_root, self.node, iface)
                if adopted_lease_live(pin_dir, slot, now):
                    where[farm] = (pin_dir, slot)
                    self._adopted_live.add(farm)
                else:
                    log.info("event=adopted_lease_expired node=%s farm=%s action=wait_for_own_programming",
                             self.node, farm)
        self.leases.publish(where)

    def _reload(self) -> None:
        try:
            farms = load_farms(self.paths, self.node)
            keyrings = {f.name: farm_keyring(f) for f in farms}
            self._configure(farms, keyrings)
            log.info("event=reloaded node=%s farms=%d", self.node, len(farms))
        except (FarmSpecError, KeyError, ValueError, DataplaneError) as e:
            log.error("event=reload_rejected node=%s error=%r action=keep_serving_previous", self.node, str(e))

    def _log_counters(self) -> None:
        for iface, per_farm in self.dataplanes.counters().items():
            for farm, c in per_farm.items():
                log.info("event=counters iface=%s farm=%s %s", iface, farm,
                         " ".join(f"{k}={v}" for k, v in c.as_dict().items()))
        log.info("event=heartbeat_counters node=%s %s", self.node,
                 " ".join(f"{k}={v}" for k, v in sorted(self.engine.stats().items())))

    def _on_stop(self, signum, frame) -> None:
        self.stopping = True
        self.wake.set()

    def _on_reload(self, signum, frame) -> None:
        self.reload_requested = True
        self.wake.set()


def _decode_or_none(data: bytes) -> Base | None:
    try:
        return decode_base(data)
    except ValueError:
        return None
