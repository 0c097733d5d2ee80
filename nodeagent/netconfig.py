"""Host network configuration for a farm interface, through netlink (pyroute2 and rtnetlink).

* VIPs live on `lo` (/32, /128): the stack accepts their traffic, and never answers ARP/ND
  for them on the farm interface, because arp_ignore=1 / arp_announce=2 are set there.
* The virtual MAC is added to the interface's address filter (an fdb entry with NTF_SELF):
  a unicast MAC goes to the unicast list, a group MAC (multicast mode) to the multicast list,
  which is how the NIC "joins" it.
* Announcements (gratuitous ARP, unsolicited NA) go out over AF_PACKET.
Everything done here is recorded by the caller so that stop() can restore it.
"""
from __future__ import annotations

import errno
import ipaddress
import logging
import socket

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl.ndmsg import NTF_SELF, NUD_PERMANENT

from vipfarm.addresses import parse_mac

from . import neighbour
from .ipv4_devconf import set_ipv4_devconf

log = logging.getLogger("vipfarm.netconfig")

ARP_SYSCTLS = {"arp_ignore": "1", "arp_announce": "2"}


class InterfaceError(RuntimeError):
    pass


def _sysctl_path(iface: str, key: str) -> str:
    return f"/proc/sys/net/ipv4/conf/{iface}/{key}"


def read_sysctl(iface: str, key: str) -> str:
    with open(_sysctl_path(iface, key)) as f:
        return f.read().strip()


def write_sysctl(iface: str, key: str, value: str) -> None:
    """net.ipv4.conf.<iface>.<key> = value, over rtnetlink: /proc/sys is read-only in a
    container that is not privileged (nodeagent/ipv4_devconf.py)."""
    try:
        set_ipv4_devconf(socket.if_nametoindex(iface), {key: int(value)})
    except OSError as e:
        raise InterfaceError(f"cannot set net.ipv4.conf.{iface}.{key}={value}: {e.strerror or e}; "
                             f"the agent needs CAP_NET_ADMIN in the node's network namespace") from None


def link_info(iface: str) -> tuple[int, bytes, str]:
    """(ifindex, MAC, kind) of an interface; kind is '' for physical NICs, 'veth' for veth."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            names = sorted(l.get("IFLA_IFNAME") for l in ipr.get_links())
            raise InterfaceError(f"interface {iface!r} does not exist on this node (found: "
                                 f"{', '.join(names)}); set spec.interface to the farm NIC")
        link = ipr.get_links(found[0])[0]
        mac = link.get("IFLA_ADDRESS") or "00:00:00:00:00:00"
        info = link.get("IFLA_LINKINFO")
        kind = (info.get("IFLA_INFO_KIND") if info else None) or ""
        return found[0], parse_mac(mac), kind


def pick_heartbeat_address(addresses: list[str]) -> str | None:
    """The first IPv4 address, else the first IPv6 one of global scope (not link-local, loopback,
    multicast or unspecified)."""
    ips = [ipaddress.ip_address(a) for a in addresses]
    v4 = [ip for ip in ips if ip.version == 4 and not ip.is_loopback]
    if v4:
        return str(v4[0])
    # "global" as the kernel's address scope says it (2001:db8::/32 included), not ip.is_global
    v6 = [ip for ip in ips if ip.version == 6
          and not (ip.is_link_local or ip.is_loopback or ip.is_multicast or ip.is_unspecified)]
    return str(v6[0]) if v6 else None


def heartbeat_address(iface: str) -> str | None:
    """This node's heartbeat address on a farm interface (cluster mode): pick_heartbeat_address
    of its addresses in kernel order; None when the interface is missing or has none."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            return None
        addrs = [a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=found[0])]
    return pick_heartbeat_address([a for a in addrs if a])


def link_exists(iface: str) -> bool:
    with IPRoute() as ipr:
        return bool(ipr.link_lookup(ifname=iface))


def set_arp_sysctls(iface: str) -> dict[str, str]:
    """Set arp_ignore/arp_announce on iface; returns the previous values."""
    before = {k: read_sysctl(iface, k) for k in ARP_SYSCTLS}
    for k, v in ARP_SYSCTLS.items():
        write_sysctl(iface, k, v)
    return before


def restore_sysctls(iface: str, saved: dict[str, str]) -> None:
    for k, v in saved.items():
        try:
            write_sysctl(iface, k, v)
        except InterfaceError as e:
            log.warning("event=sysctl_restore_failed iface=%s key=%s error=%s", iface, k, e)


def _prefix(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> int:
    return 32 if ip.version == 4 else 128


def add_vip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Put a VIP on lo; False if it was already there."""
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        try:
            ipr.addr("add", index=lo, address=str(ip), prefixlen=_prefix(ip))
            return True
        except NetlinkError as e:
            if e.code == errno.EEXIST:
                return False
            raise


def del_vip(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> None:
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        try:
            ipr.addr("del", index=lo, address=str(ip), prefixlen=_prefix(ip))
        except NetlinkError as e:
            if e.code not in (errno.EADDRNOTAVAIL, errno.ENOENT, errno.ESRCH):
                raise


def vips_on_lo() -> set[str]:
    """Every address on lo, as netlink spells it."""
    with IPRoute() as ipr:
        lo = ipr.link_lookup(ifname="lo")[0]
        return {a.get("IFA_ADDRESS") for a in ipr.get_addr(index=lo)}


def add_mac_filter(iface: str, mac: str) -> None:
    """Let the NIC receive frames for the virtual MAC (joins it in multicast mode)."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=iface)[0]
        try:
            ipr.fdb("add", ifindex=idx, lladdr=mac, state=NUD_PERMANENT, flags=NTF_SELF)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise


def del_mac_filter(iface: str, mac: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            return
        try:
            ipr.fdb("del", ifindex=found[0], lladdr=mac, state=NUD_PERMANENT, flags=NTF_SELF)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EINVAL):
                raise


def send_frames(iface: str, frames: list[bytes]) -> None:
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
        s.bind((iface, 0))
        for f in frames:
            s.send(f)


def announcements(vips, own_mac: bytes, vmac: bytes) -> list[bytes]:
    """Gratuitous ARP for each IPv4 VIP and an unsolicited NA for each IPv6 VIP."""
    out = []
    for ip in vips:
        if ip.version == 4:
            out.append(neighbour.gratuitous_arp(ip.packed, own_mac, vmac))
        else:
            out.append(neighbour.unsolicited_na(ip.packed, own_mac, vmac))
    return out


TC_HANDLE = 0xF00D
TC_PRIO = 49152


def attach_tc_ingress(iface: str, fd: int, name: str) -> None:
    """Attach a direct-action BPF classifier at ingress (clsact), replacing ours if present."""
    with IPRoute() as ipr:
        idx = ipr.link_lookup(ifname=iface)[0]
        try:
            ipr.tc("add", "clsact", idx)
        except NetlinkError as e:
            if e.code != errno.EEXIST:
                raise
        ipr.tc("replace-filter", "bpf", idx, TC_HANDLE, fd=fd, name=name, parent="ffff:fff2",
               classid=1, direct_action=True, prio=TC_PRIO)


def detach_tc_ingress(iface: str) -> None:
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=iface)
        if not found:
            return
        try:
            ipr.tc("del-filter", "bpf", found[0], TC_HANDLE, parent="ffff:fff2", prio=TC_PRIO)
        except NetlinkError as e:
            if e.code not in (errno.ENOENT, errno.EINVAL):
                raise
