"""Lab tier: the agent's ARP settings are written over rtnetlink, so they work where /proc/sys
is read-only (an unprivileged container). A namespace of our own with a veth pair; a
child process with its own mount namespace whose /proc/sys is remounted read-only sets them."""
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
