"""The heartbeat wire format: the UDP datagrams farm members exchange, HMAC-SHA256 signed.

Every datagram (integers big-endian):

    magic        4   b"VFH1"
    version      1   1
    kind         1   1 Heartbeat, 2 BaseRequest, 3 BaseChunk, 4 FlowRequest, 5 FlowChunk
    key id       4   Key.key_id of the key the MAC is made with
    body         ..  below
    mac         32   HMAC-SHA256 over every byte before it, under that key

Every body starts with the envelope:

    farm_len u8 (1..253), farm (UTF-8), sender_id u32, boot u64, seq u64, base_epoch u64,
    base_digest 8 bytes

A Heartbeat's body goes on with

    n_ids u8 (1..64), ids u32 x n_ids             every node id the message names, strictly ascending,
                                                  each named by a row, an echo or a heard set
    n_echoes u8 (0..64), n_echoes x (id_index u8, boot u64)
    n_rows u8 (1..64), n_rows x (id_index u8, boot u64, seq u64, age_ms u32, agree 8 bytes, flags u8,
                                 heard: a bitmap of ceil(n_ids / 8) bytes, bit i (byte i // 8,
                                 bit i % 8 from the least significant) = ids[i]; unused bits 0)

so the heard sets of a 64-member farm cost 8 bytes a row. The first row is the sender's own.
A BaseChunk's body goes on with index u16, count u16 (index < count), data_len u16
(<= MAX_CHUNK_DATA), data (ASCII). A BaseRequest has the envelope only.

UDP handover (vipfarm/udp_flows.py): a FlowRequest ("send me the UDP flows you keep") has the
envelope only; each FlowChunk that answers it goes on with request_boot u64 and request_seq
u64 (the request's boot and seq: an answer to an earlier agent or an earlier request is never
taken for the current one), then a chunk exactly as a BaseChunk's (index, count, data_len, data: whole lines of the flow list).

The encoding is canonical: decode accepts exactly the bytes encode produces, so a datagram
that decodes re-encodes to itself. decode checks the cheap things first (length, magic,
version, kind, key id) and the MAC before it reads the body, and raises only WireError, whose
`reason` the agent counts. A receiver should read with a buffer of MAX_DATAGRAM + 1 bytes so an
oversized datagram is seen as too_large rather than cut to a valid-looking length.
"""
from __future__ import annotations

import hashlib
import hmac
import struct
from dataclasses import dataclass

from .heartbeat_keys import KEY_ID_BYTES, Key, Keyring

MAGIC = b"VFH1"
VERSION = 1
KIND_HEARTBEAT = 1
KIND_BASE_REQUEST = 2
KIND_BASE_CHUNK = 3
KIND_FLOW_REQUEST = 4
KIND_FLOW_CHUNK = 5
KINDS = (KIND_HEARTBEAT, KIND_BASE_REQUEST, KIND_BASE_CHUNK, KIND_FLOW_REQUEST, KIND_FLOW_CHUNK)
REASONS = ("truncated", "too_large", "bad_magic", "bad_version", "bad_kind", "unknown_key", "bad_mac", "malformed")

MAX_MEMBERS = 64          # ids one heartbeat can name: the largest farm
MAX_FARM_NAME_BYTES = 253
MAX_CHUNK_DATA = 1200
DIGEST_BYTES = 8
MAC_BYTES = 32
U32 = 0xFFFFFFFF
U64 = 0xFFFFFFFFFFFFFFFF

_HEADER = struct.Struct(f">4sBB{KEY_ID_BYTES}s")
_ENVELOPE = struct.Struct(f">IQQQ{DIGEST_BYTES}s")
_ECHO = struct.Struct(">BQ")
_ROW = struct.Struct(f">BQQI{DIGEST_BYTES}sB")
_CHUNK = struct.Struct(">HHH")
_REQUEST_ID = struct.Struct(">QQ")

_ENVELOPE_MAX = 1 + MAX_FARM_NAME_BYTES + _ENVELOPE.size
_BITMAP_MAX = (MAX_MEMBERS + 7) // 8
_HEARTBEAT_MAX = (_HEADER.size + _ENVELOPE_MAX + 1 + 4 * MAX_MEMBERS + 1 + _ECHO.size * MAX_MEMBERS
                  + 1 + (_ROW.size + _BITMAP_MAX) * MAX_MEMBERS + MAC_BYTES)
_CHUNK_MAX = _HEADER.size + _ENVELOPE_MAX + _REQUEST_ID.size + _CHUNK.size + MAX_CHUNK_DATA + MAC_BYTES
MAX_DATAGRAM = max(_HEARTBEAT_MAX, _CHUNK_MAX)
MIN_DATAGRAM = _HEADER.size + 1 + 1 + _ENVELOPE.size + MAC_BYTES     # a BaseRequest of a 1-byte farm name


ROW_WITHDRAWN = 1            # Row.flags: the member's checkers fail; it keeps its vote and serves nothing
ROW_HEARS_WITNESS = 2        # Row.flags: the member hears the farm's witness (one more vote)
ROW_DRAINING = 4             # Row.flags: the member drains: it keeps its vote, takes no new flows, keeps its old ones
ROW_HANDING_OVER = 8         # Row.flags: the member still serves flows in buckets it no longer owns
ROW_RELEASED = 16            # Row.flags: the member's filter holds no bucket its digest's assignment took away
ROW_FLAGS = ROW_WITHDRAWN | ROW_HEARS_WITNESS | ROW_DRAINING | ROW_HANDING_OVER | ROW_RELEASED


def _row_flags(r: "Row") -> int:
    if not isinstance(r.flags, int) or isinstance(r.flags, bool) or r.flags & ~ROW_FLAGS:
        raise ValueError(f"row of node {r.node_id}: flags must be a combination of ROW_WITHDRAWN, "
                         f"ROW_HEARS_WITNESS, ROW_DRAINING, ROW_HANDING_OVER and ROW_RELEASED (0..{ROW_FLAGS}), "
                         f"got {r.flags!r}")
    return r.flags


@dataclass(frozen=True)
class Row:
    """One member's reachability, as known to the sender (its own row, or relayed)."""
    node_id: int           # u32, node_id(name) of the member the row describes
    boot: int              # u64 boot id of that member's agent (random per agent start)
    seq: int               # u64 that agent's sequence number when it produced the row
    age_ms: int            # u32 how old the row was at the sender when sent (0 for its own row); encode clamps
    heard: frozenset[int]  # node ids that member counts as heard (it includes itself)
    agree: bytes           # 8 bytes: that member's agreement digest
    flags: int = 0         # u8: ROW_* bits (undefined bits 0)


@dataclass(frozen=True)
class Heartbeat:
    farm: str              # farm name (<= 253 bytes UTF-8)
    sender_id: int         # u32
    boot: int              # u64
    seq: int               # u64
    base_epoch: int        # u64
    base_digest: bytes     # 8 bytes
    echoes: tuple[tuple[int, int], ...]   # (peer node id, that peer's boot id last heard directly from it)
    rows: tuple[Row, ...]  # the sender's own row first, then the others it knows


@dataclass(frozen=True)
class BaseRequest:
    """"Send me your base assignment"."""
    farm: str
    sender_id: int
    boot: int
    seq: int
    base_epoch: int
    base_digest: bytes


@dataclass(frozen=True)
class BaseChunk:
    """One piece of an encoded base assignment (text, ASCII); index < count."""
    farm: str
    sender_id: int
    boot: int
    seq: int
    base_epoch: int
    base_digest: bytes
    index: int
    count: int
    data: bytes


@dataclass(frozen=True)
class FlowRequest:
    """"Send me the UDP flows you keep" (UDP handover); its seq names the answer."""
    farm: str
    sender_id: int
    boot: int
    seq: int
    base_epoch: int
    base_digest: bytes


@dataclass(frozen=True)
class FlowChunk:
    """One piece of the answer to the FlowRequest of (request_boot, request_seq): whole lines of
    vipfarm/udp_flows.py's flow list (ASCII); index < count."""
    farm: str
    sender_id: int
    boot: int
    seq: int
    base_epoch: int
    base_digest: bytes
    request_boot: int
    request_seq: int
    index: int
    count: int
    data: bytes


Message = Heartbeat | BaseRequest | BaseChunk | FlowRequest | FlowChunk


class WireError(ValueError):
    """A datagram decode refused; `reason` is one of REASONS (what the agent counts), `detail`
    says what was wrong with it."""

    def __init__(self, reason: str, detail: str):
        if reason not in REASONS:
            raise ValueError(f"WireError reason {reason!r} is not one of {REASONS}")
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def node_id(name: str) -> int:
    """The u32 a member is known by on the wire."""
    return int.from_bytes(hashlib.sha256(b"vipfarm-node:" + name.encode()).digest()[:4], "big")


def digest8(data: bytes) -> bytes:
    """The 8-byte digest of base assignments and agreement states."""
    return hashlib.sha256(data).digest()[:DIGEST_BYTES]


# ---- encode ---------------------------------------------------------------------------------

def _uint(what: str, value: int, top: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise ValueError(f"{what} must be an integer in 0..{top}, got {value!r}")
    return value


def _digest(what: str, value: bytes) -> bytes:
    if not isinstance(value, bytes) or len(value) != DIGEST_BYTES:
        raise ValueError(f"{what} must be {DIGEST_BYTES} bytes, got {value!r}")
    return value


def _envelope(msg) -> bytes:
    if not isinstance(msg.farm, str):
        raise ValueError(f"farm must be a str, got {msg.farm!r}")
    farm = msg.farm.encode("utf-8")
    if not 1 <= len(farm) <= MAX_FARM_NAME_BYTES:
        raise ValueError(f"farm {msg.farm!r} is {len(farm)} bytes of UTF-8; a farm name is 1..{MAX_FARM_NAME_BYTES}")
    return bytes([len(farm)]) + farm + _ENVELOPE.pack(
        _uint("sender_id", msg.sender_id, U32), _uint("boot", msg.boot, U64), _uint("seq", msg.seq, U64),
        _uint("base_epoch", msg.base_epoch, U64), _digest("base_digest", msg.base_digest))


def _heartbeat_body(msg: Heartbeat) -> bytes:
    rows, echoes = tuple(msg.rows), tuple(msg.echoes)
    if not 1 <= len(rows) <= MAX_MEMBERS:
        raise ValueError(f"heartbeat of farm {msg.farm!r} has {len(rows)} rows; it carries 1..{MAX_MEMBERS} "
                         "(the sender's own row first)")
    if rows[0].node_id != msg.sender_id:
        raise ValueError(f"heartbeat of farm {msg.farm!r}: the first row describes node {rows[0].node_id}, "
                         f"not the sender {msg.sender_id}; put the sender's own row first")
    row_ids = [r.node_id for r in rows]
    if len(set(row_ids)) != len(row_ids):
        raise ValueError(f"heartbeat of farm {msg.farm!r}: two rows describe the same node ({row_ids})")
    if len(echoes) > MAX_MEMBERS:
        raise ValueError(f"heartbeat of farm {msg.farm!r} has {len(echoes)} echoes; at most {MAX_MEMBERS}")
    echo_ids = [e[0] for e in echoes]
    if len(set(echo_ids)) != len(echo_ids):
        raise ValueError(f"heartbeat of farm {msg.farm!r}: two echoes name the same peer ({echo_ids})")
    named = set(row_ids) | set(echo_ids)
    for r in rows:
        named |= r.heard
    table = sorted(named)
    for i in table:
        _uint("node id", i, U32)
    if len(table) > MAX_MEMBERS:
        raise ValueError(f"heartbeat of farm {msg.farm!r} names {len(table)} nodes; at most {MAX_MEMBERS}")
    index = {i: n for n, i in enumerate(table)}
    bitmap_bytes = (len(table) + 7) // 8
    out = [bytes([len(table)]), struct.pack(f">{len(table)}I", *table), bytes([len(echoes)])]
    for peer, boot in echoes:
        out.append(_ECHO.pack(index[peer], _uint(f"echo boot of node {peer}", boot, U64)))
    out.append(bytes([len(rows)]))
    for r in rows:
        if not isinstance(r.age_ms, int) or r.age_ms < 0:
            raise ValueError(f"row of node {r.node_id}: age_ms must be a non-negative integer, got {r.age_ms!r}")
        bits = 0
        for h in r.heard:
            bits |= 1 << index[h]
        out.append(_ROW.pack(index[r.node_id], _uint(f"boot of row {r.node_id}", r.boot, U64),
                             _uint(f"seq of row {r.node_id}", r.seq, U64), min(r.age_ms, U32),
                             _digest(f"agree of row {r.node_id}", r.agree), _row_flags(r)))
        out.append(bits.to_bytes(bitmap_bytes, "little"))
    return b"".join(out)


def _chunk_body(msg: BaseChunk | FlowChunk) -> bytes:
    if not isinstance(msg.data, bytes) or len(msg.data) > MAX_CHUNK_DATA or not msg.data.isascii():
        raise ValueError(f"{'flow' if isinstance(msg, FlowChunk) else 'base'} chunk {msg.index}/{msg.count} of farm {msg.farm!r}: data must be ASCII bytes, at "
                         f"most {MAX_CHUNK_DATA}, got {type(msg.data).__name__} of {len(msg.data)}")
    count = _uint("chunk count", msg.count, 0xFFFF)
    if not 0 <= _uint("chunk index", msg.index, 0xFFFF) < count:
        raise ValueError(f"chunk of farm {msg.farm!r}: index {msg.index} must be below count {msg.count}")
    return _CHUNK.pack(msg.index, count, len(msg.data)) + msg.data


def seal(kind: int, body: bytes, key: Key) -> bytes:
    """Header + body + MAC: the framing every kind shares."""
    signed = _HEADER.pack(MAGIC, VERSION, kind, key.key_id) + body
    return signed + hmac.digest(key.secret, signed, "sha256")


def encode(msg: Message, key: Key) -> bytes:
    """The signed datagram for `msg`; ValueError names the field when a value does not fit."""
    if isinstance(msg, Heartbeat):
        kind, body = KIND_HEARTBEAT, _envelope(msg) + _heartbeat_body(msg)
    elif isinstance(msg, BaseChunk):
        kind, body = KIND_BASE_CHUNK, _envelope(msg) + _chunk_body(msg)
    elif isinstance(msg, BaseRequest):
        kind, body = KIND_BASE_REQUEST, _envelope(msg)
    elif isinstance(msg, FlowRequest):
        kind, body = KIND_FLOW_REQUEST, _envelope(msg)
    elif isinstance(msg, FlowChunk):
        kind, body = KIND_FLOW_CHUNK, (_envelope(msg) + _REQUEST_ID.pack(_uint("request_boot", msg.request_boot, U64),
                                                                          _uint("request_seq", msg.request_seq, U64))
                                       + _chunk_body(msg))
    else:
        raise TypeError(f"encode takes a Heartbeat, BaseRequest, BaseChunk, FlowRequest or FlowChunk, "
                        f"got {type(msg).__name__}")
    out = seal(kind, body, key)
    if len(out) > MAX_DATAGRAM:
        raise ValueError(f"{type(msg).__name__} of farm {msg.farm!r} encodes to {len(out)} bytes, "
                         f"past MAX_DATAGRAM {MAX_DATAGRAM}")
    return out


# ---- decode ---------------------------------------------------------------------------------

class _Reader:
    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes, start: int, end: int):
        self.data, self.pos, self.end = data, start, end

    def take(self, n: int, what: str) -> bytes:
        if self.end - self.pos < n:
            raise WireError("malformed", f"{what} needs {n} bytes at body offset {self.pos}, "
                                         f"{self.end - self.pos} left")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def unpack(self, s: struct.Struct, what: str) -> tuple:
        return s.unpack(self.take(s.size, what))

    def byte(self, what: str) -> int:
        return self.take(1, what)[0]


def decode(data: bytes, keys: Keyring) -> Message:
    """The message in a datagram, or WireError (and nothing else) for any bytes that are not a
    datagram encode made under one of `keys`' accepted keys."""
    if isinstance(data, (bytearray, memoryview)):
        data = bytes(data)
    elif not isinstance(data, bytes):
        raise TypeError(f"decode takes bytes, got {type(data).__name__}")
    n = len(data)
    if n < MIN_DATAGRAM:
        raise WireError("truncated", f"{n} bytes, a datagram has at least {MIN_DATAGRAM}")
    if n > MAX_DATAGRAM:
        raise WireError("too_large", f"{n} bytes, a datagram has at most {MAX_DATAGRAM}")
    magic, version, kind, key_id = _HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("bad_magic", f"starts with {magic.hex()}, not {MAGIC.hex()}")
    if version != VERSION:
        raise WireError("bad_version", f"version {version}, this agent speaks {VERSION}")
    if kind not in KINDS:
        raise WireError("bad_kind", f"kind {kind}, known kinds are {KINDS}")
    key = keys.find(key_id)
    if key is None:
        raise WireError("unknown_key", f"signed with key id {key_id.hex()}, accepted are {', '.join(keys.key_ids)}")
    if not hmac.compare_digest(hmac.digest(key.secret, data[:-MAC_BYTES], "sha256"), data[-MAC_BYTES:]):
        raise WireError("bad_mac", f"the MAC does not match under key id {key_id.hex()}")
    r = _Reader(data, _HEADER.size, n - MAC_BYTES)
    try:
        msg = _parse(r, kind)
    except WireError:
        raise
    except (struct.error, IndexError, KeyError, ValueError, OverflowError) as e:    # a net: _parse checks lengths
        raise WireError("malformed", f"{type(e).__name__}: {e}") from None
    if r.pos != r.end:
        raise WireError("malformed", f"{r.end - r.pos} bytes after the body")
    return msg


def _parse(r: _Reader, kind: int) -> Message:
    farm_len = r.byte("farm name length")
    if not 1 <= farm_len <= MAX_FARM_NAME_BYTES:
        raise WireError("malformed", f"farm name length {farm_len}, must be 1..{MAX_FARM_NAME_BYTES}")
    try:
        farm = r.take(farm_len, "farm name").decode("utf-8")
    except UnicodeDecodeError:
        raise WireError("malformed", "farm name is not UTF-8") from None
    env = (farm,) + r.unpack(_ENVELOPE, "envelope")
    if kind == KIND_BASE_REQUEST:
        return BaseRequest(*env)
    if kind == KIND_BASE_CHUNK:
        return BaseChunk(*env, *_parse_chunk(r))
    if kind == KIND_FLOW_REQUEST:
        return FlowRequest(*env)
    if kind == KIND_FLOW_CHUNK:
        request_boot, request_seq = r.unpack(_REQUEST_ID, "request id")
        return FlowChunk(*env, request_boot, request_seq, *_parse_chunk(r))
    return _parse_heartbeat(r, env)


def _parse_chunk(r: _Reader) -> tuple[int, int, bytes]:
    index, count, size = r.unpack(_CHUNK, "chunk header")
    if index >= count:
        raise WireError("malformed", f"chunk index {index} is not below count {count}")
    if size > MAX_CHUNK_DATA:
        raise WireError("malformed", f"chunk data of {size} bytes, at most {MAX_CHUNK_DATA}")
    chunk = r.take(size, "chunk data")
    if not chunk.isascii():
        raise WireError("malformed", "chunk data is not ASCII")
    return index, count, chunk


def _parse_heartbeat(r: _Reader, env: tuple) -> Heartbeat:
    n_ids = r.byte("id count")
    if not 1 <= n_ids <= MAX_MEMBERS:
        raise WireError("malformed", f"{n_ids} node ids, must be 1..{MAX_MEMBERS}")
    table = struct.unpack(f">{n_ids}I", r.take(4 * n_ids, "id table"))
    if any(a >= b for a, b in zip(table, table[1:])):
        raise WireError("malformed", "the id table is not strictly ascending")
    named = 0                                    # bit i: table[i] is named by an echo, a row or a heard set
    n_echoes = r.byte("echo count")
    if n_echoes > n_ids:
        raise WireError("malformed", f"{n_echoes} echoes but {n_ids} ids")
    echoes = []
    for _ in range(n_echoes):
        i, boot = r.unpack(_ECHO, "echo")
        if i >= n_ids:
            raise WireError("malformed", f"echo names id index {i} of {n_ids}")
        if named >> i & 1:
            raise WireError("malformed", f"two echoes name node {table[i]}")
        named |= 1 << i
        echoes.append((table[i], boot))
    n_rows = r.byte("row count")
    if not 1 <= n_rows <= n_ids:
        raise WireError("malformed", f"{n_rows} rows, must be 1..{n_ids} (the id count)")
    bitmap_bytes = (n_ids + 7) // 8
    rows, row_seen = [], 0
    for _ in range(n_rows):
        i, boot, seq, age, agree, flags = r.unpack(_ROW, "row")
        if flags & ~ROW_FLAGS:
            raise WireError("malformed", f"row flags {flags:#04x} set undefined bits")
        if i >= n_ids:
            raise WireError("malformed", f"row names id index {i} of {n_ids}")
        if row_seen >> i & 1:
            raise WireError("malformed", f"two rows describe node {table[i]}")
        row_seen |= 1 << i
        bits = int.from_bytes(r.take(bitmap_bytes, "heard bitmap"), "little")
        if bits >> n_ids:
            raise WireError("malformed", f"heard bitmap of node {table[i]} sets bits past the {n_ids} ids")
        named |= bits
        heard = frozenset(table[b] for b in range(n_ids) if bits >> b & 1)
        rows.append(Row(table[i], boot, seq, age, heard, agree, flags))
    named |= row_seen
    if named != (1 << n_ids) - 1:
        raise WireError("malformed", "the id table names a node no echo, row or heard set refers to")
    if rows[0].node_id != env[1]:
        raise WireError("malformed", f"the first row describes node {rows[0].node_id}, not the sender {env[1]}")
    return Heartbeat(*env, tuple(echoes), tuple(rows))
