"""The Farm spec model: parsing and validation, shared by the agent, the operator and the CLI.

A Farm document (the standalone file or the custom resource) is turned into frozen
dataclasses here, and nowhere else. Every problem found is reported with the field path,
the offending value and the fix, and all problems are reported at once.
"""
from __future__ import annotations

import hashlib
import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

GROUP = "vipfarm.io"
VERSION = "v1alpha1"
PLURAL = "farms"
REPORT_PLURAL = "farmnodes"     # FarmNode: one per Node, its agent's reports (crds/farmnodes.vipfarm.io.yaml)
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Farm"

DEFAULT_BUCKETS = 1024
MAX_BUCKETS = 65536
MAX_RULES = 8            # per farm; mirrors VF_MAX_RULES in bpf/vipfarm_consts.h
MAX_VIPS = 16            # per farm
MAX_NODES = 256
PROTOCOLS = ("TCP", "UDP")
AFFINITIES = ("ClientIP", "ClientIPPort")
VMAC_MODES = ("unicast-flood", "multicast")
XDP_MODES = ("auto", "native", "generic")
DEFAULT_HEARTBEAT_PORT = 7946
_NAME_RE = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_IFNAME_RE = re.compile(r"^[^\s/:]{1,15}$")
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")


class FarmSpecError(ValueError):
    """A Farm document is invalid. `problems` lists one human sentence per problem."""

    def __init__(self, farm: str, problems: list[str], source: str = ""):
        self.farm = farm
        self.problems = problems
        self.source = source
        lines = "\n".join(f"  - {p}" for p in problems)
        where = f" in {source}" if source else ""
        super().__init__(f"Farm {farm!r}{where} is invalid ({len(problems)} problem(s)):\n{lines}")


@dataclass(frozen=True)
class PortRange:
    low: int
    high: int

    def __str__(self) -> str:
        return str(self.low) if self.low == self.high else f"{self.low}-{self.high}"

    def contains(self, port: int) -> bool:
        return self.low <= port <= self.high


@dataclass(frozen=True)
class Rule:
    protocol: str           # "TCP" | "UDP"
    ports: PortRange
    affinity: str           # "ClientIP" | "ClientIPPort"


@dataclass(frozen=True)
class NodeSpec:
    name: str
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    weight: int = 1


@dataclass(frozen=True)
class Heartbeat:
    port: int = DEFAULT_HEARTBEAT_PORT
    interval_ms: int = 200
    timeout_ms: int = 1000


@dataclass(frozen=True)
class Farm:
    name: str
    virtual_ips: tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, ...]
    interface: str = "eth0"
    buckets: int = DEFAULT_BUCKETS
    vmac_mode: str = "unicast-flood"
    xdp_mode: str = "auto"
    rules: tuple[Rule, ...] = ()
    nodes: tuple[NodeSpec, ...] = ()
    node_selector: Mapping[str, str] = field(default_factory=dict)
    seed: int = 0
    virtual_mac: str = ""
    heartbeat: Heartbeat = Heartbeat()

    def node(self, name: str) -> NodeSpec:
        for n in self.nodes:
            if n.name == name:
                return n
        known = ", ".join(n.name for n in self.nodes) or "none"
        raise KeyError(f"node {name!r} is not listed in Farm {self.name!r} spec.nodes "
                       f"(listed: {known}); add it to spec.nodes or pass --node with one of those")


def default_seed(farm_name: str) -> int:
    """The hash seed used when spec.seed is absent: stable across nodes and restarts."""
    return int.from_bytes(hashlib.sha256(b"vipfarm-seed:" + farm_name.encode()).digest()[:4], "big")


def default_virtual_mac(farm_name: str, vmac_mode: str) -> str:
    """A locally administered MAC derived from the farm name.

    unicast-flood gets a unicast address (first octet 0x02), multicast gets a group address
    (first octet 0x03), so the NICs can join it.
    """
    digest = hashlib.sha256(b"vipfarm-vmac:" + farm_name.encode()).digest()
    first = 0x03 if vmac_mode == "multicast" else 0x02
    return ":".join(f"{b:02x}" for b in bytes([first]) + digest[:5])


def parse_ports(text: Any) -> PortRange:
    """'80' or '8000-8100' (or an int) into a PortRange; ValueError with the reason."""
    if isinstance(text, bool):
        raise ValueError("must be a port such as \"80\" or a range such as \"8000-8100\"")
    if isinstance(text, int):
        text = str(text)
    if not isinstance(text, str):
        raise ValueError("must be a port such as \"80\" or a range such as \"8000-8100\"")
    m = re.fullmatch(r"(\d{1,5})(?:-(\d{1,5}))?", text)
    if not m:
        raise ValueError("must be a port such as \"80\" or a range such as \"8000-8100\"")
    low = int(m.group(1))
    high = int(m.group(2)) if m.group(2) else low
    if not (1 <= low <= 65535 and 1 <= high <= 65535):
        raise ValueError("ports must be between 1 and 65535")
    if low > high:
        raise ValueError(f"range start {low} is above its end {high}; write \"{high}-{low}\"")
    return PortRange(low, high)


class _Collector:
    def __init__(self) -> None:
        self.problems: list[str] = []

    def add(self, path: str, value: Any, why: str) -> None:
        self.problems.append(f"{path}={value!r}: {why}")


def _int_field(c: _Collector, path: str, value: Any, default: int, low: int, high: int) -> int:
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        c.add(path, value, f"must be an integer between {low} and {high}")
        return default
    if not low <= value <= high:
        c.add(path, value, f"must be between {low} and {high}")
        return default
    return value


def _choice(c: _Collector, path: str, value: Any, default: str, choices: tuple[str, ...]) -> str:
    if value is None:
        return default
    if value not in choices:
        c.add(path, value, f"must be one of {', '.join(choices)}")
        return default
    return value


def parse_farm(doc: Any, *, require_nodes: bool = False) -> Farm:
    """Validate a Farm document (as loaded from YAML or the API) and build the model.

    require_nodes: standalone mode, where spec.nodes is the membership and must be present.
    Raises FarmSpecError listing every problem.
    """
    if not isinstance(doc, Mapping):
        raise FarmSpecError("?", [f"document: expected a mapping with apiVersion, kind, metadata "
                                  f"and spec, got {type(doc).__name__}"])
    c = _Collector()
    meta = doc.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        c.add("metadata.name", name, "every Farm needs a name, e.g. metadata: {name: web}")
        name = "?"
    elif len(name) > 63 or not _NAME_RE.match(name):
        c.add("metadata.name", name, "must be a DNS label: lower-case letters, digits and '-', "
                                     "at most 63 characters")
    if doc.get("apiVersion") != API_VERSION:
        c.add("apiVersion", doc.get("apiVersion"), f"must be {API_VERSION}")
    if doc.get("kind") != KIND:
        c.add("kind", doc.get("kind"), f"must be {KIND}")
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        c.add("spec", spec, "every Farm needs a spec mapping with at least virtualIPs")
        raise FarmSpecError(name, c.problems)

    known = {"virtualIPs", "interface", "buckets", "vmacMode", "xdpMode", "rules", "nodes",
             "nodeSelector", "seed", "virtualMAC", "heartbeat"}
    for key in spec:
        if key not in known:
            c.add(f"spec.{key}", spec[key], f"unknown field; known fields: {', '.join(sorted(known))}")

    vips: list[Any] = []
    raw_vips = spec.get("virtualIPs")
    if not isinstance(raw_vips, list) or not raw_vips:
        c.add("spec.virtualIPs", raw_vips, "list at least one virtual IP, e.g. [\"203.0.113.10\"]")
        raw_vips = []
    if len(raw_vips) > MAX_VIPS:
        c.add("spec.virtualIPs", f"{len(raw_vips)} entries", f"at most {MAX_VIPS} per farm")
    for i, raw in enumerate(raw_vips):
        path = f"spec.virtualIPs[{i}]"
        try:
            ip = ipaddress.ip_address(raw if isinstance(raw, str) else "")
        except ValueError:
            c.add(path, raw, "not an IPv4 or IPv6 address; write e.g. \"203.0.113.10\" or \"2001:db8::10\"")
            continue
        if "%" in raw or (ip.version == 6 and ip.ipv4_mapped is not None):
            c.add(path, raw, "zoned (%iface) and IPv4-mapped IPv6 addresses are not accepted; "
                             "write the plain IPv4 or IPv6 address")
            continue
        if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip.is_link_local:
            c.add(path, raw, "a virtual IP must be a unicast address (not multicast, loopback, "
                             "link-local or unspecified)")
            continue
        if ip in vips:
            c.add(path, raw, "listed twice; each virtual IP may appear once")
            continue
        vips.append(ip)

    interface = spec.get("interface", "eth0")
    if not isinstance(interface, str) or not _IFNAME_RE.match(interface):
        c.add("spec.interface", interface, "must be a network interface name of 1-15 characters, e.g. eth0")
        interface = "eth0"

    buckets = _int_field(c, "spec.buckets", spec.get("buckets"), DEFAULT_BUCKETS, 1, MAX_BUCKETS)
    if buckets & (buckets - 1):
        lower = 1 << (buckets.bit_length() - 1)
        c.add("spec.buckets", buckets, f"must be a power of two; try {lower} or {lower * 2}")
        buckets = DEFAULT_BUCKETS

    vmac_mode = _choice(c, "spec.vmacMode", spec.get("vmacMode"), "unicast-flood", VMAC_MODES)
    xdp_mode = _choice(c, "spec.xdpMode", spec.get("xdpMode"), "auto", XDP_MODES)

    rules: list[Rule] = []
    raw_rules = spec.get("rules", [])
    if not isinstance(raw_rules, list):
        c.add("spec.rules", raw_rules, "must be a list of {protocol, ports, affinity}")
        raw_rules = []
    if len(raw_rules) > MAX_RULES:
        c.add("spec.rules", f"{len(raw_rules)} rules", f"at most {MAX_RULES} rules per farm")
        raw_rules = raw_rules[:MAX_RULES]
    for i, raw in enumerate(raw_rules):
        path = f"spec.rules[{i}]"
        if not isinstance(raw, Mapping):
            c.add(path, raw, "each rule is a mapping {protocol: TCP, ports: \"80\", affinity: ClientIP}")
            continue
        for key in raw:
            if key not in ("protocol", "ports", "affinity"):
                c.add(f"{path}.{key}", raw[key], "unknown field; a rule has protocol, ports and affinity")
        proto = raw.get("protocol")
        if proto not in PROTOCOLS:
            c.add(f"{path}.protocol", proto, "must be TCP or UDP")
        try:
            ports = parse_ports(raw.get("ports"))
        except ValueError as e:
            c.add(f"{path}.ports", raw.get("ports"), str(e))
            ports = None
        affinity = raw.get("affinity", "ClientIP")
        if affinity not in AFFINITIES:
            c.add(f"{path}.affinity", affinity, "must be ClientIP (session affinity) or "
                                                 "ClientIPPort (spread per connection)")
        if proto in PROTOCOLS and ports is not None and affinity in AFFINITIES:
            rules.append(Rule(proto, ports, affinity))

    nodes: list[NodeSpec] = []
    raw_nodes = spec.get("nodes", [])
    if not isinstance(raw_nodes, list):
        c.add("spec.nodes", raw_nodes, "must be a list of {name, address, weight}")
        raw_nodes = []
    if len(raw_nodes) > MAX_NODES:
        c.add("spec.nodes", f"{len(raw_nodes)} nodes", f"at most {MAX_NODES} nodes")
    seen_names: set[str] = set()
    seen_addrs: set[Any] = set()
    for i, raw in enumerate(raw_nodes):
        path = f"spec.nodes[{i}]"
        if not isinstance(raw, Mapping):
            c.add(path, raw, "each node is a mapping {name: n1, address: 198.51.100.1, weight: 1}")
            continue
        nname = raw.get("name")
        if not isinstance(nname, str) or not nname or len(nname) > 63:
            c.add(f"{path}.name", nname, "every node needs a name of 1-63 characters")
            continue
        if nname in seen_names:
            c.add(f"{path}.name", nname, "listed twice; node names must be unique")
            continue
        seen_names.add(nname)
        try:
            addr = ipaddress.ip_address(raw.get("address") if isinstance(raw.get("address"), str) else "")
        except ValueError:
            c.add(f"{path}.address", raw.get("address"), "must be the node's IP address on the farm "
                                                         "network, e.g. 198.51.100.1")
            continue
        if addr in seen_addrs:
            c.add(f"{path}.address", str(addr), "two nodes share this address")
            continue
        seen_addrs.add(addr)
        if addr in vips:
            c.add(f"{path}.address", str(addr), "a node address cannot also be a virtual IP")
        weight = _int_field(c, f"{path}.weight", raw.get("weight"), 1, 0, 1000)
        nodes.append(NodeSpec(nname, addr, weight))
    if require_nodes and not raw_nodes:
        c.add("spec.nodes", raw_nodes, "standalone mode needs the member list, e.g. "
                                       "nodes: [{name: n1, address: 198.51.100.1}]")

    selector = spec.get("nodeSelector") or {}
    if not isinstance(selector, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
        c.add("spec.nodeSelector", selector, "must map label names to string values")
        selector = {}

    seed_raw = spec.get("seed")
    seed = _int_field(c, "spec.seed", seed_raw, 0, 0, 2**32 - 1)
    if seed_raw is None:
        seed = default_seed(name)

    vmac = spec.get("virtualMAC")
    if vmac is None:
        vmac = default_virtual_mac(name, vmac_mode)
    elif not isinstance(vmac, str) or not _MAC_RE.match(vmac.lower()):
        c.add("spec.virtualMAC", vmac, "must be a MAC such as 02:00:5e:10:00:01")
        vmac = default_virtual_mac(name, vmac_mode)
    else:
        vmac = vmac.lower()
        is_group = int(vmac[:2], 16) & 1
        if vmac_mode == "multicast" and not is_group:
            c.add("spec.virtualMAC", vmac, "multicast mode needs a group MAC (first octet odd, e.g. 03:...)")
        if vmac_mode == "unicast-flood" and is_group:
            c.add("spec.virtualMAC", vmac, "unicast-flood mode needs a unicast MAC (first octet even, e.g. 02:...)")

    hb_raw = spec.get("heartbeat") or {}
    if not isinstance(hb_raw, Mapping):
        c.add("spec.heartbeat", hb_raw, "must be a mapping {port, intervalMs, timeoutMs}")
        hb_raw = {}
    hb_port = _int_field(c, "spec.heartbeat.port", hb_raw.get("port"), DEFAULT_HEARTBEAT_PORT, 1, 65535)
    hb_interval = _int_field(c, "spec.heartbeat.intervalMs", hb_raw.get("intervalMs"), 200, 10, 60000)
    hb_timeout = _int_field(c, "spec.heartbeat.timeoutMs", hb_raw.get("timeoutMs"), 1000, 30, 600000)
    if hb_timeout < 3 * hb_interval:
        c.add("spec.heartbeat.timeoutMs", hb_timeout,
              f"must be at least 3 x intervalMs ({3 * hb_interval}) so one lost heartbeat is not a failure")

    if c.problems:
        raise FarmSpecError(name, c.problems)
    return Farm(
        name=name, virtual_ips=tuple(vips), interface=interface, buckets=buckets,
        vmac_mode=vmac_mode, xdp_mode=xdp_mode, rules=tuple(rules), nodes=tuple(nodes),
        node_selector=dict(selector), seed=seed, virtual_mac=vmac,
        heartbeat=Heartbeat(hb_port, hb_interval, hb_timeout),
    )


def load_farm_file(path: str, *, require_nodes: bool = True) -> Farm:
    """Read a standalone Farm YAML file; errors name the file."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            doc = yaml.safe_load(f)
    except OSError as e:
        raise FarmSpecError(path, [f"cannot read the farm file: {e.strerror}; check the --farm-file path"]) from e
    except yaml.YAMLError as e:
        raise FarmSpecError(path, [f"not valid YAML: {e}"]) from e
    try:
        return parse_farm(doc, require_nodes=require_nodes)
    except FarmSpecError as e:
        raise FarmSpecError(e.farm, e.problems, source=path) from None
