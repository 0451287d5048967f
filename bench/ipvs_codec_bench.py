"""How fast IpvsNetlink fills and reads a big IPVS table (run inside the IPVS VM, as root).

    integration/vm-run -- .venv/bin/python bench/ipvs_codec_bench.py

Each case runs in a child process of its own, in a fresh network namespace (an
empty IPVS table and an empty destination trash: a table refilled after a clear
is ~3x slower, docs/kernel-facts.md "Refill after clear"). "until applied" is the child's wall time
from exec until apply() returned, i.e. including interpreter start, imports and
building the ops, as docs/kernel-facts.md "Programming IPVS fast" counts it; the other columns are
measured inside the child. "calibration" times a fixed pure-Python loop (about
0.05-0.07 s natively): under TCG, and more so on a busy host, everything scales
with it. For the headline number run the default case first on a freshly
booted VM; --matrix adds batch sizes, ack modes and dump socket counts.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import subprocess
import sys
import time

CLONE_NEWNET = 0x40000000
APPLIED = "APPLIED"
CALIBRATION_LOOPS = 1_000_000
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def child(args: argparse.Namespace) -> None:
    """Build the ops, apply them to an empty table, observe it back; print JSON timings."""
    t_start = time.perf_counter()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(CLONE_NEWNET) != 0:
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")
    # a namespace's IPv4 local table exists only once lo is up; without it the
    # kernel refuses every IPv4 dest with EINVAL (its address-type check fails)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    sys.path.insert(0, ROOT)
    from pask_ipvs.backend.ipvs import IpvsNetlink
    from pask_ipvs.objects import IpvsDest, IpvsService, ServiceKey
    from pask_ipvs.plan import Op

    t_import = time.perf_counter()
    ops = []
    for i in range(args.services):
        key = ServiceKey.virtual("tcp", f"10.99.{16 + i // 256}.{i % 256}", 80)
        ops.append(Op("add", "service", str(key), None, IpvsService(key, "wrr")))
    for i in range(args.services):
        key = ops[i].after.key
        for j in range(args.dests):
            dest = IpvsDest(key, f"10.99.{128 + j // 256}.{1 + j % 250}", 8080, "masq", 1 + j % 4)
            ops.append(Op("add", "dest", "", None, dest))
    t_ops = time.perf_counter()

    backend = IpvsNetlink(batch_size=args.batch, ack_every=args.ack_every,
                          dump_workers=args.workers)
    errors = backend.apply(ops)
    t_apply = time.perf_counter()
    print(APPLIED, flush=True)              # the parent stamps "until applied" here
    seen = backend.observe()
    t_observe = time.perf_counter()
    subprocess.run(["ipvsadm", "-Sn"], check=True, stdout=subprocess.DEVNULL)
    t_ipvsadm = time.perf_counter()
    ok = (not errors and len(seen.services) == args.services
          and len(seen.dests) == args.services * args.dests)
    print(json.dumps({
        "objects": len(ops), "errors": len(errors), "ok": ok,
        "import": t_import - t_start, "build_ops": t_ops - t_import,
        "apply": t_apply - t_ops, "observe": t_observe - t_apply,
        "ipvsadm_save": t_ipvsadm - t_observe, "calibration": calibration(),
    }))


def calibration() -> float:
    """Seconds for a fixed pure-Python loop: how slow this (virtual) CPU is right now.
    About 0.05 s natively on the development host; compare runs by it."""
    t0 = time.perf_counter()
    total = 0
    for i in range(CALIBRATION_LOOPS):
        total += i * i
    return time.perf_counter() - t0


def run_case(python: str, services: int, dests: int, batch: int, ack_every: bool,
             workers: int) -> dict:
    """Run one child; time it from exec to the end of apply and to exit."""
    cmd = [python, os.path.abspath(__file__), "--child", "--services", str(services),
           "--dests", str(dests), "--batch", str(batch), "--workers", str(workers)]
    if ack_every:
        cmd.append("--ack-every")
    t0 = time.perf_counter()
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) as child_proc:
        assert child_proc.stdout is not None
        until_applied = None
        lines = []
        for line in child_proc.stdout:
            if line.strip() == APPLIED:
                until_applied = time.perf_counter() - t0
            else:
                lines.append(line)
    wall = time.perf_counter() - t0
    if child_proc.returncode != 0 or until_applied is None:
        raise SystemExit(f"benchmark child failed: {''.join(lines)}")
    result = json.loads(lines[-1])
    result["process"], result["until_applied"] = wall, until_applied
    return result


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--services", type=int, default=1024)
    p.add_argument("--dests", type=int, default=32)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--ack-every", action="store_true")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--matrix", action="store_true",
                   help="also try other batch sizes, ack-every and dump worker counts")
    args = p.parse_args()
    if args.child:
        child(args)
        return
    if os.geteuid() != 0:
        sys.exit("needs root and IPVS: run it in the IPVS VM (see the docstring)")

    cases = [(args.batch, args.ack_every, args.workers)]
    if args.matrix:
        cases += [(512, False, 1), (64, False, 1), (256, True, 1), (1, True, 1),
                  (256, False, 2), (256, False, 4)]
    print(f"{args.services} services x {args.dests} dests, fresh netns per case; seconds")
    header = ("batch", "ack", "dump sockets", "objects", "until applied", "apply", "observe",
              "ipvsadm -Sn", "build ops", "import", "calibration", "ok")
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for batch, ack_every, workers in cases:
        r = run_case(sys.executable, args.services, args.dests, batch, ack_every, workers)
        row = (batch, "every" if ack_every else "last", workers, r["objects"],
               f"{r['until_applied']:.2f}", f"{r['apply']:.2f}", f"{r['observe']:.2f}",
               f"{r['ipvsadm_save']:.2f}", f"{r['build_ops']:.2f}", f"{r['import']:.2f}",
               f"{r['calibration']:.2f}", "yes" if r["ok"] else "NO")
        print("| " + " | ".join(str(x) for x in row) + " |", flush=True)


if __name__ == "__main__":
    main()
