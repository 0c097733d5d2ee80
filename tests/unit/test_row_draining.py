"""Row.flags ROW_DRAINING: a draining member tells its peers in its heartbeat row.

The datagrams are built here byte by byte from the layout in the heartbeat_wire docstring
(as tests/unit/test_heartbeat_wire.py does), so decode is checked against the documented
format, not against encode alone.
"""
from __future__ import annotations

import hashlib
import hmac
import itertools
import struct

import pytest

from vipfarm.heartbeat_keys import Key, Keyring
from vipfarm.heartbeat_wire import (ROW_DRAINING, ROW_FLAGS, ROW_HANDING_OVER, ROW_RELEASED, ROW_HEARS_WITNESS, ROW_WITHDRAWN, Heartbeat, Row,
                                    WireError, decode, encode)

KEY = Key(b"d" * 32)
KEYS = Keyring.of(KEY)
SENDER = 7


def datagram_with_row_flags(flags: int) -> bytes:
    """A one-member heartbeat whose only row carries `flags`, laid out as the docstring says."""
    farm = b"web"
    body = bytes([len(farm)]) + farm + struct.pack(">IQQQ", SENDER, 2, 3, 4) + b"D" * 8
    body += bytes([1]) + struct.pack(">I", SENDER)            # the id table
    body += bytes([0])                                          # no echoes
    body += bytes([1]) + struct.pack(">BQQI", 0, 2, 3, 0) + b"A" * 8 + bytes([flags]) + b"\x01"
    signed = b"VFH1" + bytes([1, 1]) + KEY.key_id + body
    return signed + hmac.new(KEY.secret, signed, hashlib.sha256).digest()


def heartbeat(flags: int) -> Heartbeat:
    row = Row(SENDER, 2, 3, 0, frozenset({SENDER}), b"A" * 8, flags)
    return Heartbeat("web", SENDER, 2, 3, 4, b"D" * 8, (), (row,))


def test_row_draining_is_a_flag_bit_of_its_own():
    assert ROW_DRAINING == 4
    assert ROW_DRAINING & (ROW_WITHDRAWN | ROW_HEARS_WITNESS | ROW_HANDING_OVER | ROW_RELEASED) == 0
    assert ROW_FLAGS == ROW_WITHDRAWN | ROW_HEARS_WITNESS | ROW_DRAINING | ROW_HANDING_OVER | ROW_RELEASED


def test_a_row_flagged_draining_on_the_wire_decodes_as_draining():
    msg = decode(datagram_with_row_flags(ROW_DRAINING), KEYS)
    assert msg.rows[0].flags == ROW_DRAINING


@pytest.mark.parametrize("flags", [sum(c) for n in range(6)
                                   for c in itertools.combinations((ROW_WITHDRAWN, ROW_HEARS_WITNESS, ROW_DRAINING,
                                                                      ROW_HANDING_OVER, ROW_RELEASED), n)])
def test_every_combination_of_the_row_flags_encodes_to_the_documented_bytes_and_back(flags):
    wire = encode(heartbeat(flags), KEY)
    assert wire == datagram_with_row_flags(flags)
    assert decode(wire, KEYS).rows[0].flags == flags


@pytest.mark.parametrize("flags", [0x20, 0x80, ROW_DRAINING | 0x40, ROW_RELEASED | 0x20])
def test_an_undefined_row_flag_is_refused_by_decode_as_malformed(flags):
    with pytest.raises(WireError) as info:
        decode(datagram_with_row_flags(flags), KEYS)
    assert info.value.reason == "malformed" and f"{flags:#04x}" in info.value.detail


@pytest.mark.parametrize("flags", [0x20, -1, 256, True, "4"])
def test_encode_refuses_undefined_row_flags_naming_the_row_and_the_known_flags(flags):
    with pytest.raises(ValueError) as info:
        encode(heartbeat(flags), KEY)
    text = str(info.value)
    assert f"row of node {SENDER}" in text and "ROW_DRAINING" in text and repr(flags) in text
