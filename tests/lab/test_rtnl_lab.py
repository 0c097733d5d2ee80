"""Lab tier: the agent's own rtnetlink calls (nodeagent/rtnl.py), in a namespace of our own
with a veth pair. The ARP settings are written over rtnetlink, so they work where /proc/sys is
read-only (an unprivileged container): a child with its own mount namespace whose /proc/sys is
remounted read-only sets them. An interface checker's link read sees down, up and missing."""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest
from pyroute2 import IPRoute, netns

pytestmark = pytest.mark.lab

CHILD = r"""
import sys
from nodeagent import netconfig
try:
    open("/proc/sys/net/ipv4/conf/vfd0/arp_ignore", "w").write("1")
    print("proc-writable")
except OSError as e:
    print("proc-refused", e.errno)
before = netconfig.set_arp_sysctls("vfd0")
print("before", before["arp_ignore"], before["arp_announce"])
print("after", netconfig.read_sysctl("vfd0", "arp_ignore"), netconfig.read_sysctl("vfd0", "arp_announce"))
netconfig.restore_sysctls("vfd0", before)
print("restored", netconfig.read_sysctl("vfd0", "arp_ignore"), netconfig.read_sysctl("vfd0", "arp_announce"))
try:
    netconfig.write_sysctl("nosuch0", "arp_ignore", "1")
except netconfig.InterfaceError as e:
    print("error", e)
"""


@pytest.fixture
def ns():
    name = f"vfdc-{uuid.uuid4().hex[:8]}"
    netns.create(name)
    try:
        with IPRoute(netns=name) as ipr:
            ipr.link("add", ifname="vfd0", kind="veth", peer={"ifname": "vfd1"})
        yield name
    finally:
        netns.remove(name)


def test_arp_settings_are_set_and_restored_with_proc_sys_read_only(ns):
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    script = ("mount -o remount,bind,ro /proc/sys /proc/sys 2>/dev/null || mount --bind -o ro /proc/sys /proc/sys; "
              f"exec {sys.executable} -c \"$CHILD\"")
    env = {**os.environ, "CHILD": CHILD, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}
    out = subprocess.run(["ip", "netns", "exec", ns, "unshare", "-m", "--propagation", "private", "sh", "-c", script],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "proc-refused 30", lines          # EROFS: what an unprivileged container sees
    assert lines[1:4] == ["before 0 0", "after 1 2", "restored 0 0"], lines
    assert lines[4].startswith("error cannot set net.ipv4.conf.nosuch0.arp_ignore=1") and "CAP_NET_ADMIN" in lines[4]


def test_link_state_reads_operstate_and_carrier_over_rtnetlink(ns):
    code = ("import json; from nodeagent.rtnl import link_state; "
            "print(json.dumps([link_state('vfd0'), link_state('lo'), link_state('nosuch0')]))")
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [repo, os.environ.get("PYTHONPATH")]))}

    def states():
        out = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, env=env)
        assert out.returncode == 0, out.stderr
        import json
        return json.loads(out.stdout)
    down, lo, missing = states()
    assert down == {"operstate": "down", "carrier": 0} and lo is not None and missing is None
    with IPRoute(netns=ns) as ipr:
        for name in ("lo", "vfd1", "vfd0"):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
    import time
    deadline = time.monotonic() + 10
    while states()[0] != {"operstate": "up", "carrier": 1}:
        assert time.monotonic() < deadline, states()
        time.sleep(0.1)
    assert states()[1] == {"operstate": "unknown", "carrier": 1}
