"""The duplicate SYN-ACK watch's analysis and its socket filter, on synthetic frames."""
from __future__ import annotations

import random
import struct

from nodeagent.lab.synack_watch import SynAck, duplicates, parse_synack, synack_filter, synack_frame

MS = 1_000_000
VIP, VIP6, CLIENT, CLIENT6 = "203.0.113.10", "2001:db8::10", "198.51.100.100", "2001:db8:1::100"
N1, N2, C = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:64"


def run_cbpf(prog: bytes, pkt: bytes) -> int:
    """A classic BPF interpreter for the instructions synack_filter uses: what the kernel keeps."""
    ins = [struct.unpack_from("HBBI", prog, i) for i in range(0, len(prog), 8)]
    a = x = pc = 0
    while True:
        code, jt, jf, k = ins[pc]
        pc += 1
        if code in (0x28, 0x30, 0x50):             # ldh [k], ldb [k], ldb [x+k]
            off = k + (x if code == 0x50 else 0)
            size = 2 if code == 0x28 else 1
            if off + size > len(pkt):
                return 0                           # out of bounds: the kernel drops
            a = int.from_bytes(pkt[off:off + size], "big")
        elif code == 0xb1:                         # ldxb 4*([k]&0xf)
            if k >= len(pkt):
                return 0
            x = (pkt[k] & 0x0F) * 4
        elif code == 0x54:
            a &= k
        elif code == 0x15:
            pc += jt if a == k else jf
        elif code == 0x45:
            pc += jt if a & k else jf
        elif code == 0x06:
            return k
        else:
            raise AssertionError(f"instruction {code:#x} not modelled")


def test_parse_synack_reads_the_tuple_isn_and_source_mac_of_ipv4_and_ipv6_frames():
    s = parse_synack(synack_frame(N2, C, VIP, 9100, CLIENT, 40001, 0xDEADBEEF), 5)
    assert s == SynAck(5, VIP, 9100, CLIENT, 40001, 0xDEADBEEF, 1, N2)
    s6 = parse_synack(synack_frame(N1, C, VIP6, 80, CLIENT6, 40002, 7, ack=0xFFFFFFFF), 6)
    assert s6 == SynAck(6, VIP6, 80, CLIENT6, 40002, 7, 0xFFFFFFFF, N1)


def test_parse_synack_ignores_other_flags_other_sources_and_short_frames():
    frame = synack_frame(N1, C, VIP, 9100, CLIENT, 40001, 1)
    syn_only = frame[:14 + 20 + 13] + bytes([0x02]) + frame[14 + 20 + 14:]
    ack_only = frame[:14 + 20 + 13] + bytes([0x10]) + frame[14 + 20 + 14:]
    assert parse_synack(syn_only, 0) is None and parse_synack(ack_only, 0) is None
    assert parse_synack(frame, 0, vips={"203.0.113.20"}) is None
    assert parse_synack(frame, 0, vips={VIP}) is not None
    assert all(parse_synack(frame[:n], 0) is None for n in range(14 + 20 + 14))   # cut before the flags


def test_synack_frame_checksums_verify():
    frame = synack_frame(N1, C, VIP, 9100, CLIENT, 40001, 12345)
    ip = frame[14:34]
    assert sum(struct.unpack("!10H", ip)) % 0xFFFF == 0      # a header with its checksum sums to all ones
    tcp = frame[34:]
    pseudo = ip[12:20] + struct.pack("!xBH", 6, len(tcp))
    total = sum(struct.unpack(f"!{len(pseudo + tcp) // 2}H", pseudo + tcp))
    assert total % 0xFFFF == 0


def test_two_isns_for_one_tuple_are_a_duplicate_with_both_macs_and_a_retransmission_is_not():
    a = SynAck(0, VIP, 9100, CLIENT, 40001, 111, 501, N1)
    retrans = SynAck(1000 * MS, VIP, 9100, CLIENT, 40001, 111, 501, N1)
    other_flow = SynAck(10 * MS, VIP, 9100, CLIENT, 40002, 999, 501, N2)
    assert duplicates([a, retrans, other_flow]) == []
    second = SynAck(20 * MS, VIP, 9100, CLIENT, 40001, 222, 501, N2)
    [d] = duplicates([a, retrans, second, other_flow])
    assert d.flow == (VIP, 9100, CLIENT, 40001)
    assert d.isns == (111, 222) and d.macs == (N1, N2) and d.t_ns == 20 * MS and d.ack == 501
    assert "0x6f" in str(d) and N2 in str(d)


def test_a_tuple_reused_by_a_later_connection_beyond_the_window_is_not_a_duplicate():
    first = SynAck(0, VIP, 9100, CLIENT, 40001, 111, 501, N1)
    later = SynAck(6000 * MS, VIP, 9100, CLIENT, 40001, 222, 501, N1)
    assert duplicates([first, later], window_ns=5000 * MS) == []
    assert len(duplicates([first, later], window_ns=7000 * MS)) == 1


def test_a_reused_client_port_answered_with_another_isn_is_a_new_attempt_not_a_duplicate():
    """A client reuses a port 3.2 s later; the server's TIME_WAIT socket answers the new SYN with
    its old ISN + 65542. The SYN-ACKs acknowledge two client ISNs: two attempts, one answer each."""
    first = SynAck(0, VIP, 9100, CLIENT, 40001, 0x1000, 0xAAAA0001, N1)
    reused = SynAck(3200 * MS, VIP, 9100, CLIENT, 40001, 0x1000 + 65542, 0xBBBB0001, N1)
    assert duplicates([first, reused]) == []
    forged = SynAck(3201 * MS, VIP, 9100, CLIENT, 40001, 0x7777, 0xBBBB0001, N2)   # same attempt, other stack
    [d] = duplicates([first, reused, forged])
    assert d.ack == 0xBBBB0001 and d.isns == (0x1000 + 65542, 0x7777) and d.macs == (N1, N2)
    assert "0xbbbb0000" in str(d)


def test_the_socket_filter_keeps_every_frame_parse_synack_accepts_and_drops_other_tcp_udp_and_fragments():
    prog = synack_filter()
    rng = random.Random(9)
    bases = [synack_frame(N1, C, VIP, 9100, CLIENT, 40001, 5), synack_frame(N1, C, VIP6, 80, CLIENT6, 1, 5)]
    v4 = bases[0]
    with_options = v4[:14] + b"\x46" + v4[15:34] + b"\x01\x01\x01\x01" + v4[34:]   # IPv4 options: flags move
    bases.append(with_options)
    kept = dropped = 0
    for base in bases:
        off = len(base) - 20 + 13
        for flags in range(256):                   # every flag combination
            f = base[:off] + bytes([flags]) + base[off + 1:]
            verdict = run_cbpf(prog, f)
            if flags & 0x12 == 0x12:
                assert verdict > 0 and parse_synack(f, 0) is not None, (flags, f.hex())
                kept += 1
            else:
                assert verdict == 0, (flags, f.hex())
                dropped += 1
    assert (kept, dropped) == (3 * 64, 3 * 192)
    assert run_cbpf(prog, v4[:20] + b"\x20\x01" + v4[22:]) == 0     # a later fragment
    assert run_cbpf(prog, v4[:23] + b"\x11" + v4[24:]) == 0          # UDP
    assert run_cbpf(prog, v4[:12] + b"\x08\x06" + v4[14:]) == 0     # ARP
    for _ in range(500):                   # garbage: whatever the parser takes, the filter kept
        f = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 90)))
        f = f[:12] + rng.choice([b"\x08\x00", b"\x86\xdd"]) + f[14:] if len(f) > 14 and rng.random() < .7 else f
        if parse_synack(f, 0) is not None:
            assert run_cbpf(prog, f) > 0, f.hex()
