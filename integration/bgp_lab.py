#!/usr/bin/env python3
r"""The scale-out lab: N load balancers behind a BGP router with ECMP, real servers
behind them, a client behind the router. Every address is in 10.99.0.0/16; the names
are the lab's own (``bgp-*``), so it never meets integration/lab.py's or the HA lab's.

Topology::

    bgp-c (10.99.7.2-.9) --- bgp-r: BIRD, ECMP (merge paths), L4 multipath hash
                              |  rlink 10.99.4.1/24 (a switch: the LBs' uplinks)
                              |     bgp-lb1 .2   bgp-lb2 .3   bgp-lb3 .4     (eth0)
                              |  rsrv 10.99.5.1/24 (the servers' LAN: LBs and servers)
                              |     bgp-lb1 .102 bgp-lb2 .103 bgp-lb3 .104 (eth1)
                              |     bgp-rs1 .11  bgp-rs2 .12  bgp-rs3 .13
                              `-- to-c 10.99.7.1/24

* Each LB runs pask-apply with its own ``bgp: {router_id: <its uplink address>}`` and
  its own state directory, so its BIRD (started by pask-apply) has its own files. Its
  VIPs sit on its pask0; it forwards to the servers on rsrv (l2-dsr: the servers share
  that LAN with every LB; l3-dsr: ipip).
* The router peers with every LB (AS 65000 to the LBs' 65001), installs one route per
  VIP with one next hop per LB (BIRD's kernel protocol ``merge paths on``), and hashes
  flows on ports too (``fib_multipath_hash_policy=1``), so one client's connections
  spread over the LBs.
* DSR replies go from the servers to their gateway, the router, straight to the client:
  never through an LB (so an LB's death costs the client only its forward path).
* An LB "dies" when its links go down: no goodbye, its sessions end by the router's hold
  timer. The switches are bridges in the router's namespace, so the router's own link
  stays up, as a real switch port would.

Use from the shell: ``python integration/bgp_lab.py up|down``.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

sys.path.insert(0, str(Path(__file__).resolve().parent))

from lab import (HERE, ROOT, in_netns, ip_batch, pask_apply_argv, run, sysctls,  # noqa: E402
                 stop_process, wait_for, write_config_file)

ROUTER, CLIENT = "bgp-r", "bgp-c"
LBS = ("bgp-lb1", "bgp-lb2", "bgp-lb3")
SERVERS = {"bgp-rs1": "10.99.5.11", "bgp-rs2": "10.99.5.12", "bgp-rs3": "10.99.5.13"}
NAMESPACES = (ROUTER, CLIENT, *LBS, *SERVERS)
ROUTER_AS, LB_AS = 65000, 65001
ROUTER_LINK_IP = "10.99.4.1"
ROUTER_SRV_IP = "10.99.5.1"
ROUTER_CLIENT_IP = "10.99.7.1"
CLIENT_IPS = tuple(f"10.99.7.{i}" for i in range(2, 10))
LB_UPLINK = {lb: f"10.99.4.{i + 2}" for i, lb in enumerate(LBS)}       # router id too
LB_SRV = {lb: f"10.99.5.{i + 102}" for i, lb in enumerate(LBS)}
VIP_L3 = "10.99.100.1"            # the l3-dsr service
VIP_L2 = "10.99.100.2"            # the l2-dsr service
PORT = 80
HOLD_TIME = 3
LAB_DIR = Path(os.environ.get("PASK_BGP_LAB_DIR", "/run/pask-bgp-lab"))
APPLY_TIMEOUT = float(os.environ.get("PASK_LAB_APPLY_TIMEOUT", "300"))


def router_bird_conf(lab_dir: Path) -> str:
    """The router's own BIRD (not pask's): learn the VIPs from every LB, install them with
    every LB as a next hop. Short timers on its side too, so a returning LB is back soon."""
    peers = "\n".join(
        f"protocol bgp {lb.replace('-', '_')} from lbs {{ neighbor {addr} as {LB_AS}; }}"
        for lb, addr in LB_UPLINK.items())
    return f"""router id {ROUTER_LINK_IP};
log "{lab_dir}/router-bird.log" {{ info, remote, warning, error, auth, fatal, bug }};
protocol device {{ scan time 10; }}
protocol kernel {{
    ipv4 {{ import none; export all; }};
    merge paths on;
}}
template bgp lbs {{
    local {ROUTER_LINK_IP} as {ROUTER_AS};
    hold time {HOLD_TIME};
    keepalive time 1;
    connect retry time 1;
    error wait time 1, 5;
    ipv4 {{ import all; export none; }};
}}
{peers}
"""


def lb_config(lb: str, services: Iterable[dict], **bgp: Any) -> dict:
    """An LB's pask config: the same services everywhere, its own router id."""
    return {"version": 1, "vip_interface": "pask0",
            "bgp": {"local_as": LB_AS, "router_id": LB_UPLINK[lb], "hold_time": HOLD_TIME,
                    "neighbors": [{"address": ROUTER_LINK_IP, "as": ROUTER_AS}], **bgp},
            "services": list(services)}


def service(name: str, vip: str, mode: str, servers: Iterable[str] = tuple(SERVERS), *,
            scheduler: str = "mh-port", **extra: Any) -> dict:
    return {"name": name, "vip": vip, "port": PORT, "scheduler": scheduler, "nat_mode": mode,
            **extra, "real_servers": [{"address": SERVERS[s]} for s in servers]}


def yaml_text(cfg: dict) -> str:
    import yaml   # from the venv; only needed here
    return yaml.safe_dump(cfg, sort_keys=False)


class BgpLab:
    def __init__(self, workdir: Path | None = None) -> None:
        self.dir = Path(workdir or LAB_DIR)
        self._procs: dict[str, subprocess.Popen] = {}
        self._configs = 0

    # -- files ----------------------------------------------------------------------
    def lb_dir(self, lb: str) -> Path:
        return self.dir / lb

    def state_file(self, lb: str) -> Path:
        return self.lb_dir(lb) / "state.json"

    def health_file(self, lb: str) -> Path:
        return self.lb_dir(lb) / "health.json"

    def bird_dir(self, lb: str) -> Path:
        return self.lb_dir(lb) / "bgp"

    # -- build / tear down -------------------------------------------------------------
    def up(self) -> "BgpLab":
        self.down()
        self.dir.mkdir(parents=True, exist_ok=True)
        for lb in LBS:
            self.lb_dir(lb).mkdir()
        subprocess.run(["modprobe", "-a", "ip_vs", "ip_vs_mh", "dummy", "veth", "bridge", "ipip"],
                       capture_output=True)
        ip_batch(None, [f"netns add {ns}" for ns in NAMESPACES])
        r = ["link set lo up",
             "link add rlink type bridge", f"addr add {ROUTER_LINK_IP}/24 dev rlink", "link set rlink up",
             "link add rsrv type bridge", f"addr add {ROUTER_SRV_IP}/24 dev rsrv", "link set rsrv up",
             f"link add to-c type veth peer name eth0 netns {CLIENT}",
             f"addr add {ROUTER_CLIENT_IP}/24 dev to-c", "link set to-c up"]
        for i, lb in enumerate(LBS, 1):
            r += [f"link add up{i} type veth peer name eth0 netns {lb}",
                  f"link set up{i} master rlink", f"link set up{i} up",
                  f"link add srv{i} type veth peer name eth1 netns {lb}",
                  f"link set srv{i} master rsrv", f"link set srv{i} up"]
        for i, ns in enumerate(SERVERS, 1):
            r += [f"link add rs{i} type veth peer name eth0 netns {ns}",
                  f"link set rs{i} master rsrv", f"link set rs{i} up"]
        ip_batch(ROUTER, r)
        # the replies of DSR servers come from the VIP, which the router routes to the LBs;
        # flows are spread by their addresses and ports (policy 3 hashes the headers: policy
        # 1 would take the hash the client's socket left on the packet, which crosses veth
        # and which TCP draws anew on every retransmission timeout, kernel-facts.md "ECMP
        # in a one-kernel lab")
        sysctls(ROUTER, {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.rp_filter": 0,
                         "net.ipv4.conf.default.rp_filter": 0,
                         "net.ipv4.fib_multipath_hash_policy": 3,
                         "net.ipv4.fib_multipath_hash_fields": 0x37})
        ip_batch(CLIENT, ["link set lo up", "link set eth0 up",
                          *(f"addr add {a}/24 dev eth0" for a in CLIENT_IPS),
                          f"route add default via {ROUTER_CLIENT_IP}"])
        for lb in LBS:
            ip_batch(lb, ["link set lo up", "link set eth0 up", "link set eth1 up",
                          f"addr add {LB_UPLINK[lb]}/24 dev eth0",
                          f"addr add {LB_SRV[lb]}/24 dev eth1",
                          f"route add default via {ROUTER_LINK_IP}"])
        for ns, addr in SERVERS.items():
            ip_batch(ns, ["link set lo up", "link set eth0 up", f"addr add {addr}/24 dev eth0",
                          f"route add default via {ROUTER_SRV_IP}",
                          # l3-dsr: the VIP on tunl0; l2-dsr: on lo (no ARP for it)
                          "link set tunl0 up", f"addr add {VIP_L3}/32 dev tunl0",
                          f"addr add {VIP_L2}/32 dev lo"])
            sysctls(ns, {"net.ipv4.conf.all.rp_filter": 0, "net.ipv4.conf.tunl0.rp_filter": 0,
                         "net.ipv4.conf.all.arp_ignore": 1, "net.ipv4.conf.all.arp_announce": 2,
                         "net.ipv4.conf.eth0.arp_ignore": 1, "net.ipv4.conf.eth0.arp_announce": 2})
        conf = self.dir / "router-bird.conf"
        conf.write_text(router_bird_conf(self.dir))
        run(["bird", "-c", str(conf), "-s", str(self.dir / "router-bird.ctl"),
             "-P", str(self.dir / "router-bird.pid")], ns=ROUTER)
        for name in SERVERS:
            self.start_server(name)
        for name in SERVERS:
            wait_for(lambda: self.pidfile(name).exists(), what=f"echo server {name} to listen")
        return self

    def down(self) -> None:
        for name in list(self._procs):
            self.stop_server(name)
        for pidfile in self._pidfiles():
            with contextlib.suppress(ValueError, OSError):
                pid = int(pidfile.read_text().split()[0])
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                if b"echo_server.py" in cmdline or b"bird" in cmdline or b"pask" in cmdline:
                    os.kill(pid, signal.SIGTERM)     # never a reused pid of something else
        existing = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
        stale = [ns for ns in NAMESPACES if ns in existing]
        if stale:
            subprocess.run(["ip", "-batch", "-"], input="".join(f"netns del {ns}\n" for ns in stale),
                           capture_output=True, text=True)
        if self.dir.exists():
            shutil.rmtree(self.dir, ignore_errors=True)

    def _pidfiles(self) -> list[Path]:
        if not self.dir.exists():
            return []
        return [*self.dir.glob("*.pid"), *self.dir.glob("*/bgp/bird.pid"), *self.dir.glob("*/healthd.pid")]

    # -- real servers ---------------------------------------------------------------------
    def pidfile(self, name: str) -> Path:
        return self.dir / f"{name}.pid"

    def start_server(self, name: str) -> None:
        self.pidfile(name).unlink(missing_ok=True)
        argv = ["ip", "netns", "exec", name, sys.executable, "-S", str(HERE / "echo_server.py"),
                "--name", name, "--tcp", str(PORT), "--bind6", "", "--pidfile", str(self.pidfile(name)),
                "--health-file", str(self.dir / f"{name}.unhealthy")]
        with open(self.dir / f"{name}.out", "ab") as out:
            self._procs[name] = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                                 stderr=out, start_new_session=True)

    def stop_server(self, name: str) -> None:
        stop_process(self._procs.pop(name, None))

    # -- the load balancers -------------------------------------------------------------
    def write_config(self, lb: str, cfg: dict | str) -> Path:
        self._configs += 1
        return write_config_file(self.lb_dir(lb) / f"config-{self._configs}.yaml", cfg)

    def apply(self, lb: str, cfg: dict | str, *flags: str,
              expect: int | None = 0) -> subprocess.CompletedProcess:
        """pask-apply in ``lb``'s namespace with its own state; the config's path is in
        ``.config_path``."""
        path = self.write_config(lb, cfg)
        argv = ["ip", "netns", "exec", lb, *pask_apply_argv(), "--state-file", str(self.state_file(lb)),
                "--health-file", str(self.health_file(lb)), *flags, str(path)]
        cp = subprocess.run(argv, capture_output=True, text=True, timeout=APPLY_TIMEOUT, cwd=ROOT)
        cp.config_path = path          # type: ignore[attr-defined]
        if expect is not None:
            assert cp.returncode == expect, (
                f"pask-apply in {lb} exited {cp.returncode}, expected {expect}\n--- config:\n"
                f"{path.read_text()}--- stdout:\n{cp.stdout}--- stderr:\n{cp.stderr}")
        return cp

    def apply_all(self, services: list[dict], lbs: Iterable[str] = LBS, **bgp: Any) -> None:
        """The same services on every LB, in parallel (each pask-apply is seconds under TCG)."""
        procs = []
        for lb in lbs:
            path = self.write_config(lb, lb_config(lb, services, **bgp))
            argv = ["ip", "netns", "exec", lb, *pask_apply_argv(), "--state-file",
                    str(self.state_file(lb)), "--health-file", str(self.health_file(lb)), str(path)]
            procs.append((lb, path, subprocess.Popen(argv, stdout=subprocess.PIPE,
                                                     stderr=subprocess.PIPE, text=True, cwd=ROOT)))
        for lb, path, proc in procs:
            out, err = proc.communicate(timeout=APPLY_TIMEOUT)
            assert proc.returncode == 0, (f"pask-apply in {lb} exited {proc.returncode}\n--- config:\n"
                                          f"{path.read_text()}--- stdout:\n{out}--- stderr:\n{err}")

    def reset_lb(self, lb: str) -> None:
        """A fresh LB: its BIRD stopped, no IPVS, no nft, no VIPs, no pask state."""
        pid = self.bird_dir(lb) / "bird.pid"
        with contextlib.suppress(ValueError, OSError):
            p = int(pid.read_text())
            if b"bird" in Path(f"/proc/{p}/cmdline").read_bytes():
                os.kill(p, signal.SIGTERM)
                wait_for(lambda: not Path(f"/proc/{p}").exists(), what=f"{lb}'s BIRD to stop")
        run(["ipvsadm", "-C"], ns=lb)
        run(["nft", "flush", "ruleset"], ns=lb)
        run(["ip", "-n", lb, "link", "del", "pask0"], check=False)
        shutil.rmtree(self.lb_dir(lb), ignore_errors=True)
        self.lb_dir(lb).mkdir()

    def kill_links(self, lb: str) -> None:
        """The LB dies: both its links go down at once, nothing says goodbye."""
        ip_batch(lb, ["link set eth0 down", "link set eth1 down"])

    def revive_links(self, lb: str) -> None:
        ip_batch(lb, ["link set eth0 up", "link set eth1 up",
                      f"route replace default via {ROUTER_LINK_IP}"])

    def birdc(self, lb: str, *args: str) -> str:
        return run(["birdc", "-s", str(self.bird_dir(lb) / "bird.ctl"), *args], ns=lb).stdout

    # -- the router's view -----------------------------------------------------------------
    def next_hops(self, vip: str) -> list[str]:
        """The router's next hops for ``vip`` (its kernel's route), as LB names."""
        out = run(["ip", "-n", ROUTER, "route", "show", f"{vip}/32"]).stdout
        by_addr = {a: lb for lb, a in LB_UPLINK.items()}
        hops = []
        for line in out.splitlines():
            words = line.split()
            if "via" in words:
                hops.append(by_addr.get(words[words.index("via") + 1], words[words.index("via") + 1]))
        return sorted(hops)

    def wait_next_hops(self, vip: str, lbs: Iterable[str], timeout: float = 120) -> float:
        """Until the router's next hops for ``vip`` are exactly ``lbs``; seconds waited."""
        want = sorted(lbs)
        t0 = time.monotonic()
        wait_for(lambda: self.next_hops(vip) == want, timeout=timeout,
                 what=f"router next hops for {vip} to be {want} (now {self.next_hops(vip)})")
        return time.monotonic() - t0

    def pin_route(self, vip: str, lb: str | None) -> None:
        """Send the client's traffic for ``vip`` through ``lb`` only (a policy rule in the
        router, beside BIRD's route), or back to ECMP (``lb`` None)."""
        run(["ip", "-n", ROUTER, "rule", "del", "pref", "100"], check=False)
        run(["ip", "-n", ROUTER, "route", "flush", "table", "100"], check=False)
        if lb is not None:
            ip_batch(ROUTER, [f"route add {vip}/32 via {LB_UPLINK[lb]} table 100",
                              "rule add pref 100 iif to-c lookup 100"])

    def flows(self, lb: str, vip: str) -> dict[tuple[str, int], str]:
        """IPVS connections of ``lb`` to ``vip``: (client ip, client port) -> real server ip."""
        out = run(["ipvsadm", "-Lnc"], ns=lb).stdout
        table = {}
        for line in out.splitlines()[2:]:
            f = line.split()
            if len(f) >= 6 and f[4].split(":")[0] == vip:
                ip, port = f[3].rsplit(":", 1)
                table[(ip, int(port))] = f[5].rsplit(":", 1)[0]
        return table

    def dests(self, lb: str, vip: str) -> list[tuple[str, int]]:
        """The kernel's list of a service's real servers, in its own order (--nosort), with
        their weights: what its mh table is built from."""
        out = run(["ipvsadm", "-Ln", "--nosort", "-t", f"{vip}:{PORT}"], ns=lb).stdout
        return [(f[1].rsplit(":", 1)[0], int(f[3])) for f in (line.split() for line in out.splitlines())
                if len(f) >= 4 and f[0] == "->" and f[1][0].isdigit()]

    def dest_order(self, lb: str, vip: str) -> list[str]:
        return [addr for addr, _ in self.dests(lb, vip)]

    def wait_same_tables(self, vips: Iterable[str], timeout: float = 120) -> dict:
        """Until every LB lists the same real servers, in the same order, at the same
        non-zero weights, for each of ``vips`` (so every LB's mh table is the same)."""
        def agreed() -> dict:
            v = {(lb, vip): self.dests(lb, vip) for lb in LBS for vip in vips}
            if not all(v[(lb, vip)] == v[(LBS[0], vip)] and v[(lb, vip)] and
                       all(w > 0 for _, w in v[(lb, vip)]) for lb in LBS for vip in vips):
                raise AssertionError(f"the LBs' real servers differ: {v}")
            return v

        return wait_for(agreed, timeout=timeout, interval=0.5, what="every LB's real servers to agree")


def who_from(src: str, port: int, vip: str) -> str:
    """One request from the client, from ``src:port`` (a new connection): the server name."""
    import socket as _s

    with in_netns(CLIENT):
        s = _s.socket()
    try:
        s.setsockopt(_s.SOL_SOCKET, _s.SO_REUSEADDR, 1)
        s.settimeout(10)
        s.bind((src, port))
        s.connect((vip, PORT))
        s.sendall(f"GET / HTTP/1.1\r\nHost: {vip}\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    finally:
        s.close()
    body = data.partition(b"\r\n\r\n")[2].decode().split()
    if len(body) != 2:
        raise RuntimeError(f"unexpected answer from {vip} for {src}:{port}: {data[:200]!r}")
    return body[0]


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("up", "down"):
        print("usage: bgp_lab.py up|down", file=sys.stderr)
        return 2
    lab = BgpLab()
    if argv[0] == "down":
        lab.down()
        return 0
    lab.up()
    print(f"bgp lab up: router {ROUTER} ({ROUTER_LINK_IP}, AS {ROUTER_AS}), LBs "
          + ", ".join(f"{lb} {a}" for lb, a in LB_UPLINK.items())
          + f" (AS {LB_AS}), servers {', '.join(SERVERS.values())}, client {CLIENT_IPS[0]}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
