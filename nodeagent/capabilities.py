"""The Linux capabilities the agent needs, checked once at start from /proc/self/status.

The chart runs the agent unprivileged with exactly these capabilities (measured in the lab,
tests/lab/test_capabilities.py; charts/vipfarm/values.yaml says the same). Without one of
them the agent would fail later and obscurely (a kernel "Need super-user privileges", a bcc
"could not open bpf map", a PermissionError from a socket), sometimes only at its first
restart, so it refuses to start and names what is missing and why. Pure but for `effective()`.
"""
from __future__ import annotations

from dataclasses import dataclass

# Capability numbers from <linux/capability.h>.
CAP_NET_ADMIN, CAP_NET_RAW, CAP_SYS_ADMIN, CAP_SYS_NICE, CAP_PERFMON, CAP_BPF = 12, 13, 21, 23, 38, 39


@dataclass(frozen=True)
class Need:
    name: str
    number: int
    why: str
    # Another capability that the kernel accepts instead (bpf_capable(), perfmon_capable()).
    or_number: int | None = None


REQUIRED = (
    Need("CAP_NET_ADMIN", CAP_NET_ADMIN,
         "attach the XDP/TC programs, put the VIPs on lo, join multicast MACs, create the conntrack "
         "nftables table (without it the kernel refuses the filter: 'Need super-user privileges')"),
    Need("CAP_NET_RAW", CAP_NET_RAW,
         "AF_PACKET sockets: the gratuitous ARP/NA announcements, the native-mode ARP/NS responder, "
         "the witness probe"),
    Need("CAP_BPF", CAP_BPF, "create the filter's maps and load it", or_number=CAP_SYS_ADMIN),
    Need("CAP_PERFMON", CAP_PERFMON, "the verifier refuses the filter without it (EACCES)",
         or_number=CAP_SYS_ADMIN),
    Need("CAP_SYS_ADMIN", CAP_SYS_ADMIN,
         "adopt the pinned maps after a restart: bcc opens an existing pin by its map id "
         "(BPF_MAP_GET_FD_BY_ID), which the kernel allows only with CAP_SYS_ADMIN; without it a "
         "restarted agent fails with 'could not open bpf map: ... Operation not permitted'"),
)

WHERE = "the chart's agent.securityContext.capabilities.add"


def parse_cap_eff(status_text: str) -> int:
    """The effective capability mask from the text of /proc/<pid>/status."""
    for line in status_text.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    raise ValueError("no CapEff line in /proc/self/status")


def missing(mask: int) -> list[Need]:
    """The needs that `mask` does not meet, in REQUIRED order."""
    def has(n: int | None) -> bool:
        return n is not None and bool(mask >> n & 1)
    return [n for n in REQUIRED if not (has(n.number) or has(n.or_number))]


def refusal(needs: list[Need]) -> str:
    """The agent's error for missing capabilities: each one and what it is for."""
    lines = [f"vipfarm-agent: missing capability {n.name}: needed to {n.why}" for n in needs]
    names = ",".join(n.name.removeprefix("CAP_") for n in needs)
    return "\n".join(lines + [f"Run the agent as root with {names} ({WHERE}). Nothing was changed on this node."])


def effective() -> int:
    with open("/proc/self/status") as f:
        return parse_cap_eff(f.read())
