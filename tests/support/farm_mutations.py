"""Random mutations of a valid Farm document, for the spec property test and the admission
parity test.

mutate(doc, rng, ...) replaces, deletes or inserts values at random paths of a deep copy of
`doc`. The values are chosen to hit the validator's edges: NUL, non-ASCII, huge and negative
integers, bools, lists, maps, special addresses, names that are nearly right, and values taken
from elsewhere in the document (so duplicates and node-address-equals-VIP cases come up).
Driven by a random.Random, so a hypothesis `st.randoms()` shrinks it and a seeded Random
reproduces it.
"""
from __future__ import annotations

import copy
import random
from typing import Any

VALID_FARM: dict = {
    "apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "web"},
    "spec": {
        "virtualIPs": ["203.0.113.10", "2001:db8::10"],
        "interface": "eth0",
        "buckets": 1024,
        "vmacMode": "unicast-flood",
        "xdpMode": "auto",
        "rules": [{"protocol": "TCP", "ports": "80", "affinity": "ClientIPPort"},
                  {"protocol": "UDP", "ports": "5000-5100", "affinity": "ClientIP"}],
        "nodes": [{"name": "n1", "address": "198.51.100.1", "weight": 1},
                  {"name": "node-2.example.com", "address": "2001:db8::2", "weight": 2, "drain": True}],
        "nodeSelector": {"vipfarm.io/member": "true"},
        "seed": 12345,
        "virtualMAC": "02:00:5e:10:00:01",
        "heartbeat": {"port": 7946, "intervalMs": 100, "timeoutMs": 300, "keyFile": "/etc/vipfarm/heartbeat.key",
                      "witness": "198.51.100.254"},
        "checkers": [
            {"name": "web", "type": "tcp", "port": 80, "host": "127.0.0.1", "intervalMs": 1000, "timeoutMs": 500,
             "failureThreshold": 3, "successThreshold": 2},
            {"name": "health", "type": "http", "port": 8080, "host": "2001:db8::1", "path": "/healthz",
             "expectStatus": [200, 204]},
            {"name": "app", "type": "exec", "command": ["/usr/local/bin/check-app", "--quick"], "timeoutMs": 50,
             "intervalMs": 50},
            {"name": "link", "type": "interface", "interface": "bond0"},
        ],
        "recovery": {"command": ["systemctl", "restart", "nginx"], "timeoutSeconds": 30, "maxRestarts": 3,
                     "windowSeconds": 86400},
        "handover": {"drainTimeoutSeconds": 300, "udpIdleSeconds": 30},
    },
}

# Strings that are nearly valid somewhere, or dangerous anywhere.
NASTY_STRINGS = [
    "", " ", "\x00", "n\x00", "eth\x000", "ü", "üüüüüüüü", "eth\u00e0", "\u00a0", "eth\u2003",
    "\ud800", ".", "..", "../etc", "a/b", "a:b", 'a"b', "a\\b", "eth0\n", "web\n", "N1", "n_1", "-n1", "n1-",
    "a" * 63, "a" * 64, "a" * 254, "x" * 16, "eth0", "bond0.100", "n1", "n1.", "n1..n2",
    "0.0.0.0", "255.255.255.255", "ff02::1", "::", "::1", "127.0.0.1", "224.0.0.5", "169.254.1.1",
    "fe80::1", "fe80::1%eth0", "::ffff:198.51.100.1", "2001:DB8:0::10", "203.0.113.10",
    "203.0.113.300", "198.51.100.1", "198.51.100.2", "2001:db8::2", "203.0.113.255",
    "TCP", "UDP", "SCTP", "ClientIP", "ClientIPPort", "80", "0", "65536", "90-80", "1-65535", "http",
    "multicast", "unicast-flood", "native", "generic", "offload",
    "02:00:5e:10:00:01", "03:00:5e:10:00:01", "02:00:5E:10:00:01", "ff:ff:ff:ff:ff:ff",
    "02:00:5e:10:00:01\n", "02-00-5e-10-00-01", "1024", "true", "null",
    "tcp", "exec", "interface", "/", "/healthz", "healthz", "/a b", "/\u00fc", "/etc/vipfarm/heartbeat.key",
    "etc/key", "web", "app", "lo", "198.51.100.254", "2001:db8::fe", "224.0.0.1",
]
NASTY_SCALARS = [0, 1, -1, 2, 3, 7, 9, 10, 49, 50, 99, 100, 199, 200, 503, 599, 600, 1000, 1001, 1024, 1000.0, 1.5, 2**16, 2**31, 2**32 - 1, 2**32, 2**63, 2**64,
                 -(2**63), True, False, None]
INSERT_KEYS = ["virtualIPs", "interface", "buckets", "vmacMode", "xdpMode", "rules", "nodes", "nodeSelector",
               "seed", "virtualMAC", "heartbeat", "name", "address", "weight", "protocol", "ports", "affinity",
               "port", "intervalMs", "timeoutMs", "replicas", "wieght", "", "\x00", "ü",
               "keyFile", "witness", "checkers", "recovery", "type", "host", "path", "expectStatus", "command",
               "failureThreshold", "successThreshold", "timeoutSeconds", "maxRestarts", "windowSeconds"]


class Opaque:
    """Something no YAML or JSON loader produces (with a repr that survives a deep copy)."""

    def __repr__(self) -> str:
        return "Opaque()"


def nasty_value(rng: random.Random, doc: Any, *, allow_none: bool = True, json_safe: bool = False) -> Any:
    """A value to put somewhere in a Farm document.

    json_safe: only values that survive a JSON round trip to the API server unchanged (no NaN, no
    lone surrogates, no non-string map keys).
    """
    pick = rng.randrange(10)
    if pick < 4:
        choices = [s for s in NASTY_STRINGS if not (json_safe and "\ud800" in s)]
        return rng.choice(choices)
    if pick < 6:
        value = rng.choice(NASTY_SCALARS)
        if value is None and not allow_none:
            return 0
        return value
    if pick == 6:   # a value taken from elsewhere in the document (duplicates, swaps)
        paths = all_paths(doc)
        if paths:
            return copy.deepcopy(get(doc, rng.choice(paths)))
        return "n1"
    if pick == 7:
        return [nasty_value(rng, doc, allow_none=allow_none, json_safe=json_safe) for _ in range(rng.randrange(3))]
    if pick == 8:
        return {rng.choice(INSERT_KEYS): nasty_value(rng, doc, allow_none=allow_none, json_safe=json_safe)
                for _ in range(rng.randrange(3))}
    if json_safe:
        return rng.choice(["x", "\u00fc\u00e9", "203.0.113.11", "2001:db8::11", "n3"])
    return rng.choice([float("nan"), float("inf"), "\ud800", ("tuple",), b"bytes", {1: "int key"}, Opaque()])


def all_paths(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (a tuple of keys and indexes) to a value inside `doc`, the root excluded."""
    out: list[tuple] = []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.append(prefix + (k,))
            out.extend(all_paths(v, prefix + (k,)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.append(prefix + (i,))
            out.extend(all_paths(v, prefix + (i,)))
    return out


def containers(doc: Any, prefix: tuple = ()) -> list[tuple]:
    """Paths of every dict and list inside `doc`, the root included."""
    out: list[tuple] = [prefix] if isinstance(doc, (dict, list)) else []
    if isinstance(doc, dict):
        for k, v in doc.items():
            out.extend(containers(v, prefix + (k,)))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            out.extend(containers(v, prefix + (i,)))
    return out


def get(doc: Any, path: tuple) -> Any:
    for p in path:
        doc = doc[p]
    return doc


def mutate(doc: dict, rng: random.Random, *, max_mutations: int = 4, spec_only: bool = False,
           allow_none: bool = True, json_safe: bool = False) -> dict:
    """A deep copy of `doc` with 1..max_mutations random replacements, deletions and insertions.

    spec_only: touch only spec and metadata.name (what the API server validates with the CRD
    schema rather than as ObjectMeta or routing).
    """
    out = copy.deepcopy(doc)

    def eligible(path: tuple) -> bool:
        return not spec_only or (len(path) >= 1 and path[0] == "spec") or path == ("metadata", "name")

    for _ in range(rng.randint(1, max_mutations)):
        op = rng.randrange(3)
        if op == 0:     # replace
            paths = [p for p in all_paths(out) if eligible(p)]
            if not paths:
                continue
            path = rng.choice(paths)
            get(out, path[:-1])[path[-1]] = nasty_value(rng, out, allow_none=allow_none, json_safe=json_safe)
        elif op == 1:   # delete
            paths = [p for p in all_paths(out) if eligible(p) and p != ("metadata", "name")]
            if not paths:
                continue
            path = rng.choice(paths)
            del get(out, path[:-1])[path[-1]]
        else:           # insert
            places = [p for p in containers(out) if eligible(p + ("x",)) and p != ("metadata",)]
            if not places:
                continue
            place = get(out, rng.choice(places))
            value = nasty_value(rng, out, allow_none=allow_none, json_safe=json_safe)
            if isinstance(place, list):
                place.insert(rng.randint(0, len(place)), value)
            else:
                place[rng.choice(INSERT_KEYS)] = value
    return out
