"""Lab tier: add_loopback_addresses returns only once every address is usable.

IPv6 local routes come from the kernel's addrconf workqueue; a connect() right after
`ip addr add` may fail with ENETUNREACH on a busy machine (it did, in CI, in the BPF tier's
handover fixture). After the helper returns, every address routes as local and a connection
from each client address to each VIP succeeds at once, in every one of a run of namespaces.
"""
from __future__ import annotations

import socket

import pytest
from pyroute2 import IPRoute

from nodeagent.lab.loopback import RTN_LOCAL, add_loopback_addresses, wait_routed_locally
from tests.support.netns_thread import NetnsThread

pytestmark = pytest.mark.lab
V4, V6 = ["203.0.113.10", "198.51.100.7"], ["2001:db8::10", "2001:db8:1::7"]


def _connect_at_once() -> list[str]:
    with IPRoute() as ipr:
        add_loopback_addresses(ipr, V4, V6)
        types = {a: {r["type"] for r in ipr.route("get", dst=a)} for a in V4 + V6}
    assert all(t == {RTN_LOCAL} for t in types.values()), types
    served = []
    for family, (vip, client) in ((socket.AF_INET, V4), (socket.AF_INET6, V6)):
        with socket.socket(family, socket.SOCK_STREAM) as lst, socket.socket(family, socket.SOCK_STREAM) as c:
            lst.bind((vip, 80))
            lst.listen(1)
            c.bind((client, 0))
            c.settimeout(2)
            c.connect((vip, 80))
            s, peer = lst.accept()
            s.close()
            served.append(peer[0])
    return served


def test_every_address_is_routed_locally_and_connectable_the_moment_the_helper_returns():
    for _ in range(10):
        with NetnsThread(prefix="vflo") as ns:
            assert ns.call(_connect_at_once) == ["198.51.100.7", "2001:db8:1::7"]


def test_an_address_that_never_becomes_local_is_a_timeout_naming_it():
    def wait_for_one_never_added():
        with IPRoute() as ipr:
            add_loopback_addresses(ipr, V4, V6)
            with pytest.raises(TimeoutError, match="2001:db8::99 as a local address"):
                wait_routed_locally(ipr, V4 + ["2001:db8::99"], timeout=0.3)
    with NetnsThread(prefix="vflo") as ns:
        ns.call(wait_for_one_never_added)
