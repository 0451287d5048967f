#!/usr/bin/env python3
"""bgp failover timings in the scale-out lab (integration/bgp_lab.py), min/median/max.

    IPVSVM_RWDIR=$PWD/bench/results integration/vm-run '.venv/bin/python bench/bgp_failover.py --runs 5'

What is measured (hold_time 3 s; health: http every 1 s, timeout 0.5 s, fall 2, rise 1):

* LB death -> ECMP shrinks: an LB's links go down (no goodbye); the time until the
  router's kernel route for the VIP has lost that LB's next hop (BGP hold timer on
  the router, then BIRD's kernel update). And LB back -> next hop back.
* last real server failing -> withdrawal: every real server becomes unreachable in
  one LB's view (its own packets to port 80 dropped); the time until the router has
  lost that LB's next hop (detection: fall x interval, then pask-healthd rewrites
  announce.conf and reconfigures BIRD, BIRD withdraws). Also split out: the last
  down transition pask-healthd logged -> next hop gone (the announce path alone),
  and servers back -> next hop back.

The router's route is watched with ``ip -ts monitor route`` in its namespace, so each
change is timed by the kernel's notification, not by polling. Results go to stdout
(a Markdown table) and bench/results/bgp_failover-*.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "integration"))

from bgp_lab import LB_UPLINK, LBS, ROOT as _ROOT, ROUTER, VIP_L3, BgpLab, lb_config, service  # noqa: E402
from lab import wait_for  # noqa: E402

HEALTH = {"type": "http", "path": "/healthz", "interval": 1, "timeout": 0.5, "rise": 1, "fall": 2}
RESULTS = Path(os.environ.get("PASK_BENCH_RESULTS", ROOT / "bench" / "results"))


class RouteWatch:
    """``ip -ts -o monitor route`` in the router: (epoch, next hop LBs) per change of VIP."""

    def __init__(self, vip: str):
        self.vip = vip
        self.events: list[tuple[float, tuple[str, ...]]] = []
        self.cond = threading.Condition()
        self.proc = subprocess.Popen(["ip", "-n", ROUTER, "-ts", "-o", "monitor", "route"],
                                     stdout=subprocess.PIPE, text=True, bufsize=1)
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        by_addr = {a: lb for lb, a in LB_UPLINK.items()}
        for line in self.proc.stdout:
            if not line.startswith("[") or "]" not in line:
                continue
            stamp, rest = line[1:].split("]", 1)
            words = rest.replace("\\", " ").split()
            if not words:
                continue
            deleted = words[0] == "Deleted"
            dst = words[1] if deleted else words[0]
            if dst not in (self.vip, f"{self.vip}/32"):
                continue
            hops = () if deleted else tuple(sorted(
                by_addr.get(words[i + 1], words[i + 1]) for i, w in enumerate(words) if w == "via"))
            when = datetime.datetime.fromisoformat(stamp).timestamp()
            with self.cond:
                self.events.append((when, hops))
                self.cond.notify_all()

    def first(self, since: float, pred, timeout: float = 120) -> float:
        """Epoch of the first change after ``since`` whose next hops satisfy ``pred``."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for when, hops in self.events:
                    if when >= since and pred(hops):
                        return when
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no route change after {since}: {self.events[-5:]}")
                self.cond.wait(left)

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait()


def stats(values: list[float]) -> dict:
    return {"n": len(values), "min": round(min(values), 3), "median": round(statistics.median(values), 3),
            "max": round(max(values), 3), "values": [round(v, 3) for v in values]}


def calibration() -> float:
    """Seconds for a fixed pure-Python loop: how slow this (emulated) CPU is today."""
    t = time.perf_counter()
    total = 0
    for i in range(2_000_000):
        total += i & 7
    return round(time.perf_counter() - t, 3)


def block(lab: BgpLab, lb: str) -> None:
    from bgp_lab import LB_SRV, PORT, run
    run(["nft", "-f", "-"], ns=lb, input=(
        "add table inet bgpbench\n"
        "add chain inet bgpbench out { type filter hook output priority 0; }\n"
        f"add rule inet bgpbench out ip saddr {LB_SRV[lb]} tcp dport {PORT} drop\n"))


def unblock(lab: BgpLab, lb: str) -> None:
    from bgp_lab import run
    run(["nft", "delete", "table", "inet", "bgpbench"], ns=lb, check=False)


def healthd(lab: BgpLab, lb: str, config_path: Path) -> subprocess.Popen:
    log = open(lab.lb_dir(lb) / "healthd.log", "w")
    proc = subprocess.Popen(["ip", "netns", "exec", lb, sys.executable, "-m", "pask_ipvs.cli.healthd",
                             "--state-file", str(lab.state_file(lb)), "--health-file",
                             str(lab.health_file(lb)), str(config_path)],
                            stdout=log, stderr=log, cwd=_ROOT, start_new_session=True)
    (lab.lb_dir(lb) / "healthd.pid").write_text(f"{proc.pid}\n")
    return proc


def last_down(lab: BgpLab, lb: str, since: float) -> float:
    """Epoch of the last down transition pask-healthd logged after ``since``."""
    out = []
    for line in (lab.lb_dir(lb) / "healthd.log").read_text().splitlines():
        if line.startswith("{"):
            e = json.loads(line)
            if e.get("event") == "transition" and e.get("new") == "down":
                when = datetime.datetime.strptime(e["ts"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(
                    tzinfo=datetime.timezone.utc).timestamp()
                if when >= since:
                    out.append(when)
    return max(out)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5, help="repetitions of each measurement")
    args = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bgp_failover: run as root inside the IPVS VM (integration/vm-run)", file=sys.stderr)
        return 1
    lab = BgpLab().up()
    watch = RouteWatch(VIP_L3)
    results: dict[str, dict] = {}
    try:
        services = [service("l3", VIP_L3, "l3-dsr", health=HEALTH)]
        lab.apply_all(services)
        lab.wait_next_hops(VIP_L3, LBS)
        full = tuple(sorted(LBS))
        death, rejoin = [], []
        for run_no in range(args.runs):
            victim = LBS[run_no % len(LBS)]
            t0 = time.time()
            lab.kill_links(victim)
            gone = watch.first(t0, lambda hops: victim not in hops and len(hops) == len(LBS) - 1)
            death.append(gone - t0)
            t1 = time.time()
            lab.revive_links(victim)
            back = watch.first(t1, lambda hops: hops == full)
            rejoin.append(back - t1)
            print(f"run {run_no + 1}: {victim} dead -> next hop gone {gone - t0:.3f} s, "
                  f"back -> next hop back {back - t1:.3f} s", flush=True)
        results["LB death -> router next hop gone"] = stats(death)
        results["LB back -> router next hop back"] = stats(rejoin)

        lb = LBS[0]
        cp = lab.apply(lb, lb_config(lb, services))
        daemon = healthd(lab, lb, cp.config_path)
        try:
            wait_for(lambda: len(json.loads(lab.health_file(lb).read_text())["servers"]) == 3,
                     what="pask-healthd to probe")
            fault, announce, recover = [], [], []
            for run_no in range(args.runs):
                wait_for(lambda: watch.events and watch.events[-1][1] == full, what="every next hop")
                t0 = time.time()
                block(lab, lb)
                gone = watch.first(t0, lambda hops: lb not in hops)
                fault.append(gone - t0)
                announce.append(gone - last_down(lab, lb, t0))
                t1 = time.time()
                unblock(lab, lb)
                back = watch.first(t1, lambda hops: hops == full)
                recover.append(back - t1)
                print(f"run {run_no + 1}: servers unreachable from {lb} -> next hop gone "
                      f"{fault[-1]:.3f} s (last transition -> gone {announce[-1]:.3f} s), "
                      f"reachable -> back {recover[-1]:.3f} s", flush=True)
        finally:
            unblock(lab, lb)
            daemon.terminate()
            daemon.wait(timeout=60)
        results["last real server failing -> withdrawn (router next hop gone)"] = stats(fault)
        results["last down transition -> withdrawn (announce path)"] = stats(announce)
        results["servers reachable again -> announced (router next hop back)"] = stats(recover)
    finally:
        watch.close()
        lab.down()
    report = {"when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "runs": args.runs,
              "hold_time_s": 3, "health": HEALTH, "calibration_loop_s": calibration(),
              "results": results}
    print("\n| measurement | n | min s | median s | max s |\n|---|---|---|---|---|")
    for name, r in results.items():
        print(f"| {name} | {r['n']} | {r['min']} | {r['median']} | {r['max']} |")
    print(f"\ncalibration loop: {report['calibration_loop_s']} s (2M iterations of pure Python)")
    try:
        RESULTS.mkdir(parents=True, exist_ok=True)
        out = RESULTS / f"bgp_failover-{time.strftime('%Y%m%dT%H%M%S')}.json"
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(f"results: {out}")
    except OSError as e:
        print(f"results not written: {e}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
