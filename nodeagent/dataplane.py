"""One interface's dataplane: the XDP filter, its pinned maps, the VIPs and the host settings.

Lifecycle:
  start()  compile the filter against the maps pinned under
           /sys/fs/bpf/vipfarm/<node>/<iface>/ (adopting those a previous agent left), and
           attach it. Replacing an attached program is atomic, and the maps (ownership,
           counters) carry over, so an agent restart neither drops nor duplicates traffic.
  apply()  bring the maps, the VIPs on lo and the MAC filters to a new set of farms.
  stop()   graceful leave: detach, remove VIPs and MAC filters, restore sysctls, unpin.
A SIGKILLed agent runs none of stop(): everything stays in place for the next one to adopt.
"""
from __future__ import annotations

import ctypes
import ipaddress
import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field

from vipfarm.spec import Farm

from . import netconfig
from .announcer import Announcer
from .bpf_program import DataplaneError, compile_filter, compile_host_fixup, load_filter
from .filter_tables import Counters, FilterTables
from .plan import FarmOwnership, FilterPlan, allocate_slots, build_plan

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


@dataclass
class InterfaceState:
    """What this agent changed on the interface, kept in /run so a restart can adopt it."""
    node: str
    iface: str
    mode: str = ""
    slots: dict[str, int] = field(default_factory=dict)
    saved_sysctls: dict[str, str] = field(default_factory=dict)
    vips: list[str] = field(default_factory=list)
    macs: list[str] = field(default_factory=list)
    tc_fixup: bool = False

    @classmethod
    def load(cls, path: str, node: str, iface: str) -> "InterfaceState":
        try:
            with open(path) as f:
                data = json.load(f)
            return cls(**data)
        except FileNotFoundError:
            return cls(node, iface)
        except (ValueError, TypeError) as e:
            log.warning("event=state_unreadable path=%s error=%s action=start_fresh", path, e)
            return cls(node, iface)

    def save(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(asdict(self), f, indent=1, sort_keys=True)
        os.replace(tmp, path)


class InterfaceDataplane:
    def __init__(self, node: str, iface: str, requested_mode: str = "auto",
                 pin_root: str = PIN_ROOT, state_root: str = STATE_ROOT):
        self.node = node
        self.iface = iface
        self.requested_mode = requested_mode
        self.pin_dir = os.path.join(pin_root, node, iface)
        self.state_path = os.path.join(state_root, node, f"{iface}.json")
        self.state = InterfaceState.load(self.state_path, node, iface)
        self.bpf = None
        self.tables: FilterTables | None = None
        self.plan = FilterPlan()
        self.announcer: Announcer | None = None
        self.ifindex, self.own_mac, self.link_kind = netconfig.link_info(iface)
        self.adopted = False

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
        if not self.state.saved_sysctls:
            self.state.saved_sysctls = netconfig.set_arp_sysctls(self.iface)
        else:
            netconfig.set_arp_sysctls(self.iface)
        self.state.save(self.state_path)
        if mode == "native":
            self.announcer = Announcer(self.iface, self.own_mac, self._vmac_for)
            self.announcer.start()
        if mode == "native" and self.link_kind == "veth":
            # veth's native XDP path keeps frames for the virtual MAC marked OTHERHOST even
            # after the filter rewrote them to our MAC; a TC ingress helper marks them HOST.
            self.tc_bpf, fn = compile_host_fixup(self.own_mac)
            netconfig.attach_tc_ingress(self.iface, fn.fd, "vipfarm_host")
            self.state.tc_fixup = True
            self.state.save(self.state_path)
            log.info("event=tc_host_fixup_attached iface=%s", self.iface)

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
        """Program the filter for these farms; returns the plan now live."""
        assert self.tables is not None, "start() first"
        slots = allocate_slots([i.farm.name for i in items], self.state.slots)
        plan = build_plan(items, slots)           # validates before anything is touched
        if plan == self.plan and self.state.slots == slots:
            return plan                           # nothing changed since the last apply
        old_slots = set(self.state.slots.values())
        old_vips = set(self.state.vips)
        old_macs = set(self.state.macs)

        new_vips = {str(ip) for i in items for ip in i.farm.virtual_ips}
        new_macs = {i.farm.virtual_mac for i in items}
        # Record intent first, so a crash halfway leaves a state file that covers it all.
        self.state.slots = slots
        self.state.vips = sorted(old_vips | new_vips)
        self.state.macs = sorted(old_macs | new_macs)
        self.state.save(self.state_path)

        for mac in sorted(new_macs - old_macs):
            netconfig.add_mac_filter(self.iface, mac)
        added = [ip for ip in sorted(new_vips - old_vips) if netconfig.add_vip(ipaddress.ip_address(ip))]
        for ip in sorted(new_vips & old_vips):
            netconfig.add_vip(ipaddress.ip_address(ip))   # repairs a VIP someone removed
        self.tables.apply(plan, old_slots)
        self.plan = plan
        for ip in sorted(old_vips - new_vips):
            netconfig.del_vip(ipaddress.ip_address(ip))
        for mac in sorted(old_macs - new_macs):
            netconfig.del_mac_filter(self.iface, mac)
        self.state.vips = sorted(new_vips)
        self.state.macs = sorted(new_macs)
        self.state.save(self.state_path)

        if added:
            frames = []
            for i in items:
                fresh = [ip for ip in i.farm.virtual_ips if str(ip) in added]
                frames += netconfig.announcements(fresh, self.own_mac, bytes.fromhex(i.farm.virtual_mac.replace(":", "")))
            netconfig.send_frames(self.iface, frames)
            log.info("event=vips_announced iface=%s vips=%s", self.iface, ",".join(added))
        for f in plan.farms:
            log.info("event=farm_programmed iface=%s farm=%s slot=%d buckets=%d owned=%d",
                     self.iface, f.name, f.slot, f.buckets, len(f.owned))
        return plan

    def counters(self) -> dict[str, Counters]:
        assert self.tables is not None
        return {f.name: self.tables.counters(f.slot) for f in self.plan.farms}

    # -- stop -----------------------------------------------------------------------------
    def stop(self) -> None:
        """Graceful leave: undo everything this agent set up on the interface."""
        import bcc
        if self.announcer:
            self.announcer.stop()
        if self.state.mode:
            try:
                bcc.BPF.remove_xdp(self.iface, MODE_FLAGS[self.state.mode])
            except Exception as e:
                log.warning("event=xdp_detach_failed iface=%s error=%s", self.iface, e)
        if self.state.tc_fixup:
            netconfig.detach_tc_ingress(self.iface)
        for ip in self.state.vips:
            netconfig.del_vip(ipaddress.ip_address(ip))
        for mac in self.state.macs:
            netconfig.del_mac_filter(self.iface, mac)
        if self.state.saved_sysctls:
            netconfig.restore_sysctls(self.iface, self.state.saved_sysctls)
        shutil.rmtree(self.pin_dir, ignore_errors=True)
        for d in (os.path.dirname(self.pin_dir), ):
            try:
                os.rmdir(d)
            except OSError:
                pass
        try:
            os.unlink(self.state_path)
        except FileNotFoundError:
            pass
        log.info("event=dataplane_stopped iface=%s vips_removed=%d", self.iface, len(self.state.vips))
