#!/usr/bin/env python3
"""A tiny real server for the integration lab: who answered, and whom it saw.

Run inside a real server's network namespace (``ip netns exec rs1 python
echo_server.py --name rs1 --tcp 8080 --udp 5353 --pidfile /run/rs1.pid``):

* TCP: HTTP/1.x.  ``GET /healthz`` -> 200 ``ok`` (503 while ``--health-file``
  exists, so tests can fail a server without killing it); any other path ->
  200 with the body ``<name> <peer_ip>``.  Keep-alive is honoured, so a test
  can hold an established connection across a reconfiguration.
* UDP: every datagram gets ``<name> <peer_ip>`` back, sent from the address it
  was sent to (IP_PKTINFO / IPV6_PKTINFO), so replies are right for a VIP on
  ``lo`` (DSR) too.
* IPv4 and IPv6: each port is served by an IPv4 socket (``--bind``) and an
  IPv6-only socket (``--bind6``, default ``::``), so an IPv4 peer is reported
  as ``10.99.1.2``, never as ``::ffff:10.99.1.2``.

The peer ip is what tells the tests which NAT mode is really in effect.
Stdlib only and imports kept small: Python starts ~10x slower in the test VM.
The pid file is written only once every socket is bound: it is the readiness
signal.  SIGTERM ends the process.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import socketserver
import struct
import sys
import threading

IP_PKTINFO = getattr(socket, "IP_PKTINFO", 8)
IPV6_RECVPKTINFO = getattr(socket, "IPV6_RECVPKTINFO", 49)
IPV6_PKTINFO = getattr(socket, "IPV6_PKTINFO", 50)
MAX_HEAD = 16384


class _Config:
    name = "server"
    health_file: str | None = None
    log_path: str | None = None
    log_lock = threading.Lock()


def _log(line: str) -> None:
    if _Config.log_path:
        with _Config.log_lock, open(_Config.log_path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def _response(status: int, body: str, keep_alive: bool) -> bytes:
    reason = {200: "OK", 400: "Bad Request", 503: "Service Unavailable"}[status]
    data = body.encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(data)}\r\nX-Server: {_Config.name}\r\n"
            f"Connection: {'keep-alive' if keep_alive else 'close'}\r\n\r\n")
    return head.encode() + data


class HttpHandler(socketserver.BaseRequestHandler):
    """One connection; as many requests as the client sends on it."""

    def handle(self) -> None:
        sock: socket.socket = self.request
        peer = self.client_address[0]
        buf = b""
        while True:
            while b"\r\n\r\n" not in buf:
                try:
                    chunk = sock.recv(4096)
                except OSError:
                    return
                if not chunk:
                    return
                buf += chunk
                if len(buf) > MAX_HEAD:
                    sock.sendall(_response(400, "request head too large\n", False))
                    return
            head, buf = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            parts = lines[0].split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
                sock.sendall(_response(400, "bad request line\n", False))
                return
            path, version = parts[1], parts[2]
            headers = {k.strip().lower(): v.strip() for k, _, v in
                       (h.partition(":") for h in lines[1:])}
            conn = headers.get("connection", "").lower()
            keep = conn == "keep-alive" or (version == "HTTP/1.1" and conn != "close")
            if path == "/healthz":
                healthy = not (_Config.health_file and os.path.exists(_Config.health_file))
                status, body = (200, "ok\n") if healthy else (503, "unhealthy\n")
            else:
                status, body = 200, f"{_Config.name} {peer}\n"
            _log(f"tcp {peer} {path} {status}")
            try:
                sock.sendall(_response(status, body, keep))
            except OSError:
                return
            if not keep:
                return


class HttpServer(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


class HttpServer6(HttpServer):
    address_family = socket.AF_INET6

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        super().server_bind()


def serve_udp(port: int, bind: str, v6: bool = False) -> threading.Thread:
    """Echo ``<name> <peer_ip>`` from the address each datagram was sent to."""
    sock = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if v6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
    sock.bind((bind, port))

    def loop() -> None:
        while True:
            data, anc, _flags, addr = sock.recvmsg(2048, socket.CMSG_SPACE(20))
            local = None
            for level, kind, cdata in anc:
                if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(cdata) >= 12:
                    local = cdata[8:12]          # struct in_pktinfo: ifindex, spec_dst, addr
                elif level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(cdata) >= 16:
                    local = cdata[:16]           # struct in6_pktinfo: addr, ifindex
            reply = f"{_Config.name} {addr[0]}\n".encode()
            _log(f"udp {addr[0]} - 200")
            if local is None:
                sock.sendto(reply, addr)
            elif v6:
                pktinfo = struct.pack("=16si", local, 0)
                sock.sendmsg([reply], [(socket.IPPROTO_IPV6, IPV6_PKTINFO, pktinfo)], 0, addr)
            else:
                pktinfo = struct.pack("=i4s4s", 0, local, b"\0\0\0\0")
                sock.sendmsg([reply], [(socket.IPPROTO_IP, IP_PKTINFO, pktinfo)], 0, addr)

    t = threading.Thread(target=loop, daemon=True, name=f"udp{port}")
    t.start()
    return t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--name", required=True, help="name put in every answer")
    ap.add_argument("--tcp", type=int, action="append", default=[], help="HTTP port (repeatable)")
    ap.add_argument("--udp", type=int, action="append", default=[], help="UDP echo port (repeatable)")
    ap.add_argument("--bind", default="0.0.0.0")
    ap.add_argument("--bind6", default="::", help="IPv6 address to serve on too ('' for none)")
    ap.add_argument("--pidfile", help="written once all ports are bound")
    ap.add_argument("--health-file", help="while this file exists /healthz answers 503")
    ap.add_argument("--log", help="append one line per request: proto peer path status")
    args = ap.parse_args(argv)
    if not args.tcp and not args.udp:
        ap.error("give at least one --tcp or --udp port")
    _Config.name, _Config.health_file, _Config.log_path = args.name, args.health_file, args.log

    servers = [HttpServer((args.bind, port), HttpHandler) for port in args.tcp]
    if args.bind6:
        servers += [HttpServer6((args.bind6, port, 0, 0), HttpHandler) for port in args.tcp]
    for port in args.udp:
        serve_udp(port, args.bind)
        if args.bind6:
            serve_udp(port, args.bind6, v6=True)
    for srv in servers:
        threading.Thread(target=srv.serve_forever, daemon=True, name=f"tcp{srv.server_address[1]}").start()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if args.pidfile:
        tmp = f"{args.pidfile}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, args.pidfile)
    print(f"{args.name}: tcp {args.tcp} udp {args.udp} on {args.bind} {args.bind6}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(3600):
            pass
    finally:
        if args.pidfile:
            try:
                os.unlink(args.pidfile)
            except FileNotFoundError:
                pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
