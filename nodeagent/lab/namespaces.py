"""The lab: a farm of network namespaces on one machine, for the demo and the lab tests.

Topology (every name starts with a per-run prefix such as `vf3a9c-`):
    <p>sw   a switch namespace holding bridge br0
    <p>nK   node K: eth0 = 198.51.100.K/24 and 2001:db8:1::K/64, agents and servers run here
    <p>c1   the client: eth0 with 198.51.100.100.. and 2001:db8:1::100.., and on-link routes
            (not default routes) to the VIP ranges 203.0.113.0/24 and 2001:db8::/64
Nothing is attached to the root namespace. Lab.close() (also run on SIGTERM/SIGINT and at
exit, see processes.py) kills every process it started and deletes the namespaces; its
children also die with it if it is SIGKILLed.
"""
from __future__ import annotations

import ipaddress
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

from pyroute2 import IPRoute, netns

from vipfarm.heartbeat_keys import generate_key_text

from ..pinned_maps import read_owned
from .processes import CleanupOnExit, pdeathsig_prefix, spawn_logged


def _code_path() -> str:
    """PYTHONPATH for the lab's child processes: the folders this very code was imported from
    (a checkout, a worktree or site-packages), so children run the same code as the parent."""
    import nodeagent
    import vipfarm
    roots = [os.path.dirname(os.path.dirname(os.path.abspath(m.__file__))) for m in (vipfarm, nodeagent)]
    extra = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return os.pathsep.join(dict.fromkeys(roots + extra))

NODE_NET = "198.51.100.0/24"
VIP_ROUTE4 = "203.0.113.0/24"
VIP_ROUTE6 = "2001:db8::/64"


def node_ip(k: int) -> str:
    return f"198.51.100.{k}"


def node_ip6(k: int) -> str:
    return f"2001:db8:1::{k}"


def client_ips(count: int) -> list[str]:
    if not 1 <= count <= 100:
        raise ValueError("the lab client holds 1..100 addresses (198.51.100.100-199)")
    return [f"198.51.100.{100 + i}" for i in range(count)]


def client_ips6(count: int) -> list[str]:
    return [f"2001:db8:1::{0x100 + i:x}" for i in range(count)]


def ns_pids(ns: str) -> list[int]:
    """Every process whose network namespace is /run/netns/<ns> (what `ip netns pids` prints)."""
    try:
        target = os.stat(f"/run/netns/{ns}")
    except FileNotFoundError:
        return []
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:          # gone, or a zombie
            continue
        if (st.st_dev, st.st_ino) == (target.st_dev, target.st_ino):
            pids.append(int(entry))
    return sorted(pids)


@dataclass
class Lab:
    nodes: int = 3
    clients: int = 60
    prefix: str = field(default_factory=lambda: f"vf{os.getpid() & 0xffff:04x}{int(time.time() * 1000) & 0xff:02x}-")
    procs: list[subprocess.Popen] = field(default_factory=list)
    workdir: str = ""
    # Run first at teardown, before any process is killed (faults.py undoes its faults here).
    teardown_hooks: list = field(default_factory=list)
    _cleanup: CleanupOnExit | None = None

    # -- names ----------------------------------------------------------------------------
    @property
    def switch(self) -> str:
        return self.prefix + "sw"

    def node(self, k: int) -> str:
        return f"{self.prefix}n{k}"

    @property
    def client(self) -> str:
        return self.prefix + "c1"

    @property
    def pin_root(self) -> str:
        return f"/sys/fs/bpf/vipfarm-lab/{self.prefix.rstrip('-')}"

    @property
    def key_file(self) -> str:
        """The lab farms' heartbeat key (written by build())."""
        return os.path.join(self.workdir, "heartbeat.key")

    @property
    def state_root(self) -> str:
        return os.path.join(self.workdir, "state")

    def namespaces(self) -> list[str]:
        return [self.switch, self.client] + [self.node(k) for k in range(1, self.nodes + 1)]

    # -- build / teardown -------------------------------------------------------------------
    def __enter__(self) -> "Lab":
        self.build()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def build(self) -> "Lab":
        self.workdir = tempfile.mkdtemp(prefix=self.prefix)
        fd = os.open(self.key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(generate_key_text())
        self._cleanup = CleanupOnExit(self._teardown)
        try:
            for ns in self.namespaces():
                netns.create(ns)
            with IPRoute(netns=self.switch) as sw:
                sw.link("add", ifname="br0", kind="bridge")
                # Forward immediately; no STP delay in a lab.
                sw.link("set", index=sw.link_lookup(ifname="br0")[0], state="up")
            for k in range(1, self.nodes + 1):
                self._attach_host(self.node(k), f"n{k}", [node_ip(k)], [node_ip6(k)])
            self._attach_host(self.client, "c1", client_ips(self.clients), client_ips6(self.clients),
                              routes=True)
        except BaseException:
            self.close()
            raise
        return self

    def _attach_host(self, ns: str, port: str, ips4: list[str], ips6: list[str], routes: bool = False) -> None:
        with IPRoute(netns=ns) as h:
            h.link("add", ifname="eth0", kind="veth", peer={"ifname": port, "net_ns_fd": self.switch})
            lo = h.link_lookup(ifname="lo")[0]
            h.link("set", index=lo, state="up")
            idx = h.link_lookup(ifname="eth0")[0]
            for ip in ips4:
                h.addr("add", index=idx, address=ip, prefixlen=24)
            for ip in ips6:
                h.addr("add", index=idx, address=ip, prefixlen=64, flags=0x02)   # IFA_F_NODAD
            h.link("set", index=idx, state="up")
            if routes:
                h.route("add", dst=VIP_ROUTE4, oif=idx, scope=253)              # on-link, no gateway
                h.route("add", dst=VIP_ROUTE6, oif=idx, family=10)
        with IPRoute(netns=self.switch) as sw:
            p = sw.link_lookup(ifname=port)[0]
            br = sw.link_lookup(ifname="br0")[0]
            sw.link("set", index=p, master=br, state="up")

    def close(self) -> None:
        if self._cleanup is not None:
            self._cleanup.run()

    def _teardown(self) -> None:
        for hook in self.teardown_hooks:
            try:
                hook()
            except Exception as e:      # noqa: BLE001 - the namespaces must go whatever happens
                print(f"event=lab_teardown_hook_failed hook={hook!r} error={e!r}", file=sys.stderr)
        for p in self.procs:
            if p.poll() is None:
                p.kill()
        for p in self.procs:
            try:
                p.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass
        # Whatever else still runs in the lab's namespaces (a server a recovery command started,
        # a process a test spawned itself) would outlive them: a deleted netns kills nobody.
        for ns in self.namespaces():
            for pid in ns_pids(ns):
                for sig in (signal.SIGCONT, signal.SIGKILL):
                    try:
                        os.kill(pid, sig)
                    except ProcessLookupError:
                        pass
        for ns in self.namespaces():
            try:
                netns.remove(ns)
            except OSError:
                pass
        shutil.rmtree(self.pin_root, ignore_errors=True)
        if self.workdir:
            keep = os.environ.get("VIPFARM_LAB_KEEP_LOGS")
            if keep:   # a directory: the lab's logs and probe records are copied there before removal
                dest = os.path.join(keep, os.path.basename(self.workdir))
                shutil.copytree(self.workdir, dest, dirs_exist_ok=True, ignore_dangling_symlinks=True)
                print(f"lab logs kept in {dest}", file=sys.stderr)
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- processes ------------------------------------------------------------------------
    def command(self, ns: str, argv: list[str]) -> list[str]:
        """argv run inside namespace `ns`: only the network namespace changes (nsenter --net),
        so the process keeps the host's /sys/fs/bpf and shares pins with its successors."""
        return ["nsenter", f"--net=/run/netns/{ns}", "--"] + argv

    def spawn(self, ns: str, argv: list[str], log_name: str | None = None,
              extra_env: dict[str, str] | None = None, **kw) -> subprocess.Popen:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=_code_path(), **(extra_env or {}))
        log = os.path.join(self.workdir, log_name) if log_name else None
        p = spawn_logged(pdeathsig_prefix() + self.command(ns, argv), log, env=env, cwd=self.workdir, **kw)
        self.procs.append(p)
        return p

    def run(self, ns: str, argv: list[str], timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
        env = dict(os.environ, PYTHONUNBUFFERED="1", PYTHONPATH=_code_path())
        res = subprocess.run(self.command(ns, argv), capture_output=True, text=True, timeout=timeout,
                             env=env, cwd=self.workdir)
        if check and res.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)} in {ns} failed ({res.returncode}):\n{res.stdout}\n{res.stderr}")
        return res

    def python(self, ns: str, module: str, *args: str, **kw) -> subprocess.CompletedProcess:
        return self.run(ns, [sys.executable, "-m", module, *args], **kw)

    def start_servers(self, tcp_ports=(80, 8080), udp_ports=(5000,)) -> None:
        for k in range(1, self.nodes + 1):
            args = [sys.executable, "-m", "nodeagent.lab.traffic", "serve", "--name", f"n{k}"]
            for p in tcp_ports:
                args += ["--tcp", str(p)]
            for p in udp_ports:
                args += ["--udp", str(p)]
            self.spawn(self.node(k), args, log_name=f"server-n{k}.log")
        time.sleep(0.5)

    def start_agent(self, k: int, farm_files: list[str], extra_args: tuple[str, ...] = (),
                    wrap: Sequence[str] = ()) -> subprocess.Popen:
        """Agent k in its node's namespace, with `extra_args` after its own. `wrap` goes before
        the agent's argv, inside the namespace: e.g. a `setpriv --bounding-set=...` that runs it
        with fewer capabilities."""
        args = [*wrap, sys.executable, "-m", "nodeagent.main", "--node", f"n{k}",
                "--pin-root", self.pin_root, "--state-root", self.state_root, *extra_args]
        for f in farm_files:
            args += ["--farm-file", f]
        return self.spawn(self.node(k), args, log_name=f"agent-n{k}.log")

    def log(self, name: str) -> str:
        try:
            with open(os.path.join(self.workdir, name), errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def agent_log(self, k: int) -> str:
        return self.log(f"agent-n{k}.log")

    def wait_agent_ready(self, k: int, proc: subprocess.Popen, timeout: float = 90, after: int = 0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.agent_log(k).count("event=agent_ready") > after:
                return
            if proc.poll() is not None:
                raise RuntimeError(f"agent n{k} exited with {proc.returncode}:\n{self.agent_log(k)}")
            time.sleep(0.2)
        raise TimeoutError(f"agent n{k} not ready after {timeout}s:\n{self.agent_log(k)}")

    def owned(self, k: int, farm: str, iface: str = "eth0") -> set[int] | None:
        """The buckets node k's filter owns for `farm` (from its pinned maps), None before it has any."""
        try:
            with open(os.path.join(self.state_root, f"n{k}", f"{iface}.json")) as f:
                slot = json.load(f)["slots"][farm]
            return read_owned(os.path.join(self.pin_root, f"n{k}", iface), slot)
        except (OSError, KeyError, ValueError):
            return None

    def wait_converged(self, farm: str, nodes: list[int], buckets: int = 1024, timeout: float = 30,
                       idle: tuple[int, ...] = ()) -> dict[int, set[int]]:
        """Wait until the nodes' filters partition the farm's buckets: every bucket owned by
        exactly one of them and every node but those in `idle` (weight 0) holding some (the
        agents agreed and programmed it). Returns each node's share."""
        deadline = time.monotonic() + timeout
        last: dict[int, set[int] | None] = {}
        while time.monotonic() < deadline:
            last = {k: self.owned(k, farm) for k in nodes}
            if partitioned(last, buckets, idle):
                return {k: set(s) for k, s in last.items()}
            time.sleep(0.05)
        counts = {k: (None if s is None else len(s)) for k, s in last.items()}
        raise TimeoutError(f"farm {farm}: nodes {nodes} did not converge on one owner per bucket within "
                           f"{timeout}s (buckets held: {counts}); agent logs in {self.workdir}")

    def write_farm(self, name: str, text: str) -> str:
        """Write (or rewrite) a Farm file whole: a new file renamed over the old one, so an
        agent re-reading it on SIGHUP never sees half of it."""
        path = os.path.join(self.workdir, f"{name}.yaml")
        with open(path + ".new", "w") as f:
            f.write(text)
        os.replace(path + ".new", path)
        return path


def partitioned(shares: dict[int, set[int] | None], buckets: int = 1024, idle: tuple[int, ...] = ()) -> bool:
    """Do these filters (node -> buckets it owns, None before it has any) partition the farm's
    buckets, every node but those in `idle` holding some? (Lab.wait_converged's condition.)"""
    held = [s for s in shares.values() if s is not None]
    return len(held) == len(shares) and sum(map(len, held)) == buckets \
        and set().union(*held) == set(range(buckets)) and all(shares[k] for k in shares if k not in idle)


def farm_yaml(name: str, vips: list[str], weights: dict[str, int], *, vmac_mode: str = "unicast-flood",
              xdp_mode: str = "auto", buckets: int = 1024, rules: str | None = None,
              key_file: str | None = None, interval_ms: int | None = None, timeout_ms: int | None = None,
              witness: str | None = None, extra: str = "", drained: tuple[str, ...] = ()) -> str:
    """A standalone Farm file for lab nodes n1..nN (`extra`: more spec lines, indented by two;
    `drained`: members given `drain: true`). A farm of two or more nodes needs `key_file`
    (Lab.key_file)."""
    if rules is None:
        rules = ('    - {protocol: TCP, ports: "80", affinity: ClientIPPort}\n'
                 '    - {protocol: TCP, ports: "8080", affinity: ClientIP}\n'
                 '    - {protocol: UDP, ports: "5000-5010", affinity: ClientIPPort}\n')
    nodes = "".join(f"    - {{name: {n}, address: {node_ip(int(n[1:]))}, weight: {w}"
                    + (", drain: true" if n in drained else "") + "}\n"
                    for n, w in weights.items())
    vip_list = ", ".join(f'"{ipaddress.ip_address(v)}"' for v in vips)
    return (f"apiVersion: vipfarm.io/v1alpha1\nkind: Farm\nmetadata:\n  name: {name}\nspec:\n"
            f"  virtualIPs: [{vip_list}]\n  interface: eth0\n  buckets: {buckets}\n"
            f"  vmacMode: {vmac_mode}\n  xdpMode: {xdp_mode}\n  rules:\n{rules}  nodes:\n{nodes}"
            + _heartbeat_yaml(key_file, interval_ms, timeout_ms, witness) + extra)


def _heartbeat_yaml(key_file: str | None, interval_ms: int | None, timeout_ms: int | None,
                    witness: str | None) -> str:
    fields = [f"{k}: {v}" for k, v in (("keyFile", key_file), ("intervalMs", interval_ms),
                                          ("timeoutMs", timeout_ms), ("witness", witness)) if v is not None]
    return f"  heartbeat: {{{', '.join(fields)}}}\n" if fields else ""
