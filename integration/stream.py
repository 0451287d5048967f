#!/usr/bin/env python3
r"""Long-lived numbered line streams: does an established connection survive a change?

Server (one per real server, in its namespace)::

    ip netns exec hrs1 python stream.py serve --name hrs1 --port 9000 --pidfile /run/x/hrs1.stream.pid

answers every line ``N\n`` with ``N <name>\n`` on the same connection.

Client (from the client namespace, usually in the background while a test kills an LB)::

    ip netns exec hc1 python stream.py client --host 10.99.1.100 --port 9000 \
        --connections 4 --interval 0.05 --duration 60 --report /tmp/r.json [--probe-interval 0.5]

opens K connections to HOST:PORT and sends ``N\n`` on each every INTERVAL seconds
(N = 1, 2, ...).  It stops after DURATION seconds, or on SIGTERM/SIGINT, then
drains (waits up to ``--drain`` seconds for the answers still due) and writes a
JSON report (atomically: REPORT is renamed into place when complete).  Per
connection it records lines sent and answered, a reset or EOF, numbers missing
or answered twice, the set of servers that answered, and the longest gap
between two answers with its start/end wall-clock times.  With
``--probe-interval``, it also opens one new connection every so often and
records whether it was answered (do *new* connections work during a failover).

A gap is not a failure: under QEMU/TCG and across a failover answers may stall
for seconds.  A connection is *clean* when it never saw a reset/EOF/error,
no number is missing or duplicated, every line sent was answered, and exactly
one server answered.  The report's top-level ``clean`` is all connections clean.

In-process use: ``StreamClient(sockets).start() ... .stop() -> report dict``
(sockets made by the caller, e.g. with ``lab.ns_socket`` in the client
namespace), or ``StreamProcess`` to run the client as a background process.

Stdlib only, no pask import: Python starts slowly in the test VM.
"""

from __future__ import annotations

import argparse
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

HERE = Path(__file__).resolve().parent
STREAM_PORT = 9000
CONNECT_TIMEOUT = float(os.environ.get("PASK_LAB_STREAM_CONNECT_TIMEOUT", "30"))
DRAIN_TIMEOUT = float(os.environ.get("PASK_LAB_STREAM_DRAIN_TIMEOUT", "20"))


# ---- server ----------------------------------------------------------------------
def serve(name: str, port: int = STREAM_PORT, bind: str = "0.0.0.0", pidfile: str | None = None) -> int:
    """Answer ``N\\n`` with ``N name\\n`` on every connection until SIGTERM/SIGINT."""
    import socketserver

    reply_name = name.encode()

    class Handler(socketserver.StreamRequestHandler):
        def handle(self) -> None:
            try:
                for line in self.rfile:
                    n = line.strip()
                    if not n:
                        continue
                    self.wfile.write(n + b" " + reply_name + b"\n")
                    self.wfile.flush()
            except OSError:
                return

    class Server(socketserver.ThreadingTCPServer):
        allow_reuse_address = True
        daemon_threads = True
        request_queue_size = 128

    srv = Server((bind, port), Handler)
    threading.Thread(target=srv.serve_forever, daemon=True, name=f"stream{port}").start()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    if pidfile:
        tmp = f"{pidfile}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, pidfile)
    print(f"{name}: stream server on {bind}:{port}", file=sys.stderr, flush=True)
    try:
        while not stop.wait(3600):
            pass
    finally:
        if pidfile:
            try:
                os.unlink(pidfile)
            except FileNotFoundError:
                pass
    return 0


# ---- client ------------------------------------------------------------------------
class _Conn:
    """One stream's bookkeeping (touched only by the client's event-loop thread)."""

    def __init__(self, index: int, sock: socket.socket, started: float) -> None:
        self.index = index
        self.sock = sock
        self.local = "%s:%d" % sock.getsockname()[:2]
        self.sent = 0
        self.answered = 0
        self.expected = 1            # next number due
        self.missing: list[int] = []
        self.duplicates: list[int] = []
        self.bogus: list[str] = []   # lines that are not "N name"
        self.servers: dict[str, int] = {}
        self.error: str | None = None
        self.error_at: float | None = None
        self.inbuf = b""
        self.outbuf = b""
        self.last_answer_mono: float | None = None
        self.last_answer_wall: float | None = None
        self.max_gap = 0.0
        self.gap_start: float | None = None
        self.gap_end: float | None = None
        self.first_answer_wall: float | None = None
        self.started = started

    @property
    def open(self) -> bool:
        return self.error is None

    def fail(self, what: str) -> None:
        if self.error is None:
            self.error = what
            self.error_at = time.time()

    def on_line(self, line: bytes) -> None:
        mono, wall = time.monotonic(), time.time()
        parts = line.decode(errors="replace").split()
        if len(parts) != 2 or not parts[0].isdigit():
            self.bogus.append(line.decode(errors="replace")[:80])
            return
        n, server = int(parts[0]), parts[1]
        if n < self.expected:
            self.duplicates.append(n)
        else:
            if n > self.expected:
                self.missing.extend(range(self.expected, n))
            self.expected = n + 1
        self.answered += 1
        self.servers[server] = self.servers.get(server, 0) + 1
        if self.last_answer_mono is not None:
            gap = mono - self.last_answer_mono
            if gap > self.max_gap:
                self.max_gap, self.gap_start, self.gap_end = gap, self.last_answer_wall, wall
        else:
            self.first_answer_wall = wall
        self.last_answer_mono, self.last_answer_wall = mono, wall

    def report(self, ended_mono: float, ended_wall: float) -> dict[str, Any]:
        unanswered = self.sent - (self.expected - 1)
        max_gap, gap_start, gap_end = self.max_gap, self.gap_start, self.gap_end
        if unanswered > 0 and self.last_answer_mono is not None and ended_mono - self.last_answer_mono > max_gap:
            max_gap, gap_start, gap_end = ended_mono - self.last_answer_mono, self.last_answer_wall, None
        clean = (self.error is None and not self.missing and not self.duplicates and not self.bogus
                 and unanswered == 0 and len(self.servers) == 1 and self.sent > 0)
        return {
            "index": self.index, "local": self.local, "clean": clean,
            "sent": self.sent, "answered": self.answered, "unanswered": unanswered,
            "error": self.error, "error_at": self.error_at,
            "missing": _ranges(self.missing), "missing_count": len(self.missing),
            "duplicates": _ranges(sorted(set(self.duplicates))), "duplicate_count": len(self.duplicates),
            "bogus": self.bogus[:10], "servers": self.servers,
            "max_gap": round(max_gap, 3), "max_gap_start": gap_start, "max_gap_end": gap_end,
            "first_answer": self.first_answer_wall, "last_answer": self.last_answer_wall,
        }


def _ranges(numbers: Sequence[int]) -> list[str]:
    """[3, 4, 5, 9] -> ["3-5", "9"]: a lost second of lines stays readable."""
    out: list[str] = []
    start = prev = None
    for n in numbers:
        if prev is not None and n == prev + 1:
            prev = n
            continue
        if start is not None:
            out.append(str(start) if start == prev else f"{start}-{prev}")
        start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else f"{start}-{prev}")
    return out


class StreamClient:
    """Numbered lines on already-connected sockets, from one event-loop thread.

    ``connect`` (optional) makes a fresh connected socket for the new-connection
    probes (``probe_interval``); it runs in a helper thread, so it may block.
    """

    def __init__(self, sockets: Sequence[socket.socket], interval: float = 0.05,
                 connect: Callable[[], socket.socket] | None = None, probe_interval: float | None = None,
                 drain: float = DRAIN_TIMEOUT) -> None:
        self.started_wall = time.time()
        self.started_mono = time.monotonic()
        self.conns = [_Conn(i, s, self.started_wall) for i, s in enumerate(sockets)]
        self.interval = interval
        self.drain = drain
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._probe_thread: threading.Thread | None = None
        self._connect = connect
        self._probe_interval = probe_interval
        self.probes: list[dict[str, Any]] = []
        self.ended_wall: float | None = None
        self.ended_mono: float | None = None
        self._report: dict[str, Any] | None = None

    # -- life cycle --
    def start(self) -> "StreamClient":
        for c in self.conns:
            c.sock.setblocking(False)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="stream-client")
        self._thread.start()
        if self._connect and self._probe_interval:
            self._probe_thread = threading.Thread(target=self._probe_loop, daemon=True, name="stream-probe")
            self._probe_thread.start()
        return self

    def stop(self) -> dict[str, Any]:
        """Stop sending, drain the answers still due, close; the report."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        if self._probe_thread:
            self._probe_thread.join(timeout=CONNECT_TIMEOUT + 5)
        return self.report()

    def run_for(self, seconds: float, stop_event: threading.Event | None = None) -> dict[str, Any]:
        self.start()
        (stop_event or threading.Event()).wait(seconds)
        return self.stop()

    # -- the loop --
    def _loop(self) -> None:
        sel = selectors.DefaultSelector()
        for c in self.conns:
            sel.register(c.sock, selectors.EVENT_READ, c)
        next_send = time.monotonic()
        drain_until: float | None = None
        while True:
            now = time.monotonic()
            if drain_until is None and self._stop.is_set():
                drain_until = now + self.drain
            if drain_until is None and now >= next_send:
                for c in self.conns:
                    if c.open:
                        c.sent += 1
                        c.outbuf += b"%d\n" % c.sent
                next_send += self.interval
                if next_send < now:          # fell behind (TCG): no burst, just go on
                    next_send = now + self.interval
            for c in self.conns:
                if c.open and c.outbuf:
                    self._flush(c)
            if drain_until is not None:
                if all(not c.open or (c.expected - 1 >= c.sent and not c.outbuf) for c in self.conns):
                    break
                if now >= drain_until:
                    break
            for c in self.conns:                     # (re)arm write interest
                if c.open:
                    sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.outbuf else 0), c)
            timeout = 0.1 if drain_until is not None else max(0.0, min(next_send - time.monotonic(), 0.1))
            for key, mask in sel.select(timeout):
                c = key.data
                if mask & selectors.EVENT_READ:
                    self._read(c)
                if not c.open:
                    sel.unregister(c.sock)
        self.ended_mono, self.ended_wall = time.monotonic(), time.time()
        for c in self.conns:
            try:
                sel.unregister(c.sock)
            except (KeyError, ValueError):
                pass
            c.sock.close()
        sel.close()

    def _flush(self, c: _Conn) -> None:
        try:
            n = c.sock.send(c.outbuf)
            c.outbuf = c.outbuf[n:]
        except (BlockingIOError, InterruptedError):
            pass
        except ConnectionResetError:
            c.fail("reset")
        except BrokenPipeError:
            c.fail("broken pipe")
        except OSError as e:
            c.fail(f"send: {e!r}")

    def _read(self, c: _Conn) -> None:
        try:
            data = c.sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except ConnectionResetError:
            c.fail("reset")
            return
        except OSError as e:
            c.fail(f"recv: {e!r}")
            return
        if not data:
            c.fail("eof")
            return
        c.inbuf += data
        *lines, c.inbuf = c.inbuf.split(b"\n")
        for line in lines:
            if line.strip():
                c.on_line(line)

    def _probe_loop(self) -> None:
        assert self._connect and self._probe_interval
        while not self._stop.wait(self._probe_interval):
            t0, mono0 = time.time(), time.monotonic()
            entry: dict[str, Any] = {"at": t0}
            s: socket.socket | None = None
            try:
                s = self._connect()
                s.settimeout(CONNECT_TIMEOUT)
                s.sendall(b"0\n")
                buf = b""
                while b"\n" not in buf:
                    data = s.recv(4096)
                    if not data:
                        raise ConnectionError("eof")
                    buf += data
                parts = buf.split(b"\n", 1)[0].decode(errors="replace").split()
                entry.update(ok=len(parts) == 2 and parts[0] == "0", server=parts[-1] if parts else None)
            except OSError as e:
                entry.update(ok=False, error=repr(e))
            finally:
                if s is not None:
                    s.close()
            entry["took"] = round(time.monotonic() - mono0, 3)
            self.probes.append(entry)

    # -- the report --
    def report(self) -> dict[str, Any]:
        if self._report is not None:
            return self._report
        ended_mono = self.ended_mono if self.ended_mono is not None else time.monotonic()
        ended_wall = self.ended_wall if self.ended_wall is not None else time.time()
        conns = [c.report(ended_mono, ended_wall) for c in self.conns]
        failed = [p for p in self.probes if not p["ok"]]
        rep: dict[str, Any] = {
            "started": self.started_wall, "ended": ended_wall, "interval": self.interval,
            "clean": bool(conns) and all(c["clean"] for c in conns),
            "connections": conns,
            "max_gap": max((c["max_gap"] for c in conns), default=0.0),
            "servers": sorted({s for c in conns for s in c["servers"]}),
            "problems": [f"conn {c['index']} ({c['local']}): " + _problems(c) for c in conns if not c["clean"]],
        }
        if self._probe_interval:
            rep["probes"] = {
                "count": len(self.probes), "ok": len(self.probes) - len(failed), "failed": len(failed),
                "first_failure": failed[0]["at"] if failed else None,
                "last_failure": failed[-1]["at"] if failed else None,
                "errors": sorted({p.get("error", "bad answer") for p in failed})[:5],
                "servers": sorted({p["server"] for p in self.probes if p.get("ok") and p.get("server")}),
                "max_took": max((p["took"] for p in self.probes), default=0.0),
                "log": self.probes,
            }
        if self.ended_mono is not None:
            self._report = rep
        return rep


def _problems(c: dict[str, Any]) -> str:
    out = []
    if c["error"]:
        out.append(c["error"])
    if c["missing_count"]:
        out.append(f"missing {','.join(c['missing'])}")
    if c["duplicate_count"]:
        out.append(f"duplicated {','.join(c['duplicates'])}")
    if c["unanswered"]:
        out.append(f"{c['unanswered']} unanswered")
    if len(c["servers"]) != 1:
        out.append(f"servers {c['servers']}")
    if c["bogus"]:
        out.append(f"bogus lines {c['bogus']}")
    if not c["sent"]:
        out.append("nothing sent")
    return "; ".join(out) or "?"


def connect(host: str, port: int, timeout: float = CONNECT_TIMEOUT, src: str | None = None,
            make: Callable[[], socket.socket] | None = None) -> socket.socket:
    """A connected TCP socket (``make`` creates it, e.g. in another namespace)."""
    s = make() if make else socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.settimeout(timeout)
    if src:
        s.bind((src, 0))
    try:
        s.connect((host, port))
    except OSError:
        s.close()
        raise
    s.settimeout(None)
    return s


def write_json(path: str | os.PathLike, data: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")
    os.replace(tmp, path)


def client_main(args: argparse.Namespace) -> int:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    socks = [connect(args.host, args.port, src=args.src) for _ in range(args.connections)]
    client = StreamClient(socks, interval=args.interval, drain=args.drain,
                          connect=lambda: connect(args.host, args.port, src=args.src),
                          probe_interval=args.probe_interval)
    client.start()
    if args.ready:
        write_json(args.ready, {"pid": os.getpid(), "started": client.started_wall,
                                "locals": [c.local for c in client.conns]})
    stop.wait(args.duration if args.duration > 0 else None)
    rep = client.stop()
    rep["target"] = f"{args.host}:{args.port}"
    if args.report:
        write_json(args.report, rep)
    else:
        json.dump(rep, sys.stdout, indent=1, sort_keys=True)
        print()
    if not args.quiet:
        print(summary(rep), file=sys.stderr, flush=True)
    return 0 if rep["clean"] else 1


def summary(rep: dict[str, Any]) -> str:
    """One line per connection, for logs and assertion messages."""
    lines = [f"stream {rep.get('target', '')}: {'clean' if rep['clean'] else 'NOT CLEAN'}, "
             f"max gap {rep['max_gap']:.2f}s, servers {rep['servers']}"]
    for c in rep["connections"]:
        gap = ""
        if c["max_gap_start"]:
            gap = f" (from {time.strftime('%H:%M:%S', time.localtime(c['max_gap_start']))}"
            gap += f".{int(c['max_gap_start'] % 1 * 1000):03d})"
        lines.append(f"  conn {c['index']} {c['local']}: sent {c['sent']} answered {c['answered']} "
                     f"gap {c['max_gap']:.2f}s{gap} servers {c['servers']}"
                     + ("" if c["clean"] else " -- " + _problems(c)))
    if "probes" in rep:
        p = rep["probes"]
        lines.append(f"  new connections: {p['ok']}/{p['count']} answered, max {p['max_took']:.2f}s"
                     + (f", errors {p['errors']}" if p["failed"] else ""))
    return "\n".join(lines)


# ---- background process (for tests) ---------------------------------------------
class StreamProcess:
    """``stream.py client`` as a background process in namespace ``ns``.

    ``start()`` returns once every connection is established (the ready file);
    ``stop()`` sends SIGTERM and returns the JSON report.
    """

    def __init__(self, ns: str | None, host: str, port: int = STREAM_PORT, connections: int = 1,
                 interval: float = 0.05, workdir: str | os.PathLike = "/tmp", name: str = "stream",
                 probe_interval: float | None = None, duration: float = 0, drain: float = DRAIN_TIMEOUT,
                 python: str = sys.executable) -> None:
        self.dir = Path(workdir)
        self.report_path = self.dir / f"{name}.report.json"
        self.ready_path = self.dir / f"{name}.ready.json"
        self.log_path = self.dir / f"{name}.log"
        argv = [python, "-S", str(HERE / "stream.py"), "client", "--host", host, "--port", str(port),
                "--connections", str(connections), "--interval", str(interval), "--drain", str(drain),
                "--duration", str(duration), "--report", str(self.report_path), "--ready", str(self.ready_path)]
        if probe_interval:
            argv += ["--probe-interval", str(probe_interval)]
        self.argv = (["ip", "netns", "exec", ns] if ns else []) + argv
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = CONNECT_TIMEOUT + 30) -> "StreamProcess":
        self.dir.mkdir(parents=True, exist_ok=True)
        for p in (self.report_path, self.ready_path):
            p.unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while not self.ready_path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"stream client exited {self.proc.returncode} before it was ready:\n"
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"stream client not connected after {timeout:.0f}s")
            time.sleep(0.05)
        return self

    def stop(self, timeout: float = DRAIN_TIMEOUT + 30) -> dict[str, Any]:
        assert self.proc is not None, "not started"
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise RuntimeError("stream client did not finish its report after SIGTERM") from None
        if not self.report_path.exists():
            raise RuntimeError(f"stream client exited {self.proc.returncode} without a report:\n"
                               f"{self.log_path.read_text(errors='replace')[-2000:]}")
        return json.loads(self.report_path.read_text())

    def locals(self) -> list[str]:
        """``addr:port`` of each stream connection (from the ready file)."""
        return json.loads(self.ready_path.read_text())["locals"]

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---- command line ---------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("serve", help="answer N with 'N NAME'")
    s.add_argument("--name", required=True)
    s.add_argument("--port", type=int, default=STREAM_PORT)
    s.add_argument("--bind", default="0.0.0.0")
    s.add_argument("--pidfile", help="written once the port is bound")
    c = sub.add_parser("client", help="K numbered streams; JSON report on SIGTERM/SIGINT or after --duration")
    c.add_argument("--host", required=True)
    c.add_argument("--port", type=int, default=STREAM_PORT)
    c.add_argument("--src", help="source address to bind")
    c.add_argument("--connections", "-k", type=int, default=1)
    c.add_argument("--interval", type=float, default=0.05, help="seconds between lines (per connection)")
    c.add_argument("--duration", type=float, default=0, help="seconds; 0 = until SIGTERM/SIGINT")
    c.add_argument("--drain", type=float, default=DRAIN_TIMEOUT, help="seconds to wait for answers due at stop")
    c.add_argument("--probe-interval", type=float, help="also open a new connection every so many seconds")
    c.add_argument("--report", help="JSON report path (default: stdout)")
    c.add_argument("--ready", help="file written once every connection is established")
    c.add_argument("--quiet", "-q", action="store_true", help="no summary on stderr")
    args = ap.parse_args(argv)
    if args.mode == "serve":
        return serve(args.name, args.port, args.bind, args.pidfile)
    return client_main(args)


if __name__ == "__main__":
    sys.exit(main())
