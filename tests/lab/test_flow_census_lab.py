"""Lab tier: the flow census reads real sockets of a network namespace through sock_diag.

One namespace of this test's own (vfcensus-<random>, removed on every exit) holds the farm's
VIPs (203.0.113.10, 2001:db8::10), a node address (198.51.100.1) and client addresses
(198.51.100.100.., 2001:db8:1::100..) on its loopback, so real TCP connections run inside it
and nothing touches the root namespace. Servers listen on the VIPs (port 80, ClientIPPort) and
on a dual-stack [::]:8080 (ClientIP; IPv4 peers show as ::ffff:...), plus one on the node
address, which is no VIP. The census must count each accepted connection in the bucket the
hash reference gives its client, count nothing else (a server-side TIME_WAIT neither), and
stop counting connections that are gone.
"""
from __future__ import annotations

import collections
import ctypes
import ipaddress
import os
import socket
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest
from pyroute2 import IPRoute, netns

from nodeagent.flow_census import TCP_TIME_WAIT, flow_census, tcp_sockets
from nodeagent.lab.loopback import add_loopback_addresses
from vipfarm.hashing import bucket_of
from vipfarm.spec import parse_farm

pytestmark = pytest.mark.lab
CLONE_NEWNET = 0x40000000
BUCKETS, SEED = 64, 777
FARM = parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "census"},
                   "spec": {"virtualIPs": ["203.0.113.10", "2001:db8::10"], "buckets": BUCKETS, "seed": SEED,
                            "rules": [{"protocol": "TCP", "ports": "80", "affinity": "ClientIPPort"},
                                      {"protocol": "TCP", "ports": "8080", "affinity": "ClientIP"}]}})
CLIENTS4 = [f"198.51.100.{100 + i}" for i in range(12)]
CLIENTS6 = [f"2001:db8:1::{0x100 + i:x}" for i in range(6)]
NODE_ADDR = "198.51.100.1"


def _enter(name: str) -> None:
    """setns() the calling thread (only it) into /run/netns/<name>."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            e = ctypes.get_errno()
            raise OSError(e, f"setns(/run/netns/{name}): {os.strerror(e)}")
    finally:
        os.close(fd)


class CensusNetns:
    """The namespace, and one worker thread inside it that makes every socket and runs the census."""

    def __init__(self):
        self.name = f"vfcensus-{uuid.uuid4().hex[:8]}"
        self.sockets: list[socket.socket] = []
        netns.create(self.name)
        try:
            with IPRoute(netns=self.name) as ip:
                add_loopback_addresses(ip, ["203.0.113.10", NODE_ADDR] + CLIENTS4, ["2001:db8::10"] + CLIENTS6)
            self.worker = ThreadPoolExecutor(1, thread_name_prefix=self.name, initializer=_enter,
                                             initargs=(self.name,))
        except BaseException:
            netns.remove(self.name)
            raise

    def run(self, fn, *args):
        return self.worker.submit(fn, *args).result(timeout=30)

    def listen(self, family: int, addr: str, port: int, dual_stack: bool = False) -> socket.socket:
        def make():
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
            s.bind((addr, port))
            s.listen(128)
            return s
        s = self.run(make)
        self.sockets.append(s)
        return s

    def connect(self, listener: socket.socket, family: int, src: str, dst: str, port: int):
        """(client socket, accepted server socket)."""
        def make():
            c = socket.socket(family, socket.SOCK_STREAM)
            c.bind((src, 0))
            c.settimeout(5)
            c.connect((dst, port))
            return c
        c = self.run(make)
        listener.settimeout(5)
        srv, _ = listener.accept()
        self.sockets += [c, srv]
        return c, srv

    def census(self, buckets=range(BUCKETS)) -> dict[int, int]:
        return self.run(flow_census, FARM, list(buckets))

    def close(self) -> None:
        for s in self.sockets:
            s.close()
        try:
            self.worker.shutdown(wait=True)
        finally:
            netns.remove(self.name)


@pytest.fixture
def ns():
    if os.geteuid() != 0:
        pytest.fail("the lab tier needs root (network namespaces)", pytrace=False)
    n = CensusNetns()
    try:
        yield n
    finally:
        n.close()


def wait_for(what: str, fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value[0]:
            return value[1]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not reached in {timeout} s; last seen: {value[1]}")
        time.sleep(0.05)


def expected_bucket(client: socket.socket, vip_port: int) -> int:
    """The bucket of the hash reference for this client socket's (address, port)."""
    addr, port = client.getsockname()[:2]
    return bucket_of(str(ipaddress.ip_address(addr)), port if vip_port == 80 else None, SEED, BUCKETS)


def test_the_census_counts_real_connections_in_the_buckets_of_the_hash_reference(ns):
    web4 = ns.listen(socket.AF_INET, "203.0.113.10", 80)
    web6 = ns.listen(socket.AF_INET6, "2001:db8::10", 80)
    dual = ns.listen(socket.AF_INET6, "::", 8080, dual_stack=True)
    node = ns.listen(socket.AF_INET, NODE_ADDR, 80)
    conns = []        # (client, server, bucket)
    for i, src in enumerate(CLIENTS4):
        for _ in range(2):                                       # two connections per client: two ports
            c, s = ns.connect(web4, socket.AF_INET, src, "203.0.113.10", 80)
            conns.append((c, s, expected_bucket(c, 80)))
        c, s = ns.connect(dual, socket.AF_INET, src, "203.0.113.10", 8080)      # ::ffff:... on the server
        conns.append((c, s, expected_bucket(c, 8080)))
    for src in CLIENTS6:
        c, s = ns.connect(web6, socket.AF_INET6, src, "2001:db8::10", 80)
        conns.append((c, s, expected_bucket(c, 80)))
    for src in CLIENTS4[:4]:
        ns.connect(node, socket.AF_INET, src, NODE_ADDR, 80)     # not a VIP: never counted
    assert any(s.family == socket.AF_INET6 and s.getsockname()[0].startswith("::ffff:") for _, s, _ in conns)

    want = collections.Counter(b for _, _, b in conns)
    got = ns.census()
    assert set(got) == set(range(BUCKETS))
    assert {b: n for b, n in got.items() if n} == dict(want), "census against the hash reference"
    some = sorted(want)[:3] + [b for b in range(BUCKETS) if b not in want][:2]
    assert ns.census(some) == {b: want.get(b, 0) for b in some}

    # Client closes first: the server socket goes CLOSE_WAIT, then LAST_ACK when it closes, then
    # away; the client's TIME_WAIT is on a client address, not a VIP. Those flows leave the census.
    gone, kept = conns[::2], conns[1::2]
    for c, s, _ in gone:
        c.close()
    for c, s, _ in gone:
        s.close()
    left = collections.Counter(b for _, _, b in kept)
    final = wait_for("the census without the closed connections",
                     lambda: (lambda g: ({b: n for b, n in g.items() if n} == dict(left), g))(ns.census()))
    assert sum(final.values()) == len(kept)

    # Server closes first: its socket waits in TIME_WAIT, over on both ends, and no longer a
    # flow of its bucket (a drain does not wait 60 s for it).
    c, s, b = kept[0]
    s.close()
    wait_for("the server side FIN_WAIT2 -> the client side CLOSE_WAIT", lambda: (c.recv(1) == b"", None))
    c.close()
    tw = wait_for("a server-side TIME_WAIT socket", lambda: (lambda t: (bool(t), t))(
        [t for t in ns.run(lambda: tcp_sockets(frozenset({TCP_TIME_WAIT})))
         if t.state == TCP_TIME_WAIT and str(t.local) == "203.0.113.10"]))
    assert len(tw) == 1 and ns.census([b]) == {b: left[b] - 1}


def test_the_census_of_an_empty_namespace_is_all_zero(ns):
    ns.listen(socket.AF_INET, "203.0.113.10", 80)            # a listener is no flow
    assert ns.census() == {b: 0 for b in range(BUCKETS)}
