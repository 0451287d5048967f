#!/usr/bin/env python3
"""TFTP in the lab: tftpd-hpa on the real servers, the stock client and a strict one.

* ``start_tftpd`` / ``stop_tftpd``: tftpd-hpa (``in.tftpd``) in a namespace, serving a directory.
* ``tftp_cli_get``: the stock tftp-hpa client; returns the bytes. It accepts DATA from any
  source address (it only learns the port), so it cannot show where the answer came from.
* ``tftp_get`` / ``tftp_put``: a strict RFC 1350 client that accepts answers only from the
  address it asked (as a PXE ROM does) and returns the (ip, port) they came from.
"""
from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import socket
import struct
import subprocess
import tempfile
from pathlib import Path

from lab import ns_socket, wait_for

TFTP_PORT = 69
OP_RRQ, OP_WRQ, OP_DATA, OP_ACK, OP_ERROR = 1, 2, 3, 4, 5


def _socket(ns: str | None, host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.socket(family, socket.SOCK_DGRAM) if ns is None else ns_socket(ns, family, socket.SOCK_DGRAM)


# ---- tftpd-hpa ----------------------------------------------------------------------
def start_tftpd(ns: str, address: str, directory: str | Path, port: int = TFTP_PORT,
                writable: bool = False) -> subprocess.Popen:
    """Start ``in.tftpd --foreground`` in ``ns`` bound to address:port, serving ``directory``,
    and wait until it listens.

    ``writable`` allows uploads of new files (``--create --permissive``; the directory must be
    writable).  ``ip netns exec`` execs in.tftpd, so the Popen's pid is the daemon's.
    """
    bind = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    argv = ["ip", "netns", "exec", ns, "in.tftpd", "--foreground", "--listen",
            "--address", bind, "--secure", "--user", "root"]
    if writable:
        argv += ["--create", "--permissive"]
    argv.append(str(directory))
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)

    def listening() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"in.tftpd in {ns} on {bind} exited {proc.returncode}")
        return bool(subprocess.run(["ip", "netns", "exec", ns, "ss", "-Hlun", f"src {bind}"],
                                   capture_output=True, text=True).stdout.strip())
    wait_for(listening, what=f"tftpd in {ns} on {bind}")
    return proc


def stop_tftpd(proc: subprocess.Popen, timeout: float = 10) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ---- clients ---------------------------------------------------------------------------
def tftp_cli_get(ns: str, host: str, filename: str, port: int = TFTP_PORT, timeout: float = 30) -> bytes:
    """Download with the tftp-hpa client in ``ns``; returns the bytes (raises on failure)."""
    with tempfile.TemporaryDirectory() as d:
        cp = subprocess.run(["ip", "netns", "exec", ns, "tftp", host, str(port), "-c", "get", filename,
                             os.path.join(d, "out")], capture_output=True, text=True, timeout=timeout)
        out = Path(d, "out")
        if cp.returncode != 0 or cp.stdout.strip() or cp.stderr.strip() or not out.exists():
            raise RuntimeError(f"tftp get {filename} from {host}: rc={cp.returncode} {cp.stdout}{cp.stderr}")
        return out.read_bytes()


class _Exchange:
    """One strict TFTP exchange: sends a packet, resends the last one on silence, and
    takes answers only from ``host`` (once it answered, only from that port: its TID)."""

    def __init__(self, s: socket.socket, host: str, port: int, retries: int) -> None:
        self.s, self.host, self.retries = s, host, retries
        self.dest: tuple[str, int] = (host, port)
        self.peer: tuple[str, int] | None = None
        self.last = b""

    def send(self, pkt: bytes) -> None:
        self.last = pkt
        self.s.sendto(pkt, self.dest)

    def receive(self, what: str) -> tuple[int, int, bytes]:
        """The next (opcode, block, payload) from the server; an ERROR packet raises."""
        tries = 0
        while True:
            try:
                pkt, src = self.s.recvfrom(65536)
            except socket.timeout:
                tries += 1
                if tries > self.retries:
                    raise TimeoutError(f"no TFTP {what} from {self.host} (peer {self.peer})") from None
                self.s.sendto(self.last, self.dest)
                continue
            if ipaddress.ip_address(src[0]) != ipaddress.ip_address(self.host):
                raise RuntimeError(f"TFTP reply from {src[0]}:{src[1]}, expected {self.host}: not the VIP")
            if self.peer is None:
                self.peer = self.dest = src[:2]
            elif src[:2] != self.peer:
                continue                      # another TID: RFC 1350 says send ERROR; ignore
            op, n = struct.unpack("!HH", pkt[:4])
            if op == OP_ERROR:
                raise RuntimeError(f"TFTP error from {src}: {pkt[4:-1].decode(errors='replace')}")
            return op, n, pkt[4:]


def _request(opcode: int, filename: str) -> bytes:
    return struct.pack("!H", opcode) + filename.encode() + b"\0octet\0"


def tftp_get(host: str, filename: str, ns: str | None = None, port: int = TFTP_PORT,
             timeout: float = 5.0, retries: int = 3) -> tuple[bytes, tuple[str, int]]:
    """Strict RRQ (octet): returns (content, (server_ip, server_port)) of the DATA packets.

    Raises if a DATA comes from an address other than ``host`` (what a strict client
    such as a PXE ROM would drop) or nothing arrives.
    """
    with contextlib.closing(_socket(ns, host)) as s:
        s.settimeout(timeout)
        x = _Exchange(s, host, port, retries)
        x.send(_request(OP_RRQ, filename))
        data, block = bytearray(), 1
        while True:
            op, n, payload = x.receive(f"DATA block {block}")
            if op != OP_DATA:
                continue
            if n != block & 0xFFFF:
                s.sendto(struct.pack("!HH", OP_ACK, n), x.dest)     # a duplicate: ack it again
                continue
            data += payload
            x.send(struct.pack("!HH", OP_ACK, n))
            if len(payload) < 512:
                assert x.peer is not None
                return bytes(data), x.peer
            block += 1


def tftp_put(host: str, filename: str, content: bytes, ns: str | None = None, port: int = TFTP_PORT,
             timeout: float = 5.0, retries: int = 3) -> tuple[str, int]:
    """Strict WRQ (octet) upload; returns the (ip, port) the server answered from."""
    with contextlib.closing(_socket(ns, host)) as s:
        s.settimeout(timeout)
        x = _Exchange(s, host, port, retries)
        x.send(_request(OP_WRQ, filename))
        block = 0
        while True:
            op, n, _ = x.receive(f"ACK {block}")
            if op != OP_ACK or n != block & 0xFFFF:
                continue
            if block > 0 and len(content[(block - 1) * 512:block * 512]) < 512:
                assert x.peer is not None
                return x.peer                  # the ACK of the last (short) block
            block += 1
            x.send(struct.pack("!HH", OP_DATA, block & 0xFFFF) + content[(block - 1) * 512:block * 512])
