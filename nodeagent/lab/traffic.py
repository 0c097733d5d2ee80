"""Traffic programs run inside lab namespaces: a named echo server and bounded clients.

  python -m nodeagent.lab.traffic serve --name n1 --tcp 80 --udp 5000 [--echo 9100]
  python -m nodeagent.lab.traffic tcp --vip 203.0.113.10 --port 80 --src A --src B --per-src 10
  python -m nodeagent.lab.traffic udp --vip 203.0.113.10 --port 5000 --src A --per-src 10
  python -m nodeagent.lab.traffic steady --vip ... --port 80 --src ... --seconds 8 --rate 50
  python -m nodeagent.lab.traffic neigh --vip 203.0.113.10 --iface eth0
Every client is bounded in count and time and prints one JSON document on stdout.
`--echo PORT` holds long-lived TCP connections (thousands at once, one selector) and answers
every line received with "<node name> <line>\n"; holder.py is its client.
"""
from __future__ import annotations

import argparse
import ipaddress
import json
import resource
import selectors
import socket
import sys
import threading
import time

ETH_P_ALL = 0x0003


ECHO_LINE_MAX = 4096          # an echo client's line longer than this is a protocol error: drop the connection


class _EchoConn:
    """One long-lived echo connection: bytes read but not yet a full line, bytes not yet sent."""
    __slots__ = ("sock", "peer", "inbuf", "outbuf")

    def __init__(self, sock: socket.socket, peer):
        self.sock, self.peer, self.inbuf, self.outbuf = sock, peer, b"", b""


def raise_nofile(want: int) -> int:
    """Raise this process's open-file limit to `want` if it is lower (the hard limit too, when
    allowed: the lab runs as root); returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft >= want:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, max(want, hard)))
        return want
    except (ValueError, OSError):           # not allowed above the hard limit: take what there is
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard


def _listen_tcp(port: int) -> socket.socket:
    # One dual-stack socket per port takes IPv4 and IPv6 connections alike.
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    s.bind(("::", port))
    s.listen(4096)
    s.setblocking(False)
    return s


def serve(name: str, tcp_ports: list[int], udp_ports: list[int], echo_ports: list[int] = ()) -> None:
    """Answer each TCP connection and UDP datagram with this node's name; on the echo ports,
    keep each connection open and answer every line with "<name> <line>"."""
    sel = selectors.DefaultSelector()
    reply = (name + "\n").encode()
    prefix = (name + " ").encode()
    if echo_ports:
        raise_nofile(65536)
    for port in tcp_ports:
        sel.register(_listen_tcp(port), selectors.EVENT_READ, "tcp")
    for port in echo_ports:
        sel.register(_listen_tcp(port), selectors.EVENT_READ, "echo")
    for port in udp_ports:
        s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        # Reply from the address the datagram was sent to (the VIP), not the node address.
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        s.bind(("::", port))
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, "udp")

    def drop(c: _EchoConn, why: str) -> None:
        if why != "eof":
            print(f"event=echo_conn_dropped peer={c.peer[0]} port={c.peer[1]} reason={why}", flush=True)
        sel.unregister(c.sock)
        c.sock.close()

    def flush(c: _EchoConn) -> None:
        try:
            n = c.sock.send(c.outbuf)
        except BlockingIOError:
            n = 0
        except OSError as e:
            drop(c, type(e).__name__)
            return
        c.outbuf = c.outbuf[n:]
        sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.outbuf else 0), c)

    def echo(c: _EchoConn, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data = c.sock.recv(65536)
            except BlockingIOError:
                data = None
            except OSError as e:
                drop(c, type(e).__name__)
                return
            if data == b"":
                drop(c, "eof")
                return
            if data:
                c.inbuf += data
                *lines, c.inbuf = c.inbuf.split(b"\n")
                if len(c.inbuf) > ECHO_LINE_MAX:
                    drop(c, "line_too_long")
                    return
                if lines:
                    c.outbuf += b"".join(prefix + line + b"\n" for line in lines)
        if c.outbuf:
            flush(c)

    print(f"serving {name}", flush=True)
    while True:
        for key, mask in sel.select():
            s = key.fileobj
            if isinstance(key.data, _EchoConn):
                echo(key.data, mask)
            elif key.data == "echo":
                for _ in range(64):          # a burst of opens: take what is queued, then serve the rest
                    try:
                        conn, peer = s.accept()
                    except (BlockingIOError, ConnectionAbortedError):
                        break
                    except OSError as e:     # out of files: leave it queued, say so once per burst
                        print(f"event=echo_accept_failed port={s.getsockname()[1]} error={e!r}", flush=True)
                        break
                    conn.setblocking(False)
                    sel.register(conn, selectors.EVENT_READ, _EchoConn(conn, peer))
            elif key.data == "tcp":
                try:
                    conn, peer = s.accept()
                except (BlockingIOError, ConnectionAbortedError):
                    continue
                try:
                    conn.sendall(reply)
                except OSError as e:
                    # The client gave up first (it reset while we were stopped or slow): its
                    # connection is gone, the server is not; keep serving the others.
                    print(f"event=reply_failed peer={peer[0]} port={peer[1]} error={type(e).__name__}", flush=True)
                finally:
                    conn.close()
            else:
                try:
                    data, anc, _, peer = s.recvmsg(2048, socket.CMSG_SPACE(20))
                except BlockingIOError:
                    continue
                cmsg = [(lvl, typ, d) for lvl, typ, d in anc
                        if lvl == socket.IPPROTO_IPV6 and typ == socket.IPV6_PKTINFO]
                s.sendmsg([reply + data[:64]], [(socket.IPPROTO_IPV6, socket.IPV6_PKTINFO,
                                                 cmsg[0][2])] if cmsg else [], 0, peer)


def _family(vip: str) -> int:
    return socket.AF_INET6 if ipaddress.ip_address(vip).version == 6 else socket.AF_INET


def tcp_once(vip: str, port: int, src: str, timeout: float) -> dict:
    s = socket.socket(_family(vip), socket.SOCK_STREAM)
    s.settimeout(timeout)
    try:
        s.bind((src, 0))
        sport = s.getsockname()[1]
        s.connect((vip, port))
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(64)
            if not chunk:
                break
            data += chunk
        node = data.decode().strip()
        return {"src": src, "sport": sport, "node": node or None,
                "error": None if node else "empty reply"}
    except OSError as e:
        return {"src": src, "sport": None, "node": None, "error": f"{type(e).__name__}: {e}"}
    finally:
        s.close()


def tcp_clients(vip: str, port: int, sources: list[str], per_src: int, timeout: float) -> list[dict]:
    results = []
    for _ in range(per_src):
        for src in sources:
            results.append(tcp_once(vip, port, src, timeout))
    return results


def udp_clients(vip: str, port: int, sources: list[str], per_src: int, wait: float) -> list[dict]:
    """One datagram per (source, round) from a fresh socket; counts every reply it gets."""
    results = []
    socks = []
    for r in range(per_src):
        for src in sources:
            s = socket.socket(_family(vip), socket.SOCK_DGRAM)
            s.bind((src, 0))
            s.setblocking(False)
            tag = f"{src}/{r}".encode()
            s.sendto(tag, (vip, port))
            socks.append((s, src, s.getsockname()[1]))
    deadline = time.time() + wait
    replies: dict[int, list[str]] = {i: [] for i in range(len(socks))}
    while time.time() < deadline:
        for i, (s, _, _) in enumerate(socks):
            try:
                while True:
                    data = s.recv(2048)
                    replies[i].append(data.split(b"\n", 1)[0].decode())
            except BlockingIOError:
                pass
        time.sleep(0.02)
    for i, (s, src, sport) in enumerate(socks):
        results.append({"src": src, "sport": sport, "replies": replies[i]})
        s.close()
    return results


def steady(vip: str, port: int, sources: list[str], seconds: float, rate: float, timeout: float) -> list[dict]:
    """Connections at a fixed rate for a fixed time, each in its own thread (bounded)."""
    results: list[dict] = []
    lock = threading.Lock()
    threads = []
    start = time.time()
    i = 0
    while time.time() - start < seconds:
        src = sources[i % len(sources)]

        def one(src=src, t=time.time() - start):
            r = tcp_once(vip, port, src, timeout)
            r["t"] = round(t, 3)
            with lock:
                results.append(r)
        th = threading.Thread(target=one)
        th.start()
        threads.append(th)
        i += 1
        time.sleep(1.0 / rate)
    for th in threads:
        th.join(timeout + 1)
    return results


def neigh_probe(vip: str, iface: str, wait: float) -> dict:
    """Send one ARP request (IPv4 VIP) or NS (IPv6 VIP) and collect every answer."""
    ip = ipaddress.ip_address(vip)
    with socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL)) as s:
        return {"vip": vip, "answers": _probe(s, ip, iface, wait)}


def _probe(s: socket.socket, ip, iface: str, wait: float) -> list[dict]:
    from nodeagent import neighbour
    s.bind((iface, ETH_P_ALL))
    mac = s.getsockname()[4]
    from pyroute2 import IPRoute
    family = socket.AF_INET if ip.version == 4 else socket.AF_INET6
    with IPRoute() as ipr:     # our own address on the iface is the sender, as for a real client
        idx = ipr.link_lookup(ifname=iface)[0]
        own = next(ipaddress.ip_address(a.get("IFA_ADDRESS")) for a in ipr.get_addr(index=idx, family=family)
                   if not ipaddress.ip_address(a.get("IFA_ADDRESS")).is_link_local)
    if ip.version == 4:
        req = neighbour.arp_request(mac, mac, own.packed, ip.packed)
    else:
        req = neighbour.neighbour_solicitation(mac, own.packed, ip.packed)
    s.settimeout(0.1)
    s.send(req)
    answers = []
    deadline = time.time() + wait
    while time.time() < deadline:
        try:
            frame, addr = s.recvfrom(2048)
        except socket.timeout:
            continue
        if addr[2] == 4:   # our own outgoing frame
            continue
        if ip.version == 4 and frame[12:14] == b"\x08\x06" and frame[20:22] == b"\x00\x02" \
                and frame[28:32] == ip.packed:
            answers.append({"eth_src": frame[6:12].hex(":"), "mac": frame[22:28].hex(":")})
        if ip.version == 6 and frame[12:14] == b"\x86\xdd" and len(frame) >= 86 and frame[20] == 58 \
                and frame[54] == 136 and frame[62:78] == ip.packed:
            ok = neighbour.icmpv6_checksum(frame[22:38], frame[38:54], frame[54:54 + 32]) == 0
            answers.append({"eth_src": frame[6:12].hex(":"), "mac": frame[80:86].hex(":"),
                            "checksum_ok": ok})
    return answers


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m nodeagent.lab.traffic")
    sub = p.add_subparsers(dest="cmd", required=True)
    sv = sub.add_parser("serve")
    sv.add_argument("--name", required=True)
    sv.add_argument("--tcp", type=int, action="append", default=[])
    sv.add_argument("--udp", type=int, action="append", default=[])
    sv.add_argument("--echo", type=int, action="append", default=[],
                    help="a TCP port whose connections stay open and get every line echoed, prefixed by the name")
    for name in ("tcp", "udp", "steady"):
        c = sub.add_parser(name)
        c.add_argument("--vip", required=True)
        c.add_argument("--port", type=int, required=True)
        c.add_argument("--src", action="append", required=True)
        c.add_argument("--per-src", type=int, default=1)
        c.add_argument("--timeout", type=float, default=2.0)
        c.add_argument("--seconds", type=float, default=5.0)
        c.add_argument("--rate", type=float, default=50.0)
    n = sub.add_parser("neigh")
    n.add_argument("--vip", required=True)
    n.add_argument("--iface", default="eth0")
    n.add_argument("--wait", type=float, default=1.0)
    a = p.parse_args(argv)
    if a.cmd == "serve":
        serve(a.name, a.tcp, a.udp, a.echo)
        return 0
    if a.cmd == "tcp":
        out = tcp_clients(a.vip, a.port, a.src, a.per_src, a.timeout)
    elif a.cmd == "udp":
        out = udp_clients(a.vip, a.port, a.src, a.per_src, a.timeout)
    elif a.cmd == "steady":
        out = steady(a.vip, a.port, a.src, a.seconds, a.rate, a.timeout)
    else:
        out = neigh_probe(a.vip, a.iface, a.wait)
    json.dump(out, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
