#!/usr/bin/env python3
"""The peers pask-apply is measured against: keepalived and ipvsadm-restore, same table.

    # on the host: derive the peers' inputs from a pask config (needs pask_ipvs)
    python bench/peers.py gen examples/scale-1024.yaml --out-dir bench/results/run --name scale-1024

    # inside the IPVS VM, each on a FRESH boot (stdlib only, no pask import):
    python bench/peers.py keepalived --dir bench/results/run --name scale-1024 --out ka.json
    python bench/peers.py restore    --dir bench/results/run --name scale-1024 --out restore.json

``gen`` goes through pask's own loader and ``expand`` so that the peers get
exactly the IPVS services and destinations pask would program (scheduler,
forwarding method, weight, persistence), and nothing else: keepalived gets no
health checkers (a real server without a checker is up from the start), no
VRRP, no VIP addresses. It also writes the "one weight changed" variant of
the config (the first real server of the first service) for both tools.

Why polling: keepalived never says when it has finished programming IPVS, so
the time "from start until all objects are in the kernel" is taken by polling,
every ``--poll`` seconds, the LAST service of the config (keepalived adds the
services in config order, each with its real servers) with one small netlink
dump in process, then counting the whole table once from /proc/net/ip_vs.
Cheap polls matter: the poller shares the VM's 2 vCPUs with keepalived.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import re
import shutil
import signal
import struct
import subprocess
import sys
import time

PROC_IPVS = "/proc/net/ip_vs"
HEADER_LINES = 3
NEW_WEIGHT = 5


# -- generation (host side; uses pask's own pipeline) ----------------------------------

def _desired(config_path: str):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    from pask_ipvs.desired import expand
    from pask_ipvs.fwmarks import fwmarks_for
    from pask_ipvs.load import load_config

    config = load_config(config_path)
    fwmarks = fwmarks_for(config, {})
    return expand(config, fwmarks, {})


KA_KIND = {"masq": "NAT", "route": "DR", "tunnel": "TUN"}
IPVSADM_FWD = {"masq": "-m", "route": "-g", "tunnel": "-i"}


def _prefix_to_mask(prefix: int) -> str:
    bits = (0xFFFFFFFF << (32 - prefix)) & 0xFFFFFFFF
    return ".".join(str((bits >> s) & 0xFF) for s in (24, 16, 8, 0))


def _host(addr: str) -> str:
    return f"[{addr}]" if ":" in addr else addr


def _svc_ipvsadm(key) -> str:
    if key.fwmark:
        return f"-f {key.fwmark}" + (" -6" if key.af == 6 else "")
    return {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}[key.protocol] + \
        f" {_host(key.addr)}:{key.port}"


def _grouped(desired) -> list[tuple[object, list]]:
    by_svc: dict = {k: [] for k in desired.services}
    for d in desired.dests.values():
        by_svc[d.service].append(d)
    return [(desired.services[k], by_svc[k]) for k in desired.services]


def keepalived_conf(desired) -> str:
    """virtual_server blocks only; a real_server without a checker counts as up."""
    out = ["global_defs {\n  router_id paskbench\n}\n"]
    for svc, dests in _grouped(desired):
        k = svc.key
        head = f"fwmark {k.fwmark}" if k.fwmark else f"{k.addr} {k.port}"
        lines = [f"virtual_server {head} {{", f"  lb_algo {svc.scheduler}"]
        kinds = {d.fwd for d in dests} or {"masq"}
        lines.append(f"  lb_kind {KA_KIND[sorted(kinds)[0]]}")
        if not k.fwmark:
            lines.append(f"  protocol {k.protocol.upper()}")
        elif k.af == 6:
            lines.append("  ip_family inet6")
        for flag in sorted(svc.flags - {"persistent"}):
            lines.append(f"  {flag}")            # sh-port, sh-fallback, mh-port, ...
        if svc.timeout:
            lines.append(f"  persistence_timeout {svc.timeout}")
            if k.af == 4 and svc.netmask != 32:
                lines.append(f"  persistence_granularity {_prefix_to_mask(svc.netmask)}")
        for d in dests:
            lines.append(f"  real_server {d.addr} {d.port} {{")
            lines.append(f"    weight {d.weight}")
            if len(kinds) > 1:
                lines.append(f"    lvs_method {KA_KIND[d.fwd]}")
            lines.append("  }")
        lines.append("}")
        out.append("\n".join(lines) + "\n")
    return "".join(out)


def ipvsadm_rules(desired) -> str:
    """`ipvsadm -S -n` style lines, the input of ipvsadm-restore."""
    out = []
    for svc, dests in _grouped(desired):
        s = _svc_ipvsadm(svc.key)
        line = f"-A {s} -s {svc.scheduler}"
        flags = sorted(svc.flags - {"persistent"})
        if flags:
            line += " -b " + ",".join(flags)
        if svc.timeout:
            line += f" -p {svc.timeout}"
            if svc.key.af == 4 and svc.netmask != 32:
                line += f" -M {_prefix_to_mask(svc.netmask)}"
        out.append(line)
        for d in dests:
            port = f":{d.port}" if d.port else ""
            out.append(f"-a {s} -r {_host(d.addr)}{port} {IPVSADM_FWD[d.fwd]} -w {d.weight}")
    return "\n".join(out) + "\n"


def changed_config(config_path: str, out_path: str) -> dict:
    """The same file with the first real server of the first service at weight NEW_WEIGHT,
    edited as an operator would: that one line changes, the rest of the file is as it was
    (gen_scale.py writes each real server as a one-line flow mapping)."""
    import yaml
    with open(config_path, encoding="utf-8") as f:
        text = f.read()
    data = yaml.load(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    svc = data["services"][0]
    rs = svc["real_servers"][0]
    old = rs.get("weight", 1)
    new = NEW_WEIGHT if old != NEW_WEIGHT else NEW_WEIGHT + 1
    line = re.compile(r"^(\s*- \{address: " + re.escape(str(rs["address"])) + r"\b[^}\n]*?)"
                      r"(, weight: \d+)?\}$", re.M)
    found = line.search(text, text.index(f"name: {svc['name']}"))
    if found is None:
        raise SystemExit(f"peers gen: no one-line real server {rs['address']} in {config_path}")
    text = text[:found.start()] + f"{found.group(1)}, weight: {new}}}" + text[found.end():]
    with open(out_path, "w", encoding="utf-8") as f:
        f.write(text)
    return {"service": svc["name"], "old_weight": old, "new_weight": new}


def cmd_gen(args: argparse.Namespace) -> int:
    os.makedirs(args.out_dir, exist_ok=True)
    name = args.name or os.path.splitext(os.path.basename(args.config))[0]
    p = lambda suffix: os.path.join(args.out_dir, name + suffix)  # noqa: E731
    desired = _desired(args.config)
    with open(p(".keepalived.conf"), "w") as f:
        f.write(keepalived_conf(desired))
    with open(p(".ipvsadm"), "w") as f:
        f.write(ipvsadm_rules(desired))
    change_meta = None
    if not args.no_change:
        change = changed_config(args.config, p(".changed.yaml"))
        changed = _desired(p(".changed.yaml"))
        diffs = [d for k, d in changed.dests.items() if desired.dests.get(k) != d]
        if len(diffs) != 1:
            raise SystemExit(f"peers gen: expected exactly one changed dest, got {len(diffs)}")
        d = diffs[0]
        with open(p(".changed.keepalived.conf"), "w") as f:
            f.write(keepalived_conf(changed))
        change_meta = dict(change, ipvsadm_service=_svc_ipvsadm(d.service),
                           dest=f"{_host(d.addr)}:{d.port}")
    last_svc, last_dests = _grouped(desired)[-1] if desired.services else (None, [])
    meta = {
        "config": args.config, "name": name,
        "last_service": None if last_svc is None else
        {"ipvsadm_service": _svc_ipvsadm(last_svc.key), "dests": len(last_dests)},
        "services": len(desired.services), "dests": len(desired.dests),
        "objects": len(desired.services) + len(desired.dests),
        "change": change_meta,
    }
    with open(p(".meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(json.dumps(meta))
    return 0


# -- measurement (inside the VM; stdlib only) -------------------------------------------

def ipvs_objects() -> tuple[int, float]:
    """(services + destinations in the kernel, seconds the read took)."""
    t = time.perf_counter()
    with open(PROC_IPVS, "rb") as f:
        data = f.read()
    return max(0, data.count(b"\n") - HEADER_LINES), time.perf_counter() - t


class IpvsProbe:
    """The destinations of ONE IPVS service, by a generic-netlink GET_DEST dump, in process.

    Why not `ipvsadm -Ln -t` in a loop: a fork + exec per poll costs ~0.1 s of
    emulated CPU, taken from the tool being measured (2 vCPUs). Why not
    /proc/net/ip_vs: one read formats the whole table (~0.2 s at 33k objects).
    Constants from include/uapi/linux/ip_vs.h and genetlink.h."""

    PROTO = {"-t": 6, "-u": 17, "--sctp-service": 132}

    def __init__(self) -> None:
        import socket
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 16)   # NETLINK_GENERIC
        self.sock.bind((0, 0))
        self.seq = 0
        name = b"IPVS\0"
        reply = self._request(0x10, 0x1, 3, 1, self._nla(2, name))         # CTRL_CMD_GETFAMILY
        self.family = struct.unpack_from("=H", self._attrs(reply[0])[1])[0]  # CTRL_ATTR_FAMILY_ID

    @staticmethod
    def _nla(kind: int, payload: bytes) -> bytes:
        n = 4 + len(payload)
        return struct.pack("=HH", n, kind) + payload + b"\0" * ((4 - n % 4) % 4)

    @staticmethod
    def _attrs(buf: bytes) -> dict[int, bytes]:
        out, off = {}, 0
        while off + 4 <= len(buf):
            n, kind = struct.unpack_from("=HH", buf, off)
            if n < 4:
                break
            out[kind & 0x3FFF] = buf[off + 4:off + n]
            off += (n + 3) & ~3
        return out

    def _request(self, mtype: int, flags: int, cmd: int, version: int, attrs: bytes) -> list[bytes]:
        """Send one message; the genl payloads (attributes) of the replies until DONE,
        or the single reply of a non-dump request. OSError on a netlink error."""
        self.seq += 1
        self.sock.send(struct.pack("=IHHIIBBH", 20 + len(attrs), mtype, flags, self.seq, 0,
                                   cmd, version, 0) + attrs)
        out: list[bytes] = []
        while True:
            data = self.sock.recv(1 << 20)
            off = 0
            while off + 16 <= len(data):
                n, typ, _, seq, _ = struct.unpack_from("=IHHII", data, off)
                if seq == self.seq:
                    if typ == 3:                                   # NLMSG_DONE
                        return out
                    if typ == 2:                                   # NLMSG_ERROR (or ack)
                        err = struct.unpack_from("=i", data, off + 16)[0]
                        if err:
                            raise OSError(-err, os.strerror(-err))
                        return out
                    out.append(data[off + 20:off + n])
                    if not flags & 0x300:                          # not a dump: one reply
                        return out
                off += (n + 3) & ~3

    def dests(self, service: str) -> dict[str, int] | None:
        """"addr:port" -> weight for an ipvsadm service spec "-t 10.0.0.1:80"; None: no service."""
        import socket
        flag, hostport = service.split()
        addr, port = hostport.rsplit(":", 1)
        svc = (self._nla(1, struct.pack("=H", socket.AF_INET)) +
               self._nla(2, struct.pack("=H", self.PROTO[flag])) +
               self._nla(3, socket.inet_aton(addr) + b"\0" * 12) +
               self._nla(4, struct.pack("!H", int(port))))
        try:
            replies = self._request(self.family, 0x1 | 0x300, 8, 1, self._nla(1 | 0x8000, svc))
        except OSError as e:
            if e.errno in (errno.ESRCH, errno.ENOENT):
                return None
            raise
        out = {}
        for payload in replies:
            d = self._attrs(self._attrs(payload).get(2, b""))       # IPVS_CMD_ATTR_DEST
            if 1 in d and 2 in d and 4 in d:
                out[f"{socket.inet_ntoa(d[1][:4])}:{struct.unpack('!H', d[2][:2])[0]}"] = \
                    struct.unpack("=I", d[4][:4])[0]
        return out


_PROBE: list[IpvsProbe] = []


def service_dests(service: str) -> dict[str, int] | None:
    """dest -> weight of one service; None = no such service. In process for IPv4
    virtual services (cheap to poll), else `ipvsadm -Ln -t VIP:PORT`."""
    flag, _, hostport = service.partition(" ")
    if flag in IpvsProbe.PROTO and "[" not in hostport:
        if not _PROBE:
            _PROBE.append(IpvsProbe())
        return _PROBE[0].dests(service)
    r = subprocess.run(["ipvsadm", "-Ln", *service.split()], capture_output=True, text=True)
    if r.returncode:
        return None
    out = {}
    for line in r.stdout.splitlines():
        f = line.split()
        if len(f) >= 4 and f[0] == "->" and f[1] != "RemoteAddress:Port":
            out[f[1]] = int(f[3])
    return out


def dest_weight(service: str, dest: str) -> int | None:
    return (service_dests(service) or {}).get(dest)


def wait_until(pred, timeout: float, poll: float) -> tuple[bool, float, int]:
    """Poll ``pred`` from now; (met, seconds until met, polls)."""
    t0 = time.perf_counter()
    n = 0
    while True:
        n += 1
        if pred():
            return True, time.perf_counter() - t0, n
        if time.perf_counter() - t0 > timeout:
            return False, time.perf_counter() - t0, n
        time.sleep(poll)


def calibrate() -> float:
    """Seconds for a fixed pure-Python workload: shows how fast this boot's CPU was
    (TCG speed and other VMs on the machine vary; compare runs by it)."""
    t = time.perf_counter()
    d: dict = {}
    for i in range(100_000):
        d[f"10.99.{i >> 8 & 255}.{i & 255}"] = i * 2
    sum(v for v in d.values() if v % 3)
    return round(time.perf_counter() - t, 3)


CLOCKSOURCE = "/sys/devices/system/clocksource/clocksource0"


def in_test_vm() -> bool:
    return os.environ.get("PASK_IN_VM") == "1" or os.uname().nodename in ("vmrun", "ipvsvm")


def trusted_clock() -> dict:
    """In the test VM, time by the HPET, not the TSC.

    Under TCG the guest calibrates its TSC at boot against emulated timers; on
    a busy machine that calibration can be far off, and then every clock in
    the guest runs fast or slow for the whole boot (seen: 25x fast). QEMU's
    HPET counts host time, so with it as the clocksource the guest's seconds
    are real seconds. A real machine's clocksource is never touched."""
    def read(name: str) -> str:
        with open(f"{CLOCKSOURCE}/{name}") as f:
            return f.read().strip()
    out: dict = {}
    try:
        was = read("current_clocksource")
        if in_test_vm() and was != "hpet" and "hpet" in read("available_clocksource").split() \
                and os.environ.get("BENCH_CLOCK") != "keep":       # keep: to compare both clocks
            with open(f"{CLOCKSOURCE}/current_clocksource", "w") as f:
                f.write("hpet")
        out = {"clocksource": read("current_clocksource"), "clocksource_was": was}
    except OSError as e:
        out = {"clocksource_error": str(e)}
    r = subprocess.run(["dmesg"], capture_output=True, text=True)
    out["tsc_lines"] = [ln.split("] ", 1)[-1] for ln in r.stdout.splitlines()
                        if "tsc: Detected" in ln or "tsc: Refined" in ln]
    return out


def _env() -> dict:
    clock = trusted_clock()
    with open("/proc/uptime") as f:
        uptime = float(f.read().split()[0])
    with open("/proc/loadavg") as f:
        load = f.read().split()[0]
    return {"kernel": os.uname().release, "uptime_s": uptime, "cpus": os.cpu_count(),
            "in_vm": in_test_vm(), "guest_load": load, **clock,
            "calib_s": calibrate()}


def _require_fresh(result: dict) -> None:
    n, _ = ipvs_objects()
    result["kernel_objects_before"] = n
    if n:
        raise SystemExit(f"peers: the kernel already holds {n} IPVS objects; measure on a fresh boot")


def _vm_hwm_kb(pids: list[int]) -> int:
    best = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        best = max(best, int(line.split()[1]))
        except OSError:
            pass
    return best


def _children(pid: int) -> list[int]:
    out = []
    for e in os.listdir("/proc"):
        if e.isdigit():
            try:
                with open(f"/proc/{e}/stat") as f:
                    if int(f.read().rsplit(")", 1)[1].split()[1]) == pid:
                        out.append(int(e))
            except (OSError, IndexError, ValueError):
                pass
    return out


def _load(args) -> tuple[dict, callable]:
    p = lambda suffix: os.path.join(args.dir, args.name + suffix)  # noqa: E731
    with open(p(".meta.json")) as f:
        return json.load(f), p


def save_table(out: str | None) -> str | None:
    """The kernel's table as ``ipvsadm -Sn`` saves it, beside the result file (OUT.table),
    for report.py to compare the tools' tables; its file name, or None."""
    if not out:
        return None
    path = os.path.splitext(out)[0] + ".table"
    with open(path, "wb") as f:
        subprocess.run(["ipvsadm", "-Sn"], stdout=f, check=True)
    return os.path.basename(path)


def _emit(result: dict, out: str | None) -> None:
    with open("/proc/uptime") as f:
        result.setdefault("env", {})["uptime_end_s"] = float(f.read().split()[0])
    text = json.dumps(result, indent=1)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")
    print(text)


def cmd_keepalived(args: argparse.Namespace) -> int:
    meta, p = _load(args)
    want = meta["objects"]
    result = {"tool": "keepalived", "scenario": meta["name"], "objects": want, "env": _env()}
    _require_fresh(result)
    work = args.workdir
    os.makedirs(work, exist_ok=True)
    conf = os.path.join(work, "keepalived.conf")
    shutil.copyfile(p(".keepalived.conf"), conf)
    ver = subprocess.run(["keepalived", "--version"], capture_output=True, text=True)
    result["version"] = (ver.stderr or ver.stdout).splitlines()[0].strip()   # also warms the binary
    log = open(os.path.join(work, "keepalived.log"), "w")
    cmd = ["keepalived", "--dont-fork", "--log-console", "--check", "--use-file", conf,
           "--pid", os.path.join(work, "ka.pid"), "--checkers_pid", os.path.join(work, "kac.pid")]
    read_times: list[float] = []
    last = meta.get("last_service")
    last_seen = [last is None]

    def loaded() -> bool:
        # keepalived adds the services in config order, each with its real servers:
        # poll the last service alone (cheap) until it is complete, then the whole table
        if not last_seen[0]:
            dests = service_dests(last["ipvsadm_service"])
            if dests is None or len(dests) < last["dests"]:
                return False
            last_seen[0] = True
        n, dt = ipvs_objects()
        read_times.append(dt)
        return n >= want

    service_dests(last["ipvsadm_service"]) if last else None      # open the probe socket now
    calib_before = calibrate()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        ok, _, polls = wait_until(loaded, args.timeout, args.poll)
        cold = time.perf_counter() - t0
        result.update(cold_ok=ok, cold_s=round(cold, 3), cold_polls=polls,
                      poll_read_s_max=round(max(read_times), 4), full_reads=len(read_times),
                      kernel_objects=ipvs_objects()[0], calib_s=[calib_before, calibrate()])
        if not ok:
            raise SystemExit(f"keepalived: only {result['kernel_objects']}/{want} objects "
                             f"after {args.timeout}s; log: {log.name}")
        result["table"] = save_table(args.out)
        time.sleep(args.settle)     # let keepalived finish its start-up before the reload
        ch = meta["change"]
        before = dest_weight(ch["ipvsadm_service"], ch["dest"])
        shutil.copyfile(p(".changed.keepalived.conf"), conf + ".new")
        os.replace(conf + ".new", conf)
        t1 = time.perf_counter()
        os.kill(proc.pid, signal.SIGHUP)
        ok2, reload_s, polls2 = wait_until(
            lambda: dest_weight(ch["ipvsadm_service"], ch["dest"]) == ch["new_weight"],
            args.timeout, args.poll)
        result.update(reload_ok=ok2, reload_s=round(time.perf_counter() - t1, 3),
                      reload_polls=polls2, weight_before=before,
                      kernel_objects_after_reload=ipvs_objects()[0],
                      peak_rss_kb=_vm_hwm_kb([proc.pid, *_children(proc.pid)]))
        if not ok2:
            raise SystemExit(f"keepalived: weight not {ch['new_weight']} after SIGHUP; log: {log.name}")
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)    # a clean stop would delete 33k objects: not measured
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
    _emit(result, args.out)
    return 0


def cmd_restore(args: argparse.Namespace) -> int:
    meta, p = _load(args)
    want = meta["objects"]
    result = {"tool": "ipvsadm-restore", "scenario": meta["name"], "objects": want, "env": _env()}
    _require_fresh(result)
    subprocess.run(["ipvsadm", "--version"], capture_output=True)       # warm the binary
    subprocess.run(["bash", "-c", "true"], capture_output=True)
    with open(p(".ipvsadm"), "rb") as f:
        rules = f.read()
    calib_before = calibrate()
    t0 = time.perf_counter()
    r = subprocess.run(["ipvsadm-restore"], input=rules, capture_output=True)
    took = time.perf_counter() - t0
    n, _ = ipvs_objects()
    result.update(cold_ok=r.returncode == 0 and n == want, cold_s=round(took, 3),
                  calib_s=[calib_before, calibrate()],
                  rc=r.returncode, kernel_objects=n, stderr=r.stderr.decode()[-2000:])
    _emit(result, args.out)
    return 0 if result["cold_ok"] else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen", help="write keepalived.conf, ipvsadm-restore input and the "
                       "changed-weight variants from a pask config (host side)")
    g.add_argument("config")
    g.add_argument("--out-dir", required=True)
    g.add_argument("--name", help="file name prefix (default: the config's base name)")
    g.add_argument("--no-change", action="store_true",
                   help="skip the changed-weight variants (cold start only)")
    for name, fn in (("keepalived", cmd_keepalived), ("restore", cmd_restore)):
        s = sub.add_parser(name, help=f"measure {name} (inside the VM, fresh boot)")
        s.add_argument("--dir", required=True, help="where `gen` wrote its files")
        s.add_argument("--name", required=True)
        s.add_argument("--out", help="write the JSON result here too")
        s.add_argument("--workdir", default="/tmp/paskbench-peers")
        s.add_argument("--poll", type=float, default=0.05, help="poll interval, seconds")
        s.add_argument("--timeout", type=float, default=600)
        s.add_argument("--settle", type=float, default=2.0,
                       help="seconds to wait after the cold start before the SIGHUP reload")
        s.set_defaults(fn=fn)
    g.set_defaults(fn=cmd_gen)
    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
