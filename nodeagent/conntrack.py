"""The kernel's connection tracking, as the old owner's account of its UDP flows (UDP handover,
vipfarm/udp_flows.py).

A UDP server keeps no per-client state the filter could consult, but netfilter's conntrack does:
every UDP flow the node took has an entry whose timeout restarts at each packet. Conntrack only
tracks a network namespace whose ruleset asks for it (kernel >= 4.10 registers its hooks on
demand), so the agent asks for it with one inert nftables rule (a counter on new UDP flows) in a
table of its own, `inet vipfarm_conntrack`, while a farm it serves hands UDP flows over. On a host
that already tracks connections (kube-proxy, Docker, a stateful firewall) the rule adds nothing
but the counter.

A flow's age is read from its entry: the timeout the kernel set at the flow's last packet
(nf_conntrack_udp_timeout, or nf_conntrack_udp_timeout_stream once the flow is ASSURED) minus the
time left. Both are whole seconds, so an age is known to within a second (entry_age_s).
"""
from __future__ import annotations

import ipaddress
import logging
import subprocess
from typing import Iterable

from vipfarm.udp_flows import UdpFlow

log = logging.getLogger("vipfarm.agent")

TABLE = "vipfarm_conntrack"
IPS_ASSURED = 1 << 2
IPPROTO_UDP = 17
SYSCTL_DIR = "/proc/sys/net/netfilter"

_RULESET = f"""table inet {TABLE} {{
  chain udp_track {{
    type filter hook prerouting priority -150; policy accept;
    meta l4proto udp ct state new counter
  }}
}}
"""


class ConntrackError(OSError):
    pass


def ensure_udp_tracking() -> None:
    """Make the kernel track UDP flows in this network namespace (idempotent: the table is
    replaced whole). Raises ConntrackError, saying what failed and what to check."""
    script = f"table inet {TABLE}\ndelete table inet {TABLE}\n{_RULESET}"
    try:
        res = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise ConntrackError(f"cannot run nft to turn on connection tracking for UDP handover: {e}; install "
                             f"nftables (Debian: apt-get install nftables)") from None
    if res.returncode != 0:
        raise ConntrackError(f"nft refused the table inet {TABLE} that turns on connection tracking for UDP "
                             f"handover: {res.stderr.strip()}; check that the kernel has nf_conntrack and "
                             f"nf_tables (modprobe nf_conntrack nf_tables)")


def remove_udp_tracking() -> bool:
    """Remove the agent's table; True if it was there."""
    try:
        res = subprocess.run(["nft", "delete", "table", "inet", TABLE], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return res.returncode == 0


def udp_timeouts() -> tuple[int, int]:
    """(unreplied, stream) UDP timeouts in seconds, of this network namespace."""
    def read(name: str, default: int) -> int:
        try:
            with open(f"{SYSCTL_DIR}/{name}") as f:
                return int(f.read().strip())
        except (OSError, ValueError):
            return default
    return read("nf_conntrack_udp_timeout", 30), read("nf_conntrack_udp_timeout_stream", 120)


def entry_age_s(timeout_left_s: int, status: int, timeouts: tuple[int, int]) -> int:
    """Seconds since the flow's last packet, from its entry, rounded down: the kernel reports
    the time left rounded down, so the true age lies in (full - left - 1, full - left]; the
    lower end is taken, so a flow active within udpIdleSeconds is never left out (one up to a
    second older may be kept: the peers get the same age, so every node ages it alike)."""
    full = timeouts[1] if status & IPS_ASSURED else timeouts[0]
    return max(0, full - timeout_left_s - 1)


def udp_flows(vips: Iterable[ipaddress.IPv4Address | ipaddress.IPv6Address]) -> list[tuple[UdpFlow, int]]:
    """[(flow, age in seconds)] of every tracked UDP flow to one of `vips`, in the calling
    thread's network namespace. Raises ConntrackError if the table cannot be read."""
    wanted = frozenset(vips)
    if not wanted:
        return []
    from pyroute2 import Conntrack
    timeouts = udp_timeouts()
    out = []
    try:
        with Conntrack() as ct:
            for e in ct.dump_entries():
                t = e.tuple_orig
                if t is None or t.proto != IPPROTO_UDP:
                    continue
                try:
                    vip = ipaddress.ip_address(t.daddr)
                    client = ipaddress.ip_address(t.saddr)
                except ValueError:
                    continue
                if vip not in wanted:
                    continue
                out.append((UdpFlow(client, int(t.sport), vip, int(t.dport)),
                            entry_age_s(int(e.timeout or 0), int(e.status or 0), timeouts)))
    except OSError as e:
        raise ConntrackError(f"cannot read the connection tracking table: {e}") from None
    return out
