"""Health probes: dumb on purpose. A target goes in, a ``Result`` comes out.

A probe knows nothing about rise/fall, weights or the kernel (machine.py and
daemon.py do); it never raises, and ``run_probe`` enforces its timeout, so a
server that accepts and then hangs is a failure, not a stuck daemon.

Type-specific settings come from ``Health.param``:

* tcp: connect only.
* http / https: ``method`` (GET), ``path`` (/), ``host`` (Host header; default
  addr:port), ``expect_status`` (list, default [200]), ``body_regex``;
  https also ``sni`` (default: ``host``) and ``verify_tls`` (default false:
  real servers usually have certificates for the VIP's name, not their own).
* udp: ``payload`` (text; characters U+0000-U+00FF are one byte each, so
  YAML "\\x00" escapes give binary payloads), ``expect`` (regex on the reply).
  A reply is required: silence within the timeout fails, and so does an
  ICMP port unreachable (the socket is connected, so the kernel reports it).
* dns: ``query_name``, ``query_type`` (A), ``expect_rcode`` (a name or a list
  of names, default NOERROR); one query over UDP, encoded here (no dependency).
* script: ``command`` (a shell string, or a list run without a shell), exit 0
  = up; environment PASK_RS_ADDR, PASK_RS_PORT, PASK_SERVICE; killed (with its
  process group) at the timeout.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import signal
import socket
import ssl
import struct
import time
from dataclasses import dataclass
from typing import Awaitable, Callable

from ..model import Health
from ..objects import family_of

MAX_BODY = 64 * 1024          # bytes of an HTTP body searched by body_regex
MAX_DETAIL = 200


@dataclass(frozen=True)
class Target:
    addr: str
    port: int                 # the port probed: Health.port or the real server's port
    service: str = ""         # service name (for scripts and logs)

    def __str__(self) -> str:
        return f"[{self.addr}]:{self.port}" if family_of(self.addr) == 6 else f"{self.addr}:{self.port}"


@dataclass(frozen=True)
class Result:
    ok: bool
    detail: str
    elapsed: float            # seconds


class _Phase:
    """Where a probe is, so that a timeout can say what it was waiting for."""

    __slots__ = ("name",)

    def __init__(self) -> None:
        self.name = "connect"


ProbeImpl = Callable[[Health, Target, _Phase], Awaitable[tuple[bool, str]]]


async def run_probe(health: Health, target: Target) -> Result:
    """Run ``health.type``'s probe against ``target`` within ``health.timeout``. Never raises."""
    start = time.monotonic()
    fn = PROBES.get(health.type)
    if fn is None:
        return Result(False, f"unknown health check type {health.type!r}", 0.0)
    phase = _Phase()
    try:
        async with asyncio.timeout(health.timeout):
            ok, detail = await fn(health, target, phase)
    except TimeoutError:
        ok, detail = False, f"timeout after {health.timeout:g}s ({phase.name})"
    except ConnectionRefusedError:
        ok, detail = False, f"{phase.name}: connection refused"
    except ssl.SSLError as e:
        ok, detail = False, f"{phase.name}: tls: {e.reason or e}"
    except OSError as e:
        ok, detail = False, f"{phase.name}: {e.strerror or e}"
    except Exception as e:  # a probe must never take the daemon down
        ok, detail = False, f"{phase.name}: {type(e).__name__}: {e}"
    return Result(ok, _short(detail), time.monotonic() - start)


def _param(health: Health, name: str, default: object = None) -> object:
    """A type-specific setting; None (how the loader spells "not given") means the default."""
    value = health.param(name)
    return default if value is None else value


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_DETAIL else text[: MAX_DETAIL - 3] + "..."


# -- tcp --------------------------------------------------------------------------

_RST_ON_CLOSE = struct.pack("ii", 1, 0)     # SO_LINGER on, 0 s: close() sends a RST


async def probe_tcp(health: Health, target: Target, phase: _Phase) -> tuple[bool, str]:
    # A bare non-blocking socket (no stream objects: several times cheaper than
    # open_connection), closed with a RST as keepalived does: no FIN exchange and no
    # TIME_WAIT socket left behind per probe.
    family = socket.AF_INET6 if family_of(target.addr) == 6 else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RST_ON_CLOSE)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, (target.addr, target.port))
    finally:
        sock.close()
    return True, "connected"


# -- http / https -----------------------------------------------------------------

def _statuses(value: object) -> frozenset[int]:
    if value is None:
        return frozenset({200})
    if isinstance(value, (int, str)):
        value = [value]
    return frozenset(int(v) for v in value)  # type: ignore[union-attr]


def _hostname(host: str) -> str:
    """``name:port`` -> ``name`` (a Host header value used as the TLS server name)."""
    name, sep, port = host.rpartition(":")
    return name.strip("[]") if sep and port.isdigit() else host


@functools.lru_cache(maxsize=2)
def _tls_context(verify: bool) -> ssl.SSLContext:
    """One context per mode, shared by all probes (loading the CA store costs milliseconds)."""
    ctx = ssl.create_default_context()
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


async def _http(health: Health, target: Target, phase: _Phase, tls: bool) -> tuple[bool, str]:
    method = str(_param(health, "method", "GET")).upper()
    path = str(_param(health, "path", "/"))
    host = str(_param(health, "host") or target)
    expect = _statuses(_param(health, "expect_status"))
    pattern = _param(health, "body_regex")
    kwargs: dict = {}
    if tls:
        kwargs["ssl"] = _tls_context(bool(_param(health, "verify_tls", False)))
        sni = _param(health, "sni") or _param(health, "host")
        if sni:
            kwargs["server_hostname"] = _hostname(str(sni))
    phase.name = "tls handshake" if tls else "connect"
    reader, writer = await asyncio.open_connection(target.addr, target.port, **kwargs)
    try:
        phase.name = "request"
        writer.write(f"{method} {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: pask-healthd\r\n"
                     f"Accept: */*\r\nConnection: close\r\n\r\n".encode("latin-1"))
        await writer.drain()
        phase.name = "status line"
        line = await reader.readline()
        parts = line.decode("latin-1").split(None, 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            return False, f"not an HTTP response: {line[:60]!r}"
        status = int(parts[1])
        if status not in expect:
            return False, f"status {status}, expected {'/'.join(map(str, sorted(expect)))}"
        if not pattern or method == "HEAD":
            return True, f"status {status}"
        phase.name = "headers"
        length = None
        while (header := await reader.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = header.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length" and value.strip().isdigit():
                length = int(value.strip())
        phase.name = "body"
        body = await _read_body(reader, MAX_BODY if length is None else min(length, MAX_BODY))
        if re.search(_bytes(pattern), body):
            return True, f"status {status}, body matches"
        return False, f"status {status}, body does not match {str(pattern)!r}"
    finally:
        writer.close()


async def _read_body(reader: asyncio.StreamReader, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = await reader.read(limit - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


async def probe_http(health: Health, target: Target, phase: _Phase) -> tuple[bool, str]:
    return await _http(health, target, phase, tls=False)


async def probe_https(health: Health, target: Target, phase: _Phase) -> tuple[bool, str]:
    return await _http(health, target, phase, tls=True)


# -- udp ----------------------------------------------------------------------------

class _OneReply(asyncio.DatagramProtocol):
    """Waits for the first datagram, or for the ICMP error the kernel reports."""

    def __init__(self, loop: asyncio.AbstractEventLoop):
        self.reply: asyncio.Future[bytes] = loop.create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        if not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc or ConnectionError("socket closed"))


async def udp_exchange(target: Target, payload: bytes, phase: _Phase) -> bytes:
    """Send one datagram on a connected socket and return the first reply."""
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _OneReply(loop), remote_addr=(target.addr, target.port))
    try:
        phase.name = "send"
        transport.sendto(payload)
        phase.name = "waiting for a reply"
        return await proto.reply
    finally:
        transport.close()


def _bytes(text: object) -> bytes:
    """Config text as bytes: one byte per character when it fits (binary payloads), else UTF-8."""
    try:
        return str(text).encode("latin-1")
    except UnicodeEncodeError:
        return str(text).encode("utf-8")


async def probe_udp(health: Health, target: Target, phase: _Phase) -> tuple[bool, str]:
    reply = await udp_exchange(target, _bytes(_param(health, "payload", "")), phase)
    pattern = _param(health, "expect")
    if pattern and not re.search(_bytes(pattern), reply):
        return False, f"reply {reply[:40]!r} does not match {str(pattern)!r}"
    return True, f"reply of {len(reply)} bytes"


# -- dns ------------------------------------------------------------------------------

QTYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "PTR": 12, "MX": 15, "TXT": 16,
          "AAAA": 28, "SRV": 33, "ANY": 255}
RCODES = {"NOERROR": 0, "FORMERR": 1, "SERVFAIL": 2, "NXDOMAIN": 3, "NOTIMP": 4, "REFUSED": 5}
RCODE_NAMES = {v: k for k, v in RCODES.items()}


def dns_query(name: str, qtype: int, qid: int) -> bytes:
    """A standard query (RD set) for one question, class IN."""
    labels = [label.encode("idna") for label in name.strip(".").split(".") if label]
    if any(len(label) > 63 for label in labels):
        raise ValueError(f"DNS label too long in {name!r}")
    qname = b"".join(bytes([len(label)]) + label for label in labels) + b"\0"
    return struct.pack("!HHHHHH", qid, 0x0100, 1, 0, 0, 0) + qname + struct.pack("!HH", qtype, 1)


def dns_rcode(reply: bytes, qid: int) -> int:
    """The reply's rcode; ValueError if it is not a reply to query ``qid``."""
    if len(reply) < 12:
        raise ValueError(f"short DNS reply ({len(reply)} bytes)")
    rid, flags = struct.unpack("!HH", reply[:4])
    if rid != qid or not flags & 0x8000:
        raise ValueError("not a reply to our query")
    return flags & 0xF


def _rcode_set(value: object) -> frozenset[int]:
    if value is None:
        return frozenset({0})
    if isinstance(value, (int, str)):
        value = [value]
    return frozenset(RCODES[str(v).upper()] if not str(v).isdigit() else int(v)
                     for v in value)  # type: ignore[union-attr]


async def probe_dns(health: Health, target: Target, phase: _Phase) -> tuple[bool, str]:
    qtype_name = str(_param(health, "query_type", "A")).upper()
    qtype = QTYPES[qtype_name] if qtype_name in QTYPES else int(qtype_name)
    name = str(_param(health, "query_name", "."))
    qid = int.from_bytes(os.urandom(2), "big")
    reply = await udp_exchange(target, dns_query(name, qtype, qid), phase)
    try:
        rcode = dns_rcode(reply, qid)
    except ValueError as e:
        return False, str(e)
    expect = _rcode_set(_param(health, "expect_rcode"))
    label = RCODE_NAMES.get(rcode, str(rcode))
    if rcode in expect:
        return True, f"{name} {qtype_name}: {label}"
    want = "/".join(RCODE_NAMES.get(r, str(r)) for r in sorted(expect))
    return False, f"{name} {qtype_name}: {label}, expected {want}"


# -- script ---------------------------------------------------------------------------

async def probe_script(health: Health, target: Target, phase: _Phase) -> tuple[bool, str]:
    command = _param(health, "command")
    if not command:
        return False, "script check without a command"
    env = dict(os.environ, PASK_RS_ADDR=target.addr, PASK_RS_PORT=str(target.port),
               PASK_SERVICE=target.service)
    common = dict(stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                  stderr=asyncio.subprocess.STDOUT, env=env, start_new_session=True)
    phase.name = "script"
    if isinstance(command, str):
        proc = await asyncio.create_subprocess_shell(command, **common)
    else:
        proc = await asyncio.create_subprocess_exec(*map(str, command), **common)  # type: ignore
    try:
        out, _ = await proc.communicate()
    except asyncio.CancelledError:
        # The timeout: the script and whatever it started go, then the zombie is reaped.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        await proc.wait()
        raise
    lines = out.decode("utf-8", "replace").strip().splitlines()
    last = f": {lines[-1]}" if lines else ""
    if proc.returncode == 0:
        return True, f"exit 0{last}"
    if proc.returncode < 0:
        return False, f"killed by signal {-proc.returncode}{last}"
    return False, f"exit {proc.returncode}{last}"


PROBES: dict[str, ProbeImpl] = {
    "tcp": probe_tcp,
    "http": probe_http,
    "https": probe_https,
    "udp": probe_udp,
    "dns": probe_dns,
    "script": probe_script,
}
