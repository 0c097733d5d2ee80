"""Failure injection inside a lab's own namespaces: freeze, link down, crash, heartbeat loss.

    freeze(lab, k) / thaw(lab, k)       SIGSTOP / SIGCONT every process in node k's namespace
    link_down(lab, k) / link_up(lab, k) the node's farm interface (eth0) down / up, inside its ns
    crash(lab, k)                       SIGKILL every process in the namespace, then link down
                                        (the pinned XDP program stays attached, as on a dead box)
    drop_heartbeats(lab, a, b, port)    in node b's namespace, drop UDP to `port` from node a's
                                        addresses only (asymmetric loss); heal(lab, b) undoes it
    partition(lab, groups, port)        drop_heartbeats both ways between every pair of groups

Everything stays inside namespaces the lab created (DESIGN.md, "Lab network rules"): the
nftables table `inet vipfarm_lab` lives in the node's namespace and vanishes with it. Every
fault is recorded on the lab and undone by undo_all(), which Lab's teardown runs before it
kills anything, so no process is left stopped (a stopped process outside lab.procs would
otherwise outlive the lab for good).
"""
from __future__ import annotations

import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field

from pyroute2 import IPRoute

from .namespaces import Lab, node_ip, node_ip6, ns_pids

log = logging.getLogger("vipfarm.lab.faults")

FARM_IFACE = "eth0"
NFT_TABLE = "vipfarm_lab"


@dataclass
class _Faults:
    frozen: dict[int, list[int]] = field(default_factory=dict)      # node -> pids we stopped
    links_down: set[int] = field(default_factory=set)
    drops: dict[int, set[tuple[int, int]]] = field(default_factory=dict)   # to node -> {(from, port)}


def _state(lab: Lab) -> _Faults:
    st = lab.__dict__.get("_vf_faults")
    if st is None:
        st = _Faults()
        lab.__dict__["_vf_faults"] = st
        lab.teardown_hooks.append(lambda: undo_all(lab))
    return st


def process_state(pid: int) -> str | None:
    """The one-letter state from /proc/<pid>/stat ('T' = stopped), None if the process is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def _signal_all(pids: list[int], sig: int) -> list[int]:
    done = []
    for pid in pids:
        try:
            os.kill(pid, sig)
            done.append(pid)
        except ProcessLookupError:
            pass
    return done


def _wait_states(pids: list[int], stopped: bool, what: str, timeout: float = 5.0) -> None:
    """Signals are delivered asynchronously: wait until each process is (or is no longer)
    stopped, so that a fault is in force when freeze()/thaw() return."""
    deadline = time.monotonic() + timeout
    while True:
        pending = [p for p in pids if (process_state(p) in ("T", "t")) != stopped
                   and process_state(p) not in (None, "Z", "X")]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: processes {pending} still {'running' if stopped else 'stopped'} "
                               f"after {timeout}s (states {[process_state(p) for p in pending]})")
        time.sleep(0.002)


# -- processes --------------------------------------------------------------------------------
def freeze(lab: Lab, k: int) -> list[int]:
    """SIGSTOP every process in node k's namespace and wait until each is stopped; returns the pids."""
    st = _state(lab)
    pids = _signal_all(ns_pids(lab.node(k)), signal.SIGSTOP)
    _wait_states(pids, True, f"freeze n{k}")
    st.frozen.setdefault(k, [])
    st.frozen[k] = sorted(set(st.frozen[k]) | set(pids))
    log.info("event=lab_fault fault=freeze node=n%d pids=%s", k, ",".join(map(str, pids)))
    return pids


def thaw(lab: Lab, k: int) -> list[int]:
    """SIGCONT every process freeze() stopped in node k (and any other stopped one there)."""
    st = _state(lab)
    pids = sorted(set(st.frozen.pop(k, [])) | set(ns_pids(lab.node(k))))
    resumed = _signal_all(pids, signal.SIGCONT)
    _wait_states(resumed, False, f"thaw n{k}")
    log.info("event=lab_fault fault=thaw node=n%d pids=%s", k, ",".join(map(str, resumed)))
    return resumed


def crash(lab: Lab, k: int) -> list[int]:
    """A dead machine: SIGKILL everything in the namespace (thawed first, so nothing lingers
    stopped), then take the farm link down. Returns the pids killed."""
    st = _state(lab)
    pids = ns_pids(lab.node(k))
    killed = _signal_all(pids, signal.SIGKILL)
    _signal_all(pids, signal.SIGCONT)
    st.frozen.pop(k, None)
    for p in lab.procs:          # reap the lab's own children now, so poll() tells the truth
        if p.pid in killed:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
    link_down(lab, k)
    log.info("event=lab_fault fault=crash node=n%d pids=%s", k, ",".join(map(str, killed)))
    return killed


# -- links ------------------------------------------------------------------------------------
def _set_link(lab: Lab, k: int, state: str) -> None:
    with IPRoute(netns=lab.node(k)) as ipr:
        idx = ipr.link_lookup(ifname=FARM_IFACE)
        if not idx:
            raise RuntimeError(f"node n{k} ({lab.node(k)}) has no {FARM_IFACE}; is the lab built?")
        ipr.link("set", index=idx[0], state=state)


def link_down(lab: Lab, k: int) -> None:
    _state(lab).links_down.add(k)
    _set_link(lab, k, "down")
    log.info("event=lab_fault fault=link_down node=n%d iface=%s", k, FARM_IFACE)


def link_up(lab: Lab, k: int) -> None:
    _set_link(lab, k, "up")
    _state(lab).links_down.discard(k)
    log.info("event=lab_fault fault=link_up node=n%d iface=%s", k, FARM_IFACE)


def link_is_up(lab: Lab, k: int) -> bool:
    with IPRoute(netns=lab.node(k)) as ipr:
        link = ipr.get_links(ipr.link_lookup(ifname=FARM_IFACE)[0])[0]
        return link.get("state") == "up"


# -- heartbeat loss ---------------------------------------------------------------------------
def _nft(lab: Lab, k: int, script: str) -> None:
    path = os.path.join(lab.workdir, f"nft-n{k}.nft")
    with open(path, "w") as f:
        f.write(script)
    lab.run(lab.node(k), ["nft", "-f", path], timeout=30)


def _ruleset(drops: set[tuple[int, int]]) -> str:
    rules = "".join(
        f"    ip saddr {node_ip(a)} udp dport {port} counter drop\n"
        f"    ip6 saddr {node_ip6(a)} udp dport {port} counter drop\n"
        for a, port in sorted(drops))
    return (f"table inet {NFT_TABLE} {{\n  chain input {{\n"
            f"    type filter hook input priority -10; policy accept;\n{rules}  }}\n}}\n")


def _apply(lab: Lab, to_k: int) -> None:
    drops = _state(lab).drops.get(to_k, set())
    # Deleting and re-creating the table in one nft transaction replaces the rules atomically.
    _nft(lab, to_k, f"table inet {NFT_TABLE}\ndelete table inet {NFT_TABLE}\n"
                    + (_ruleset(drops) if drops else ""))


def drop_heartbeats(lab: Lab, from_k: int, to_k: int, port: int) -> None:
    """Node to_k stops receiving UDP to `port` from node from_k (IPv4 and IPv6 addresses);
    every other sender, port and direction is untouched."""
    if from_k == to_k:
        raise ValueError(f"drop_heartbeats: from and to are both n{to_k}; name two different nodes")
    _state(lab).drops.setdefault(to_k, set()).add((from_k, port))
    _apply(lab, to_k)
    log.info("event=lab_fault fault=drop_heartbeats from=n%d to=n%d port=%d", from_k, to_k, port)


def heal(lab: Lab, to_k: int) -> None:
    """Remove every drop_heartbeats rule in node to_k's namespace."""
    _state(lab).drops.pop(to_k, None)
    _apply(lab, to_k)
    log.info("event=lab_fault fault=heal node=n%d", to_k)


def partition(lab: Lab, groups: list[list[int]], port: int) -> None:
    """Cut heartbeats between every pair of nodes in different groups, both ways."""
    seen: dict[int, int] = {}
    for g, members in enumerate(groups):
        for k in members:
            if k in seen:
                raise ValueError(f"partition: n{k} is in groups {seen[k]} and {g}; a node is in one group")
            seen[k] = g
    for g, members in enumerate(groups):
        for h, others in enumerate(groups):
            if g != h:
                for a in members:
                    for b in others:
                        drop_heartbeats(lab, a, b, port)


def heal_all(lab: Lab) -> None:
    for k in list(_state(lab).drops):
        heal(lab, k)


def undo_all(lab: Lab) -> None:
    """Undo every recorded fault: thaw first (a stopped process must not outlive the lab),
    then links up and heartbeat drops removed. Each step is best effort: it runs at teardown."""
    st = _state(lab)
    for k in list(st.frozen):
        try:
            thaw(lab, k)
        except Exception as e:       # noqa: BLE001 - teardown goes on
            log.warning("event=lab_fault_undo_failed fault=freeze node=n%d error=%r", k, e)
    for k in list(st.links_down):
        try:
            link_up(lab, k)
        except Exception as e:       # noqa: BLE001
            log.warning("event=lab_fault_undo_failed fault=link_down node=n%d error=%r", k, e)
    for k in list(st.drops):
        try:
            heal(lab, k)
        except Exception as e:       # noqa: BLE001
            log.warning("event=lab_fault_undo_failed fault=drop_heartbeats node=n%d error=%r", k, e)
