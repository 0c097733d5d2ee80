"""vipfarm.hashing: MurmurHash3 x86_32 known answers, agreement with an independent byte-wise
implementation, bucket spread and the effect of the port on the bucket."""
from __future__ import annotations

import ipaddress
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.filter_model import FilterModel
from nodeagent.filter_plan import FarmOwnership, build_plan
from tests.support import framegen
from vipfarm.hashing import bucket_of, client_hash, client_words, hash_words
from vipfarm.spec import parse_farm


def murmur3_32(data: bytes, seed: int) -> int:
    """MurmurHash3_x86_32 over bytes, written from Austin Appleby's published algorithm."""
    c1, c2, mask = 0xCC9E2D51, 0x1B873593, 0xFFFFFFFF

    def rotl(x, r):
        return ((x << r) | (x >> (32 - r))) & mask

    h = seed & mask
    nblocks = len(data) // 4
    for i in range(nblocks):
        k = int.from_bytes(data[4 * i:4 * i + 4], "little")
        k = (k * c1) & mask
        k = rotl(k, 15)
        k = (k * c2) & mask
        h ^= k
        h = rotl(h, 13)
        h = (h * 5 + 0xE6546B64) & mask
    tail = data[4 * nblocks:]
    k = 0
    if len(tail) >= 3:
        k ^= tail[2] << 16
    if len(tail) >= 2:
        k ^= tail[1] << 8
    if len(tail) >= 1:
        k ^= tail[0]
        k = (k * c1) & mask
        k = rotl(k, 15)
        k = (k * c2) & mask
        h ^= k
    h ^= len(data)
    h ^= h >> 16
    h = (h * 0x85EBCA6B) & mask
    h ^= h >> 13
    h = (h * 0xC2B2AE35) & mask
    h ^= h >> 16
    return h


def words_as_bytes(words) -> bytes:
    return b"".join((w & 0xFFFFFFFF).to_bytes(4, "little") for w in words)


# Published MurmurHash3 x86_32 vectors.
VECTORS = [
    (b"", 0, 0),
    (b"", 1, 0x514E28B7),
    (b"", 0xFFFFFFFF, 0x81F16F39),
    (b"\xff\xff\xff\xff", 0, 0x76293B50),
    (b"\x21\x43\x65\x87", 0, 0xF55B516B),
    (b"\x21\x43\x65\x87", 0x5082EDEE, 0x2362F9DE),
    (b"\x21\x43\x65", 0, 0x7E4A8634),
    (b"\x21\x43", 0, 0xA0F7B07A),
    (b"\x21", 0, 0x72661CF4),
    (b"\x00\x00\x00\x00", 0, 0x2362F9DE),
]


@pytest.mark.parametrize("data,seed,expected", VECTORS)
def test_reference_murmur3_matches_published_vectors(data, seed, expected):
    assert murmur3_32(data, seed) == expected


@pytest.mark.parametrize("data,seed,expected", [v for v in VECTORS if len(v[0]) % 4 == 0])
def test_hash_words_matches_published_vectors_for_whole_words(data, seed, expected):
    words = [int.from_bytes(data[i:i + 4], "little") for i in range(0, len(data), 4)]
    assert hash_words(words, seed) == expected


@settings(max_examples=300, deadline=None)
@given(words=st.lists(st.integers(0, 2**32 - 1), max_size=6), seed=st.integers(0, 2**32 - 1))
def test_hash_words_equals_murmur3_of_the_words_in_little_endian_order(words, seed):
    assert hash_words(words, seed) == murmur3_32(words_as_bytes(words), seed)


def test_client_words_reads_the_address_big_endian_and_appends_the_port():
    assert client_words(bytes([198, 51, 100, 7]), None) == [0xC6336407]
    assert client_words(bytes([198, 51, 100, 7]), 443) == [0xC6336407, 443]
    v6 = ipaddress.IPv6Address("2001:db8::1:2").packed
    assert client_words(v6, None) == [0x20010DB8, 0, 0, 0x00010002]
    assert client_words(v6, 65535) == [0x20010DB8, 0, 0, 0x00010002, 0xFFFF]


@pytest.mark.parametrize("length", [0, 3, 5, 15, 17])
def test_client_words_rejects_addresses_that_are_neither_ipv4_nor_ipv6(length):
    with pytest.raises(ValueError, match="4 or 16 bytes"):
        client_words(bytes(length), None)


def test_client_hash_of_an_ipv4_client_is_murmur3_of_the_byte_swapped_address():
    client = bytes([203, 0, 113, 99])
    # the big-endian word, laid out little-endian, is the address bytes reversed
    assert client_hash(client, None, 42) == murmur3_32(client[::-1], 42)
    assert client_hash(client, 8080, 42) == murmur3_32(client[::-1] + (8080).to_bytes(4, "little"), 42)


def test_bucket_of_accepts_text_or_bytes_and_masks_to_the_bucket_count():
    seed = 0xDEADBEEF
    for text in ("198.51.100.1", "2001:db8::77"):
        packed = ipaddress.ip_address(text).packed
        h = client_hash(packed, None, seed)
        assert bucket_of(text, None, seed, 1024) == bucket_of(packed, None, seed, 1024) == h & 1023
        assert bucket_of(text, None, seed, 1) == 0
        assert bucket_of(text, None, seed, 65536) == h & 0xFFFF


def test_bucket_of_spreads_random_ipv4_clients_evenly_over_1024_buckets():
    rng = random.Random(20240501)
    buckets, n = 1024, 100_000
    seed = 0x9747B28C
    counts = [0] * buckets
    for _ in range(n):
        counts[bucket_of(rng.getrandbits(32).to_bytes(4, "big"), None, seed, buckets)] += 1
    expected = n / buckets
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    # 1023 degrees of freedom: mean 1023, standard deviation ~45; 1250 is about 5 sigma
    assert chi2 < 1250, f"chi-square {chi2:.1f} over 1023 dof: the hash clusters clients"
    assert min(counts) > 0


def test_bucket_of_spreads_sequential_clients_of_one_subnet_evenly():
    buckets, seed = 256, 7
    counts = [0] * buckets
    base = int(ipaddress.IPv4Address("10.0.0.0"))
    n = 65536
    for i in range(n):
        counts[bucket_of((base + i).to_bytes(4, "big"), None, seed, buckets)] += 1
    expected = n / buckets
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    assert chi2 < 400, f"chi-square {chi2:.1f} over 255 dof for a /16 of sequential clients"


def test_client_ip_port_affinity_spreads_one_client_over_buckets_by_port():
    client, seed = "198.51.100.23", 12345
    seen = {bucket_of(client, port, seed, 1024) for port in range(40000, 40200)}
    # 200 ports over 1024 buckets: collisions are expected, a handful of distinct buckets is not
    assert len(seen) > 150


def _bucket_seen_by_filter(affinity: str, sport: int, client: bytes) -> int:
    """The bucket the reference filter model computes for one TCP packet to port 80."""
    farm = parse_farm({"apiVersion": "vipfarm.io/v1alpha1", "kind": "Farm", "metadata": {"name": "web"},
                       "spec": {"virtualIPs": ["203.0.113.10"], "buckets": 1024, "seed": 777,
                                "rules": [{"protocol": "TCP", "ports": "80", "affinity": affinity}]}})
    plan = build_plan([FarmOwnership(farm, frozenset())], {"web": 0})
    frame = (bytes.fromhex("02aa00000001") + bytes.fromhex("020000000064") + b"\x08\x00"
             + framegen.ipv4(client, farm.virtual_ips[0].packed, 6, framegen.tcp(sport, 80)))
    outcome = FilterModel(plan, bytes.fromhex("02aa00000001")).decide(frame)
    assert outcome.bucket is not None
    return outcome.bucket


def test_client_ip_affinity_keeps_one_client_in_one_bucket_whatever_the_port():
    client = bytes([198, 51, 100, 23])
    buckets = {_bucket_seen_by_filter("ClientIP", sport, client) for sport in range(40000, 40064)}
    assert buckets == {bucket_of(client, None, 777, 1024)}


def test_client_ip_port_affinity_in_the_filter_hashes_the_source_port():
    client = bytes([198, 51, 100, 23])
    got = [_bucket_seen_by_filter("ClientIPPort", sport, client) for sport in range(40000, 40064)]
    assert got == [bucket_of(client, sport, 777, 1024) for sport in range(40000, 40064)]
    assert len(set(got)) > 48


def test_a_different_seed_gives_a_different_bucket_layout():
    rng = random.Random(3)
    clients = [rng.getrandbits(32).to_bytes(4, "big") for _ in range(1000)]
    a = [bucket_of(c, None, 1, 1024) for c in clients]
    b = [bucket_of(c, None, 2, 1024) for c in clients]
    same = sum(x == y for x, y in zip(a, b))
    assert same < 20, f"{same} of 1000 clients kept their bucket across seeds"
