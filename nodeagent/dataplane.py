"""One interface's dataplane: the XDP filter, its pinned maps, the VIPs and the host settings.

Lifecycle:
  start()  compile the filter against the maps pinned under
           /sys/fs/bpf/vipfarm/<node>/<iface>/ (adopting those a previous agent left), and
           attach it. Replacing an attached program is atomic, and the maps (ownership,
           counters) carry over, so an agent restart neither drops nor duplicates traffic.
  apply()  bring the maps, the VIPs on lo and the MAC filters to a new set of farms.
  stop()   graceful leave: detach, remove VIPs and MAC filters, restore sysctls, unpin.
A SIGKILLed agent runs none of stop(): everything stays in place for the next one to adopt.
What was changed is recorded in the state file (local_state.py); when that record is lost, the
pinned maps tell the slots, VIPs and MACs again, and the sysctl originals are never guessed.
"""
from __future__ import annotations

import ctypes
import dataclasses
import ipaddress
import logging
import os
import shutil
import threading
from typing import Callable

from vipfarm.addresses import format_mac, parse_mac
from vipfarm.spec import Farm

from . import netconfig
from .neighbour_responder import NeighbourResponder
from .bpf_program import DataplaneError, compile_filter, compile_host_fixup, load_filter
from .bpf_consts import MAX_FARMS
from .filter_tables import Counters, FilterTables
from .local_state import InterfaceState, StateCorrupt, choose_sysctl_originals, quarantine, read_state
from .filter_plan import FarmOwnership, FilterPlan, allocate_slots, build_plan

__all__ = ["InterfaceDataplane", "InterfaceState", "PIN_ROOT", "STATE_ROOT"]

log = logging.getLogger("vipfarm.dataplane")

PIN_ROOT = "/sys/fs/bpf/vipfarm"
STATE_ROOT = "/run/vipfarm"
BPF_FS_MAGIC = 0xCAFE4A11
XDP_FLAGS_SKB_MODE = 1 << 1
XDP_FLAGS_DRV_MODE = 1 << 2
MODE_FLAGS = {"generic": XDP_FLAGS_SKB_MODE, "native": XDP_FLAGS_DRV_MODE}


def resolve_xdp_mode(requested: str, link_kind: str) -> tuple[str, str]:
    """The attach mode to try first, and why. `auto` never picks native on a veth."""
    if requested in ("native", "generic"):
        return requested, f"xdpMode {requested} requested"
    if link_kind == "veth":
        return "generic", ("auto: veth, where native XDP_TX frames (the ARP/NA replies) are lost "
                           "unless the peer runs XDP; using generic")
    return "native", "auto: trying native first"


def merge_xdp_modes(farms: list[Farm]) -> str:
    """One program per interface: the farms on it must not ask for different modes."""
    wanted = {f.xdp_mode for f in farms} - {"auto"}
    if len(wanted) > 1:
        detail = ", ".join(f"{f.name}={f.xdp_mode}" for f in farms)
        raise DataplaneError(f"farms on interface {farms[0].interface} ask for different xdpMode "
                             f"values ({detail}); set the same xdpMode on all of them or use auto")
    return wanted.pop() if wanted else "auto"


def is_bpffs(path: str) -> bool:
    try:
        with open("/proc/self/mounts") as f:
            return any(line.split()[1] == path and line.split()[2] == "bpf" for line in f)
    except OSError:
        return False


def ensure_bpffs(path: str = "/sys/fs/bpf") -> None:
    if is_bpffs(path):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.mount(b"bpf", path.encode(), b"bpf", 0, None) != 0:
        err = ctypes.get_errno()
        raise DataplaneError(f"{path} is not a BPF filesystem and mounting one failed "
                             f"({os.strerror(err)}); run `mount -t bpf bpf {path}` as root, or mount "
                             f"the host's {path} into the agent container")


def record_from_filter(live_farms: dict[int, bytes],
                       vip_keys: set[tuple[int, bytes]]) -> tuple[dict[str, int], list[str]]:
    """What the pinned maps tell when the state file is lost: each live farm slot by its
    virtual MAC, and the VIPs the filter serves. Pure.

    A MAC found in two slots tells nothing about either (those slots are still cleared)."""
    by_mac: dict[str, list[int]] = {}
    for slot, vmac in sorted(live_farms.items()):
        by_mac.setdefault(format_mac(vmac), []).append(slot)
    slot_by_mac = {m: s[0] for m, s in by_mac.items() if len(s) == 1}
    vips = sorted(str(ipaddress.ip_address(addr)) for _, addr in vip_keys)
    return slot_by_mac, vips


def recovered_slots(items: list[FarmOwnership], slot_by_mac: dict[str, int],
                    known: dict[str, int]) -> dict[str, int]:
    """Slots of farms found in the pinned maps by their virtual MAC, for farms the state file
    does not place. Keeping a farm in its slot means its VIPs never point at another farm's
    table while the filter is rewritten. Pure."""
    taken = set(known.values())
    macs = [i.farm.virtual_mac.lower() for i in items]
    out = {}
    for i in items:
        mac = i.farm.virtual_mac.lower()
        slot = slot_by_mac.get(mac)
        if (slot is not None and i.farm.name not in known and slot not in taken
                and macs.count(mac) == 1):
            out[i.farm.name] = slot
            taken.add(slot)
    return out


Report = Callable[..., None]


def undo_interface(iface: str, state: InterfaceState, pin_dir: str, state_path: str,
                   report: Report, link_present: bool = True) -> None:
    """Undo what `state` records on `iface`: XDP, the TC helper, its VIPs on lo, the MAC
    filters, the sysctls, the pins and the state file. report(kind, **details) is called for
    each thing removed. Used by a graceful leave and by the orphan cleanup. If the XDP program
    could not be detached, everything else is still undone and DataplaneError is raised at
    the end: the caller must not report the interface released while its filter still runs."""
    detach_error = None
    if link_present:
        if state.mode:
            import bcc
            try:
                bcc.BPF.remove_xdp(iface, MODE_FLAGS[state.mode])
                report("xdp", mode=state.mode)
            except Exception as e:
                log.warning("event=xdp_detach_failed iface=%s error=%s", iface, e)
                detach_error = e
        if state.tc_fixup:
            netconfig.detach_tc_ingress(iface)
            report("tc_helper")
    for ip in state.vips:
        netconfig.del_vip(ipaddress.ip_address(ip))
        report("vip", vip=ip)
    for ip in state.foreign_vips:
        log.info("event=vip_left_in_place iface=%s vip=%s reason=already_on_lo_when_claimed", iface, ip)
    if link_present:
        for mac in state.macs:
            netconfig.del_mac_filter(iface, mac)
            report("mac_filter", mac=mac)
        if state.saved_sysctls:
            netconfig.restore_sysctls(iface, state.saved_sysctls)
            report("sysctls", **dict(sorted(state.saved_sysctls.items())))
        elif state.sysctl_originals_unknown:
            log.warning("event=sysctls_not_restored iface=%s reason=originals_unknown fix=%r", iface,
                        f"set net.ipv4.conf.{iface}.arp_ignore and arp_announce to this node's "
                        f"intended values (kernel defaults 0 and 0)")
    if os.path.isdir(pin_dir):
        shutil.rmtree(pin_dir, ignore_errors=True)
        report("pin_dir", path=pin_dir)
    try:
        os.rmdir(os.path.dirname(pin_dir))   # the node's pin dir, once its last interface is gone
    except OSError:
        pass
    try:
        os.unlink(state_path)
        report("state_file", path=state_path)
    except FileNotFoundError:
        pass
    if detach_error is not None:
        raise DataplaneError(f"detaching XDP from {iface} failed ({detach_error}); the rest was undone. "
                             f"Check `ip -d link show dev {iface}` and remove it with "
                             f"`ip link set dev {iface} xdpgeneric off` (or xdp off)")


def _only_ownership_differs(old: FilterPlan, new: FilterPlan) -> bool:
    """Whether two plans hold the same farms, slots and VIPs, and differ at most in buckets."""
    strip = lambda p: tuple(dataclasses.replace(f, owned=frozenset(), moving=frozenset())   # noqa: E731
                            for f in p.farms)
    return old.vips == new.vips and strip(old) == strip(new)


class InterfaceDataplane:
    def __init__(self, node: str, iface: str, requested_mode: str = "auto",
                 pin_root: str = PIN_ROOT, state_root: str = STATE_ROOT):
        self.node = node
        self.iface = iface
        self.requested_mode = requested_mode
        self.pin_dir = os.path.join(pin_root, node, iface)
        self.state_path = os.path.join(state_root, node, f"{iface}.json")
        self.ifindex, self.own_mac, self.link_kind = netconfig.link_info(iface)
        # record_lost: a previous run changed this interface but its record cannot be read.
        # Then nothing is guessed: the pinned maps tell the slots, VIPs and MACs (start()),
        # and the sysctl originals stay unknown unless the interface shows them.
        self.record_lost = False
        try:
            state = read_state(self.state_path, node, iface)
        except StateCorrupt as e:
            quarantine(self.state_path, e)
            state, self.record_lost = None, True
        self.had_record = state is not None
        self.state = state or InterfaceState(node, iface)
        self.bpf = None
        self.tables: FilterTables | None = None
        self.plan = FilterPlan()
        self.responder: NeighbourResponder | None = None
        self.adopted = False
        self._recovered: dict[str, int] = {}    # virtual MAC -> slot, read from the pinned maps
        # apply() holds it while it rewrites the maps and the plan; set_lease() while it finds
        # the farm's slot and writes the deadline there.
        self._slots_lock = threading.Lock()

    # -- start ----------------------------------------------------------------------------
    def _compile_and_attach(self, mode: str) -> None:
        import bcc
        answer_in_xdp = mode == "generic"
        self.bpf = compile_filter(self.own_mac, answer_in_xdp, pin_dir=self.pin_dir)
        fn = load_filter(self.bpf)
        if self.state.mode and self.state.mode != mode:
            # The program is attached in another mode: the two cannot coexist, so this one
            # change of mode detaches first (a short gap, logged).
            log.warning("event=xdp_mode_change iface=%s old=%s new=%s", self.iface, self.state.mode, mode)
            try:
                bcc.BPF.remove_xdp(self.iface, MODE_FLAGS[self.state.mode])
            except Exception as e:   # already gone: nothing to detach
                log.info("event=xdp_detach_skipped iface=%s mode=%s error=%s", self.iface, self.state.mode, e)
        # Without XDP_FLAGS_UPDATE_IF_NOEXIST the kernel swaps an attached program atomically.
        bcc.BPF.attach_xdp(self.iface, fn, MODE_FLAGS[mode])

    def start(self) -> None:
        ensure_bpffs()
        os.makedirs(self.pin_dir, exist_ok=True)
        self.adopted = any(os.scandir(self.pin_dir))
        if self.adopted and not self.had_record:
            self.record_lost = True    # pins of a previous run, and no record of what it did
        mode, reason = resolve_xdp_mode(self.requested_mode, self.link_kind)
        try:
            self._compile_and_attach(mode)
        except DataplaneError:
            raise
        except Exception as e:
            if self.requested_mode != "auto" or mode == "generic":
                raise DataplaneError(f"attaching XDP to {self.iface} in {mode} mode failed: {e}; "
                                     f"try xdpMode: generic") from e
            reason = f"auto: native attach failed ({e}); using generic"
            mode = "generic"
            self._compile_and_attach(mode)
        log.info("event=xdp_attached iface=%s mode=%s reason=%r adopted=%s pin_dir=%s",
                 self.iface, mode, reason, self.adopted, self.pin_dir)
        self.state.mode = mode
        self.tables = FilterTables(self.bpf)
        if self.record_lost and self.adopted:
            self._recover_from_filter()
        self._take_sysctls()
        if mode == "native":
            self.responder = NeighbourResponder(self.iface, self.own_mac, self._vmac_for)
            self.responder.start()
        if mode == "native" and self.link_kind == "veth":
            # veth's native XDP path keeps frames for the virtual MAC marked OTHERHOST even
            # after the filter rewrote them to our MAC; a TC ingress helper marks them HOST.
            self.tc_bpf, fn = compile_host_fixup(self.own_mac)
            netconfig.attach_tc_ingress(self.iface, fn.fd, "vipfarm_host")
            self.state.tc_fixup = True
            self.state.save(self.state_path)
            log.info("event=tc_host_fixup_attached iface=%s", self.iface)

    def _recover_from_filter(self) -> None:
        """Rebuild the lost record from the adopted maps: the filter keeps serving, apply()
        keeps each farm in its slot, and a leave still removes the VIPs and MAC filters."""
        assert self.tables is not None
        live = {k.value: bytes(v.vmac) for k, v in self.tables.farms.items()
                if k.value < MAX_FARMS and v.flags}
        self._recovered, vips = record_from_filter(live, self.tables.vip_keys())
        # Every VIP the filter serves was put on lo by the agent that programmed it.
        on_lo = {str(ipaddress.ip_address(a)) for a in netconfig.vips_on_lo()}
        self.state.vips = sorted(set(self.state.vips) | (set(vips) & on_lo))
        self.state.macs = sorted(set(self.state.macs) | set(self._recovered))
        self.state.save(self.state_path)
        log.warning("event=state_recovered iface=%s source=pinned_maps slots=%s vips=%s macs=%s",
                    self.iface, ",".join(f"{s}" for s in sorted(self._recovered.values())) or "-",
                    ",".join(self.state.vips) or "-", ",".join(self.state.macs) or "-")

    def _take_sysctls(self) -> None:
        """Record the originals (before changing anything), then set vipfarm's values."""
        current = {k: netconfig.read_sysctl(self.iface, k) for k in netconfig.ARP_SYSCTLS}
        choice = choose_sysctl_originals(current, self.state, self.record_lost)
        self.state.saved_sysctls = choice.saved
        self.state.sysctl_originals_unknown = choice.unknown
        self.state.save(self.state_path)
        netconfig.set_arp_sysctls(self.iface)
        if choice.unknown:
            log.error("event=sysctl_originals_unknown iface=%s current=%s reason=%r action=will_not_restore "
                      "fix=%r", self.iface, ",".join(f"{k}={v}" for k, v in sorted(current.items())),
                      choice.reason, f"after the agent leaves, set net.ipv4.conf.{self.iface}.arp_ignore "
                      f"and arp_announce to this node's intended values (kernel defaults 0 and 0)")

    @property
    def mode(self) -> str:
        return self.state.mode

    def _vmac_for(self, family: int, addr: bytes) -> bytes | None:
        vip = self.plan.vip_by_key().get((family, addr))
        if vip is None:
            return None
        farm = self.plan.farm_by_slot().get(vip.slot)
        return farm.vmac if farm else None

    # -- apply ----------------------------------------------------------------------------
    def apply(self, items: list[FarmOwnership]) -> FilterPlan:
        """Program the filter for these farms; returns the plan now live.

        Farms of the previous programming (the state file's slots) that are not in `items`
        are cleared here, with their VIPs and MAC filters."""
        assert self.tables is not None, "start() first"
        known = dict(self.state.slots)
        previous = {**recovered_slots(items, self._recovered, known), **known}
        slots = allocate_slots([i.farm.name for i in items], previous)
        plan = build_plan(items, slots)           # validates before anything is touched
        if plan == self.plan and self.state.slots == slots and not self._recovered:
            return plan                           # nothing changed since the last apply
        if self.state.slots == slots and not self._recovered and _only_ownership_differs(self.plan, plan):
            # The hot path of failover and rejoin: only buckets move. No VIP, MAC, sysctl or
            # state-file change, so none of their system calls: one table swap per farm.
            # owned and moving (handover) are written together into the idle half, one flip.
            before = self.plan.farm_by_slot()
            changed = [f for f in plan.farms
                       if (before[f.slot].owned, before[f.slot].moving) != (f.owned, f.moving)]
            with self._slots_lock:
                for f in changed:
                    self.tables.write_farm(f)
                self.plan = plan
            for f in changed:
                log.info("event=farm_programmed iface=%s farm=%s slot=%d buckets=%d owned=%d moving=%d",
                         self.iface, f.name, f.slot, f.buckets, len(f.owned), len(f.moving))
            return plan
        old_slots = set(self.state.slots.values()) | set(self._recovered.values())
        old_vips = set(self.state.vips)
        old_macs = set(self.state.macs)

        new_vips = {str(ip) for i in items for ip in i.farm.virtual_ips}
        new_macs = {i.farm.virtual_mac for i in items}
        # A claimed VIP already on lo that vipfarm did not add (the operator's address, or one
        # another interface's farm put there) is served but never removed: it is "foreign".
        fresh = new_vips - old_vips - set(self.state.foreign_vips)
        check = fresh | (set(self.state.foreign_vips) & new_vips)
        present = {str(ipaddress.ip_address(a)) for a in netconfig.vips_on_lo()} if check else set()
        foreign = check & present
        ours = new_vips - foreign
        # Record intent first, so a crash halfway leaves a state file that covers it all.
        self.state.slots = slots
        self.state.vips = sorted(old_vips | ours)
        self.state.foreign_vips = sorted(foreign)
        self.state.macs = sorted(old_macs | new_macs)
        self.state.save(self.state_path)

        for mac in sorted(new_macs - old_macs):
            netconfig.add_mac_filter(self.iface, mac)
        for ip in sorted(ours):
            netconfig.add_vip(ipaddress.ip_address(ip))   # also repairs a VIP someone removed
        with self._slots_lock:
            self.tables.apply(plan, old_slots)
            self.plan = plan
        for slot in sorted(set(self._recovered.values()) - set(slots.values())):
            log.info("event=orphan_removed kind=farm_slot iface=%s slot=%d source=pinned_maps",
                     self.iface, slot)
        self._recovered = {}
        for ip in sorted(old_vips - ours):
            netconfig.del_vip(ipaddress.ip_address(ip))
        for mac in sorted(old_macs - new_macs):
            netconfig.del_mac_filter(self.iface, mac)
        self.state.vips = sorted(ours)
        self.state.macs = sorted(new_macs)
        self.state.save(self.state_path)

        if fresh:
            frames = []
            for i in items:
                claimed = [ip for ip in i.farm.virtual_ips if str(ip) in fresh]
                frames += netconfig.announcements(claimed, self.own_mac, parse_mac(i.farm.virtual_mac))
            netconfig.send_frames(self.iface, frames)
            log.info("event=vips_announced iface=%s vips=%s", self.iface, ",".join(sorted(fresh)))
        for f in plan.farms:
            log.info("event=farm_programmed iface=%s farm=%s slot=%d buckets=%d owned=%d moving=%d",
                     self.iface, f.name, f.slot, f.buckets, len(f.owned), len(f.moving))
        return plan

    def set_lease(self, farm_name: str, syn_deadline_ns: int, deadline_ns: int) -> bool:
        """Set the farm's lease: two deadlines in time.monotonic_ns() nanoseconds (the clock of
        bpf_ktime_get_ns). Past syn_deadline the filter takes no new TCP flow for this node's
        buckets; past deadline it drops every packet to them. 0 = that stage not in use. False
        when the farm has no slot on this interface (nothing written).

        Called from the heartbeat thread while apply() may run on another: under the lock,
        a farm apply() is removing is either still in its slot (and the clear that follows
        resets the lease) or already gone (False), so a deadline never lands in a freed slot.
        apply() holds the lock only for the map writes, so this waits microseconds at most;
        the work is one scan of at most 32 farms and one map update."""
        with self._slots_lock:
            if self.tables is None:
                return False
            for f in self.plan.farms:
                if f.name == farm_name:
                    self.tables.write_lease(f.slot, syn_deadline_ns, deadline_ns)
                    return True
        return False

    def with_farm_tables(self, farm_name: str, use):
        """`use(tables, slot)` for the farm's slot, under the slot lock (as set_lease); returns
        (True, its result), or (False, None) when the farm has no slot here. For the map writes
        of UDP handover, from either thread; `use` must only touch that slot's entries."""
        with self._slots_lock:
            if self.tables is None:
                return False, None
            for f in self.plan.farms:
                if f.name == farm_name:
                    return True, use(self.tables, f.slot)
        return False, None

    def counters(self) -> dict[str, Counters]:
        assert self.tables is not None
        return {f.name: self.tables.counters(f.slot) for f in self.plan.farms}

    # -- stop -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Graceful leave: undo everything this agent set up on the interface."""
        if self.responder:
            self.responder.stop()
        undo_interface(self.iface, self.state, self.pin_dir, self.state_path, lambda kind, **kv: None)
        log.info("event=dataplane_stopped iface=%s vips_removed=%d", self.iface, len(self.state.vips))
