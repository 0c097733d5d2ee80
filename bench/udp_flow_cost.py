#!/usr/bin/env python3
"""What recording recently seen UDP flows in an LRU map would cost the filter per UDP packet
(issue 9: UDP has no kernel socket per flow, so a moving bucket needs another flow table).

Not the filter: reference programs that parse Ethernet + IPv4 + UDP like it does, then
  parse        nothing more (the baseline)
  touch-hit    look the 4-tuple up in an LRU hash (hit) and store the coarse clock in the value
               only when it is more than a second old (what a filter would do per packet)
  touch-always the same lookup, storing the clock on every packet (a dirty cache line each time)
  update       bpf_map_update_elem(BPF_ANY) of the 4-tuple on every packet (hit)
  insert       a new 4-tuple on every packet (the source port advanced per run): insert + LRU
               eviction once the map is full, a flood of new flows
each on a common LRU and, as `-pcpu`, on an LRU with per-CPU lists (BPF_F_NO_COMMON_LRU).
Measured as bench/filter_cost.py does: BPF_PROG_TEST_RUN, thread CPU time per call / repeat,
calls interleaved in random order on one pinned CPU, median reported.

    sudo .venv/bin/python bench/udp_flow_cost.py      # options: --repeat N --calls N --entries N
"""
from __future__ import annotations

import argparse
import ipaddress
import os
import random
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from nodeagent.bpf_program import import_bcc  # noqa: E402
from tests.support import framegen  # noqa: E402
from tests.support.bpf_testrun import run_xdp  # noqa: E402

SOURCE = r"""
#include <linux/if_ether.h>
#include <linux/ip.h>
struct flow { __u32 saddr, daddr; __u16 sport, dport; };
BPF_F_TABLE("lru_hash", struct flow, __u64, flows, VF_LRU_ENTRIES, 0);
BPF_F_TABLE("lru_hash", struct flow, __u64, flows_pcpu, VF_LRU_ENTRIES, BPF_F_NO_COMMON_LRU);
BPF_PERCPU_ARRAY(seq, __u32, 1);

static __always_inline int parse(struct xdp_md *ctx, struct flow *f)
{
    void *data = (void *)(long)ctx->data, *end = (void *)(long)ctx->data_end;
    struct ethhdr *eth = data;
    struct iphdr *ip = data + sizeof(*eth);
    if ((void *)(ip + 1) > end || eth->h_proto != __builtin_bswap16(ETH_P_IP) || ip->protocol != 17)
        return 0;
    __u16 *ports = (void *)ip + 20;
    if ((void *)(ports + 2) > end)
        return 0;
    f->saddr = ip->saddr; f->daddr = ip->daddr; f->sport = ports[0]; f->dport = ports[1];
    return 1;
}
int parse_only(struct xdp_md *ctx) { struct flow f = {}; return parse(ctx, &f) ? XDP_PASS : XDP_ABORTED; }
"""
# bcc rewrites map calls only in plain code, not inside C macros: the variants are expanded here.
TOUCH = """
int {name}(struct xdp_md *ctx) {{
    struct flow f = {{}};
    if (!parse(ctx, &f)) return XDP_ABORTED;
    __u64 *seen = {map}.lookup(&f);
    if (!seen) return XDP_DROP;
    __u64 now = bpf_ktime_get_coarse_ns();
    if ({always} || now - *seen > 1000000000ULL) *seen = now;
    return XDP_PASS;
}}
"""
UPDATE = """
int {name}(struct xdp_md *ctx) {{
    struct flow f = {{}};
    if (!parse(ctx, &f)) return XDP_ABORTED;
    if ({new}) {{
        __u32 z = 0;
        __u32 *s = seq.lookup(&z);
        if (s) {{ *s += 1; f.sport ^= (__u16)*s; f.saddr ^= *s >> 16; }}
    }}
    __u64 now = bpf_ktime_get_coarse_ns();
    {map}.update(&f, &now);
    return XDP_PASS;
}}
"""
for _suffix, _map in (("", "flows"), ("_pcpu", "flows_pcpu")):
    SOURCE += TOUCH.format(name="touch_hit" + _suffix, map=_map, always=0)
    SOURCE += TOUCH.format(name="touch_always" + _suffix, map=_map, always=1)
    SOURCE += UPDATE.format(name="update" + _suffix, map=_map, new=0)
    SOURCE += UPDATE.format(name="insert" + _suffix, map=_map, new=1)
PROGS = ("parse_only", "touch_hit", "touch_always", "update", "insert",
         "touch_hit_pcpu", "touch_always_pcpu", "update_pcpu", "insert_pcpu")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=1_000_000)
    ap.add_argument("--calls", type=int, default=11)
    ap.add_argument("--entries", type=int, default=65536, help="LRU map size (flows)")
    ap.add_argument("--cpu", type=int, default=None)
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("udp_flow_cost.py: needs root (BPF_PROG_TEST_RUN)", file=sys.stderr)
        return 0
    cpu = args.cpu if args.cpu is not None else os.cpu_count() - 1
    os.sched_setaffinity(0, {cpu})
    bcc = import_bcc()
    b = bcc.BPF(text=SOURCE.encode(), cflags=[f"-DVF_LRU_ENTRIES={args.entries}"])
    fds = {p: b.load_func(p.encode(), bcc.BPF.XDP).fd for p in PROGS}
    frame = framegen.eth(bytes(6), framegen.CLIENT_MAC, 0x0800) + framegen.ipv4(
        ipaddress.ip_address("198.51.100.7").packed, ipaddress.ip_address("203.0.113.10").packed, 17,
        framegen.udp(40000, 5000, b"x" * 32))
    for p in PROGS:                      # the hit cases' flow is in both maps; check verdicts
        run_xdp(fds["update"], frame)
        run_xdp(fds["update_pcpu"], frame)
        v = run_xdp(fds[p], frame).verdict
        if v != 2:
            print(f"!! {p} returned {v}, expected XDP_PASS", file=sys.stderr)
            return 0
    for p in PROGS:                      # warm up; fills the maps for `insert`
        run_xdp(fds[p], frame, max(args.repeat // 4, args.entries * 2))
    samples: dict[str, list[float]] = {p: [] for p in PROGS}
    order = list(PROGS)
    rng = random.Random(1)
    for _ in range(args.calls):
        rng.shuffle(order)
        for p in order:
            t0 = time.thread_time_ns()
            run_xdp(fds[p], frame, args.repeat)
            samples[p].append((time.thread_time_ns() - t0) / args.repeat)
    base = statistics.median(samples["parse_only"])
    print(f"BPF_PROG_TEST_RUN, {args.calls} calls x {args.repeat:,} runs, LRU of {args.entries:,} flows, "
          f"CPU {cpu}; median ns/pkt")
    for p in PROGS:
        v = statistics.median(samples[p])
        spread = (max(samples[p]) - min(samples[p])) / v * 100
        print(f"  {p:<18} {v:7.2f} ns  (+{v - base:6.2f} ns over parse_only; spread {spread:4.1f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
