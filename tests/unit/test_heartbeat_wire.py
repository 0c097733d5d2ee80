"""The heartbeat wire format: every kind round-trips, only datagrams signed with an accepted key
decode, and no bytes at all make decode raise anything but WireError.

The framing and the body layout are rebuilt here from the module docstring (sign, body_*), not
with the module's own helpers, so a test of a malformed body does not inherit a bug of encode.
"""
from __future__ import annotations

import hashlib
import hmac
import random
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vipfarm.heartbeat_keys import Key, Keyring
from vipfarm.heartbeat_wire import (MAX_CHUNK_DATA, MAX_DATAGRAM, MAX_MEMBERS, MIN_DATAGRAM, REASONS, BaseChunk,
                                    BaseRequest, FlowChunk, FlowRequest, Heartbeat, Row, WireError, decode, digest8,
                                    encode, node_id)

KEY = Key(b"k" * 32)
KEYS = Keyring.of(KEY)
OTHER = Key(b"o" * 32)
# Two secrets whose key ids collide (found by a birthday search over this prefix).
COLLIDING = (Key(b"vipfarm-test-key-collision-0000070701"), Key(b"vipfarm-test-key-collision-0000082269"))
HEADER = 10
U32, U64 = 2**32 - 1, 2**64 - 1


def sign(kind: int, body: bytes, key: Key = KEY, *, magic=b"VFH1", version=1, key_id: bytes | None = None) -> bytes:
    """A datagram with any body at all, framed and signed as the module docstring says."""
    signed = magic + bytes([version, kind]) + (key.key_id if key_id is None else key_id) + body
    return signed + hmac.new(key.secret, signed, hashlib.sha256).digest()


def envelope(farm=b"web", sender=1, boot=2, seq=3, epoch=4, digest=b"D" * 8) -> bytes:
    return bytes([len(farm)]) + farm + struct.pack(">IQQQ", sender, boot, seq, epoch) + digest


def body_heartbeat(ids, echoes, rows, **env) -> bytes:
    """ids: the table; echoes: (index, boot); rows: (index, boot, seq, age, agree, bitmap int)."""
    out = envelope(**env) + bytes([len(ids)]) + b"".join(struct.pack(">I", i) for i in ids)
    out += bytes([len(echoes)]) + b"".join(struct.pack(">BQ", i, b) for i, b in echoes)
    out += bytes([len(rows)])
    for i, boot, seq, age, agree, bits in rows:
        out += struct.pack(">BQQI", i, boot, seq, age) + agree + b"\0" + bits.to_bytes((len(ids) + 7) // 8, "little")
    return out


def body_chunk(index, count, data, size=None, **env) -> bytes:
    return envelope(**env) + struct.pack(">HHH", index, count, len(data) if size is None else size) + data


def members(n: int) -> list[int]:
    return [node_id(f"node-{i}") for i in range(n)]


def full_heartbeat(n: int, farm: str = "f" * 253) -> Heartbeat:
    """The largest heartbeat of an n-member farm: every row, every echo, every value at its top."""
    ids = members(n)
    rows = tuple(Row(i, U64, U64, U32, frozenset(ids), b"\xff" * 8) for i in ids)
    return Heartbeat(farm, ids[0], U64, U64, U64, b"\xff" * 8, tuple((i, U64) for i in ids), rows)


SAMPLE_ROWS = (Row(10, 100, 7, 0, frozenset({10, 20, 30}), b"a" * 8), Row(20, 200, 9, 350, frozenset({20}), b"b" * 8))
SAMPLES = [
    Heartbeat("web", 10, 100, 7, 5, b"d" * 8, ((20, 200), (40, 400)), SAMPLE_ROWS),
    BaseRequest("web", 10, 100, 8, 5, b"d" * 8),
    BaseChunk("web", 10, 100, 9, 5, b"d" * 8, 1, 3, b"0,1,2,0,1,2"),
    FlowRequest("web", 10, 100, 10, 5, b"d" * 8),
    FlowChunk("web", 10, 100, 11, 5, b"d" * 8, 300, 77, 0, 2, b"198.51.100.7 5000 203.0.113.10 53 120\n"),
]


# ---- strategies -----------------------------------------------------------------------------

u32 = st.integers(0, U32)
u64 = st.integers(0, U64)
digests = st.binary(min_size=8, max_size=8)
farms = st.text(min_size=1, max_size=80).filter(lambda s: 1 <= len(s.encode("utf-8")) <= 253)


@st.composite
def heartbeats(draw):
    pool = draw(st.lists(u32, min_size=1, max_size=MAX_MEMBERS, unique=True))
    sender = pool[0]
    others = draw(st.lists(st.sampled_from(pool[1:]), unique=True)) if len(pool) > 1 else []
    row_ids = [sender] + others
    rows = tuple(Row(i, draw(u64), draw(u64), draw(u32), frozenset(draw(st.lists(st.sampled_from(pool)))), draw(digests))
                 for i in row_ids)
    echo_ids = draw(st.lists(st.sampled_from(pool), unique=True))
    return Heartbeat(draw(farms), sender, draw(u64), draw(u64), draw(u64), draw(digests),
                     tuple((i, draw(u64)) for i in echo_ids), rows)


@st.composite
def chunks(draw):
    count = draw(st.integers(1, 0xFFFF))
    data = draw(st.binary(max_size=MAX_CHUNK_DATA).map(lambda b: bytes(x & 0x7F for x in b)))
    return BaseChunk(draw(farms), draw(u32), draw(u64), draw(u64), draw(u64), draw(digests),
                     draw(st.integers(0, count - 1)), count, data)


@st.composite
def flow_chunks(draw):
    c = draw(chunks())
    return FlowChunk(c.farm, c.sender_id, c.boot, c.seq, c.base_epoch, c.base_digest, draw(u64), draw(u64), c.index, c.count, c.data)


requests = st.builds(BaseRequest, farms, u32, u64, u64, u64, digests)
flow_requests = st.builds(FlowRequest, farms, u32, u64, u64, u64, digests)
messages = st.one_of(heartbeats(), requests, chunks(), flow_requests, flow_chunks())


def refused(data, keys=KEYS) -> str:
    """The reason decode refuses `data` with; fails the test on any other outcome."""
    try:
        msg = decode(data, keys)
    except WireError as e:
        assert e.reason in REASONS
        return e.reason
    pytest.fail(f"decode accepted {data!r} as {msg!r}")


def decodes_canonically_or_is_refused(data) -> str | None:
    """decode either refuses with WireError (returns its reason) or gives a message that
    encodes back to exactly `data` (returns None). Anything else fails the test."""
    try:
        msg = decode(data, KEYS)
    except WireError as e:
        return e.reason
    assert encode(msg, KEY) == data, f"{data!r} decoded to {msg!r}, which does not encode back to it"
    return None


# ---- round trip and layout ------------------------------------------------------------------

@settings(max_examples=300, deadline=None)
@given(messages)
def test_every_kind_of_message_round_trips(msg):
    data = encode(msg, KEY)
    assert len(data) <= MAX_DATAGRAM
    assert decode(data, KEYS) == msg


def test_the_layout_is_the_one_the_module_docstring_describes():
    hb, req, chunk, freq, fchunk = SAMPLES
    ids = [10, 20, 30, 40]
    expected = body_heartbeat(ids, [(1, 200), (3, 400)], [(0, 100, 7, 0, b"a" * 8, 0b0111), (1, 200, 9, 350, b"b" * 8, 0b0010)],
                              sender=10, boot=100, seq=7, epoch=5, digest=b"d" * 8)
    assert encode(hb, KEY) == sign(1, expected)
    assert encode(req, KEY) == sign(2, envelope(sender=10, boot=100, seq=8, epoch=5, digest=b"d" * 8))
    assert encode(chunk, KEY) == sign(3, body_chunk(1, 3, b"0,1,2,0,1,2", sender=10, boot=100, seq=9, epoch=5,
                                                    digest=b"d" * 8))
    assert encode(freq, KEY) == sign(4, envelope(sender=10, boot=100, seq=10, epoch=5, digest=b"d" * 8))
    line = b"198.51.100.7 5000 203.0.113.10 53 120\n"
    flow_body = body_chunk(0, 2, line, sender=10, boot=100, seq=11, epoch=5, digest=b"d" * 8)
    split = len(envelope(sender=10, boot=100, seq=11, epoch=5, digest=b"d" * 8))
    assert encode(fchunk, KEY) == sign(5, flow_body[:split] + struct.pack(">QQ", 300, 77) + flow_body[split:])


def test_a_heartbeat_keeps_the_order_of_its_rows_and_echoes():
    hb = SAMPLES[0]
    flipped = Heartbeat(hb.farm, hb.sender_id, hb.boot, hb.seq, hb.base_epoch, hb.base_digest,
                        tuple(reversed(hb.echoes)), hb.rows)
    assert decode(encode(flipped, KEY), KEYS).echoes == ((40, 400), (20, 200))


def test_node_id_and_digest8_are_the_documented_hashes():
    assert node_id("n1") == int.from_bytes(hashlib.sha256(b"vipfarm-node:n1").digest()[:4], "big")
    assert digest8(b"abc") == hashlib.sha256(b"abc").digest()[:8]
    assert node_id("n1") != node_id("n2")


def test_decode_takes_a_bytearray_or_memoryview_as_a_socket_gives_them():
    data = encode(SAMPLES[0], KEY)
    assert decode(bytearray(data), KEYS) == decode(memoryview(data), KEYS) == SAMPLES[0]


# ---- sizes ----------------------------------------------------------------------------------

def test_a_16_member_heartbeat_with_every_row_fits_in_1400_bytes():
    assert len(encode(full_heartbeat(16), KEY)) <= 1400


def test_a_64_member_heartbeat_with_every_row_fits_in_4000_bytes():
    assert len(encode(full_heartbeat(64), KEY)) <= 4000


def test_max_datagram_is_the_largest_datagram_encode_produces():
    largest_chunk = BaseChunk("f" * 253, U32, U64, U64, U64, b"\xff" * 8, 0, 1, b"x" * MAX_CHUNK_DATA)
    assert max(len(encode(full_heartbeat(MAX_MEMBERS), KEY)), len(encode(largest_chunk, KEY))) == MAX_DATAGRAM


def test_a_heartbeat_naming_more_nodes_than_the_largest_farm_is_refused_by_encode():
    ids = members(MAX_MEMBERS + 1)
    own = Row(ids[0], 1, 1, 0, frozenset(ids), b"a" * 8)      # 65 ids through the heard set alone
    with pytest.raises(ValueError, match=r"names 65 nodes; at most 64"):
        encode(Heartbeat("web", ids[0], 1, 1, 0, b"d" * 8, (), (own,)), KEY)


@pytest.mark.parametrize("msg, match", [
    (BaseChunk("web", 1, 1, 1, 0, b"d" * 8, 0, 1, b"x" * (MAX_CHUNK_DATA + 1)), "at most 1200"),
    (BaseChunk("web", 1, 1, 1, 0, b"d" * 8, 0, 1, "é".encode()), "must be ASCII"),
    (BaseChunk("web", 1, 1, 1, 0, b"d" * 8, 3, 3, b""), "index 3 must be below count 3"),
    (BaseRequest("f" * 254, 1, 1, 1, 0, b"d" * 8), "254 bytes of UTF-8"),
    (BaseRequest("", 1, 1, 1, 0, b"d" * 8), "0 bytes of UTF-8"),
    (BaseRequest("web", U32 + 1, 1, 1, 0, b"d" * 8), "sender_id must be an integer in 0..4294967295"),
    (BaseRequest("web", 1, U64 + 1, 1, 0, b"d" * 8), "boot must be"),
    (BaseRequest("web", 1, 1, -1, 0, b"d" * 8), "seq must be"),
    (BaseRequest("web", 1, 1, 1, 0, b"d" * 7), "base_digest must be 8 bytes"),
    (Heartbeat("web", 1, 1, 1, 0, b"d" * 8, (), ()), "has 0 rows"),
    (Heartbeat("web", 1, 1, 1, 0, b"d" * 8, (), (Row(2, 1, 1, 0, frozenset(), b"a" * 8),)), "put the sender's own row first"),
    (Heartbeat("web", 1, 1, 1, 0, b"d" * 8, (), (Row(1, 1, 1, 0, frozenset(), b"a" * 8),) * 2), "two rows describe"),
    (Heartbeat("web", 1, 1, 1, 0, b"d" * 8, ((2, 1), (2, 5)), (Row(1, 1, 1, 0, frozenset(), b"a" * 8),)), "two echoes"),
    (Heartbeat("web", 1, 1, 1, 0, b"d" * 8, (), (Row(1, 1, 1, -5, frozenset(), b"a" * 8),)), "age_ms must be a non-negative"),
])
def test_encode_refuses_a_value_that_does_not_fit_and_names_it(msg, match):
    with pytest.raises(ValueError, match=match):
        encode(msg, KEY)


def test_an_age_past_u32_is_clamped_to_u32():
    row = Row(1, 1, 1, 2**40, frozenset({1}), b"a" * 8)
    out = decode(encode(Heartbeat("web", 1, 1, 1, 0, b"d" * 8, (), (row,)), KEY), KEYS)
    assert out.rows[0].age_ms == U32


# ---- keys -----------------------------------------------------------------------------------

def test_a_datagram_signed_with_a_key_the_receiver_does_not_accept_is_unknown_key():
    for msg in SAMPLES:
        assert refused(encode(msg, OTHER)) == "unknown_key"


def test_the_same_key_id_under_another_secret_is_bad_mac():
    a, b = COLLIDING
    assert a.key_id == b.key_id and a.secret != b.secret
    for msg in SAMPLES:
        assert refused(encode(msg, a), Keyring.of(b)) == "bad_mac"
        assert decode(encode(msg, a), Keyring.of(a)) == msg


def test_a_keyring_accepts_a_datagram_signed_with_any_of_its_keys():
    both = Keyring.of(KEY, OTHER)
    for msg in SAMPLES:
        assert decode(encode(msg, KEY), both) == decode(encode(msg, OTHER), both) == msg


@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_flipped_bit_is_refused_and_past_the_header_it_is_bad_mac(msg):
    data = encode(msg, KEY)
    header_reasons = {0: "bad_magic", 1: "bad_magic", 2: "bad_magic", 3: "bad_magic", 4: "bad_version"}
    for bit in range(8 * len(data)):
        flipped = bytearray(data)
        flipped[bit // 8] ^= 1 << (bit % 8)
        reason = refused(bytes(flipped))
        byte = bit // 8
        if byte in header_reasons:
            assert reason == header_reasons[byte], bit
        elif byte == 5:                    # the kind: another known kind fails the MAC, which covers it
            assert reason in ("bad_kind", "bad_mac"), bit
        elif byte < HEADER:                # the key id
            assert reason == "unknown_key", bit
        else:
            assert reason == "bad_mac", bit


@settings(max_examples=200, deadline=None)
@given(messages, st.data())
def test_a_flipped_bit_in_the_body_or_mac_of_any_message_is_bad_mac(msg, data):
    raw = bytearray(encode(msg, KEY))
    bit = data.draw(st.integers(8 * HEADER, 8 * len(raw) - 1))
    raw[bit // 8] ^= 1 << (bit % 8)
    assert refused(bytes(raw)) == "bad_mac"


# ---- hostile bytes --------------------------------------------------------------------------

@pytest.mark.parametrize("msg", SAMPLES, ids=lambda m: type(m).__name__)
def test_every_truncation_of_a_valid_datagram_is_refused(msg):
    data = encode(msg, KEY)
    for n in range(len(data)):
        reason = refused(data[:n])
        assert reason == ("truncated" if n < MIN_DATAGRAM else "bad_mac"), n


def test_a_datagram_past_max_datagram_is_too_large():
    assert refused(sign(1, b"\0" * (MAX_DATAGRAM - HEADER - 32 + 1))) == "too_large"


@pytest.mark.parametrize("frame, reason", [
    (dict(magic=b"VFH2"), "bad_magic"),
    (dict(version=0), "bad_version"),
    (dict(version=2), "bad_version"),
    (dict(key_id=b"\0\0\0\0"), "unknown_key"),
])
def test_a_header_this_agent_does_not_speak_is_refused_with_its_reason(frame, reason):
    assert refused(sign(2, envelope(), **frame)) == reason


@pytest.mark.parametrize("kind", [0, 6, 255])
def test_an_unknown_kind_is_bad_kind(kind):
    assert refused(sign(kind, envelope())) == "bad_kind"


def test_5000_random_byte_strings_are_refused_with_wire_error_only():
    rng = random.Random(8)
    for _ in range(5000):
        refused(rng.randbytes(rng.choice((rng.randrange(0, 100), rng.randrange(0, MAX_DATAGRAM + 50)))))


def test_random_bytes_after_a_valid_header_are_refused_with_wire_error_only():
    rng = random.Random(9)
    for _ in range(5000):
        kind = rng.choice((1, 2, 3))
        refused(b"VFH1" + bytes([1, kind]) + KEY.key_id + rng.randbytes(rng.randrange(0, MAX_DATAGRAM)))


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from([1, 2, 3]), st.binary(max_size=600))
def test_a_valid_mac_over_any_body_decodes_canonically_or_is_malformed(kind, body):
    assert decodes_canonically_or_is_refused(sign(kind, body)) in (None, "malformed", "truncated")


@settings(max_examples=1000, deadline=None)
@given(messages, st.data())
def test_a_valid_mac_over_a_mutated_valid_body_decodes_canonically_or_is_malformed(msg, data):
    body = bytearray(encode(msg, KEY)[HEADER:-32])
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(["set", "insert", "delete"]))
        at = data.draw(st.integers(0, max(0, len(body) - 1)))
        if op == "set" and body:
            body[at] = data.draw(st.integers(0, 255))
        elif op == "insert":
            body[at:at] = bytes([data.draw(st.integers(0, 255))])
        elif body:
            del body[at]
    kind = encode(msg, KEY)[5]
    assert decodes_canonically_or_is_refused(sign(kind, bytes(body))) in (None, "malformed", "truncated")


IDS = [10, 20, 30]
GOOD_ROW = (0, 1, 1, 0, b"a" * 8, 0b111)


MALFORMED_HEARTBEATS = [
    (body_heartbeat(IDS, [], [GOOD_ROW], sender=10) + b"\0", "bytes after the body"),
    (body_heartbeat([10, 30, 20], [], [GOOD_ROW], sender=10), "not strictly ascending"),
    (body_heartbeat([10, 10, 20], [], [GOOD_ROW], sender=10), "not strictly ascending"),
    (body_heartbeat(IDS, [], [GOOD_ROW, GOOD_ROW], sender=10), "two rows describe node 10"),
    (body_heartbeat(IDS, [(1, 5), (1, 6)], [GOOD_ROW], sender=10), "two echoes name node 20"),
    (body_heartbeat(IDS, [(3, 5)], [GOOD_ROW], sender=10), "echo names id index 3 of 3"),
    (body_heartbeat(IDS, [], [(3, 1, 1, 0, b"a" * 8, 0b111)], sender=10), "row names id index 3 of 3"),
    (body_heartbeat(IDS, [], [(0, 1, 1, 0, b"a" * 8, 0b1111)], sender=10), "sets bits past the 3 ids"),
    (body_heartbeat(IDS, [], [(0, 1, 1, 0, b"a" * 8, 0b011)], sender=10), "names a node no echo"),
    (body_heartbeat(IDS, [], [(1, 1, 1, 0, b"a" * 8, 0b111)], sender=10), "not the sender 10"),
    (body_heartbeat(IDS, [], [], sender=10), "0 rows"),
    (body_heartbeat([], [], [], sender=10), "0 node ids"),
    (body_heartbeat(list(range(65)), [], [(0, 1, 1, 0, b"a" * 8, 2**65 - 1)], sender=0), "65 node ids"),
    (body_heartbeat(IDS, [], [GOOD_ROW], sender=10)[:-1], "heard bitmap needs 1 bytes"),
    (body_heartbeat(IDS, [], [GOOD_ROW], sender=10, farm=b""), "farm name length 0"),
    (body_heartbeat(IDS, [], [GOOD_ROW], sender=10, farm=b"\xff\xfe"), "farm name is not UTF-8"),
    (envelope(farm=b"w" * 254), "farm name length 254"),
    (body_heartbeat(IDS, [], [GOOD_ROW], sender=10, farm=b"w" * 200)[:220], "envelope needs"),
]


@pytest.mark.parametrize("body, why", MALFORMED_HEARTBEATS, ids=[why for _, why in MALFORMED_HEARTBEATS])
def test_a_signed_heartbeat_with_a_malformed_body_is_malformed(body, why):
    with pytest.raises(WireError, match=why) as e:
        decode(sign(1, body), KEYS)
    assert e.value.reason == "malformed"


MALFORMED_CHUNKS = [
    (body_chunk(3, 3, b"abc"), "index 3 is not below count 3"),
    (body_chunk(0, 0, b""), "index 0 is not below count 0"),
    (body_chunk(0, 1, b"\x80"), "not ASCII"),
    (body_chunk(0, 1, b"x" * (MAX_CHUNK_DATA + 1)), "at most 1200"),
    (body_chunk(0, 1, b"abc", size=4), "chunk data needs 4 bytes"),
    (body_chunk(0, 1, b"abc", size=2), "1 bytes after the body"),
]


@pytest.mark.parametrize("body, why", MALFORMED_CHUNKS, ids=[why for _, why in MALFORMED_CHUNKS])
def test_a_signed_chunk_with_a_malformed_body_is_malformed(body, why):
    with pytest.raises(WireError, match=why) as e:
        decode(sign(3, body), KEYS)
    assert e.value.reason == "malformed"


def test_10k_garbage_datagrams_with_a_valid_mac_decode_in_linear_time():
    """Bodies of the largest size that reach the body parser: each is refused after one pass."""
    rng = random.Random(10)
    reasons = set()
    for _ in range(10_000):
        n_ids = rng.randrange(1, MAX_MEMBERS + 1)
        body = envelope() + bytes([n_ids]) + rng.randbytes(MAX_DATAGRAM - HEADER - 32 - len(envelope()) - 1)
        reasons.add(refused(sign(1, body)))
    assert reasons == {"malformed"}
