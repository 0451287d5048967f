#!/usr/bin/env python3
r"""The HA-pair lab: two load balancers, active/standby, in network namespaces.

Topology (every address in 10.99.0.0/16; it mirrors docs/design.md "LB pair: ``ha:``")::

                          hsw (the "switch": three bridges)
        br-c (clients)              br-s (servers)             br-p (peer link)
     hc1 10.99.1.2              hrs1 10.99.2.11
       |                        hrs2 10.99.2.12
       |                        hrs3 10.99.2.13
     hlb1 eth0 10.99.1.11       hlb1 eth1 10.99.2.2        hlb1 eth2 10.99.3.1
     hlb2 eth0 10.99.1.12       hlb2 eth1 10.99.2.3        hlb2 eth2 10.99.3.2

Floating addresses (moved by the HA engine, i.e. keepalived; never added by
``up()``): 10.99.1.1/24 on eth0 (the client's gateway), 10.99.2.1/24 on eth1
(the real servers' gateway, snat_ip), and the VIP 10.99.1.100/32 on eth0.
The client routes via 10.99.1.1, the real servers via 10.99.2.1, so traffic
always goes through whichever LB holds them.  Both LBs forward (ip_forward=1).

Every LB port is a veth whose other end is a bridge port in ``hsw``; the peer
link is a bridge too, not a veth pair between the LBs: a link taken down on one
LB must not take the other LB's peer interface down with it (keepalived would
put the survivor in FAULT as well).

HaLab builds and tears down the topology and starts the real servers
(``echo_server.py`` on TCP 8080/80 and UDP 5353, ``stream.py serve`` on TCP
9000).  It does not start keepalived or conntrackd: pask-apply does.  It runs
pask-apply in a node's namespace with that node's own state directory
(``<dir>/hlb1/state.json``), and has the failure knobs the HA tests need:
links down, all links down, kill -9 a node's daemon (found by its network
namespace, never by name alone).

Use from the shell: ``python integration/ha_lab.py up|down``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import (APPLY_TIMEOUT, HERE, ROOT, WAIT_TIMEOUT, in_netns, ip_batch,  # noqa: E402
                 ns_socket, pask_apply_argv, run, stop_process, sysctl, sysctls, wait_for,
                 write_config_file)
from stream import STREAM_PORT, StreamProcess  # noqa: E402


# ---- the topology's names and addresses ------------------------------------
@dataclass(frozen=True)
class Node:
    name: str          # the node's name in the config's ha.nodes
    ns: str            # its network namespace
    client_ip: str     # eth0
    server_ip: str     # eth1
    peer_ip: str       # eth2 (the peer link)
    priority: int


SWITCH = "hsw"
CLIENT = "hc1"
CLIENT_IP = "10.99.1.2"
NODES: dict[str, Node] = {
    "hlb1": Node("lb1", "hlb1", "10.99.1.11", "10.99.2.2", "10.99.3.1", 200),
    "hlb2": Node("lb2", "hlb2", "10.99.1.12", "10.99.2.3", "10.99.3.2", 100),
}
LB1, LB2 = NODES
SERVERS: dict[str, str] = {"hrs1": "10.99.2.11", "hrs2": "10.99.2.12", "hrs3": "10.99.2.13"}
CLIENT_GW = "10.99.1.1"            # floating, /24 on eth0
SERVER_GW = "10.99.2.1"            # floating, /24 on eth1 (also the both-nat snat_ip)
VIP = "10.99.1.100"                # floating, /32 on eth0
CLIENT_NET = "10.99.1.0/24"
SERVER_NET = "10.99.2.0/24"
PEER_NET = "10.99.3.0/24"
FLOATING: tuple[tuple[str, int, str], ...] = ((CLIENT_GW, 24, "eth0"), (SERVER_GW, 24, "eth1"), (VIP, 32, "eth0"))
LB_LINKS = ("eth0", "eth1", "eth2")
PEER_LINK = "eth2"
VRID = 51
HTTP_PORT = 8080
DSR_PORT = 80
UDP_PORT = 5353
BRIDGES = {"eth0": "br-c", "eth1": "br-s", "eth2": "br-p"}
NAMESPACES = (SWITCH, *NODES, CLIENT, *SERVERS)
HA_LAB_DIR = Path(os.environ.get("PASK_HA_LAB_DIR", "/run/pask-ha-lab"))


def ha_config(*services: dict[str, Any], sync_connections: bool = True, preempt: bool = False,
              **extra: Any) -> dict[str, Any]:
    """A pask config with the lab's ``ha:`` block (docs/design.md's example) and ``services``."""
    ha = {"virtual_router_id": VRID, "advert_interval": 1, "preempt": preempt, "peer_link": PEER_LINK,
          "nodes": [{"name": n.name, "address": n.peer_ip, "priority": n.priority} for n in NODES.values()],
          "floating_addresses": [{"address": f"{CLIENT_GW}/24", "interface": "eth0"},
                                 {"address": f"{SERVER_GW}/24", "interface": "eth1"}],
          "sync_connections": sync_connections}
    return {"version": 1, **extra, "ha": ha, "services": list(services)}


def stream_service(name: str = "stream", nat_mode: str = "dest-nat", scheduler: str = "rr",
                   **extra: Any) -> dict[str, Any]:
    """A service VIP:9000 over the three real servers' stream port."""
    if nat_mode == "both-nat":
        extra.setdefault("snat_ip", SERVER_GW)
    return {"name": name, "vip": VIP, "port": STREAM_PORT, "protocol": "tcp", "scheduler": scheduler,
            "nat_mode": nat_mode, **extra,
            "real_servers": [{"address": ip, "port": STREAM_PORT} for ip in SERVERS.values()]}


# ---- small network probes ------------------------------------------------------
def _icmp_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(ns: str, host: str, timeout: float = 5.0, count: int = 3) -> bool:
    """ICMP echo from namespace ``ns`` (raw socket: there is no ping binary in the VM)."""
    with in_netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    ident = os.getpid() & 0xFFFF
    try:
        deadline = time.monotonic() + timeout
        for seq in range(1, count + 1):
            payload = b"pask-ha-lab"
            head = struct.pack("!BBHHH", 8, 0, 0, ident, seq)
            packet = struct.pack("!BBHHH", 8, 0, _icmp_checksum(head + payload), ident, seq) + payload
            per_try = min(max(deadline - time.monotonic(), 0.05), timeout / count)
            try:
                s.sendto(packet, (host, 0))
            except OSError:              # no route (a link is down): this try failed
                time.sleep(min(per_try, 0.2))
                continue
            end = time.monotonic() + per_try
            while (left := end - time.monotonic()) > 0:
                s.settimeout(left)
                try:
                    data, addr = s.recvfrom(2048)
                except socket.timeout:
                    break
                ihl = (data[0] & 0x0F) * 4
                kind, _code, _sum, rid, _rseq = struct.unpack("!BBHHH", data[ihl:ihl + 8])
                if kind == 0 and rid == ident and addr[0] == host:
                    return True
        return False
    finally:
        s.close()


def tcp_reachable(ns: str, host: str, port: int = 9, timeout: float = 5.0) -> bool:
    """True if ``host`` answers a TCP SYN from ``ns`` at all: accepted, or refused (RST)."""
    s = ns_socket(ns, host)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    finally:
        s.close()


def stream_ask(ns: str, host: str, port: int = STREAM_PORT, timeout: float = 10.0) -> str:
    """One line over a new connection: the name of the server that answered."""
    s = ns_socket(ns, host)
    s.settimeout(timeout)
    try:
        s.connect((host, port))
        s.sendall(b"1\n")
        buf = b""
        while b"\n" not in buf:
            data = s.recv(4096)
            if not data:
                raise ConnectionError(f"{host}:{port} closed without an answer")
            buf += data
        n, name = buf.split(b"\n", 1)[0].decode().split()
        assert n == "1", buf
        return name
    finally:
        s.close()


# ---- processes by network namespace ----------------------------------------------
def _netns_id(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def pids_in(ns: str, comm: str | None = None) -> list[int]:
    """Processes whose network namespace is ``ns`` (optionally only those named ``comm``).

    By namespace, never by name alone: a keepalived of the host or of the other
    node is never matched.  Kernel threads (no cmdline) are left out.
    """
    want = _netns_id(f"/run/netns/{ns}")
    if want is None:
        return []
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        if pid == os.getpid() or _netns_id(f"/proc/{pid}/ns/net") != want:
            continue
        try:
            if not Path(f"/proc/{pid}/cmdline").read_bytes():
                continue
            if comm is not None and Path(f"/proc/{pid}/comm").read_text().strip() != comm:
                continue
        except OSError:
            continue
        out.append(pid)
    return sorted(out)


def _signal_all(pids: Iterable[int], sig: int) -> list[int]:
    sent = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
            sent.append(pid)
    return sent


# ---- the lab -------------------------------------------------------------------------
class HaLab:
    """Builds and tears down the HA pair topology; runs pask-apply per node."""

    def __init__(self, workdir: Path | None = None, stream_servers: bool = True,
                 echo_servers: bool = True) -> None:
        self.dir = Path(workdir or HA_LAB_DIR)
        self._procs: dict[str, subprocess.Popen] = {}
        self._configs = 0
        self._stream_servers = stream_servers
        self._echo_servers = echo_servers

    # -- names --
    @staticmethod
    def node(name: str) -> Node:
        """A node by config name (``lb1``) or namespace (``hlb1``)."""
        for n in NODES.values():
            if name in (n.name, n.ns):
                return n
        raise KeyError(f"no LB node {name!r} (known: {', '.join(NODES)} / "
                       f"{', '.join(n.name for n in NODES.values())})")

    @classmethod
    def node_ns(cls, name: str) -> str:
        return cls.node(name).ns

    @classmethod
    def other(cls, name: str) -> str:
        """The other LB's namespace."""
        ns = cls.node_ns(name)
        return LB2 if ns == LB1 else LB1

    def node_dir(self, name: str) -> Path:
        return self.dir / self.node_ns(name)

    def state_file(self, name: str) -> Path:
        return self.node_dir(name) / "state.json"

    def health_file(self, name: str) -> Path:
        return self.node_dir(name) / "health.json"

    # -- build / tear down --
    def up(self) -> "HaLab":
        self.down()                                    # leftovers of a crashed run
        self.dir.mkdir(parents=True, exist_ok=True)
        for ns in NODES:
            self.node_dir(ns).mkdir(parents=True, exist_ok=True)
        subprocess.run(["modprobe", "-a", "ip_vs", "veth", "bridge"], capture_output=True)
        ip_batch(None, [f"netns add {ns}" for ns in NAMESPACES])
        for ns in NAMESPACES:      # before any link exists: no DAD on link-local addresses
            sysctls(ns, {"net.ipv6.conf.default.accept_dad": 0, "net.ipv6.conf.all.accept_dad": 0})
        sw = ["link set lo up"]
        for br in BRIDGES.values():
            sw += [f"link add {br} type bridge", f"link set {br} up"]
        ports: list[tuple[str, str, str, str]] = []     # (switch port, peer name, peer ns, bridge)
        for i, ns in enumerate(NODES, 1):
            for ifname, br in BRIDGES.items():
                ports.append((f"l{i}{ifname[-1]}", ifname, ns, br))
        ports.append(("c1", "eth0", CLIENT, "br-c"))
        for i, ns in enumerate(SERVERS, 1):
            ports.append((f"rs{i}", "eth0", ns, "br-s"))
        for port, peer, ns, br in ports:
            sw += [f"link add {port} type veth peer name {peer} netns {ns}",
                   f"link set {port} master {br}", f"link set {port} up"]
        ip_batch(SWITCH, sw)
        for n in NODES.values():
            ip_batch(n.ns, ["link set lo up",
                            f"addr add {n.client_ip}/24 dev eth0", f"addr add {n.server_ip}/24 dev eth1",
                            f"addr add {n.peer_ip}/24 dev eth2",
                            "link set eth0 up", "link set eth1 up", "link set eth2 up"])
            sysctl(n.ns, "net.ipv4.ip_forward", 1)
        ip_batch(CLIENT, ["link set lo up", "link set eth0 up", f"addr add {CLIENT_IP}/24 dev eth0",
                          f"route add default via {CLIENT_GW}"])
        for ns, addr in SERVERS.items():
            ip_batch(ns, ["link set lo up", "link set eth0 up", f"addr add {addr}/24 dev eth0",
                          f"route add default via {SERVER_GW}"])
        self.start_servers()
        return self

    def down(self) -> None:
        for key in list(self._procs):
            self._stop_proc(key)
        # whatever still runs in the lab's namespaces (a crashed run's servers, the
        # keepalived/conntrackd that pask-apply started there): only those namespaces
        existing = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        stale = [ns for ns in NAMESPACES if ns in existing]
        pids = [pid for ns in stale for pid in pids_in(ns)]
        if pids:
            _signal_all(pids, signal.SIGTERM)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
                time.sleep(0.1)
            _signal_all([p for p in pids if Path(f"/proc/{p}").exists()], signal.SIGKILL)
        if stale:
            subprocess.run(["ip", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in stale),
                           capture_output=True, text=True)
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    # -- real servers --
    def pidfile(self, name: str, kind: str = "echo") -> Path:
        return self.dir / f"{name}.{kind}.pid"

    def start_servers(self, names: Sequence[str] = tuple(SERVERS)) -> None:
        for name in names:
            if self._echo_servers:
                self._start(f"{name}.echo", name, [
                    str(HERE / "echo_server.py"), "--name", name, "--tcp", str(HTTP_PORT), "--tcp", str(DSR_PORT),
                    "--udp", str(UDP_PORT), "--pidfile", str(self.pidfile(name, "echo"))])
            if self._stream_servers:
                self._start(f"{name}.stream", name, [
                    str(HERE / "stream.py"), "serve", "--name", name, "--port", str(STREAM_PORT),
                    "--pidfile", str(self.pidfile(name, "stream"))])
        for name in names:
            for kind, on in (("echo", self._echo_servers), ("stream", self._stream_servers)):
                if on:
                    wait_for(lambda: self.pidfile(name, kind).exists(), what=f"{kind} server {name} to listen")

    def stop_server(self, name: str) -> None:
        for kind in ("echo", "stream"):
            self._stop_proc(f"{name}.{kind}")

    def _start(self, key: str, ns: str, args: list[str]) -> None:
        self._stop_proc(key)
        pidfile = args[args.index("--pidfile") + 1]
        Path(pidfile).unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", ns, sys.executable, "-S", *args]
        with open(self.dir / f"{key}.out", "ab") as out:
            self._procs[key] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                                start_new_session=True)

    def _stop_proc(self, key: str) -> None:
        stop_process(self._procs.pop(key, None))

    # -- links and addresses --
    def link_down(self, node: str, ifname: str) -> None:
        run(["ip", "-n", self.node_ns(node), "link", "set", ifname, "down"])

    def link_up(self, node: str, ifname: str) -> None:
        run(["ip", "-n", self.node_ns(node), "link", "set", ifname, "up"])

    def all_links_down(self, node: str, order: Sequence[str] = ("eth2", "eth0", "eth1")) -> None:
        """Every LB link down in one ``ip -batch``, the peer link first.

        Peer link first, as when a node loses power or its cables: with eth0 or
        eth1 first, keepalived sees the failure, goes FAULT and still gets its
        priority-0 advert out on eth2, so the other node takes over at once
        (a graceful hand-over, not a crash).
        """
        ip_batch(self.node_ns(node), [f"link set {i} down" for i in order])

    def all_links_up(self, node: str) -> None:
        ip_batch(self.node_ns(node), [f"link set {i} up" for i in LB_LINKS])

    def addresses(self, ns: str) -> set[str]:
        """``addr/plen`` of every IPv4 address in ``ns``."""
        out = run(["ip", "-n", ns, "-4", "-o", "addr", "show"]).stdout
        return {line.split()[3] for line in out.splitlines() if " inet " in line}

    def holders_of(self, address: str) -> list[str]:
        """The LB namespaces that hold ``address`` (no prefix length); two = split brain."""
        addr = address.split("/")[0]
        return [ns for ns in NODES if any(a.split("/")[0] == addr for a in self.addresses(ns))]

    def holder_of(self, address: str) -> str | None:
        """The LB namespace holding ``address``, None when neither; both raises."""
        holders = self.holders_of(address)
        if len(holders) > 1:
            raise AssertionError(f"{address} is held by both LBs: {holders}")
        return holders[0] if holders else None

    def wait_holder(self, address: str, ns: str | None, timeout: float = WAIT_TIMEOUT) -> None:
        """Until exactly ``ns`` holds ``address`` (``None``: neither LB holds it)."""
        want = [self.node_ns(ns)] if ns else []
        wait_for(lambda: self.holders_of(address) == want, timeout=timeout,
                 what=f"{address} held by {want or 'no LB'} (now {self.holders_of(address)})")

    def claim_floating(self, node: str, flush_neighbours: bool = True) -> None:
        """What keepalived does on MASTER, for tests that run without it: the
        floating addresses and the VIP onto ``node``, off the other LB.

        There is no gratuitous ARP here: with ``flush_neighbours`` the client's
        and the servers' neighbour caches are flushed instead.
        """
        ns, other = self.node_ns(node), self.other(node)
        self.release_floating(other, flush_neighbours=False)
        have = self.addresses(ns)
        ip_batch(ns, [f"addr add {a}/{p} dev {dev}" for a, p, dev in FLOATING if f"{a}/{p}" not in have]
                 or ["link show lo"])
        if flush_neighbours:
            self.flush_neighbours()

    def release_floating(self, node: str, flush_neighbours: bool = True) -> None:
        ns = self.node_ns(node)
        have = self.addresses(ns)
        lines = [f"addr del {a}/{p} dev {dev}" for a, p, dev in FLOATING if f"{a}/{p}" in have]
        if lines:
            ip_batch(ns, lines)
        if flush_neighbours:
            self.flush_neighbours()

    def flush_neighbours(self) -> None:
        for ns in (CLIENT, *SERVERS):
            run(["ip", "-n", ns, "neigh", "flush", "all"], check=False)

    # -- real servers for L2 DSR --
    def prepare_l2_dsr(self, vip: str = VIP) -> None:
        """VIP on ``lo``, arp_ignore=1 / arp_announce=2; replies go via 10.99.2.1 (the active LB)."""
        for ns in SERVERS:
            ip_batch(ns, [f"addr add {vip}/32 dev lo"])
            sysctls(ns, {"net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2,
                         "net.ipv4.conf.eth0.arp_ignore": 1, "net.ipv4.conf.eth0.arp_announce": 2})

    def unprepare_l2_dsr(self, vip: str = VIP) -> None:
        for ns in SERVERS:
            run(["ip", "-n", ns, "addr", "del", f"{vip}/32", "dev", "lo"], check=False)
            sysctls(ns, {"net.ipv4.conf.all.arp_ignore": 0, "net.ipv4.conf.all.arp_announce": 0,
                         "net.ipv4.conf.eth0.arp_ignore": 0, "net.ipv4.conf.eth0.arp_announce": 0})

    # -- daemons on a node (started by pask-apply; killed here to test failover) --
    def pids(self, node: str, comm: str) -> list[int]:
        """Processes named ``comm`` (e.g. ``keepalived``, ``conntrackd``) in the node's namespace."""
        return pids_in(self.node_ns(node), comm)

    def kill(self, node: str, comm: str, sig: int = signal.SIGKILL) -> list[int]:
        """Signal every ``comm`` process of the node (kill -9 by default: a crash)."""
        pids = self.pids(node, comm)
        assert pids, f"no {comm} process in {self.node_ns(node)}"
        return _signal_all(pids, sig)

    # -- kernel views --
    def ipvsadm(self, node: str, *args: str, check: bool = True) -> subprocess.CompletedProcess:
        return run(["ipvsadm", *args], ns=self.node_ns(node), check=check)

    def nft(self, node: str, *args: str, input: str | None = None) -> subprocess.CompletedProcess:
        return run(["nft", *args], ns=self.node_ns(node), input=input)

    def sysctl(self, node: str, key: str, value: str | int | None = None) -> str:
        return sysctl(self.node_ns(node), key, value)

    def ipvs_conns(self, node: str) -> list[dict[str, str]]:
        """``ipvsadm -Lnc``: one dict per connection (proto, expire, state, client, vip, dest)."""
        out = self.ipvsadm(node, "-Lnc").stdout
        keys = ("proto", "expire", "state", "client", "vip", "dest")
        return [dict(zip(keys, line.split())) for line in out.splitlines()[2:] if len(line.split()) == 6]

    # -- pask --
    def write_config(self, cfg: dict[str, Any] | str) -> Path:
        """One config file serves both nodes (the same file on both)."""
        self._configs += 1
        return write_config_file(self.dir / f"config-{self._configs}.yaml", cfg)

    def pask_apply_argv(self, node: str, cfg_path: str | os.PathLike, *flags: str) -> list[str]:
        ns = self.node_ns(node)
        return ["ip", "netns", "exec", ns, *pask_apply_argv(), "--state-file", str(self.state_file(ns)),
                "--health-file", str(self.health_file(ns)), *flags, str(cfg_path)]

    def pask_apply(self, node: str, cfg: str | os.PathLike | dict[str, Any], *flags: str,
                   expect: int | None = None, timeout: float = APPLY_TIMEOUT) -> subprocess.CompletedProcess:
        """pask-apply in ``node``'s namespace with its own state/health files.

        ``cfg`` is a config path, or a dict (written to a new file first).  With
        ``expect``, the exit code is asserted, with pask's output in the message.
        """
        path = self.write_config(cfg) if isinstance(cfg, dict) else Path(cfg)
        argv = self.pask_apply_argv(node, path, *flags)
        self.node_dir(node).mkdir(parents=True, exist_ok=True)
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
        cp.config_path = path          # type: ignore[attr-defined]
        if expect is not None:
            assert cp.returncode == expect, (
                f"pask-apply on {self.node_ns(node)} {' '.join(flags)} exited {cp.returncode}, expected {expect}\n"
                f"--- config {path}:\n{path.read_text()}--- stdout:\n{cp.stdout}--- stderr:\n{cp.stderr}")
        return cp

    # -- traffic --
    def stream(self, connections: int = 4, host: str = VIP, port: int = STREAM_PORT, name: str = "stream",
               probe_interval: float | None = None, interval: float = 0.05,
               ns: str = CLIENT) -> StreamProcess:
        """A ``stream.py client`` in the client namespace, started and connected; ``.stop()`` -> report."""
        return StreamProcess(ns, host, port, connections=connections, interval=interval, workdir=self.dir,
                             name=name, probe_interval=probe_interval).start()


# ---- command line ----------------------------------------------------------------
def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("up", "down"):
        print("usage: ha_lab.py up|down   (namespaces hsw, hlb1, hlb2, hc1, hrs1-hrs3)", file=sys.stderr)
        return 2
    lab = HaLab()
    if argv[0] == "down":
        lab.down()
        return 0
    lab.up()
    print(f"HA lab up: {CLIENT} {CLIENT_IP} -> gw {CLIENT_GW} | " + ", ".join(
        f"{n.ns} {n.client_ip}/{n.server_ip}/{n.peer_ip} prio {n.priority}" for n in NODES.values())
        + " | " + ", ".join(f"{n} {ip}" for n, ip in SERVERS.items())
        + f"; floating {CLIENT_GW}/24, {SERVER_GW}/24, VIP {VIP}: not held until keepalived runs")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
