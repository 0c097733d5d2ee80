"""The agent's record of what it changed on one interface: /run/vipfarm/<node>/<iface>.json.

The record is what lets a restarted agent adopt the dataplane, undo it on a graceful leave and
clean up after a Farm deleted while it was down. So a record that cannot be read is never
silently replaced: the file is moved aside (<file>.corrupt-<timestamp>), the agent says so, and
it carries on from what the pinned maps still tell (dataplane.py), without inventing originals.

How a file can be unreadable although every save is tmp + fsync + rename: a disk-backed
--state-root after a power cut on a filesystem that reorders the rename before the data
(an empty or truncated file), an agent of another version (unknown keys, other types), two
agents started with the same --node, or a hand edit.
"""
from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field, fields

from .atomic_file import atomic_write
from .netconfig import ARP_SYSCTLS

log = logging.getLogger("vipfarm.state")


class StateCorrupt(ValueError):
    """The state file exists but does not hold a valid record; the message says what is wrong."""


@dataclass
class InterfaceState:
    """What this agent changed on the interface, kept in /run so a restart can adopt it."""
    node: str
    iface: str
    mode: str = ""
    slots: dict[str, int] = field(default_factory=dict)
    saved_sysctls: dict[str, str] = field(default_factory=dict)
    # True when the originals could not be known (the previous record was lost while the
    # sysctls already held vipfarm's values): a leave then leaves the sysctls as they are.
    sysctl_originals_unknown: bool = False
    vips: list[str] = field(default_factory=list)          # VIPs on lo that vipfarm added
    foreign_vips: list[str] = field(default_factory=list)  # claimed VIPs already on lo: never removed
    macs: list[str] = field(default_factory=list)
    tc_fixup: bool = False

    @classmethod
    def load(cls, path: str, node: str, iface: str) -> "InterfaceState":
        """Read-only, for readers such as `vipfarm stats`: an unreadable file reads as empty
        (and is left where it is). The agent itself uses read_state()."""
        try:
            return read_state(path, node, iface) or cls(node, iface)
        except StateCorrupt as e:
            log.warning("event=state_corrupt path=%s error=%r action=read_as_empty", path, str(e))
            return cls(node, iface)

    def save(self, path: str) -> None:
        """Atomically replace the file, so a reader sees old or new."""
        atomic_write(path, json.dumps(asdict(self), indent=1, sort_keys=True).encode())


_TYPES = {f.name: f.type for f in fields(InterfaceState)}


def _check(key: str, value, ok: bool, want: str) -> None:
    if not ok:
        raise StateCorrupt(f"{key} is {value!r}, expected {want}")


def parse_state(text: str, node: str, iface: str) -> InterfaceState:
    """The record in `text`, or StateCorrupt naming the first thing wrong. Pure."""
    if not text.strip():
        raise StateCorrupt("the file is empty")
    try:
        data = json.loads(text)
    except ValueError as e:
        raise StateCorrupt(f"not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise StateCorrupt(f"the top level is a {type(data).__name__}, expected an object")
    unknown = sorted(set(data) - set(_TYPES))
    if unknown:
        raise StateCorrupt(f"unknown keys {', '.join(unknown)} (written by another agent version?)")
    if data.get("node") != node or data.get("iface") != iface:
        raise StateCorrupt(f"it belongs to node={data.get('node')!r} iface={data.get('iface')!r}, "
                           f"not node={node!r} iface={iface!r}")
    if "mode" in data:
        _check("mode", data["mode"], isinstance(data["mode"], str), "a string")
    for key in ("tc_fixup", "sysctl_originals_unknown"):
        if key in data:
            _check(key, data[key], isinstance(data[key], bool), "true or false")
    if "slots" in data:
        v = data["slots"]
        _check("slots", v, isinstance(v, dict) and all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in v.values()),
            "an object of farm name to slot number")
    if "saved_sysctls" in data:
        v = data["saved_sysctls"]
        _check("saved_sysctls", v, isinstance(v, dict) and set(v) <= set(ARP_SYSCTLS)
               and all(isinstance(x, str) and x.strip().lstrip("-").isdigit() for x in v.values()),
               f"an object of {'/'.join(ARP_SYSCTLS)} to a number string")
    for key in ("vips", "foreign_vips", "macs"):
        if key in data:
            v = data[key]
            _check(key, v, isinstance(v, list) and all(isinstance(x, str) for x in v), "a list of strings")
    return InterfaceState(**data)


def read_state(path: str, node: str, iface: str) -> InterfaceState | None:
    """The record at `path`; None when there is none; StateCorrupt when it is unreadable."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    try:
        text = raw.decode()
    except UnicodeDecodeError as e:
        raise StateCorrupt(f"not UTF-8 text ({e})") from None
    return parse_state(text, node, iface)


def corrupt_path(path: str, now: float) -> str:
    return f"{path}.corrupt-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime(now))}"


def quarantine(path: str, error: StateCorrupt, now: float | None = None) -> str:
    """Move an unreadable record aside, so nothing overwrites it; returns where it went."""
    now = time.time() if now is None else now
    dest = corrupt_path(path, now)
    n = 1
    while os.path.exists(dest):          # never clobber an earlier quarantined file
        dest = f"{corrupt_path(path, now)}.{n}"
        n += 1
    os.rename(path, dest)
    log.error("event=state_corrupt path=%s moved_to=%s error=%r action=recover_from_pinned_maps "
              "fix=%r", path, dest, str(error),
              f"the agent keeps serving from the pinned maps; inspect {dest}, and if the "
              f"interface's original arp_ignore/arp_announce are known, set them after the agent leaves")
    return dest


@dataclass(frozen=True)
class SysctlOriginals:
    saved: dict[str, str]     # what a graceful leave restores ({} = restore nothing)
    unknown: bool             # the originals could not be known
    reason: str


def choose_sysctl_originals(current: dict[str, str], state: InterfaceState,
                            record_lost: bool) -> SysctlOriginals:
    """Which arp_ignore/arp_announce values count as the interface's originals. Pure.

    current: the values on the interface now, before vipfarm writes its own.
    record_lost: the previous run's record is gone (corrupt, or missing while its pins exist).

    When the record is lost and the interface already holds vipfarm's own values (1/2), they
    may be vipfarm's doing or the operator's: arp_ignore=1/arp_announce=2 is exactly what
    kube-proxy's IPVS strictARP and LVS-DR hosts set on purpose. Recording them as originals
    would lie, and assuming the kernel defaults 0/0 would, on a leave, switch such a node to
    answering ARP for every local address on every interface. So we refuse to guess: nothing
    is recorded, a leave leaves 1/2 (a conservative ARP setting that breaks nothing), and the
    log says how to set the originals by hand.
    """
    if state.saved_sysctls:
        return SysctlOriginals(dict(state.saved_sysctls), False, "kept from the state file")
    if state.sysctl_originals_unknown:
        return SysctlOriginals({}, True, "unknown since an earlier lost state file")
    if record_lost and current == ARP_SYSCTLS:
        return SysctlOriginals({}, True, "the previous state file was lost and the interface already "
                                         "holds vipfarm's values, which may or may not be its originals")
    return SysctlOriginals(dict(current), False, "read from the interface before changing it")
