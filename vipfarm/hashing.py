"""The client hash: the one definition vipfarm uses, mirrored bit for bit by bpf/vipfarm_hash.h.

The key is a sequence of 32-bit words, each read big-endian from the packet:
  * the client address: 1 word for IPv4, 4 words for IPv6;
  * then, for ClientIPPort affinity only, one word holding the client (source) port.
The hash is MurmurHash3 x86_32 over those words with the farm seed, finished with the
length in bytes. The bucket is `hash & (buckets - 1)`; buckets is a power of two.
"""
from __future__ import annotations

import ipaddress

_MASK = 0xFFFFFFFF
_C1 = 0xCC9E2D51
_C2 = 0x1B873593


def _rotl(x: int, r: int) -> int:
    return ((x << r) | (x >> (32 - r))) & _MASK


def _mix(h: int, k: int) -> int:
    k = (k * _C1) & _MASK
    k = _rotl(k, 15)
    k = (k * _C2) & _MASK
    h ^= k
    h = _rotl(h, 13)
    return (h * 5 + 0xE6546B64) & _MASK


def _fmix(h: int) -> int:
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & _MASK
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & _MASK
    h ^= h >> 16
    return h


def hash_words(words: list[int] | tuple[int, ...], seed: int) -> int:
    h = seed & _MASK
    for w in words:
        h = _mix(h, w & _MASK)
    h ^= 4 * len(words)
    return _fmix(h)


def client_words(client: bytes, port: int | None) -> list[int]:
    """The hash key for a client address (4 or 16 raw bytes) and optional source port."""
    if len(client) not in (4, 16):
        raise ValueError(f"client address must be 4 or 16 bytes, got {len(client)}")
    words = [int.from_bytes(client[i:i + 4], "big") for i in range(0, len(client), 4)]
    if port is not None:
        words.append(port & 0xFFFF)
    return words


def client_hash(client: bytes, port: int | None, seed: int) -> int:
    return hash_words(client_words(client, port), seed)


def bucket_of(client: bytes | str, port: int | None, seed: int, buckets: int) -> int:
    """The bucket a client (address bytes or text) falls in; port only for ClientIPPort."""
    if isinstance(client, str):
        client = ipaddress.ip_address(client).packed
    return client_hash(client, port, seed) & (buckets - 1)
