"""Real TCP flows to a VIP in a network namespace: what the handover rules look up.

bpf_skc_lookup_tcp under BPF_PROG_TEST_RUN searches the namespace of the calling thread; the
BPF tier (tests/bpf/test_handover.py) and bench/filter_cost.py build these sockets on a
NetnsThread (tests/support/netns_thread.py) and run the filter from the same thread. Addresses
from the lab ranges only: VIPs 203.0.113.10 and 2001:db8::10, clients 198.51.100.7 and
2001:db8:1::7, all on the namespace's lo.
"""
from __future__ import annotations

import ipaddress
import socket
import time

from pyroute2 import IPRoute

from nodeagent.bpf_consts import FAMILY_V4, FAMILY_V6
from nodeagent.lab.loopback import add_loopback_addresses
from tests.support.filter_model import TCP_ESTABLISHED, TCP_TIME_WAIT, SocketQuery

VIP4, VIP6 = "203.0.113.10", "2001:db8::10"
CLIENT4, CLIENT6 = "198.51.100.7", "2001:db8:1::7"


def wait_for(condition, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def proc_tcp_states() -> dict[tuple, int]:
    """This thread's namespace's TCP sockets: (family, local, lport, remote, rport) -> state."""
    out = {}
    for family, path, size in ((FAMILY_V4, "/proc/thread-self/net/tcp", 4),
                               (FAMILY_V6, "/proc/thread-self/net/tcp6", 16)):
        with open(path) as f:
            next(f)
            for line in f:
                fields = line.split()
                addrs = []
                for text in fields[1:3]:
                    a, p = text.split(":")
                    raw = b"".join(int(a[i:i + 8], 16).to_bytes(4, "little") for i in range(0, len(a), 8))
                    addrs += [raw[:size], int(p, 16)]
                out[(family, *addrs)] = int(fields[3], 16)
    return out


class RealFlows:
    """A listener on each VIP's port 80, established connections to it from one client address
    per family, and connections the server closed first (TIME_WAIT on the server side).
    Call build() on a thread inside a namespace of the caller's own (NetnsThread.call)."""

    def __init__(self, est4: int, est6: int, tw4: int = 0, tw6: int = 0):
        self.counts = {socket.AF_INET: (est4, tw4), socket.AF_INET6: (est6, tw6)}
        self.open: list[socket.socket] = []
        self.known: dict[SocketQuery, int] = {}     # what the kernel holds, for FilterModel(sockets=lookup)

    def build(self) -> "RealFlows":
        with IPRoute() as ipr:
            add_loopback_addresses(ipr, [VIP4, CLIENT4], [VIP6, CLIENT6])
        for family, vip, client in ((socket.AF_INET, VIP4, CLIENT4), (socket.AF_INET6, VIP6, CLIENT6)):
            n_est, n_tw = self.counts[family]
            lst = socket.socket(family, socket.SOCK_STREAM)
            if family == socket.AF_INET6:
                lst.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            lst.bind((vip, 80))
            lst.listen(64)
            self.open.append(lst)
            fam = FAMILY_V4 if family == socket.AF_INET else FAMILY_V6
            vip_b, client_b = ipaddress.ip_address(vip).packed, ipaddress.ip_address(client).packed
            closing = []
            for i in range(n_est + n_tw):
                c = socket.socket(family, socket.SOCK_STREAM)
                c.bind((client, 0))
                c.connect((vip, 80))
                s, _ = lst.accept()
                query = SocketQuery(fam, client_b, c.getsockname()[1], vip_b, 80)
                if i < n_est:
                    self.open += [c, s]
                    self.known[query] = TCP_ESTABLISHED
                else:
                    s.close()              # the server closes first: its end goes to TIME_WAIT
                    closing.append((c, query))
            for c, query in closing:
                c.close()
                self.known[query] = TCP_TIME_WAIT
        # Wait until the kernel shows every socket in the state the model is told.
        wait_for(lambda: all(proc_tcp_states().get((q.family, q.local, q.dport, q.client, q.sport)) == st
                             for q, st in self.known.items()), 10, "the TIME_WAIT and ESTABLISHED sockets")
        return self

    def close(self) -> None:
        for s in self.open:
            s.close()

    def lookup(self, query: SocketQuery) -> int | None:
        return self.known.get(query)
