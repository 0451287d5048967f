#!/usr/bin/env python3
r"""The integration lab: a load balancer, a client, three real servers and a LAN
client in network namespaces, with real traffic between them.

Topology (every address in 10.99.0.0/16, and dual-stack in fd00:99::/32)::

    c1 (10.99.1.2, 10.99.1.3) --veth-- lb (10.99.1.1 | br-lan 10.99.2.1, VIP on pask0)
     \ ret0 10.99.2.60/32                    |
      `---------------------- br-lan: rs1 10.99.2.11, rs2 .12, rs3 .13, lanc 10.99.2.50

IPv6 mirrors it: client net fd00:99:1::/64 (lb ::1, c1 ::2 and ::3), servers'
LAN fd00:99:2::/64 (lb ::1, rs1 ::11, rs2 ::12, rs3 ::13, lanc ::50, c1's ret0
::60/128), VIP6 fd00:99:100::1.  Every IPv6 address is ``nodad`` (and DAD is off
in every namespace), so nothing waits for duplicate address detection.  IPv6
traffic stays inside these namespaces and fd00:99::/32.

The load balancer is its own namespace ``lb``, not the root namespace: IPVS,
nftables, sysctls and links are all per network namespace, so pask-apply run
under ``ip netns exec lb`` programs a throw-away kernel context, and the lab is
as safe on a host kernel that has IPVS as in the test VM.  Real servers route
via 10.99.2.1 (the LB) and run ``echo_server.py`` on TCP 8080 and 80 and UDP
5353; each answer names the server and the client address it saw.

Direct server return must really bypass the LB, so c1 has a second leg on the
servers' LAN (``ret0``, 10.99.2.60/32, no subnet route): ``prepare_dsr`` points
the servers' route to 10.99.1.0/24 at it, as a real upstream router would be,
and DSR replies never touch the LB (IPVS OutPkts stay 0).  In NAT modes the
servers reply through their default route, the LB.

Client traffic is made in-process: a socket is created inside the client's
namespace (setns on this thread only) and used from here, which is ~100x
cheaper than a curl or Python process per request under TCG.

Use from the shell (tools/demo.sh): ``python integration/lab.py up|down``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

ROOT = Path(__file__).resolve().parent.parent
HERE = Path(__file__).resolve().parent

# ---- the topology's names and addresses ------------------------------------
LB = "lb"
CLIENT = "c1"
LAN_CLIENT = "lanc"
VIP = "10.99.100.1"
VIP2 = "10.99.100.2"
VIP_INTERFACE = "pask0"
LB_CLIENT_SIDE_IP = "10.99.1.1"
LB_LAN_IP = "10.99.2.1"
CLIENT_IP = "10.99.1.2"
CLIENT2_IP = "10.99.1.3"          # second source address of c1: a second "client"
LAN_CLIENT_IP = "10.99.2.50"
CLIENT_RETURN_IP = "10.99.2.60"   # c1's leg on the servers' LAN: the DSR return path
CLIENT_NET = "10.99.1.0/24"
LAN_NET = "10.99.2.0/24"
SERVERS: dict[str, str] = {"rs1": "10.99.2.11", "rs2": "10.99.2.12", "rs3": "10.99.2.13"}
# IPv6: the same plan in ULA space (fd00:99::/32 only)
VIP6 = "fd00:99:100::1"
VIP6_2 = "fd00:99:100::2"
LB_CLIENT_SIDE_IP6 = "fd00:99:1::1"
LB_LAN_IP6 = "fd00:99:2::1"
CLIENT_IP6 = "fd00:99:1::2"
CLIENT2_IP6 = "fd00:99:1::3"          # deprecated (preferred_lft 0): used only when bound to
LAN_CLIENT_IP6 = "fd00:99:2::50"
CLIENT_RETURN_IP6 = "fd00:99:2::60"
CLIENT_NET6 = "fd00:99:1::/64"
LAN_NET6 = "fd00:99:2::/64"
SERVERS6: dict[str, str] = {"rs1": "fd00:99:2::11", "rs2": "fd00:99:2::12", "rs3": "fd00:99:2::13"}
HTTP_PORT = 8080                  # real servers' port for NAT modes
DSR_PORT = 80                     # DSR keeps the VIP's port: servers listen on it too
UDP_PORT = 5353
NAMESPACES = (LB, CLIENT, LAN_CLIENT, *SERVERS)
LAB_DIR = Path(os.environ.get("PASK_LAB_DIR", "/run/pask-lab"))

# Generous deadlines: under TCG everything is ~10x slower, and timing varies.
HTTP_TIMEOUT = float(os.environ.get("PASK_LAB_HTTP_TIMEOUT", "10"))
WAIT_TIMEOUT = float(os.environ.get("PASK_LAB_WAIT_TIMEOUT", "60"))
APPLY_TIMEOUT = float(os.environ.get("PASK_LAB_APPLY_TIMEOUT", "300"))

T = TypeVar("T")


# ---- processes ----------------------------------------------------------------
def run(cmd: list[str] | str, ns: str | None = None, check: bool = True,
        input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run a command (in namespace ``ns``); a failure raises with its output."""
    argv = shlex.split(cmd) if isinstance(cmd, str) else list(cmd)
    if ns:
        argv = ["ip", "netns", "exec", ns, *argv]
    cp = subprocess.run(argv, input=input, capture_output=True, text=True, timeout=timeout)
    if check and cp.returncode != 0:
        raise RuntimeError(f"command failed ({cp.returncode}): {shlex.join(argv)}\n"
                           f"stdout: {cp.stdout}\nstderr: {cp.stderr}")
    return cp


def ip_batch(ns: str | None, lines: Iterable[str]) -> None:
    """Many ``ip`` commands in one process (each process start is costly in the VM)."""
    script = "\n".join(lines) + "\n"
    argv = ["ip"] + (["-n", ns] if ns else []) + ["-batch", "-"]
    cp = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=60)
    if cp.returncode != 0:
        raise RuntimeError(f"ip -n {ns} -batch failed: {cp.stderr}\nscript:\n{script}")


def wait_for(predicate: Callable[[], T], timeout: float = WAIT_TIMEOUT, what: str = "condition",
             interval: float = 0.05) -> T:
    """Poll until ``predicate()`` is truthy and return it; no fixed sleeps.

    An exception from the predicate counts as "not yet" and is shown if time runs out.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = predicate()
            if value:
                return value
            last = value
        except Exception as e:   # noqa: BLE001 - reported below
            last = e
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}; last result: {last!r}")
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)


# ---- in-process network namespace switching ----------------------------------
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_ns_lock = threading.Lock()


@contextlib.contextmanager
def in_netns(ns: str) -> Iterator[None]:
    """Run the body with this thread in network namespace ``ns``, then switch back.

    Sockets keep the namespace they were created in, so a socket made here is
    used afterwards from anywhere.  /proc/sys/net opened here is ``ns``'s too.
    """
    with _ns_lock:
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{ns}", os.O_RDONLY)
        except FileNotFoundError:
            os.close(own)
            raise RuntimeError(f"network namespace {ns!r} does not exist") from None
        try:
            if _libc.setns(target, _CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"setns({ns}): {os.strerror(err)}")
            try:
                yield
            finally:
                if _libc.setns(own, _CLONE_NEWNET) != 0:   # never go on in the wrong namespace
                    os._exit(70)
        finally:
            os.close(target)
            os.close(own)


def is_ipv6(addr: str) -> bool:
    return ":" in addr


def family_of(host: str) -> int:
    """The socket family for an address: AF_INET6 for an IPv6 host, else AF_INET."""
    return socket.AF_INET6 if is_ipv6(host) else socket.AF_INET


def ns_socket(ns: str, family: int | str = socket.AF_INET, kind: int = socket.SOCK_STREAM) -> socket.socket:
    """A socket made in namespace ``ns``; ``family`` may be an address (its family is used)."""
    if isinstance(family, str):
        family = family_of(family)
    with in_netns(ns):
        return socket.socket(family, kind)


def _host_header(host: str) -> str:
    return f"[{host}]" if is_ipv6(host) else host


def sysctl(ns: str, key: str, value: str | int | None = None) -> str:
    """Read (and with ``value``, write) a sysctl of namespace ``ns``: ``net.ipv4.ip_forward``."""
    path = "/proc/sys/" + key.replace(".", "/")
    with in_netns(ns):
        if value is not None:
            with open(path, "w", encoding="ascii") as f:
                f.write(f"{value}\n")
        with open(path, encoding="ascii") as f:
            return f.read().strip()


def sysctls(ns: str, values: dict[str, str | int]) -> None:
    for key, value in values.items():
        sysctl(ns, key, value)


# ---- client traffic -------------------------------------------------------------
class HttpError(Exception):
    """A request through the lab failed (refused, reset, timed out, bad answer)."""


def _parse_http(raw: bytes) -> tuple[int, str]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    if not sep:
        raise HttpError(f"incomplete HTTP answer: {raw[:200]!r}")
    try:
        status = int(head.split(b" ", 2)[1])
    except (IndexError, ValueError):
        raise HttpError(f"bad status line: {head[:100]!r}") from None
    return status, body.decode(errors="replace")


def http_get(ns: str, host: str, port: int, path: str = "/", src: str | None = None,
             timeout: float = HTTP_TIMEOUT) -> tuple[int, str]:
    """One HTTP/1.1 GET from namespace ``ns`` (optionally from source ``src``): (status, body)."""
    s = ns_socket(ns, host)
    try:
        s.settimeout(timeout)
        if src:
            s.bind((src, 0))
        s.connect((host, port))
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: {_host_header(host)}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while True:
            data = s.recv(65536)
            if not data:
                break
            chunks.append(data)
    except OSError as e:
        raise HttpError(f"GET http://{_host_header(host)}:{port}{path} from {ns}{'/' + src if src else ''}: {e!r}") from e
    finally:
        s.close()
    return _parse_http(b"".join(chunks))


def who(ns: str, host: str, port: int, src: str | None = None, path: str = "/") -> tuple[str, str]:
    """Ask through ``host:port`` which real server answered and whom it saw: (name, peer_ip)."""
    status, body = http_get(ns, host, port, path=path, src=src)
    parts = body.split()
    if status != 200 or len(parts) != 2:
        raise HttpError(f"unexpected answer from {host}:{port}: {status} {body!r}")
    return parts[0], parts[1]


def curl_vip(ns: str, vip: str, port: int, n: int, src: str | None = None) -> list[tuple[str, str]]:
    """``n`` requests, one connection each: the list of (server name, peer ip seen)."""
    return [who(ns, vip, port, src=src) for _ in range(n)]


def spread(answers: Iterable[tuple[str, str]]) -> Counter:
    """How many answers each server gave."""
    return Counter(name for name, _ in answers)


def curl_cmd(ns: str, url: str, timeout: float = HTTP_TIMEOUT) -> str:
    """The real curl, for the demo path and to prove the lab works for it too."""
    return run(["curl", "-sS", "--max-time", str(int(timeout)), url], ns=ns).stdout


class HttpConnection:
    """A kept-alive connection: proves an established connection survives a change."""

    def __init__(self, ns: str, host: str, port: int, src: str | None = None,
                 timeout: float = HTTP_TIMEOUT) -> None:
        self.host, self.port = host, port
        self.sock = ns_socket(ns, host)
        self.sock.settimeout(timeout)
        if src:
            self.sock.bind((src, 0))
        self.sock.connect((host, port))
        self._buf = b""

    def who(self, path: str = "/") -> tuple[str, str]:
        self.sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {_host_header(self.host)}\r\n\r\n".encode())
        while b"\r\n\r\n" not in self._buf:
            self._recv_more()
        head, _, rest = self._buf.partition(b"\r\n\r\n")
        length = next(int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        while len(rest) < length:
            self._buf = head + b"\r\n\r\n" + rest
            self._recv_more()
            head, _, rest = self._buf.partition(b"\r\n\r\n")
        body, self._buf = rest[:length], rest[length:]
        name, peer = body.decode().split()
        return name, peer

    def _recv_more(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise HttpError("kept-alive connection closed by the other side")
        self._buf += data

    def close(self) -> None:
        self.sock.close()


def udp_ask(ns: str, host: str, port: int, src: str | None = None,
            timeout: float = HTTP_TIMEOUT) -> tuple[str, str]:
    """One UDP datagram to ``host:port`` from a new socket: (server name, peer ip seen)."""
    s = ns_socket(ns, host, socket.SOCK_DGRAM)
    try:
        s.settimeout(timeout)
        s.bind((src or ("::" if is_ipv6(host) else "0.0.0.0"), 0))
        s.connect((host, port))
        s.send(b"who\n")
        name, peer = s.recv(2048).decode().split()
        return name, peer
    except OSError as e:
        raise HttpError(f"UDP {host}:{port} from {ns}: {e!r}") from e
    finally:
        s.close()


# ---- kernel views -----------------------------------------------------------------
def ipvs_snapshot(ns: str = LB) -> str:
    """``ipvsadm -Sn`` + ``nft list ruleset``: the text a no-op must leave byte-identical."""
    ipvs = run(["ipvsadm", "-Sn"], ns=ns).stdout
    nft = run(["nft", "list", "ruleset"], ns=ns).stdout
    return f"# ipvsadm -Sn\n{ipvs}# nft list ruleset\n{nft}"


@dataclass
class IpvsStats:
    conns: int
    inpkts: int
    outpkts: int
    dests: dict[str, "IpvsStats"] = field(default_factory=dict)


def ipvs_stats(ns: str = LB) -> dict[str, IpvsStats]:
    """``ipvsadm -Ln --stats --exact`` by service, e.g. ``"TCP 10.99.100.1:80"``,
    ``"TCP [fd00:99:100::1]:80"``, ``"FWM 65536"`` or (IPv6) ``"FWM 65536 IPv6"``."""
    out = run(["ipvsadm", "-Ln", "--stats", "--exact"], ns=ns).stdout
    services: dict[str, IpvsStats] = {}
    current: IpvsStats | None = None
    for line in out.splitlines():
        f = line.split()
        if len(f) == 8 and f[0] == "FWM" and f[2] == "IPv6":    # "FWM  65536 IPv6 ..."
            f = [f[0], f"{f[1]} IPv6", *f[3:]]
        if len(f) == 7 and f[0] in ("TCP", "UDP", "SCTP", "FWM") and f[2].isdigit():
            current = services[f"{f[0]} {f[1]}"] = IpvsStats(int(f[2]), int(f[3]), int(f[4]))
        elif len(f) == 7 and f[0] == "->" and f[2].isdigit() and current is not None:
            current.dests[f[1]] = IpvsStats(int(f[2]), int(f[3]), int(f[4]))
    return services


def wait_ipvs_stats(key: str, conns: int, ns: str = LB, pkts_per_conn: int = 4) -> IpvsStats:
    """Stats of service ``key`` once they count ``conns`` connections and their packets.

    IPVS folds its per-CPU counters into what ipvsadm shows only every 2 s
    (the rate estimator), so counters lag the traffic.  A short HTTP exchange
    is at least SYN, ACK, request, FIN from the client: 4 packets in.
    """
    def settled() -> IpvsStats | None:
        s = ipvs_stats(ns).get(key)
        return s if s and s.conns >= conns and s.inpkts >= pkts_per_conn * conns else None
    return wait_for(settled, what=f"IPVS stats of {key} to count {conns} connections")


# ---- pask configs ---------------------------------------------------------------
def service(name: str = "web", *, vip: str = VIP, port: int = 80, protocol: str = "tcp",
            scheduler: str = "rr", nat_mode: str = "dest-nat",
            servers: Iterable[str] = tuple(SERVERS), server_port: int | None = HTTP_PORT,
            weights: dict[str, int] | None = None, **extra: Any) -> dict[str, Any]:
    """A service entry over lab servers (by name); ``extra`` adds keys (snat_ip, filters...).

    An IPv6 ``vip`` takes the servers' IPv6 addresses."""
    addresses = SERVERS6 if is_ipv6(vip) else SERVERS
    real = []
    for s in servers:
        entry: dict[str, Any] = {"address": addresses[s]}
        if server_port is not None:
            entry["port"] = server_port
        if weights and s in weights:
            entry["weight"] = weights[s]
        real.append(entry)
    return {"name": name, "vip": vip, "port": port, "protocol": protocol, "scheduler": scheduler,
            "nat_mode": nat_mode, **extra, "real_servers": real}


def config(*services: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"version": 1, "vip_interface": VIP_INTERFACE, **extra, "services": list(services)}


def stop_process(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL if it has not gone within ``timeout`` s (None: nothing to stop)."""
    if proc is None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def write_config_file(path: Path, cfg: dict[str, Any] | str) -> Path:
    """A config (a dict, or YAML text as it is) written to ``path``."""
    if isinstance(cfg, str):
        text = cfg
    else:
        import yaml   # from the venv; only needed here
        text = yaml.safe_dump(cfg, sort_keys=False)
    path.write_text(text)
    return path


def pask_argv() -> list[str]:
    """The venv's ``pask`` console script; else the same entry point through this interpreter."""
    script = ROOT / ".venv" / "bin" / "pask"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from pask_ipvs.cli import main; sys.exit(main())"]


def realserver(ns: str, *args: str) -> subprocess.CompletedProcess:
    """`pask realserver ARGS` inside namespace ``ns`` (as an operator would run it there)."""
    return run([*pask_argv(), "realserver", *args], ns=ns, check=False, timeout=300)


def pask_apply_argv() -> list[str]:
    """The venv's console script; else the same entry point through this interpreter."""
    script = ROOT / ".venv" / "bin" / "pask-apply"
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "import sys; from pask_ipvs.cli import apply_main; sys.exit(apply_main())"]


# ---- the lab ---------------------------------------------------------------------
class Lab:
    """Builds, resets and tears down the topology; runs pask-apply in the LB namespace."""

    def __init__(self, workdir: Path | None = None) -> None:
        self.dir = Path(workdir or LAB_DIR)
        self.state_file = self.dir / "state.json"
        self.health_file = self.dir / "health.json"
        self._procs: dict[str, subprocess.Popen] = {}
        self._lb_defaults: dict[str, str] = {}
        self._configs = 0

    # -- build / tear down ---------------------------------------------------
    def up(self) -> "Lab":
        self.down()                              # leftovers of a crashed run
        self.dir.mkdir(parents=True, exist_ok=True)
        subprocess.run(["modprobe", "-a", "ip_vs", "dummy", "veth", "bridge", "ipip"],
                       capture_output=True)      # preloaded in the VM; needed on an IPVS host
        ip_batch(None, [f"netns add {ns}" for ns in NAMESPACES])
        for ns in NAMESPACES:   # before any link exists: no DAD on link-local addresses either
            sysctls(ns, {"net.ipv6.conf.default.accept_dad": 0, "net.ipv6.conf.all.accept_dad": 0})
        sysctls(LB, {"net.ipv6.conf.all.forwarding": 1})
        lb = ["link set lo up",
              "link add br-lan type bridge", f"addr add {LB_LAN_IP}/24 dev br-lan",
              f"addr add {LB_LAN_IP6}/64 dev br-lan nodad", "link set br-lan up",
              f"link add to-{CLIENT} type veth peer name eth0 netns {CLIENT}",
              f"addr add {LB_CLIENT_SIDE_IP}/24 dev to-{CLIENT}",
              f"addr add {LB_CLIENT_SIDE_IP6}/64 dev to-{CLIENT} nodad", f"link set to-{CLIENT} up"]
        lan_ports = {f"to-{ns}": f"eth0 netns {ns}" for ns in (*SERVERS, LAN_CLIENT)}
        lan_ports[f"to-{CLIENT}ret"] = f"ret0 netns {CLIENT}"
        for port, peer in lan_ports.items():
            lb += [f"link add {port} type veth peer name {peer}",
                   f"link set {port} master br-lan", f"link set {port} up"]
        ip_batch(LB, lb)
        ip_batch(CLIENT, ["link set lo up", "link set eth0 up", f"addr add {CLIENT_IP}/24 dev eth0",
                          f"addr add {CLIENT2_IP}/24 dev eth0", f"route add default via {LB_CLIENT_SIDE_IP}",
                          f"addr add {CLIENT_IP6}/64 dev eth0 nodad", f"addr add {CLIENT2_IP6}/64 dev eth0 nodad preferred_lft 0",
                          f"route add ::/0 via {LB_CLIENT_SIDE_IP6}",
                          "link set ret0 up", f"addr add {CLIENT_RETURN_IP}/32 dev ret0",
                          f"addr add {CLIENT_RETURN_IP6}/128 dev ret0 nodad"])
        # DSR replies (source = VIP) arrive on ret0 while the VIP routes via eth0
        sysctls(CLIENT, {"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.ret0.rp_filter": 0})
        for ns, addr in (*SERVERS.items(), (LAN_CLIENT, LAN_CLIENT_IP)):
            addr6 = SERVERS6.get(ns, LAN_CLIENT_IP6)
            ip_batch(ns, ["link set lo up", "link set eth0 up", f"addr add {addr}/24 dev eth0",
                          f"route add default via {LB_LAN_IP}",
                          f"addr add {addr6}/64 dev eth0 nodad", f"route add ::/0 via {LB_LAN_IP6}"])
        self._lb_defaults = self._read_lb_sysctls()
        for name in SERVERS:
            self.start_server(name, wait=False)
        for name in SERVERS:
            wait_for(lambda: self.pidfile(name).exists(), what=f"echo server {name} to listen")
        return self

    def down(self) -> None:
        for name in list(self._procs):
            self.stop_server(name)
        for pidfile in self.dir.glob("*.pid") if self.dir.exists() else ():   # a crashed run's servers
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text())
                if b"echo_server.py" in Path(f"/proc/{pid}/cmdline").read_bytes():   # never a reused pid
                    os.kill(pid, signal.SIGTERM)
        existing = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        stale = [ns for ns in NAMESPACES if ns in existing]
        if stale:
            subprocess.run(["ip", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in stale),
                           capture_output=True, text=True)
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- real servers ---------------------------------------------------------
    def pidfile(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def request_log(self, name: str) -> Path:
        return self.dir / f"{name}.requests"

    def health_down_file(self, name: str) -> Path:
        return self.dir / f"{name}.unhealthy"

    def start_server(self, name: str, wait: bool = True) -> None:
        """Start ``echo_server.py`` in the server's namespace (TCP 8080 and 80, UDP 5353)."""
        self.pidfile(name).unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", name, sys.executable, "-S", str(HERE / "echo_server.py"),
                "--name", name, "--tcp", str(HTTP_PORT), "--tcp", str(DSR_PORT), "--udp", str(UDP_PORT),
                "--pidfile", str(self.pidfile(name)), "--health-file", str(self.health_down_file(name)),
                "--log", str(self.request_log(name))]
        with open(self.dir / f"{name}.out", "ab") as out:
            self._procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                                 start_new_session=True)
        if wait:
            wait_for(lambda: self.pidfile(name).exists(), what=f"echo server {name} to listen")

    def stop_server(self, name: str) -> None:
        stop_process(self._procs.pop(name, None))

    def requests_seen(self, name: str) -> list[str]:
        """Lines ``proto peer path status`` that server ``name`` logged."""
        path = self.request_log(name)
        return path.read_text().splitlines() if path.exists() else []

    def clear_request_logs(self) -> None:
        for name in SERVERS:
            self.request_log(name).unlink(missing_ok=True)

    # -- the load balancer ------------------------------------------------------
    def _read_lb_sysctls(self) -> dict[str, str]:
        keys = ["net/ipv4/ip_forward"]
        with in_netns(LB):
            for d in ("net/ipv4/vs", "net/ipv4/conf/all", "net/ipv4/conf/default"):
                full = Path("/proc/sys") / d
                if full.is_dir():
                    keys += [f"{d}/{k.name}" for k in full.iterdir()]
            values = {}
            for k in keys:
                with contextlib.suppress(OSError):
                    values[k] = Path("/proc/sys", k).read_text().strip()
        return values

    def lb_sysctl(self, key: str, value: str | int | None = None) -> str:
        return sysctl(LB, key, value)

    def ipvsadm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ipvsadm", *args], ns=LB, check=check)

    def nft(self, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return run(["nft", *args], ns=LB, input=input)

    def reset_lb(self) -> None:
        """Back to a fresh LB: no IPVS, no nft, no VIP link, sysctls as created, no pask state.

        ``ipvsadm -C`` and ``nft flush ruleset`` are fine here and only here: the
        LB namespace is the lab's own, thrown away after the tests.
        """
        run(["ipvsadm", "-C"], ns=LB)
        run(["nft", "flush", "ruleset"], ns=LB)
        run(["ip", "-n", LB, "link", "del", VIP_INTERFACE], check=False)
        with in_netns(LB):
            for key, value in self._lb_defaults.items():
                p = Path("/proc/sys", key)
                with contextlib.suppress(OSError):
                    if p.read_text().strip() != value:
                        p.write_text(value + "\n")
        for f in (self.state_file, self.health_file):
            f.unlink(missing_ok=True)
        self.clear_request_logs()

    def add_vip(self, vip: str = VIP) -> None:
        """What pask-apply does for a VIP; used by the self-check, which runs without pask."""
        exists = run(["ip", "-n", LB, "link", "show", VIP_INTERFACE], check=False).returncode == 0
        plen = 128 if is_ipv6(vip) else 32
        ip_batch(LB, ([] if exists else [f"link add {VIP_INTERFACE} type dummy"])
                 + [f"link set {VIP_INTERFACE} up", f"addr add {vip}/{plen} dev {VIP_INTERFACE}"
                    + (" nodad" if is_ipv6(vip) else "")])

    # -- real servers for direct server return ------------------------------------
    def prepare_dsr(self, mode: str, vip: str = VIP) -> None:
        """Real-server side of DSR, as an operator (or ``pask realserver up``) would set it.

        An IPv6 ``vip`` goes as /128 on ``lo`` (l2-dsr) or on ``ip6tnl0`` (l3-dsr,
        ip6ip6); IPv6 needs no ARP or rp_filter sysctls (see pask_ipvs/realserver.py).
        """
        if is_ipv6(vip):
            self._prepare_dsr6(mode, vip)
            return
        for ns in SERVERS:
            ip_batch(ns, [f"route add {CLIENT_NET} via {CLIENT_RETURN_IP}"])   # replies bypass the LB
            if mode == "l2-dsr":
                ip_batch(ns, [f"addr add {vip}/32 dev lo"])
                sysctls(ns, {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2,
                             "net.ipv4.conf.eth0.arp_ignore": 1, "net.ipv4.conf.eth0.arp_announce": 2})
            elif mode == "l3-dsr":
                ip_batch(ns, ["link set tunl0 up", f"addr add {vip}/32 dev tunl0"])
                sysctls(ns, {"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.tunl0.rp_filter": 0,
                             "net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2})
            else:
                raise ValueError(mode)

    def _prepare_dsr6(self, mode: str, vip: str) -> None:
        if mode not in ("l2-dsr", "l3-dsr"):
            raise ValueError(mode)
        if mode == "l3-dsr":
            run(["modprobe", "ip6_tunnel"])      # creates ip6tnl0 in every namespace
        for ns in SERVERS:
            lines = [f"route add {CLIENT_NET6} via {CLIENT_RETURN_IP6}"]   # replies bypass the LB
            if mode == "l2-dsr":
                lines.append(f"addr add {vip}/128 dev lo nodad")
            else:
                lines += ["link set ip6tnl0 up", f"addr add {vip}/128 dev ip6tnl0 nodad"]
            ip_batch(ns, lines)

    def unprepare_dsr(self, mode: str, vip: str = VIP) -> None:
        if is_ipv6(vip):
            for ns in SERVERS:
                run(["ip", "-n", ns, "-6", "route", "del", CLIENT_NET6], check=False)
                dev = "lo" if mode == "l2-dsr" else "ip6tnl0"
                run(["ip", "-n", ns, "addr", "del", f"{vip}/128", "dev", dev], check=False)
                if mode == "l3-dsr":
                    run(["ip", "-n", ns, "link", "set", "ip6tnl0", "down"], check=False)
            return
        for ns in SERVERS:
            run(["ip", "-n", ns, "route", "del", CLIENT_NET], check=False)
            dev = "lo" if mode == "l2-dsr" else "tunl0"
            run(["ip", "-n", ns, "addr", "del", f"{vip}/32", "dev", dev], check=False)
            if mode == "l3-dsr":
                run(["ip", "-n", ns, "link", "set", "tunl0", "down"], check=False)
            sysctls(ns, {"net.ipv4.conf.all.arp_ignore": 0, "net.ipv4.conf.all.arp_announce": 0})

    # -- pask --------------------------------------------------------------------------
    def write_config(self, cfg: dict[str, Any] | str) -> Path:
        self._configs += 1
        return write_config_file(self.dir / f"config-{self._configs}.yaml", cfg)

    def apply(self, cfg: dict[str, Any] | str, *flags: str, expect: int | None = None,
              timeout: float = APPLY_TIMEOUT) -> subprocess.CompletedProcess:
        """Run pask-apply in the LB namespace on ``cfg`` (a dict or YAML text).

        The state and health files are the lab's own (kept across calls in one
        lab, removed by ``reset_lb``).  With ``expect``, the exit code is
        asserted, with pask's whole output in the message.  The config's path is
        in ``.config_path``.
        """
        path = self.write_config(cfg)
        argv = ["ip", "netns", "exec", LB, *pask_apply_argv(), "--state-file", str(self.state_file),
                "--health-file", str(self.health_file), *flags, str(path)]
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        cp.config_path = path          # type: ignore[attr-defined]
        if expect is not None:
            assert cp.returncode == expect, (
                f"pask-apply {' '.join(flags)} exited {cp.returncode}, expected {expect}\n"
                f"--- config {path}:\n{path.read_text()}--- stdout:\n{cp.stdout}--- stderr:\n{cp.stderr}"
                f"--- kernel:\n{ipvs_snapshot()}")
        return cp


# ---- command line (tools/demo.sh) ------------------------------------------------
def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("up", "down"):
        print("usage: lab.py up|down   (namespaces lb, c1, rs1-rs3, lanc; servers on 8080/80 tcp, 5353 udp)",
              file=sys.stderr)
        return 2
    lab = Lab()
    if argv[0] == "down":
        lab.down()
        return 0
    lab.up()
    print(f"lab up: client {CLIENT} {CLIENT_IP} -> lb {LB_CLIENT_SIDE_IP} | br-lan {LB_LAN_IP} -> "
          + ", ".join(f"{n} {ip}:{HTTP_PORT}" for n, ip in SERVERS.items())
          + f"; LAN client {LAN_CLIENT} {LAN_CLIENT_IP}; IPv6 too: {CLIENT_IP6} -> {LB_CLIENT_SIDE_IP6} | "
          f"{LB_LAN_IP6} -> {', '.join(SERVERS6.values())}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
