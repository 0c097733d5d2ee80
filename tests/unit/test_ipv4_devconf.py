import socket
import struct

import pytest

from nodeagent.ipv4_devconf import DEVCONF_INDEX, RTM_SETLINK, setlink_devconf_message


def attrs(data: bytes):
    off, out = 0, []
    while off + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, off)
        out.append((kind & 0x3FFF, data[off + 4:off + length]))
        off += (length + 3) & ~3
    return out


def test_the_message_nests_each_setting_as_a_u32_typed_by_its_devconf_index():
    msg = setlink_devconf_message(7, {"arp_ignore": 1, "arp_announce": 2}, seq=1)
    length, kind, flags, seq, _ = struct.unpack_from("=IHHII", msg)
    assert (length, kind, flags, seq) == (len(msg), RTM_SETLINK, 0x5, 1)
    family, ifindex = struct.unpack_from("=Bx", msg, 16)[0], struct.unpack_from("=i", msg, 20)[0]
    assert (family, ifindex) == (socket.AF_UNSPEC, 7)
    [(kind, spec)] = attrs(msg[32:])
    assert kind == 26                                    # IFLA_AF_SPEC
    [(kind, inet)] = attrs(spec)
    assert kind == socket.AF_INET
    [(kind, conf)] = attrs(inet)
    assert kind == 1                                     # IFLA_INET_CONF
    got = {k: struct.unpack("=I", v)[0] for k, v in attrs(conf)}
    assert got == {DEVCONF_INDEX["arp_ignore"]: 1, DEVCONF_INDEX["arp_announce"]: 2} == {19: 1, 18: 2}


def test_an_unknown_setting_is_refused_naming_it():
    with pytest.raises(ValueError, match="no IPv4 devconf setting named arp_ignor "):
        setlink_devconf_message(1, {"arp_ignor": 1})
