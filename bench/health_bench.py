#!/usr/bin/env python3
"""pask-healthd benchmarks, with keepalived's TCP_CHECK measured in the same run.

    # probe throughput on this machine (no IPVS, no root needed): pask-healthd only
    python bench/health_bench.py throughput --servers 1000 2000 4000

    # inside the IPVS VM: kill -> weight 0 latency and CPU per probe, pask vs keepalived
    integration/vm-run 'python bench/health_bench.py vm --kills 20 --cpu-servers 100'

What is measured:

* failure-to-drain latency: a real server's listener is closed at a random
  moment; the time until the kernel's IPVS weight of that server is 0 (read
  from /proc/net/ip_vs every 10 ms), then the time until it is back after the
  listener reopens. Same checks for both: TCP connect, interval 1 s, timeout
  1 s, 3 failures (pask fall 3; keepalived retry 2, delay_before_retry 1).
  keepalived brings a server back on its first success; pask needs rise 2.
* probe throughput: N listeners, interval 2 s, CPU seconds the checker spends
  (its own process only) per probe; "servers per core" = probes per CPU
  second x interval.

Real servers live in a network namespace (10.99.9.0/24) because IPVS turns a
destination on a local address into "local node" forwarding, which is not
what either tool would configure in production.
Results go to stdout (a Markdown table) and bench/results/*.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
PY = sys.executable
NS = "paskbench"
LB_IF, RS_IF = "pb0", "pb1"
LB_ADDR = "10.99.9.1"
RS_PORT = 8080
VIP_PASK, VIP_KA = "10.99.100.1", "10.99.100.2"


# -- listeners: accept-and-close TCP servers, each can be closed and reopened ----------

def listen_main(addrs: list[str], port: int, count: int = 1) -> None:
    """Child process: one listener per address on ``port``, or ``count`` listeners on
    ephemeral ports of each address when ``port`` is 0.

    Commands on stdin, one per line: ``close ADDR:PORT`` / ``open ADDR:PORT`` (answer ``ok``),
    ``count`` (answer: connections accepted so far). The first line written is the list
    of ``addr:port`` listening, as JSON.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    sel = selectors.DefaultSelector()
    socks: dict[str, socket.socket] = {}

    def open_one(addr: str, p: int) -> str:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((addr, p))
        s.listen(128)
        s.setblocking(False)
        name = f"{addr}:{s.getsockname()[1]}"
        socks[name] = s
        sel.register(s, selectors.EVENT_READ, name)
        return name

    names = [open_one(a, port) for a in addrs for _ in range(count if port == 0 else 1)]
    print(json.dumps(names), flush=True)
    os.set_blocking(0, False)
    sel.register(0, selectors.EVENT_READ, None)
    pending = b""
    accepted = 0
    while True:
        for key, _ in sel.select():
            if key.data is None:
                chunk = os.read(0, 4096)
                if not chunk:
                    return
                pending += chunk
                while b"\n" in pending:
                    line, pending = pending.split(b"\n", 1)
                    cmd, _, name = line.decode().partition(" ")
                    if cmd == "count":
                        print(accepted, flush=True)
                        continue
                    if cmd == "close":
                        s = socks.pop(name)
                        sel.unregister(s)
                        s.close()
                    else:
                        addr, p = name.rsplit(":", 1)
                        open_one(addr, int(p))
                    print("ok", flush=True)
                continue
            try:
                conn, _ = key.fileobj.accept()
                conn.close()
                accepted += 1
            except (BlockingIOError, ConnectionAbortedError):
                pass


class Listeners:
    def __init__(self, addrs: list[str], port: int, netns: str | None = None, count: int = 1):
        cmd = [PY, os.path.abspath(__file__), "_listen", "--port", str(port),
               "--count", str(count), *addrs]
        if netns:
            cmd = ["ip", "netns", "exec", netns, *cmd]
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.names: list[str] = json.loads(self.proc.stdout.readline())

    def _cmd(self, line: str) -> None:
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "ok"

    def accepted(self) -> int:
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self, name: str) -> None:
        self._cmd(f"close {name}")

    def open(self, name: str) -> None:
        self._cmd(f"open {name}")

    def stop(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


# -- throughput: pask-healthd's loop in this process, fake kernel ----------------------

def throughput(counts: list[int], interval: float, seconds: float) -> list[dict]:
    from pask_ipvs.backend.fake import fake_backends
    from pask_ipvs.health.daemon import HealthDaemon
    from pask_ipvs.health.events import EventLog
    from pask_ipvs.health.probes import run_probe
    from pask_ipvs.model import Config, Health, NatMode, Protocol, RealServer, Service

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    rows = []
    for n in counts:
        lst = Listeners(["127.0.0.1"], 0, count=n)
        try:
            servers = tuple(RealServer("127.0.0.1", int(x.rsplit(":", 1)[1])) for x in lst.names)
            health = Health(type="tcp", interval=interval, timeout=1.0, rise=2, fall=3)
            svc = Service("bench", "10.99.100.1", 80, Protocol.TCP, "rr", NatMode.DEST_NAT,
                          servers, health=health)
            done = {"n": 0, "fail": 0}

            async def counting(h, t):
                r = await run_probe(h, t)
                done["n"] += 1
                done["fail"] += not r.ok
                return r

            d = HealthDaemon(Config((svc,), vip_interface=None), fake_backends(),
                             probe=counting, log=EventLog(stream=open(os.devnull, "w")))

            async def run() -> tuple[float, float, int, int]:
                task = asyncio.create_task(d.serve())
                await asyncio.sleep(interval)          # warm-up: first probes spread over it
                n0, f0 = done["n"], done["fail"]
                r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
                await asyncio.sleep(seconds)
                r1, t1 = resource.getrusage(resource.RUSAGE_SELF), time.monotonic()
                n1, f1 = done["n"], done["fail"]
                d.stop()
                await task
                cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
                return cpu, t1 - t0, n1 - n0, f1 - f0

            cpu, wall, probes, fails = asyncio.run(run())
        finally:
            lst.stop()
        expected = n * wall / interval
        rows.append({
            "tool": "pask-healthd", "servers": n, "interval_s": interval, "wall_s": round(wall, 2),
            "probes": probes, "expected_probes": round(expected), "failed_probes": fails,
            "cpu_s": round(cpu, 3), "cpu_util": round(cpu / wall, 3),
            "us_cpu_per_probe": round(cpu / max(probes, 1) * 1e6, 1),
            "servers_per_core_at_2s": int(probes / max(cpu, 1e-9) * 2.0),
        })
        print(json.dumps(rows[-1]), flush=True)
    return rows


# -- the IPVS VM part ------------------------------------------------------------------

def sh(cmd: str, check: bool = True) -> str:
    return subprocess.run(["bash", "-c", cmd], check=check, capture_output=True, text=True).stdout


def lab_up(n: int) -> list[str]:
    addrs = [f"10.99.9.{11 + i}" for i in range(n)]
    sh(f"ip netns del {NS} 2>/dev/null; ip link del {LB_IF} 2>/dev/null", check=False)
    sh(f"ip netns add {NS} && ip link add {LB_IF} type veth peer name {RS_IF} && "
       f"ip link set {RS_IF} netns {NS} && ip addr add {LB_ADDR}/24 dev {LB_IF} && "
       f"ip link set {LB_IF} up && ip -n {NS} link set lo up && ip -n {NS} link set {RS_IF} up")
    batch = "".join(f"address add {a}/24 dev {RS_IF}\n" for a in addrs)
    subprocess.run(["ip", "-n", NS, "-batch", "-"], input=batch, text=True, check=True)
    return addrs


def lab_down() -> None:
    sh(f"ip netns del {NS}; ip link del {LB_IF}", check=False)


def proc_weights() -> dict[tuple[str, str], int]:
    """(vip:port, rs:port) -> weight, from /proc/net/ip_vs (hex addresses)."""
    out: dict[tuple[str, str], int] = {}
    svc = None
    with open("/proc/net/ip_vs") as f:
        for line in f.read().splitlines()[3:]:
            parts = line.split()
            if parts and parts[0] in ("TCP", "UDP", "SCTP", "FWM"):
                svc = _hexaddr(parts[1])
            elif parts and parts[0] == "->" and svc:
                out[(svc, _hexaddr(parts[1]))] = int(parts[3])
    return out


def _hexaddr(text: str) -> str:
    if ":" not in text:
        return text
    addr, port = text.rsplit(":", 1)
    if len(addr) != 8:
        return text
    return f"{socket.inet_ntoa(bytes.fromhex(addr))}:{int(port, 16)}"


def wait_weight(vip: str, rs: str, want, timeout: float, step: float = 0.01) -> float:
    t0 = time.monotonic()
    while True:
        w = proc_weights().get((f"{vip}:80", rs))
        if want(w):
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            raise TimeoutError(f"{rs}: weight {w} after {timeout}s")
        time.sleep(step)


def pask_config(path: str, addrs: list[str], interval: float, timeout: float) -> None:
    lines = ["version: 1", "vip_interface: null", "services:",
             "  - name: bench", f"    vip: {VIP_PASK}", "    port: 80", "    scheduler: rr",
             "    on_failure: inhibit",
             f"    health: {{type: tcp, interval: {interval}, timeout: {timeout}, rise: 2, fall: 3}}",
             "    real_servers:"]
    lines += [f"      - {{address: {a}, port: {RS_PORT}}}" for a in addrs]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def keepalived_config(path: str, addrs: list[str], interval: float, timeout: float) -> None:
    servers = "".join(textwrap.dedent(f"""
        real_server {a} {RS_PORT} {{
            weight 1
            inhibit_on_failure
            TCP_CHECK {{
                connect_timeout {timeout:g}
                retry 2
                delay_before_retry {interval:g}
            }}
        }}""") for a in addrs)
    with open(path, "w") as f:
        f.write(f"global_defs {{\n  router_id paskbench\n}}\n"
                f"virtual_server {VIP_KA} 80 {{\n  delay_loop {interval:g}\n  lb_algo rr\n"
                f"  lb_kind NAT\n  protocol TCP\n{textwrap.indent(servers, '  ')}\n}}\n")


class Tool:
    """pask-healthd (after pask-apply) or keepalived -C, as a child process group.
    ``ready_file``: exists once the tool is probing (pask-healthd's health file)."""

    def __init__(self, name: str, vip: str, cmd: list[str], workdir: str,
                 ready_file: str | None = None):
        self.name, self.vip, self.cmd, self.workdir = name, vip, cmd, workdir
        self.ready_file = ready_file
        self.log = open(os.path.join(workdir, f"{name}.log"), "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=self.log, start_new_session=True)

    def wait_ready(self, n: int, timeout: float = 120.0) -> None:
        """Until the tool runs its checks (Python starts slowly under TCG) and all n
        servers are in the kernel at weight 1."""
        t0 = time.monotonic()
        while (self.ready_file and not os.path.exists(self.ready_file)) or sum(
                1 for (svc, _), w in proc_weights().items()
                if svc == f"{self.vip}:80" and w == 1) != n:
            if time.monotonic() - t0 > timeout:
                raise TimeoutError(f"{self.name}: not ready after {timeout}s: {proc_weights()}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}")
            time.sleep(0.1)

    def pids(self) -> list[int]:
        """The tool's process and its children (keepalived forks its checker)."""
        out = [self.proc.pid]
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    with open(f"/proc/{entry}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    if int(fields[1]) == self.proc.pid:
                        out.append(int(entry))
                except (OSError, IndexError):
                    pass
        return out

    def cpu(self) -> float:
        tick = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                with open(f"/proc/{pid}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / tick
            except OSError:
                pass
        return total

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.log.close()


def start_pask(workdir: str, addrs: list[str], interval: float, timeout: float) -> Tool:
    cfg = os.path.join(workdir, "pask.yaml")
    pask_config(cfg, addrs, interval, timeout)
    state, health = os.path.join(workdir, "state.json"), os.path.join(workdir, "health.json")
    for f in (health,):
        if os.path.exists(f):
            os.unlink(f)
    subprocess.run([PY, "-c", "import sys; from pask_ipvs.cli import apply_main; "
                    "sys.exit(apply_main(sys.argv[1:]))", "-q", "--state-file", state,
                    "--health-file", health, cfg], check=True, cwd=ROOT)
    return Tool("pask-healthd", VIP_PASK,
                [PY, "-m", "pask_ipvs.cli.healthd", "--state-file", state,
                 "--health-file", health, cfg], workdir, ready_file=health)


def start_keepalived(workdir: str, addrs: list[str], interval: float, timeout: float) -> Tool:
    cfg = os.path.join(workdir, "keepalived.conf")
    keepalived_config(cfg, addrs, interval, timeout)
    return Tool("keepalived", VIP_KA,
                ["keepalived", "-n", "-l", "-D", "-C", "-f", cfg,
                 "-p", os.path.join(workdir, "ka.pid"),
                 "-c", os.path.join(workdir, "ka-checkers.pid")], workdir)


def drain_latency(tool: Tool, lst: Listeners, names: list[str], kills: int, interval: float,
                  rng: random.Random) -> dict:
    tool.wait_ready(len(names))
    time.sleep(2 * interval)
    down, up = [], []
    for i in range(kills):
        name = names[i % len(names)]
        time.sleep(rng.uniform(0, interval))           # a kill at a random probe phase
        lst.close(name)
        down.append(wait_weight(tool.vip, name, lambda w: w == 0, 30 * interval))
        lst.open(name)
        up.append(wait_weight(tool.vip, name, lambda w: w == 1, 30 * interval))
        print(f"  {tool.name} kill {i + 1}/{kills} {name}: weight 0 after {down[-1]:.2f}s, "
              f"back after {up[-1]:.2f}s", flush=True)
    return {"tool": tool.name, "kills": kills, "interval_s": interval,
            "down_median_s": round(statistics.median(down), 3), "down_worst_s": round(max(down), 3),
            "down_best_s": round(min(down), 3),
            "up_median_s": round(statistics.median(up), 3), "up_worst_s": round(max(up), 3),
            "down_s": [round(x, 3) for x in down], "up_s": [round(x, 3) for x in up]}


def cpu_per_probe(tool: Tool, lst: Listeners, n: int, interval: float, seconds: float) -> dict:
    """CPU of the tool's processes per probe, probes counted by the listeners."""
    tool.wait_ready(n)
    time.sleep(2 * interval)                    # past start-up and the first spread round
    a0, c0, w0 = lst.accepted(), tool.cpu(), time.monotonic()
    time.sleep(seconds)
    a1, c1, w1 = lst.accepted(), tool.cpu(), time.monotonic()
    probes = a1 - a0
    cpu = c1 - c0
    return {"tool": tool.name, "servers": n, "interval_s": interval, "wall_s": round(w1 - w0, 1),
            "probes": probes, "expected_probes": round(n * (w1 - w0) / interval),
            "cpu_s": round(cpu, 2), "cpu_util": round(cpu / (w1 - w0), 3),
            "us_cpu_per_probe": round(cpu / probes * 1e6, 1),
            "servers_per_core_at_2s": int(probes / max(cpu, 1e-9) * 2.0)}


def vm(args) -> dict:
    if not os.path.exists("/proc/net/ip_vs"):
        sh("modprobe ip_vs", check=False)
    if not os.path.exists("/proc/net/ip_vs"):
        sys.exit("no IPVS in this kernel: run inside integration/vm-run")
    if shutil.which("keepalived") is None:
        sys.exit("keepalived is not installed (apt-get install keepalived)")
    rng = random.Random(args.seed)
    workdir = tempfile.mkdtemp(prefix="pask-health-bench-")
    results: dict = {"drain": [], "cpu": []}
    n_lat = args.latency_servers
    addrs = lab_up(max(n_lat, args.cpu_servers))
    sh("sysctl -qw net.ipv4.ip_forward=1", check=False)
    lst = Listeners(addrs, RS_PORT, netns=NS)
    try:
        for starter in (start_pask, start_keepalived) if args.kills else ():
            tool = starter(workdir, addrs[:n_lat], args.interval, min(1.0, args.interval))
            try:
                results["drain"].append(drain_latency(tool, lst, lst.names[:n_lat], args.kills,
                                                      args.interval, rng))
            finally:
                tool.stop()
        if args.cpu_servers:
            for starter in (start_pask, start_keepalived):
                tool = starter(workdir, addrs[:args.cpu_servers], 2.0, 1.0)
                try:
                    results["cpu"].append(cpu_per_probe(tool, lst, args.cpu_servers, 2.0,
                                                        args.cpu_seconds))
                    print("  " + json.dumps(results["cpu"][-1]), flush=True)
                finally:
                    tool.stop()
    finally:
        lst.stop()
        lab_down()
    return results


# -- report ----------------------------------------------------------------------------

def report(results: dict) -> str:
    out = []
    if results.get("drain"):
        out += ["| tool | kills | interval | weight 0: median | worst | best | back: median | worst |",
                "|---|---|---|---|---|---|---|---|"]
        for r in results["drain"]:
            out.append(f"| {r['tool']} | {r['kills']} | {r['interval_s']:g} s | {r['down_median_s']:.2f} s "
                       f"| {r['down_worst_s']:.2f} s | {r['down_best_s']:.2f} s "
                       f"| {r['up_median_s']:.2f} s | {r['up_worst_s']:.2f} s |")
        out.append("")
    rows = results.get("cpu", []) + results.get("throughput", [])
    if rows:
        out += ["| where | tool | servers | CPU util | µs CPU per probe | servers per core at 2 s |",
                "|---|---|---|---|---|---|"]
        for r in rows:
            where = "VM (TCG)" if r in results.get("cpu", []) else "host"
            out.append(f"| {where} | {r['tool']} | {r['servers']} | {r['cpu_util']:.1%} "
                       f"| {r['us_cpu_per_probe']} | {r['servers_per_core_at_2s']} |")
    return "\n".join(out)


def save(results: dict, name: str, directory: str | None = None) -> str:
    """JSON results in bench/results/ (or ``directory``: the VM's way back to the host)."""
    d = directory or os.path.join(ROOT, "bench", "results")
    os.makedirs(d, exist_ok=True)
    path = os.path.join(d, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json")
    with open(path, "w") as f:
        json.dump(results, f, indent=1)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("throughput", help="probe throughput of pask-healthd on this machine")
    t.add_argument("--servers", type=int, nargs="+", default=[1000, 2000, 4000])
    t.add_argument("--interval", type=float, default=2.0)
    t.add_argument("--seconds", type=float, default=10.0)
    v = sub.add_parser("vm", help="inside the IPVS VM: latency and CPU, pask vs keepalived")
    v.add_argument("--kills", type=int, default=20)
    v.add_argument("--interval", type=float, default=1.0)
    v.add_argument("--latency-servers", type=int, default=4)
    v.add_argument("--cpu-servers", type=int, default=100)
    v.add_argument("--cpu-seconds", type=float, default=20.0)
    v.add_argument("--seed", type=int, default=1)
    v.add_argument("--results-dir", help="write the JSON here, not in bench/results (inside the VM: an IPVSVM_RWDIR)")
    ls = sub.add_parser("_listen")
    ls.add_argument("--port", type=int, default=0)
    ls.add_argument("--count", type=int, default=1)
    ls.add_argument("addrs", nargs="+")
    args = p.parse_args(argv)
    if args.cmd == "_listen":
        listen_main(args.addrs, args.port, args.count)
        return 0
    if args.cmd == "throughput":
        results = {"throughput": throughput(args.servers, args.interval, args.seconds)}
    else:
        results = vm(args)
    print(report(results))
    path = save(results, args.cmd, getattr(args, "results_dir", None))
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
