/* The client hash: MurmurHash3 x86_32 over 32-bit big-endian words, finished with the
 * key length. vipfarm/hashing.py is the reference; tests/bpf proves they agree. */
#ifndef VIPFARM_HASH_H
#define VIPFARM_HASH_H

static __always_inline __u32 vf_rotl(__u32 x, __u32 r)
{
    return (x << r) | (x >> (32 - r));
}

static __always_inline __u32 vf_mix(__u32 h, __u32 k)
{
    k *= 0xcc9e2d51;
    k = vf_rotl(k, 15);
    k *= 0x1b873593;
    h ^= k;
    h = vf_rotl(h, 13);
    return h * 5 + 0xe6546b64;
}

static __always_inline __u32 vf_fmix(__u32 h)
{
    h ^= h >> 16;
    h *= 0x85ebca6b;
    h ^= h >> 13;
    h *= 0xc2b2ae35;
    h ^= h >> 16;
    return h;
}

/* addr: 1 (IPv4) or 4 (IPv6) words as loaded from the packet (network order). */
static __always_inline __u32 vf_client_hash(const __u32 *addr, int nwords, int with_port,
                                            __u16 port_net, __u32 seed)
{
    __u32 h = seed;
    int len = nwords;

    h = vf_mix(h, __builtin_bswap32(addr[0]));
    if (nwords == 4) {
        h = vf_mix(h, __builtin_bswap32(addr[1]));
        h = vf_mix(h, __builtin_bswap32(addr[2]));
        h = vf_mix(h, __builtin_bswap32(addr[3]));
    }
    if (with_port) {
        h = vf_mix(h, (__u32)__builtin_bswap16(port_net));
        len += 1;
    }
    h ^= (__u32)(len * 4);
    return vf_fmix(h);
}

#endif
