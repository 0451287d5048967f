"""Probes against REAL listeners on loopback (127.0.0.1 only), as Seesaw tests its checkers.

Each case starts the kind of server a probe meets in production: one that
refuses, one that accepts and hangs, one that answers 500, one too slow, one
whose body matches or not; UDP alive vs dead vs silent; a DNS stub; scripts.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import ssl
import struct
import subprocess
import time

import pytest

from pask_ipvs.health.probes import Result, Target, dns_query, dns_rcode, run_probe
from pask_ipvs.model import Health

LOOPBACK = "127.0.0.1"


def health(type_: str, timeout: float = 1.0, **params) -> Health:
    return Health(type=type_, interval=2.0, timeout=timeout, params=tuple(params.items()))


def probe(h: Health, port: int, service: str = "web") -> Result:
    return asyncio.run(run_probe(h, Target(LOOPBACK, port, service)))


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


async def with_tcp_server(handler, h: Health, ssl_ctx=None) -> Result:
    server = await asyncio.start_server(handler, LOOPBACK, 0, ssl=ssl_ctx)
    port = server.sockets[0].getsockname()[1]
    try:
        return await run_probe(h, Target(LOOPBACK, port, "web"))
    finally:
        server.close()


def http_handler(status: int = 200, body: bytes = b"ok\n", delay: float = 0.0,
                 seen: list | None = None):
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        request = await reader.readuntil(b"\r\n\r\n")
        if seen is not None:
            seen.append(request.decode())
        await asyncio.sleep(delay)
        reason = {200: "OK", 500: "Internal Server Error", 404: "Not Found"}.get(status, "X")
        writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Length: {len(body)}\r\n"
                     f"Content-Type: text/plain\r\n\r\n".encode() + body)
        await writer.drain()
        writer.close()
    return handle


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await asyncio.sleep(30)


# -- tcp ---------------------------------------------------------------------------------

def test_tcp_connect_succeeds_on_a_listener():
    r = asyncio.run(with_tcp_server(hang, health("tcp")))
    assert r.ok and r.detail == "connected" and r.elapsed < 1


def test_tcp_refused():
    r = probe(health("tcp"), free_port())
    assert not r.ok
    assert "connection refused" in r.detail


def test_tcp_listener_killed_is_detected():
    async def scenario():
        server = await asyncio.start_server(hang, LOOPBACK, 0)
        port = server.sockets[0].getsockname()[1]
        first = await run_probe(health("tcp"), Target(LOOPBACK, port))
        server.close()
        await server.wait_closed()
        second = await run_probe(health("tcp"), Target(LOOPBACK, port))
        return first, second
    first, second = asyncio.run(scenario())
    assert first.ok and not second.ok


# -- http --------------------------------------------------------------------------------

def test_http_200():
    seen: list[str] = []
    r = asyncio.run(with_tcp_server(http_handler(seen=seen), health("http", path="/healthz")))
    assert r.ok, r.detail
    assert r.detail == "status 200"
    assert seen[0].startswith("GET /healthz HTTP/1.0\r\n")
    assert f"Host: {LOOPBACK}:" in seen[0]


def test_http_500_fails():
    r = asyncio.run(with_tcp_server(http_handler(500), health("http")))
    assert not r.ok
    assert r.detail == "status 500, expected 200"


def test_http_expect_status_list():
    r = asyncio.run(with_tcp_server(http_handler(404), health("http", expect_status=[200, 404])))
    assert r.ok


def test_http_method_and_host_header():
    seen: list[str] = []
    r = asyncio.run(with_tcp_server(http_handler(seen=seen),
                                    health("http", method="HEAD", host="www.example.test")))
    assert r.ok
    assert seen[0].startswith("HEAD / HTTP/1.0\r\n")
    assert "Host: www.example.test\r\n" in seen[0]


def test_http_hang_accepts_but_never_answers_is_a_timeout():
    t0 = time.monotonic()
    r = asyncio.run(with_tcp_server(hang, health("http", timeout=0.3)))
    assert not r.ok
    assert r.detail == "timeout after 0.3s (status line)"
    assert 0.25 < time.monotonic() - t0 < 1.5


def test_http_slow_answer_beyond_timeout_fails():
    r = asyncio.run(with_tcp_server(http_handler(delay=0.8), health("http", timeout=0.3)))
    assert not r.ok and r.detail.startswith("timeout after 0.3s")


def test_http_slow_answer_within_timeout_passes():
    r = asyncio.run(with_tcp_server(http_handler(delay=0.1), health("http", timeout=1.0)))
    assert r.ok and r.elapsed >= 0.1


def test_http_body_regex_matches():
    r = asyncio.run(with_tcp_server(http_handler(body=b'{"status": "green"}'),
                                    health("http", body_regex='"status": *"green"')))
    assert r.ok and r.detail == "status 200, body matches"


def test_http_body_regex_does_not_match():
    r = asyncio.run(with_tcp_server(http_handler(body=b'{"status": "red"}'),
                                    health("http", body_regex="green")))
    assert not r.ok
    assert r.detail == "status 200, body does not match 'green'"


def test_http_refused():
    r = probe(health("http"), free_port())
    assert not r.ok and "connection refused" in r.detail


def test_http_garbage_reply():
    async def garbage(reader, writer):
        writer.write(b"SSH-2.0-OpenSSH\r\n")
        await writer.drain()
        writer.close()
    r = asyncio.run(with_tcp_server(garbage, health("http")))
    assert not r.ok and r.detail.startswith("not an HTTP response")


# -- https -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tls_server_ctx(tmp_path_factory):
    if shutil.which("openssl") is None:
        pytest.fail("openssl is needed to make a test certificate (apt-get install openssl)")
    d = tmp_path_factory.mktemp("tls")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=www.example.test",
                    "-addext", "subjectAltName=DNS:www.example.test",
                    "-keyout", str(d / "key.pem"), "-out", str(d / "cert.pem")],
                   check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(d / "cert.pem", d / "key.pem")
    return ctx, d / "cert.pem"


def test_https_self_signed_passes_without_verification(tls_server_ctx):
    ctx, _ = tls_server_ctx
    r = asyncio.run(with_tcp_server(http_handler(), health("https"), ssl_ctx=ctx))
    assert r.ok, r.detail


def test_https_sends_sni(tls_server_ctx):
    names: list[str | None] = []
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(*_cert_paths(tls_server_ctx))
    server_ctx.sni_callback = lambda sock, name, c: names.append(name)
    r = asyncio.run(with_tcp_server(http_handler(), health("https", sni="www.example.test"),
                                    ssl_ctx=server_ctx))
    assert r.ok and names == ["www.example.test"]


def _cert_paths(fixture):
    _, cert = fixture
    return cert, cert.parent / "key.pem"


def test_https_verify_tls_rejects_an_untrusted_certificate(tls_server_ctx):
    ctx, _ = tls_server_ctx
    r = asyncio.run(with_tcp_server(http_handler(), health("https", verify_tls=True,
                                                           sni="www.example.test"), ssl_ctx=ctx))
    assert not r.ok and "tls" in r.detail


def test_https_against_plain_http_fails(tls_server_ctx):
    r = asyncio.run(with_tcp_server(http_handler(), health("https", timeout=0.5)))
    assert not r.ok


# -- udp -----------------------------------------------------------------------------------

class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data.upper(), addr)


class Silent(asyncio.DatagramProtocol):
    pass


async def with_udp_server(protocol_factory, h: Health) -> Result:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(protocol_factory, local_addr=(LOOPBACK, 0))
    port = transport.get_extra_info("sockname")[1]
    try:
        return await run_probe(h, Target(LOOPBACK, port))
    finally:
        transport.close()


def test_udp_alive_server_replies():
    r = asyncio.run(with_udp_server(Echo, health("udp", payload="ping", expect="^PING$")))
    assert r.ok and r.detail == "reply of 4 bytes"


def test_udp_reply_not_matching_fails():
    r = asyncio.run(with_udp_server(Echo, health("udp", payload="ping", expect="pong")))
    assert not r.ok and "does not match" in r.detail


def test_udp_binary_payload():
    r = asyncio.run(with_udp_server(Echo, health("udp", payload="\x00\xff", expect="^\x00\xff$")))
    assert r.ok


def test_udp_dead_server_port_unreachable_fails_fast():
    t0 = time.monotonic()
    r = probe(health("udp", timeout=2.0, payload="ping"), free_port(socket.SOCK_DGRAM))
    assert not r.ok
    assert "connection refused" in r.detail       # the kernel's ICMP port unreachable
    assert time.monotonic() - t0 < 1.0            # no need to wait for the timeout


def test_udp_silent_server_fails_at_timeout():
    r = asyncio.run(with_udp_server(Silent, health("udp", timeout=0.3, payload="ping")))
    assert not r.ok
    assert r.detail == "timeout after 0.3s (waiting for a reply)"


# -- dns -------------------------------------------------------------------------------------

class DnsStub(asyncio.DatagramProtocol):
    """Answers every query with a fixed rcode (and echoes the question)."""

    def __init__(self, rcode: int = 0, wrong_id: bool = False):
        self.rcode = rcode
        self.wrong_id = wrong_id
        self.queries: list[bytes] = []

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.queries.append(data)
        qid, flags = struct.unpack("!HH", data[:4])
        if self.wrong_id:
            qid ^= 0xFFFF
        header = struct.pack("!HHHHHH", qid, 0x8000 | (flags & 0x0100) | self.rcode, 1, 0, 0, 0)
        self.transport.sendto(header + data[12:], addr)


def test_dns_query_encoding():
    q = dns_query("www.example.test", 1, 0x1234)
    assert q[:12] == struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    assert q[12:] == b"\x03www\x07example\x04test\x00" + struct.pack("!HH", 1, 1)
    assert dns_query(".", 6, 1)[12:] == b"\x00\x00\x06\x00\x01"


def test_dns_rcode_parsing():
    assert dns_rcode(struct.pack("!HHHHHH", 7, 0x8183, 1, 0, 0, 0), 7) == 3
    with pytest.raises(ValueError):
        dns_rcode(struct.pack("!HHHHHH", 8, 0x8180, 1, 0, 0, 0), 7)
    with pytest.raises(ValueError):
        dns_rcode(struct.pack("!HHHHHH", 7, 0x0100, 1, 0, 0, 0), 7)   # a query, not a reply
    with pytest.raises(ValueError):
        dns_rcode(b"\x00\x07", 7)


def test_dns_noerror_passes():
    stub = DnsStub(0)
    r = asyncio.run(with_udp_server(lambda: stub, health("dns", query_name="www.example.test")))
    assert r.ok and r.detail == "www.example.test A: NOERROR"
    assert stub.queries[0][12:].startswith(b"\x03www\x07example\x04test\x00")


def test_dns_servfail_fails():
    r = asyncio.run(with_udp_server(lambda: DnsStub(2), health("dns", query_name="example.test")))
    assert not r.ok and r.detail == "example.test A: SERVFAIL, expected NOERROR"


def test_dns_expect_nxdomain():
    h = health("dns", query_name="nope.test", query_type="AAAA", expect_rcode="NXDOMAIN")
    r = asyncio.run(with_udp_server(lambda: DnsStub(3), h))
    assert r.ok and r.detail == "nope.test AAAA: NXDOMAIN"


def test_dns_reply_to_another_query_fails():
    r = asyncio.run(with_udp_server(lambda: DnsStub(0, wrong_id=True),
                                    health("dns", query_name="example.test")))
    assert not r.ok and r.detail == "not a reply to our query"


def test_dns_dead_server_fails():
    r = probe(health("dns", query_name="example.test"), free_port(socket.SOCK_DGRAM))
    assert not r.ok and "connection refused" in r.detail


# -- script ----------------------------------------------------------------------------------

def test_script_exit_0_is_up():
    r = probe(health("script", command="echo hello; exit 0"), 1234)
    assert r.ok and r.detail == "exit 0: hello"


def test_script_nonzero_is_down():
    r = probe(health("script", command=["sh", "-c", "echo broken >&2; exit 3"]), 1234)
    assert not r.ok and r.detail == "exit 3: broken"


def test_script_environment():
    cmd = ('test "$PASK_RS_ADDR" = 127.0.0.1 && test "$PASK_RS_PORT" = 1234 '
           '&& test "$PASK_SERVICE" = web')
    assert probe(health("script", command=cmd), 1234, service="web").ok
    assert not probe(health("script", command=cmd), 1235, service="web").ok


def test_script_timeout_kills_the_script_and_its_children(tmp_path):
    pidfile = tmp_path / "pid"
    t0 = time.monotonic()
    r = probe(health("script", timeout=0.3, command=f"sleep 30 & echo $! > {pidfile}; wait"), 1)
    assert not r.ok and r.detail == "timeout after 0.3s (script)"
    assert time.monotonic() - t0 < 2
    child = int(pidfile.read_text())
    time.sleep(0.1)
    assert not running(child)


def running(pid: int) -> bool:
    """Alive and not a zombie (an orphan may wait for a busy init to reap it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_unknown_type_fails_cleanly():
    r = probe(health("carrier-pigeon"), 1)
    assert not r.ok and "unknown health check type" in r.detail
