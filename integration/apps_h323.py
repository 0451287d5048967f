#!/usr/bin/env python3
"""A toy H.323 endpoint for the lab: just enough Q.931 and H.225 for the kernel's helper.

Debian packages no H.323 endpoint, so the tests speak the protocol themselves:
a TPKT + Q.931 SETUP / CONNECT carrying an H.225 UUIE with an ``h245Address``,
in the aligned PER that ``nf_conntrack_h323`` decodes. The LB's Q.931 helper
reads that address, creates the H.245 expectation and (both-nat, with
``nf_nat_h323``) rewrites it to the VIP.

* ``h323_server``: a called endpoint (run as ``apps_h323.py h323-server IP NAME``
  in a real server's namespace): answers CONNECT with its own H.245 address; its
  H.245 port answers with its name and the peer it saw.
* ``h323_call``: a caller from a namespace: SETUP, read CONNECT, open H.245 to the
  address it carries.
"""
from __future__ import annotations

import socket
import struct
import sys

def _socket(ns: str | None) -> socket.socket:
    if ns is None:
        return socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    from lab import ns_socket   # lazy: run as a script in a namespace, this module needs no lab
    return ns_socket(ns)


# ---- H.323 (Q.931 over TPKT, H.225 UUIE in aligned PER, as nf_conntrack_h323 decodes it) ----
Q931_PORT = 1720
H225_OID = bytes([0x00, 0x08, 0x91, 0x4A, 0x00, 0x04])     # {itu-t(0) 0 h(8) 2250 0 4}
Q931_SETUP, Q931_CONNECT = 0x05, 0x07


def h225_uuie(message: str, h245_ip: str, h245_port: int) -> tuple[bytes, int]:
    """H323-UserInformation (PER aligned) for a Connect-UUIE or a minimal Setup-UUIE with an
    h245Address; returns (bytes, offset of the 4 address bytes inside them).

    Field layout follows the kernel's tables (net/netfilter/nf_conntrack_h323_types.c):
    UserInformation{ext,opt} UU-PDU{ext,opt} body CHOICE{ext, 3-bit index}, then the UUIE.
    """
    ip = socket.inet_aton(h245_ip)
    port = struct.pack("!H", h245_port)
    if message == "connect":
        # 0 0 | 0 0 | 0 010 (connect=2) -> 0x02; Connect{ext 0, opt h245Address=1} -> 01, align
        out = bytes([0x02, 0x40, len(H225_OID)]) + H225_OID
        # TransportAddress CHOICE{ext 0, index 000 = ipAddress}, align, ip(4), port(2)
        out += b"\x00"
        off = len(out)
        out += ip + port
        # destinationInfo EndpointType{ext 0, 6 optional bits 0, mc 0, undefinedNode 0} = 9 bits
        out += b"\x00\x00"
        out += bytes(range(16))                     # conferenceID (16 octets, aligned)
        return out, off
    if message == "setup":
        # 0 0 | 0 0 | 0 000 (setup=0) -> 0x00; Setup{ext 0, 7 optional bits: h245Address only} -> 0 1000000
        out = bytes([0x00, 0x40, len(H225_OID)]) + H225_OID
        out += b"\x00"
        off = len(out)
        out += ip + port
        # sourceInfo EndpointType (9 zero bits) + activeMC 0 -> 10 bits, then conferenceID aligned
        out += b"\x00\x00"
        out += bytes(range(16))
        # conferenceGoal CHOICE{ext 0, 2-bit index 0 = create}, callType CHOICE{ext 0, 2-bit 0}
        out += b"\x00"
        return out, off
    raise ValueError(message)


def q931_message(message: str, h245_ip: str, h245_port: int, from_destination: bool) -> tuple[bytes, int]:
    """TPKT + Q.931 (SETUP or CONNECT) + User-user IE with the UUIE; returns (bytes, ip offset)."""
    uuie, off = h225_uuie(message, h245_ip, h245_port)
    crv = bytes([0x80 if from_destination else 0x00, 0x01])
    mtype = Q931_CONNECT if message == "connect" else Q931_SETUP
    q931 = bytes([0x08, len(crv)]) + crv + bytes([mtype])
    ie = bytes([0x7E]) + struct.pack("!H", len(uuie) + 1) + b"\x05" + uuie   # 0x05: X.208/X.209 coded
    off += len(q931) + 4 + 4                        # TPKT(4) + IE header(4)
    body = q931 + ie
    return struct.pack("!BBH", 3, 0, len(body) + 4) + body, off


def _recv_tpkt(s: socket.socket) -> bytes:
    hdr = b""
    while len(hdr) < 4:
        chunk = s.recv(4 - len(hdr))
        if not chunk:
            raise ConnectionError("closed before TPKT header")
        hdr += chunk
    n = struct.unpack("!H", hdr[2:4])[0] - 4
    body = b""
    while len(body) < n:
        chunk = s.recv(n - len(body))
        if not chunk:
            raise ConnectionError("closed inside TPKT")
        body += chunk
    return hdr + body


def h323_server(ip: str, name: str, port: int = Q931_PORT, h245_port: int = 5000) -> None:
    """A toy called endpoint (run in a real server's namespace, blocks forever).

    Q.931 (TCP ``port``): per call, reads the caller's TPKT, answers CONNECT whose
    h245Address is ``ip:h245_port``. H.245 (TCP ``h245_port``): answers ``H245 <name>`` and the
    peer address it saw, then closes.
    """
    import threading

    def h245() -> None:
        ls = socket.socket()
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((ip, h245_port))
        ls.listen(16)
        while True:
            c, peer = ls.accept()
            with c:
                c.sendall(f"H245 {name} peer={peer[0]}\n".encode())

    threading.Thread(target=h245, daemon=True).start()
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((ip, port))
    ls.listen(16)
    while True:
        c, _ = ls.accept()
        with c:
            try:
                _recv_tpkt(c)                       # the SETUP
                c.sendall(q931_message("connect", ip, h245_port, from_destination=True)[0])
                c.recv(1)                           # until the caller closes
            except OSError:
                pass


def h323_call(vip: str, ns: str | None = None, port: int = Q931_PORT, src_h245_port: int = 0,
              src_ip: str = "", timeout: float = 10.0, open_h245: bool = True) -> dict:
    """Place a toy call to ``vip:port``: send SETUP (h245Address = src_ip:src_h245_port when
    given), read the CONNECT, and (``open_h245``) connect to the H.245 address it carries.

    Returns {"h245": (ip, port) from CONNECT, "h245_banner": str | None, "error": str | None}.
    """
    s = _socket(ns)
    s.settimeout(timeout)
    result: dict = {"h245": None, "h245_banner": None, "error": None}
    try:
        result["error"] = "connect"
        s.connect((vip, port))
        result["error"] = "recv CONNECT"
        me = src_ip or s.getsockname()[0]
        s.sendall(q931_message("setup", me, src_h245_port or 1, from_destination=False)[0])
        msg = _recv_tpkt(s)
        _, off = q931_message("connect", "0.0.0.0", 1, from_destination=True)
        result["error"] = None
        result["h245"] = (socket.inet_ntoa(msg[off:off + 4]), struct.unpack("!H", msg[off + 4:off + 6])[0])
        if open_h245:
            h = _socket(ns)
            h.settimeout(timeout)
            try:
                h.connect(result["h245"])
                result["h245_banner"] = h.recv(200).decode(errors="replace").strip()
            except OSError as e:
                result["error"] = f"H.245 connect to {result['h245']}: {e}"
            finally:
                h.close()
    except OSError as e:
        result["error"] = f"Q.931 ({result['error']}): {e}"
    finally:
        s.close()
    return result


def main(argv: list[str]) -> int:
    if argv[:1] == ["h323-server"] and len(argv) == 3:        # h323-server IP NAME
        h323_server(argv[1], argv[2])
        return 0
    if argv[:1] == ["h323-call"] and len(argv) >= 2:          # h323-call VIP [N]
        for _ in range(int(argv[2]) if len(argv) > 2 else 1):
            print(h323_call(argv[1]), flush=True)
        return 0
    print("usage: apps_h323.py h323-server IP NAME | h323-call VIP [N]", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
