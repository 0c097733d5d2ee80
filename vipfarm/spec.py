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

from .addresses import (IPAddress, NotAnIPAddress, format_mac, is_group_mac, parse_ip, parse_mac,
                        unicast_problem)

GROUP = "vipfarm.io"
VERSION = "v1alpha1"
PLURAL = "farms"
REPORT_PLURAL = "farmnodes"     # FarmNode: one per Node, its agent's reports (crds/farmnodes.vipfarm.io.yaml)
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "Farm"

DEFAULT_BUCKETS = 1024
MAX_BUCKETS = 65536
MAX_RULES = 8            # per farm; mirrors VF_MAX_RULES in bpf/vipfarm_consts.h
MAX_VIPS_PER_FARM = 16   # per farm; the filter holds 256 VIPs per interface (VF_MAX_VIPS_PER_IFACE)
MAX_NODES = 64           # heartbeats are all-to-all and each carries every member's row
MAX_CHECKERS = 16
CHECKER_TYPES = ("tcp", "http", "exec", "interface")
MAX_COMMAND_ARGS = 64
MAX_COMMAND_ARG_CHARS = 4096
MAX_PATH_CHARS = 1024
DEFAULT_HEARTBEAT_INTERVAL_MS = 100
DEFAULT_HEARTBEAT_TIMEOUT_MS = 300
PROTOCOLS = ("TCP", "UDP")
AFFINITIES = ("ClientIP", "ClientIPPort")
VMAC_MODES = ("unicast-flood", "multicast")
XDP_MODES = ("auto", "native", "generic")
DEFAULT_HEARTBEAT_PORT = 7946
# spec.handover. A planned move (join, rejoin, weight change, drain) lets the old owner keep
# its established flows in a moved bucket until they end, for at most drainTimeoutSeconds:
# 300 s is the connection-draining default of the cloud load balancers (AWS ELB/ALB
# deregistration delay, GCP backend-service connection draining), long enough for request/
# response traffic and for TIME_WAIT (60 s) to clear, short enough that a drain finishes.
# UDP has no connection state, so a UDP flow counts as alive while it has been seen in the
# last udpIdleSeconds: 30 s is the kernel conntrack's UDP timeout (nf_conntrack_udp_timeout),
# the time after which a NAT or firewall on the path forgets the flow anyway.
# drainTimeoutSeconds 0 turns handover off: a planned move cuts the moved flows at once, as a
# plain rehash does (the benchmark's baseline).
DEFAULT_DRAIN_TIMEOUT_SECONDS = 300
MAX_DRAIN_TIMEOUT_SECONDS = 86400
DEFAULT_UDP_IDLE_SECONDS = 30
MAX_UDP_IDLE_SECONDS = 3600
MAX_NODE_NAME = 253      # a Kubernetes Node name: a DNS-1123 subdomain
MAX_IFNAME_BYTES = 15    # IFNAMSIZ - 1
SPEC_FIELDS = frozenset({"virtualIPs", "interface", "buckets", "vmacMode", "xdpMode", "rules", "nodes",
                         "nodeSelector", "seed", "virtualMAC", "heartbeat", "checkers", "recovery",
                         "handover"})
_NAME_RE = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_LABEL_RE = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
# The bytes the kernel's dev_valid_name() refuses in an interface name: '/', ':', NUL and its
# isspace() (\t \n \v \f \r, space and 0xA0, which its ctype table counts as a space); and
# two the kernel allows but vipfarm cannot: '"' and '\\', because the agent writes the name into
# the pin path it passes to the compiler as a C string (-DVF_PIN_DIR="...").
_IFNAME_BAD_BYTES = frozenset(b"/:\x00\t\n\x0b\x0c\r \xa0\"\\")


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
    address: IPAddress
    weight: int = 1
    drain: bool = False     # standalone: take no new flows, keep the established ones (spec.handover)


@dataclass(frozen=True)
class Heartbeat:
    port: int = DEFAULT_HEARTBEAT_PORT
    interval_ms: int = DEFAULT_HEARTBEAT_INTERVAL_MS
    timeout_ms: int = DEFAULT_HEARTBEAT_TIMEOUT_MS
    key_file: str = ""      # standalone mode; cluster mode reads the chart's Secret
    witness: str = ""       # an IPv4 address whose ARP replies are one more vote (2-node farms)


@dataclass(frozen=True)
class Handover:
    """spec.handover: how long a planned move keeps the old owner's flows (see the defaults above)."""
    drain_timeout_seconds: int = DEFAULT_DRAIN_TIMEOUT_SECONDS
    udp_idle_seconds: int = DEFAULT_UDP_IDLE_SECONDS


@dataclass(frozen=True)
class Checker:
    """One spec.checkers entry. Fields that do not apply to the type keep their empty value;
    those that do hold the parsed value or its default (interface defaults to spec.interface)."""
    name: str
    type: str                               # "tcp" | "http" | "exec" | "interface"
    port: int = 0                           # tcp, http
    host: str = ""                          # tcp, http (default 127.0.0.1)
    path: str = ""                          # http (default /)
    expect_status: tuple[int, ...] = ()     # http (default (200,))
    command: tuple[str, ...] = ()           # exec
    interface: str = ""                     # interface
    interval_ms: int = 1000
    timeout_ms: int = 500
    failure_threshold: int = 3
    success_threshold: int = 2


@dataclass(frozen=True)
class Recovery:
    """spec.recovery: the command run when the node's checkers fail, and its restart budget
    (at most max_restarts runs in any window_seconds)."""
    command: tuple[str, ...]
    timeout_seconds: int = 30
    max_restarts: int = 3
    window_seconds: int = 86400


@dataclass(frozen=True)
class Farm:
    name: str
    virtual_ips: tuple[IPAddress, ...]
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
    checkers: tuple[Checker, ...] = ()
    recovery: Recovery | None = None
    handover: Handover = Handover()

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
    return format_mac(bytes([first]) + digest[:5])


_NODE_NAME_RULE = ("a node name must be a DNS-1123 subdomain, like a Kubernetes Node name: lower-case "
                   "letters, digits, '-' and '.', at most 253 characters, each '.'-separated part 1-63 "
                   "characters starting and ending with a letter or digit, e.g. n1 or node-1.example.com")


def _is_ip_text(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
        return True
    except ValueError:
        return False


def node_name_problem(name: Any) -> str | None:
    """None if `name` is a valid node name (a DNS-1123 subdomain, as Kubernetes Node names
    are), else the reason and the fix. Node names become file paths and compiler macros, so
    they are never allowed '/', NUL, '..' or anything but [a-z0-9.-]."""
    if not isinstance(name, str) or not name:
        return f"every node needs a name; {_NODE_NAME_RULE}"
    if len(name) > MAX_NODE_NAME:
        return f"is {len(name)} characters long; {_NODE_NAME_RULE}"
    labels = name.split(".")
    if all(_LABEL_RE.fullmatch(label) for label in labels):
        if _is_ip_text(name):
            return ("is an IP address, not a name; name the node (e.g. n1 or node-1.example.com) and put "
                    "its address in address")
        return None
    lower = name.lower()
    if lower != name and node_name_problem(lower) is None:
        return f"has upper-case letters; write it in lower case, {lower!r} ({_NODE_NAME_RULE})"
    bad = sorted({ch for ch in name if not ("a" <= ch <= "z" or "0" <= ch <= "9" or ch in "-.")})
    if bad:
        return f"has the character(s) {''.join(bad)!r}; {_NODE_NAME_RULE}"
    if "" in labels:
        return f"has an empty part (a leading, trailing or doubled '.'); {_NODE_NAME_RULE}"
    return f"has a part that is longer than 63 characters or starts or ends with '-'; {_NODE_NAME_RULE}"


_IFNAME_RULE = ("must be a network interface name of 1-15 characters (at most 15 bytes in UTF-8), "
                "not '.' or '..', without whitespace, '/', ':', NUL, a double quote or a backslash, e.g. eth0")


def interface_name_problem(name: Any) -> str | None:
    """None if the kernel accepts `name` as a network interface name (dev_valid_name():
    1-15 bytes, not '.' or '..', no '/', ':', whitespace or NUL) and it has no '"' or '\\'
    (vipfarm puts it into a C string), else the reason and the fix."""
    if not isinstance(name, str) or not name:
        return _IFNAME_RULE
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        return f"is not valid UTF-8 text; {_IFNAME_RULE}"
    if len(raw) > MAX_IFNAME_BYTES:
        return f"is {len(raw)} bytes in UTF-8; it {_IFNAME_RULE}"
    if name in (".", "..") or any(b in _IFNAME_BAD_BYTES for b in raw) or any(ch.isspace() for ch in name):
        return _IFNAME_RULE
    return None


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


def _given(mapping: Mapping, key: str, default: Any) -> Any:
    """mapping[key], or the default when the key is absent or null."""
    value = mapping.get(key)
    return default if value is None else value


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
    A field whose value is null counts as absent, as the API server counts it (it drops a null
    before defaulting). Raises FarmSpecError listing every problem.
    """
    if not isinstance(doc, Mapping):
        raise FarmSpecError("?", [f"document: expected a mapping with apiVersion, kind, metadata "
                                  f"and spec, got {type(doc).__name__}"])
    c = _Collector()
    name = _parse_header(c, doc)
    spec = doc.get("spec")
    if not isinstance(spec, Mapping):
        c.add("spec", spec, "every Farm needs a spec mapping with at least virtualIPs")
        raise FarmSpecError(name, c.problems)
    _check_known_fields(c, spec)
    vips = _parse_virtual_ips(c, spec.get("virtualIPs"))
    interface = _parse_interface(c, _given(spec, "interface", "eth0"))
    buckets = _parse_buckets(c, spec.get("buckets"))
    vmac_mode, xdp_mode = _parse_modes(c, spec.get("vmacMode"), spec.get("xdpMode"))
    rules = _parse_rules(c, _given(spec, "rules", []))
    nodes = _parse_nodes(c, _given(spec, "nodes", []), vips, require_nodes)
    selector = _parse_node_selector(c, spec.get("nodeSelector"))
    seed = _parse_seed(c, spec.get("seed"), name)
    vmac = _parse_virtual_mac(c, spec.get("virtualMAC"), name, vmac_mode)
    heartbeat = _parse_heartbeat(c, spec.get("heartbeat"))
    checkers = _parse_checkers(c, spec.get("checkers"), interface)
    recovery = _parse_recovery(c, spec.get("recovery"))
    handover = _parse_handover(c, spec.get("handover"))
    if c.problems:
        raise FarmSpecError(name, c.problems)
    return Farm(name=name, virtual_ips=vips, interface=interface, buckets=buckets,
                vmac_mode=vmac_mode, xdp_mode=xdp_mode, rules=rules, nodes=nodes,
                node_selector=selector, seed=seed, virtual_mac=vmac, heartbeat=heartbeat,
                checkers=checkers, recovery=recovery, handover=handover)


# -- the sections of a Farm document, in the order their problems are reported -----------------

def _parse_header(c: _Collector, doc: Mapping) -> str:
    """metadata.name, apiVersion and kind; the farm name, or "?" if it has none."""
    meta = doc.get("metadata") or {}
    name = meta.get("name") if isinstance(meta, Mapping) else None
    if not isinstance(name, str) or not name:
        c.add("metadata.name", name, "every Farm needs a name, e.g. metadata: {name: web}")
        name = "?"
    elif len(name) > 63 or not _NAME_RE.fullmatch(name):
        c.add("metadata.name", name, "must be a DNS label: lower-case letters, digits and '-', "
                                     "at most 63 characters")
    if doc.get("apiVersion") != API_VERSION:
        c.add("apiVersion", doc.get("apiVersion"), f"must be {API_VERSION}")
    if doc.get("kind") != KIND:
        c.add("kind", doc.get("kind"), f"must be {KIND}")
    return name


def _check_known_fields(c: _Collector, spec: Mapping) -> None:
    for key in spec:
        if key not in SPEC_FIELDS:
            c.add(f"spec.{key}", spec[key], f"unknown field; known fields: {', '.join(sorted(SPEC_FIELDS))}")


def _parse_virtual_ips(c: _Collector, raw_vips: Any) -> tuple[IPAddress, ...]:
    vips: list[IPAddress] = []
    if not isinstance(raw_vips, list) or not raw_vips:
        c.add("spec.virtualIPs", raw_vips, "list at least one virtual IP, e.g. [\"203.0.113.10\"]")
        raw_vips = []
    if len(raw_vips) > MAX_VIPS_PER_FARM:
        c.add("spec.virtualIPs", f"{len(raw_vips)} entries", f"at most {MAX_VIPS_PER_FARM} per farm")
    for i, raw in enumerate(raw_vips):
        path = f"spec.virtualIPs[{i}]"
        try:
            ip = parse_ip(raw)
        except ValueError as e:
            c.add(path, raw, str(e))
            continue
        problem = unicast_problem(ip, allow_link_local=False)
        if problem:
            c.add(path, raw, f"a virtual IP must be a unicast address (not multicast, broadcast, "
                             f"loopback, link-local or unspecified); this is {problem}")
            continue
        if ip in vips:
            c.add(path, raw, "listed twice; each virtual IP may appear once")
            continue
        vips.append(ip)
    return tuple(vips)


def _parse_interface(c: _Collector, interface: Any) -> str:
    problem = interface_name_problem(interface)
    if problem:
        c.add("spec.interface", interface, problem)
        return "eth0"
    return interface


def _parse_buckets(c: _Collector, raw: Any) -> int:
    buckets = _int_field(c, "spec.buckets", raw, DEFAULT_BUCKETS, 1, MAX_BUCKETS)
    if buckets & (buckets - 1):
        lower = 1 << (buckets.bit_length() - 1)
        c.add("spec.buckets", buckets, f"must be a power of two; try {lower} or {lower * 2}")
        return DEFAULT_BUCKETS
    return buckets


def _parse_modes(c: _Collector, vmac_mode: Any, xdp_mode: Any) -> tuple[str, str]:
    return (_choice(c, "spec.vmacMode", vmac_mode, "unicast-flood", VMAC_MODES),
            _choice(c, "spec.xdpMode", xdp_mode, "auto", XDP_MODES))


def _parse_rules(c: _Collector, raw_rules: Any) -> tuple[Rule, ...]:
    rules: list[Rule] = []
    if not isinstance(raw_rules, list):
        c.add("spec.rules", raw_rules, "must be a list of {protocol, ports, affinity}")
        raw_rules = []
    if len(raw_rules) > MAX_RULES:
        c.add("spec.rules", f"{len(raw_rules)} rules", f"at most {MAX_RULES} rules per farm")
        raw_rules = raw_rules[:MAX_RULES]
    for i, raw in enumerate(raw_rules):
        rule = _parse_rule(c, f"spec.rules[{i}]", raw)
        if rule is not None:
            rules.append(rule)
    return tuple(rules)


def _entry(c: _Collector, path: str, raw: Any, what: str, keys: tuple[str, ...], example: str) -> bool:
    """A list entry must be a mapping of known keys; False (reported) when it is no mapping at all."""
    if not isinstance(raw, Mapping):
        c.add(path, raw, f"each {what} is a mapping {example}")
        return False
    for key in raw:
        if key not in keys:
            c.add(f"{path}.{key}", raw[key], f"unknown field; a {what} has {', '.join(keys[:-1])} and {keys[-1]}")
    return True


def _parse_rule(c: _Collector, path: str, raw: Any) -> Rule | None:
    if not _entry(c, path, raw, "rule", ("protocol", "ports", "affinity"),
                  "{protocol: TCP, ports: \"80\", affinity: ClientIP}"):
        return None
    proto = raw.get("protocol")
    if proto not in PROTOCOLS:
        c.add(f"{path}.protocol", proto, "must be TCP or UDP")
    try:
        ports = parse_ports(raw.get("ports"))
    except ValueError as e:
        c.add(f"{path}.ports", raw.get("ports"), str(e))
        ports = None
    affinity = _given(raw, "affinity", "ClientIP")
    if affinity not in AFFINITIES:
        c.add(f"{path}.affinity", affinity, "must be ClientIP (session affinity) or "
                                             "ClientIPPort (spread per connection)")
    if proto in PROTOCOLS and ports is not None and affinity in AFFINITIES:
        return Rule(proto, ports, affinity)
    return None


def _parse_nodes(c: _Collector, raw_nodes: Any, vips: tuple[IPAddress, ...],
                 require_nodes: bool) -> tuple[NodeSpec, ...]:
    nodes: list[NodeSpec] = []
    if not isinstance(raw_nodes, list):
        c.add("spec.nodes", raw_nodes, "must be a list of {name, address, weight, drain}")
        raw_nodes = []
    if len(raw_nodes) > MAX_NODES:
        c.add("spec.nodes", f"{len(raw_nodes)} nodes",
              f"at most {MAX_NODES} nodes: heartbeats are all-to-all and each carries every member's row; "
              f"split the members into several farms")
    seen_names: set[str] = set()
    seen_addrs: set[IPAddress] = set()
    for i, raw in enumerate(raw_nodes):
        node = _parse_node(c, f"spec.nodes[{i}]", raw, vips, seen_names, seen_addrs)
        if node is not None:
            nodes.append(node)
    if require_nodes and not raw_nodes:
        c.add("spec.nodes", raw_nodes, "standalone mode needs the member list, e.g. "
                                       "nodes: [{name: n1, address: 198.51.100.1}]")
    return tuple(nodes)


def _parse_node(c: _Collector, path: str, raw: Any, vips: tuple[IPAddress, ...],
                seen_names: set[str], seen_addrs: set[IPAddress]) -> NodeSpec | None:
    """One spec.nodes entry; seen_names and seen_addrs collect what earlier entries took."""
    if not _entry(c, path, raw, "node", ("name", "address", "weight", "drain"),
                  "{name: n1, address: 198.51.100.1, weight: 1}"):
        return None
    nname = raw.get("name")
    problem = node_name_problem(nname)
    if problem:
        c.add(f"{path}.name", nname, problem)
        return None
    if nname in seen_names:
        c.add(f"{path}.name", nname, "listed twice; node names must be unique")
        return None
    seen_names.add(nname)
    raw_addr = raw.get("address")
    try:
        addr = parse_ip(raw_addr)
    except NotAnIPAddress:
        c.add(f"{path}.address", raw_addr, "must be the node's IP address on the farm "
                                           "network, e.g. 198.51.100.1")
        return None
    except ValueError as e:
        c.add(f"{path}.address", raw_addr, str(e))
        return None
    problem = unicast_problem(addr)
    if problem:
        c.add(f"{path}.address", raw_addr, "a node address must be a unicast address the node owns "
                                           f"(not unspecified, broadcast, multicast or loopback); "
                                           f"this is {problem}")
        return None
    if addr in seen_addrs:
        c.add(f"{path}.address", str(addr), "two nodes share this address")
        return None
    seen_addrs.add(addr)
    if addr in vips:
        c.add(f"{path}.address", str(addr), "a node address cannot also be a virtual IP")
    weight = _int_field(c, f"{path}.weight", raw.get("weight"), 1, 0, 1000)
    drain = _given(raw, "drain", False)
    if not isinstance(drain, bool):
        c.add(f"{path}.drain", drain, f"must be true or false (a YAML boolean, unquoted); true drains node "
                                      f"{nname}: it takes no new flows and keeps its established ones")
        drain = False
    return NodeSpec(nname, addr, weight, drain)


def _parse_node_selector(c: _Collector, raw: Any) -> dict[str, str]:
    selector = {} if raw is None else raw
    if not isinstance(selector, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in selector.items()):
        c.add("spec.nodeSelector", selector, "must map label names to string values")
        return {}
    return dict(selector)


def _parse_seed(c: _Collector, raw: Any, farm_name: str) -> int:
    seed = _int_field(c, "spec.seed", raw, 0, 0, 2**32 - 1)
    return default_seed(farm_name) if raw is None else seed


def _parse_virtual_mac(c: _Collector, raw: Any, farm_name: str, vmac_mode: str) -> str:
    if raw is None:
        return default_virtual_mac(farm_name, vmac_mode)
    try:
        mac = parse_mac(raw)
    except ValueError as e:
        c.add("spec.virtualMAC", raw, str(e))
        return default_virtual_mac(farm_name, vmac_mode)
    vmac = format_mac(mac)
    if vmac_mode == "multicast" and not is_group_mac(mac):
        c.add("spec.virtualMAC", vmac, "multicast mode needs a group MAC (first octet odd, e.g. 03:...)")
    if vmac_mode == "unicast-flood" and is_group_mac(mac):
        c.add("spec.virtualMAC", vmac, "unicast-flood mode needs a unicast MAC (first octet even, e.g. 02:...)")
    return vmac


_HEARTBEAT_KEYS = ("port", "intervalMs", "timeoutMs", "keyFile", "witness")


def _parse_heartbeat(c: _Collector, raw: Any) -> Heartbeat:
    hb_raw = {} if raw is None else raw
    if not isinstance(hb_raw, Mapping):
        c.add("spec.heartbeat", hb_raw, "must be a mapping {port, intervalMs, timeoutMs, keyFile, witness}")
        hb_raw = {}
    for key in hb_raw:
        if key not in _HEARTBEAT_KEYS:
            c.add(f"spec.heartbeat.{key}", hb_raw[key],
                  "unknown field; heartbeat has port, intervalMs, timeoutMs, keyFile and witness")
    port = _int_field(c, "spec.heartbeat.port", hb_raw.get("port"), DEFAULT_HEARTBEAT_PORT, 1, 65535)
    interval = _int_field(c, "spec.heartbeat.intervalMs", hb_raw.get("intervalMs"),
                          DEFAULT_HEARTBEAT_INTERVAL_MS, 10, 60000)
    timeout = _int_field(c, "spec.heartbeat.timeoutMs", hb_raw.get("timeoutMs"),
                         DEFAULT_HEARTBEAT_TIMEOUT_MS, 30, 600000)
    if timeout < 3 * interval:
        c.add("spec.heartbeat.timeoutMs", timeout,
              f"must be at least 3 x intervalMs ({3 * interval}) so one lost heartbeat is not a failure")
    key_file = _given(hb_raw, "keyFile", None)
    if key_file is None:
        key_file = ""
    elif not isinstance(key_file, str) or not key_file.startswith("/") or "\x00" in key_file \
            or len(key_file) > MAX_COMMAND_ARG_CHARS:
        c.add("spec.heartbeat.keyFile", key_file,
              f"must be the absolute path of the heartbeat key file (at most {MAX_COMMAND_ARG_CHARS} "
              f"characters, no NUL), e.g. /etc/vipfarm/heartbeat.key; `vipfarm keygen` writes one")
        key_file = ""
    witness_raw = _given(hb_raw, "witness", None)
    witness = ""
    if witness_raw is not None:
        fix = ("must be the IPv4 address of a host on the farm's segment that answers ARP (a router, a third "
               "machine), e.g. 198.51.100.254; it breaks the tie of a 2-node farm")
        try:
            ip = parse_ip(witness_raw) if isinstance(witness_raw, str) else None
        except ValueError:
            ip = None
        if ip is None or ip.version != 4:
            c.add("spec.heartbeat.witness", witness_raw, fix)
        elif unicast_problem(ip):
            c.add("spec.heartbeat.witness", witness_raw, f"is {unicast_problem(ip)}; it {fix}")
        else:
            witness = str(ip)
    return Heartbeat(port, interval, timeout, key_file, witness)


# -- spec.checkers and spec.recovery ------------------------------------------------------------

_CHECKER_COMMON = ("name", "type", "intervalMs", "timeoutMs", "failureThreshold", "successThreshold")
# field -> the checker types that take it
_CHECKER_TYPE_FIELDS = {"port": ("tcp", "http"), "host": ("tcp", "http"), "path": ("http",),
                        "expectStatus": ("http",), "command": ("exec",), "interface": ("interface",)}
_CHECKER_KEYS = _CHECKER_COMMON + tuple(_CHECKER_TYPE_FIELDS)
_HTTP_PATH_RE = re.compile(r"/[!-~]*")


def _types_text(types: tuple[str, ...]) -> str:
    return " and ".join(f"{t} checkers" for t in types)


def _parse_command(c: _Collector, path: str, raw: Any, example: str) -> tuple[str, ...]:
    """A command line: a non-empty list of strings (no NUL), the first non-empty; () if bad."""
    why = (f"must be a non-empty list of at most {MAX_COMMAND_ARGS} strings (the program and its "
           f"arguments, no shell), e.g. {example}")
    if not isinstance(raw, list) or not raw or len(raw) > MAX_COMMAND_ARGS:
        c.add(path, raw, why)
        return ()
    ok = True
    for i, arg in enumerate(raw):
        if not isinstance(arg, str) or "\x00" in arg or len(arg) > MAX_COMMAND_ARG_CHARS:
            c.add(f"{path}[{i}]", arg, f"each argument is a string of at most {MAX_COMMAND_ARG_CHARS} "
                                      f"characters without NUL")
            ok = False
    if ok and not raw[0]:
        c.add(f"{path}[0]", raw[0], f"the program to run cannot be empty; {why}")
        ok = False
    return tuple(raw) if ok else ()


def _parse_checkers(c: _Collector, raw: Any, farm_interface: str) -> tuple[Checker, ...]:
    raw_list = [] if raw is None else raw
    if not isinstance(raw_list, list):
        c.add("spec.checkers", raw_list, "must be a list of checkers, e.g. [{name: web, type: tcp, port: 80}]")
        return ()
    if len(raw_list) > MAX_CHECKERS:
        c.add("spec.checkers", f"{len(raw_list)} checkers", f"at most {MAX_CHECKERS} checkers per farm")
        raw_list = raw_list[:MAX_CHECKERS]
    out: list[Checker] = []
    seen: set[str] = set()
    for i, item in enumerate(raw_list):
        checker = _parse_checker(c, f"spec.checkers[{i}]", item, farm_interface, seen)
        if checker is not None:
            out.append(checker)
    return tuple(out)


def _parse_checker(c: _Collector, path: str, raw: Any, farm_interface: str, seen: set[str]) -> Checker | None:
    if not _entry(c, path, raw, "checker", _CHECKER_KEYS, "{name: web, type: tcp, port: 80}"):
        return None
    before = len(c.problems)
    name = raw.get("name")
    if not isinstance(name, str) or len(name) > 63 or not _LABEL_RE.fullmatch(name):
        c.add(f"{path}.name", name, "every checker needs a name that is a DNS-1123 label: lower-case "
                                    "letters, digits and '-', at most 63 characters, e.g. web")
    elif name in seen:
        c.add(f"{path}.name", name, "listed twice; checker names must be unique")
    else:
        seen.add(name)
    ctype = raw.get("type")
    if ctype not in CHECKER_TYPES:
        c.add(f"{path}.type", ctype, f"every checker needs a type, one of {', '.join(CHECKER_TYPES)}")
    for key, types in _CHECKER_TYPE_FIELDS.items():
        if raw.get(key) is not None and ctype in CHECKER_TYPES and ctype not in types:
            c.add(f"{path}.{key}", raw[key], f"{key} does not apply to a {ctype} checker; only "
                                             f"{_types_text(types)} take {key}; remove it")
    fields: dict[str, Any] = {}
    if ctype in ("tcp", "http"):
        if raw.get("port") is None:
            c.add(f"{path}.port", None, f"a {ctype} checker needs the port to probe (1-65535), e.g. port: 80")
        fields["port"] = _int_field(c, f"{path}.port", raw.get("port"), 0, 1, 65535)
        host = _given(raw, "host", "127.0.0.1")
        try:
            fields["host"] = str(parse_ip(host))
        except ValueError as e:
            c.add(f"{path}.host", host, f"must be the IP address to probe, e.g. 127.0.0.1 ({e})")
    if ctype == "http":
        hpath = _given(raw, "path", "/")
        if not isinstance(hpath, str) or len(hpath) > MAX_PATH_CHARS or not _HTTP_PATH_RE.fullmatch(hpath):
            c.add(f"{path}.path", hpath, f"must be an HTTP path that starts with '/', of printable ASCII "
                                         f"without spaces, at most {MAX_PATH_CHARS} characters, e.g. /healthz")
        else:
            fields["path"] = hpath
        fields["expect_status"] = _parse_expect_status(c, f"{path}.expectStatus", _given(raw, "expectStatus", [200]))
    if ctype == "exec":
        if raw.get("command") is None:
            c.add(f"{path}.command", None, "an exec checker needs the command to run, judged by its exit code, "
                                           "e.g. command: [\"/usr/local/bin/check-app\"]")
        else:
            fields["command"] = _parse_command(c, f"{path}.command", raw["command"], "[\"/usr/local/bin/check-app\"]")
    if ctype == "interface":
        iface = _given(raw, "interface", farm_interface)
        problem = interface_name_problem(iface)
        if problem:
            c.add(f"{path}.interface", iface, problem)
        else:
            fields["interface"] = iface
    interval = _int_field(c, f"{path}.intervalMs", raw.get("intervalMs"), 1000, 50, 3600000)
    timeout = _int_field(c, f"{path}.timeoutMs", raw.get("timeoutMs"), 500, 10, 3600000)
    if timeout > interval:
        c.add(f"{path}.timeoutMs", timeout, f"must be at most intervalMs ({interval}) so probes of one checker "
                                            f"never overlap; lower timeoutMs or raise intervalMs")
    failures = _int_field(c, f"{path}.failureThreshold", raw.get("failureThreshold"), 3, 1, 100)
    successes = _int_field(c, f"{path}.successThreshold", raw.get("successThreshold"), 2, 1, 100)
    if len(c.problems) > before:
        return None
    return Checker(name=name, type=ctype, interval_ms=interval, timeout_ms=timeout,
                   failure_threshold=failures, success_threshold=successes, **fields)


def _parse_expect_status(c: _Collector, path: str, raw: Any) -> tuple[int, ...]:
    why = "must be a non-empty list of at most 16 HTTP status codes (100-599), e.g. [200, 204]"
    if not isinstance(raw, list) or not raw or len(raw) > 16:
        c.add(path, raw, why)
        return ()
    for i, code in enumerate(raw):
        if code is None:    # a null list item is a value, not an absent field
            c.add(f"{path}[{i}]", code, "each status code is an integer between 100 and 599")
        else:
            _int_field(c, f"{path}[{i}]", code, 200, 100, 599)
    return tuple(raw)


_RECOVERY_KEYS = ("command", "timeoutSeconds", "maxRestarts", "windowSeconds")


def _parse_recovery(c: _Collector, raw: Any) -> Recovery | None:
    if raw is None:
        return None
    if not isinstance(raw, Mapping):
        c.add("spec.recovery", raw, "must be a mapping {command, timeoutSeconds, maxRestarts, windowSeconds}, "
                                    "e.g. {command: [systemctl, restart, nginx]}")
        return None
    before = len(c.problems)
    for key in raw:
        if key not in _RECOVERY_KEYS:
            c.add(f"spec.recovery.{key}", raw[key],
                  "unknown field; recovery has command, timeoutSeconds, maxRestarts and windowSeconds")
    example = "[systemctl, restart, nginx]"
    if raw.get("command") is None:
        c.add("spec.recovery.command", None, f"recovery needs the command to run when a checker fails, "
                                             f"e.g. command: {example}")
        command: tuple[str, ...] = ()
    else:
        command = _parse_command(c, "spec.recovery.command", raw["command"], example)
    timeout = _int_field(c, "spec.recovery.timeoutSeconds", raw.get("timeoutSeconds"), 30, 1, 3600)
    restarts = _int_field(c, "spec.recovery.maxRestarts", raw.get("maxRestarts"), 3, 0, 1000)
    window = _int_field(c, "spec.recovery.windowSeconds", raw.get("windowSeconds"), 86400, 1, 31536000)
    if len(c.problems) > before:
        return None
    return Recovery(command, timeout, restarts, window)


_HANDOVER_KEYS = ("drainTimeoutSeconds", "udpIdleSeconds")


def _parse_handover(c: _Collector, raw: Any) -> Handover:
    if raw is None:
        return Handover()
    if not isinstance(raw, Mapping):
        c.add("spec.handover", raw, "must be a mapping {drainTimeoutSeconds, udpIdleSeconds}, "
                                    f"e.g. {{drainTimeoutSeconds: {DEFAULT_DRAIN_TIMEOUT_SECONDS}}}")
        return Handover()
    for key in raw:
        if key not in _HANDOVER_KEYS:
            c.add(f"spec.handover.{key}", raw[key], "unknown field; handover has drainTimeoutSeconds and udpIdleSeconds")
    drain = _int_field(c, "spec.handover.drainTimeoutSeconds", raw.get("drainTimeoutSeconds"),
                       DEFAULT_DRAIN_TIMEOUT_SECONDS, 0, MAX_DRAIN_TIMEOUT_SECONDS)
    idle = _int_field(c, "spec.handover.udpIdleSeconds", raw.get("udpIdleSeconds"),
                      DEFAULT_UDP_IDLE_SECONDS, 1, MAX_UDP_IDLE_SECONDS)
    return Handover(drain, idle)


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
