"""Duplicate SYN-ACK detection on the client's side of the farm, and its pure analysis.

Every node sees every packet, so a handshake in flight at a bucket move could be answered by
two nodes' stacks: the client then sees two SYN-ACKs for one connection attempt with different
initial sequence numbers (a retransmission repeats its ISN). A connection attempt is the
4-tuple and the client's ISN, which every SYN-ACK acknowledges (its ack number is that ISN + 1):
a client port reused by a new connection a moment later is a new attempt, and the server's
TIME_WAIT socket may well answer it with another ISN; that is not a duplicate. This watcher
captures, in the lab's client namespace, every TCP SYN-ACK that arrives from a VIP (AF_PACKET
on the client's eth0, where the bridge delivers the nodes' frames; a classic BPF socket filter
keeps everything but SYN-ACKs in the kernel), and reports every attempt answered with two
different ISNs within --window-ms, with the source MACs seen (which node's stack answered).

  python -m nodeagent.lab.synack_watch --vip 203.0.113.10 [--vip ...] --out synack.jsonl \
      --seconds 20 [--iface eth0] [--window-ms 5000] [--stop-file PATH]

Output (JSONL, flushed every 100 ms, CLOCK_MONOTONIC ns):
  {"type": "start", ...}
  {"type": "synack", "t_ns", "src", "sport", "dst", "dport", "isn", "ack", "mac"}   one per SYN-ACK
  {"type": "duplicate", "t_ns", "src", "sport", "dst", "dport", "ack", "isns", "macs"}   when seen
  {"type": "end", "t_ns", "synacks", "duplicates", "kernel_drops"}
kernel_drops (the socket's PACKET_STATISTICS) must be 0 for "no duplicate" to mean anything.
"""
from __future__ import annotations

import argparse
import ctypes
import ipaddress
import json
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass
from typing import Iterable

from .prober import finished, wait_for

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_STATISTICS = 6
SO_ATTACH_FILTER = 26
TCP_SYN, TCP_ACK = 0x02, 0x10
MS = 1_000_000


# -- analysis (pure) --------------------------------------------------------------------------
@dataclass(frozen=True)
class SynAck:
    t_ns: int
    src: str          # the answering address (the VIP)
    sport: int
    dst: str          # the client
    dport: int
    isn: int
    ack: int          # the client's ISN + 1: which connection attempt this answers
    mac: str          # the frame's source MAC

    @property
    def flow(self) -> tuple[str, int, str, int]:
        return (self.src, self.sport, self.dst, self.dport)

    @property
    def attempt(self) -> tuple[str, int, str, int, int]:
        return (*self.flow, self.ack)


@dataclass(frozen=True)
class Duplicate:
    """One connection attempt (4-tuple and client ISN) answered by two or more different
    SYN-ACKs (ISNs) within the window."""
    flow: tuple[str, int, str, int]
    ack: int                   # the attempt's client ISN + 1
    t_ns: int                  # the first different SYN-ACK's arrival
    isns: tuple[int, ...]
    macs: tuple[str, ...]

    def __str__(self) -> str:
        src, sport, dst, dport = self.flow
        return (f"{dst}:{dport} -> {src}:{sport} (client ISN {self.ack - 1 & 0xFFFFFFFF:#x}) got "
                f"{len(self.isns)} SYN-ACKs, ISNs "
                f"{', '.join(hex(i) for i in self.isns)} from MACs {', '.join(self.macs)} (t_ns={self.t_ns})")


def parse_synack(frame: bytes, t_ns: int, vips: set[str] | None = None) -> SynAck | None:
    """The SYN-ACK in an Ethernet frame (IPv4 or IPv6, TCP, SYN and ACK set), or None; only those
    from `vips` when given. Malformed and truncated frames are None, never an exception."""
    if len(frame) < 14:
        return None
    ethertype = struct.unpack_from("!H", frame, 12)[0]
    if ethertype == 0x0800:
        if len(frame) < 34 or frame[14] >> 4 != 4:
            return None
        ihl = (frame[14] & 0x0F) * 4
        if ihl < 20 or frame[23] != socket.IPPROTO_TCP or struct.unpack_from("!H", frame, 20)[0] & 0x1FFF:
            return None
        src, dst = socket.inet_ntop(socket.AF_INET, frame[26:30]), socket.inet_ntop(socket.AF_INET, frame[30:34])
        tcp = 14 + ihl
    elif ethertype == 0x86DD:
        if len(frame) < 54 or frame[14] >> 4 != 6 or frame[20] != socket.IPPROTO_TCP:
            return None
        src, dst = socket.inet_ntop(socket.AF_INET6, frame[22:38]), socket.inet_ntop(socket.AF_INET6, frame[38:54])
        tcp = 54
    else:
        return None
    if len(frame) < tcp + 14:
        return None
    sport, dport, seq, ack = struct.unpack_from("!HHII", frame, tcp)
    flags = frame[tcp + 13]
    if flags & (TCP_SYN | TCP_ACK) != TCP_SYN | TCP_ACK:
        return None
    if vips is not None and src not in vips:
        return None
    return SynAck(t_ns, src, sport, dst, dport, seq, ack, frame[6:12].hex(":"))


def duplicates(synacks: Iterable[SynAck], window_ns: int = 5_000 * MS) -> list[Duplicate]:
    """Every connection attempt (4-tuple and the client ISN the SYN-ACK acknowledges) answered
    by SYN-ACKs with different ISNs less than window_ns apart. A retransmission repeats its ISN,
    and a new connection on a reused client port acknowledges another client ISN: neither is a
    duplicate."""
    by_attempt: dict[tuple, list[SynAck]] = {}
    for s in sorted(synacks, key=lambda s: s.t_ns):
        by_attempt.setdefault(s.attempt, []).append(s)
    out = []
    for seen in by_attempt.values():
        group: list[SynAck] = []
        for s in seen:
            if group and s.t_ns - group[-1].t_ns >= window_ns:
                out += _duplicate(group)
                group = []
            group.append(s)
        out += _duplicate(group)
    return sorted(out, key=lambda d: d.t_ns)


def _duplicate(group: list[SynAck]) -> list[Duplicate]:
    isns = list(dict.fromkeys(s.isn for s in group))
    if len(isns) < 2:
        return []
    first = group[0]
    second = next(s for s in group if s.isn != first.isn)
    return [Duplicate(first.flow, first.ack, second.t_ns, tuple(isns), tuple(dict.fromkeys(s.mac for s in group)))]


def _csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def synack_frame(src_mac: str, dst_mac: str, src: str, sport: int, dst: str, dport: int, isn: int,
                 ack: int = 1) -> bytes:
    """An Ethernet frame carrying a TCP SYN-ACK from src:sport to dst:dport with initial sequence
    number `isn`, checksums right (IPv4 or IPv6, by the addresses): what a node's stack sends."""
    s_ip, d_ip = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    tcp = struct.pack("!HHIIBBHHH", sport, dport, isn, ack, 5 << 4, TCP_SYN | TCP_ACK, 64240, 0, 0)
    pseudo = s_ip.packed + d_ip.packed + (struct.pack("!xBH", socket.IPPROTO_TCP, len(tcp)) if s_ip.version == 4
                                          else struct.pack("!IxxxB", len(tcp), socket.IPPROTO_TCP))
    csum = _csum(pseudo + tcp)
    tcp = tcp[:16] + struct.pack("!H", csum) + tcp[18:]
    if s_ip.version == 4:
        hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 0, 0x4000, 64, socket.IPPROTO_TCP, 0,
                          s_ip.packed, d_ip.packed)
        ip = hdr[:10] + struct.pack("!H", _csum(hdr)) + hdr[12:] + tcp
        ethertype = 0x0800
    else:
        ip = struct.pack("!IHBB", 6 << 28, len(tcp), socket.IPPROTO_TCP, 64) + s_ip.packed + d_ip.packed + tcp
        ethertype = 0x86DD
    return bytes.fromhex(dst_mac.replace(":", "")) + bytes.fromhex(src_mac.replace(":", "")) \
        + struct.pack("!H", ethertype) + ip


def load_synacks(path: str) -> list[SynAck]:
    out = []
    try:
        with open(path) as f:
            for line in f:
                try:
                    d = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if d.get("type") == "synack":
                    out.append(SynAck(d["t_ns"], d["src"], d["sport"], d["dst"], d["dport"], d["isn"], d["ack"],
                                      d["mac"]))
    except FileNotFoundError:
        pass
    return out


def read_end(path: str) -> dict | None:
    try:
        with open(path) as f:
            for line in f:
                if '"type": "end"' in line:
                    return json.loads(line)
    except (OSError, json.JSONDecodeError):
        pass
    return None


# -- the capture (runs in the client namespace) -----------------------------------------------
def _ins(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k)


def synack_filter() -> bytes:
    """A classic BPF program accepting IPv4/IPv6 TCP frames with SYN and ACK set (IPv4 first
    fragments only; IPv6 without extension headers, as the lab sends), 256 bytes of each."""
    LDH, LDB, LDBI, LDXMSH = 0x28, 0x30, 0x50, 0xb1
    JEQ, JSET, AND, RET = 0x15, 0x45, 0x54, 0x06
    prog = [
        _ins(LDH, 0, 0, 12),                 # 0  ethertype
        _ins(JEQ, 2, 0, 0x0800),             # 1  -> 4 (IPv4)
        _ins(JEQ, 9, 0, 0x86DD),             # 2  -> 12 (IPv6)
        _ins(RET, 0, 0, 0),                  # 3  drop
        _ins(LDB, 0, 0, 23),                 # 4  IPv4 protocol
        _ins(JEQ, 0, 13, 6),                 # 5  TCP? else -> 19 drop
        _ins(LDH, 0, 0, 20),                 # 6  fragment offset
        _ins(JSET, 11, 0, 0x1FFF),           # 7  a later fragment -> 19 drop
        _ins(LDXMSH, 0, 0, 14),              # 8  X = IPv4 header length
        _ins(LDBI, 0, 0, 14 + 13),           # 9  TCP flags
        _ins(AND, 0, 0, 0x12),               # 10
        _ins(JEQ, 6, 7, 0x12),               # 11 SYN+ACK -> 18 accept, else -> 19 drop
        _ins(LDB, 0, 0, 20),                 # 12 IPv6 next header
        _ins(JEQ, 0, 5, 6),                  # 13 TCP? else -> 19 drop
        _ins(LDB, 0, 0, 14 + 40 + 13),       # 14 TCP flags
        _ins(AND, 0, 0, 0x12),               # 15
        _ins(JEQ, 1, 2, 0x12),               # 16 SYN+ACK -> 18 accept, else -> 19 drop
        _ins(RET, 0, 0, 0),                  # 17 (unused)
        _ins(RET, 0, 0, 256),                # 18 accept
        _ins(RET, 0, 0, 0),                  # 19 drop
    ]
    return b"".join(prog)


def _attach_filter(sock: socket.socket, prog: bytes) -> None:
    buf = ctypes.create_string_buffer(prog)
    fprog = struct.pack("HL", len(prog) // 8, ctypes.addressof(buf))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)


def watch(vips: list[str], out_path: str, seconds: float, iface: str = "eth0", window_ms: float = 5000,
          stop_file: str | None = None) -> list[Duplicate]:
    """Capture SYN-ACKs from `vips` on `iface` until `seconds` pass or stop_file appears."""
    if not vips:
        raise ValueError("synack_watch: no --vip given; name the VIPs whose SYN-ACKs to watch")
    if not 0 < seconds <= 600:
        raise ValueError(f"synack_watch: --seconds {seconds} is out of range; give 0 < seconds <= 600")
    want = {str(ipaddress.ip_address(v)) for v in vips}
    window = int(window_ms * MS)
    # Protocol 0 receives nothing until bound: the filter is in place before the first frame.
    sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    _attach_filter(sock, synack_filter())
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    sock.bind((iface, ETH_P_ALL))
    sock.settimeout(0.05)
    t0 = time.monotonic_ns()
    end = t0 + int(seconds * 1e9)
    out = open(out_path, "w")
    out.write(json.dumps({"type": "start", "t_ns": t0, "vips": sorted(want), "iface": iface,
                          "window_ms": window_ms}) + "\n")
    out.flush()
    pending: list[str] = []
    recent: dict[tuple, list[SynAck]] = {}
    reported: set[tuple] = set()
    found: list[Duplicate] = []
    count = drops = 0
    last_flush = last_stop_check = t0
    try:
        while True:
            now = time.monotonic_ns()
            if now >= end:
                break
            if stop_file and now - last_stop_check >= 50 * MS:
                last_stop_check = now
                if os.path.exists(stop_file):
                    break
            try:
                frame, addr = sock.recvfrom(2048)
            except socket.timeout:
                frame = None
            now = time.monotonic_ns()
            if frame is not None and addr[2] != PACKET_OUTGOING:
                s = parse_synack(frame, now, want)
                if s is not None:
                    count += 1
                    pending.append(json.dumps({"type": "synack", "t_ns": s.t_ns, "src": s.src, "sport": s.sport,
                                               "dst": s.dst, "dport": s.dport, "isn": s.isn, "ack": s.ack,
                                               "mac": s.mac}))
                    seen = [x for x in recent.get(s.attempt, []) if now - x.t_ns < window] + [s]
                    recent[s.attempt] = seen
                    for d in duplicates(seen, window):
                        key = (d.flow, d.ack, d.isns)
                        if key not in reported:
                            reported.add(key)
                            found.append(d)
                            src, sport, dst, dport = d.flow
                            pending.append(json.dumps({"type": "duplicate", "t_ns": d.t_ns, "src": src,
                                                       "sport": sport, "dst": dst, "dport": dport, "ack": d.ack,
                                                       "isns": list(d.isns), "macs": list(d.macs)}))
            if now - last_flush >= 100 * MS:
                if len(recent) > 50_000:       # bounded memory: forget flows older than the window
                    recent = {f: v for f, v in recent.items() if now - v[-1].t_ns < window}
                if pending:
                    out.write("\n".join(pending) + "\n")
                    out.flush()
                    pending.clear()
                last_flush = now
    finally:
        try:
            drops = struct.unpack("II", sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8))[1]
        except OSError:
            drops = -1
        sock.close()
        pending.append(json.dumps({"type": "end", "t_ns": time.monotonic_ns(), "synacks": count,
                                   "duplicates": len(found), "kernel_drops": drops}))
        out.write("\n".join(pending) + "\n")
        out.close()
    return found


def inject_synack(iface: str, dst_mac: str, src: str, sport: int, dst: str, dport: int, isn: int,
                  ack: int) -> bytes:
    """Send one crafted SYN-ACK out of `iface` (from its own MAC): a second stack answering the
    handshake whose client ISN is ack - 1, for proving the watch reports it. Returns the frame."""
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
        s.bind((iface, 0))
        mac = s.getsockname()[4].hex(":")
        frame = synack_frame(mac, dst_mac, src, sport, dst, dport, isn, ack)
        s.send(frame)
    return frame


# -- spawning it in a lab ---------------------------------------------------------------------
@dataclass
class RunningWatch:
    lab: object
    path: str
    stop_file: str
    proc: object
    window_ms: float

    def synacks(self) -> list[SynAck]:
        return load_synacks(self.path)

    def duplicates(self) -> list[Duplicate]:
        return duplicates(self.synacks(), int(self.window_ms * MS))

    def wait_started(self, timeout: float = 10) -> None:
        def started():
            if self.proc.poll() is not None:
                raise AssertionError(f"synack watch exited with {self.proc.returncode}:\n"
                                     f"{self.lab.log(os.path.basename(self.path) + '.log')}")
            return os.path.exists(self.path) and os.path.getsize(self.path) > 0
        wait_for(started, timeout, f"the SYN-ACK watch to start capturing ({self.path})")

    def stop(self, timeout: float = 10) -> dict:
        """Stop it; its end line (synacks, duplicates, kernel_drops)."""
        open(self.stop_file, "w").close()
        self.proc.wait(timeout=timeout)
        end = read_end(self.path)
        if end is None or not finished(self.path):
            raise AssertionError(f"synack watch did not write its end line:\n"
                                 f"{self.lab.log(os.path.basename(self.path) + '.log')}")
        return end


_runs = iter(range(1, 1 << 30))


def spawn_watch(lab, vips: list[str], seconds: float = 60, iface: str = "eth0",
                window_ms: float = 5000) -> RunningWatch:
    """Start a SYN-ACK watch in the lab's client namespace; .wait_started() before traffic."""
    path = os.path.join(lab.workdir, f"synack{next(_runs)}.jsonl")
    stop = path + ".stop"
    args = [sys.executable, "-m", "nodeagent.lab.synack_watch", "--out", path, "--stop-file", stop,
            "--seconds", str(seconds), "--iface", iface, "--window-ms", str(window_ms)]
    for v in vips:
        args += ["--vip", v]
    proc = lab.spawn(lab.client, args, log_name=os.path.basename(path) + ".log")
    return RunningWatch(lab, path, stop, proc, window_ms)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodeagent.lab.synack_watch")
    p.add_argument("--vip", action="append", required=True, help="a VIP whose SYN-ACKs to watch (repeat)")
    p.add_argument("--out", required=True, help="JSONL output file")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--iface", default="eth0", help="the client's interface (the lab client's eth0)")
    p.add_argument("--window-ms", type=float, default=5000.0,
                   help="two ISNs for one connection attempt within this time are a duplicate")
    p.add_argument("--stop-file")
    a = p.parse_args(argv)
    found = watch(a.vip, a.out, a.seconds, a.iface, a.window_ms, a.stop_file)
    print(json.dumps({"event": "synack_watch_done", "out": a.out, "duplicates": len(found)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
