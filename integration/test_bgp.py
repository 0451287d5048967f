"""bgp: N load balancers behind a BGP router with ECMP, with real packets (bgp_lab.py).

1. Each LB announces its VIPs; the router holds one next hop per LB; flows spread.
2. Every real server fails in one LB's view: pask-healthd there withdraws the VIPs, the
   router's next hops drop by one; they come back when the servers do.
3. An LB dies (its links go down) while 20 long-lived TCP connections stream through the
   VIP, in l3-dsr and in l2-dsr: every connection goes on with its real server, those
   of the dead LB through another LB (sloppy_tcp + the same mh table).
4. A real server is added on every LB (one of them built afresh): each LB alone gives
   every flow the same server as the others, and their kernels list the servers in the
   same order.
5. Bad bgp input: FILE:LINE errors and nothing changes (IPVS, nft, BIRD, the router).

Timings (hold time, withdrawal) are printed and written to $PASK_RESULTS_DIR/bgp.json;
bench/bgp_failover.py repeats them for min/median/max.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from bgp_lab import (CLIENT, CLIENT_IPS, HOLD_TIME, LB_SRV, LBS, PORT, ROOT, SERVERS, VIP_L2,
                     VIP_L3, BgpLab, lb_config, run, service, wait_for, who_from, yaml_text)
from lab import HttpConnection, HttpError

INTERVAL, TIMEOUT, RISE, FALL = 1.0, 0.5, 1, 2
HEALTH = {"type": "http", "path": "/healthz", "interval": INTERVAL, "timeout": TIMEOUT,
          "rise": RISE, "fall": FALL}
RESULTS = Path(os.environ.get("PASK_RESULTS_DIR", ROOT / "build" / "integration"))
TIMINGS: dict[str, object] = {}


def services(servers=tuple(SERVERS)) -> list[dict]:
    return [service("l3", VIP_L3, "l3-dsr", servers, health=HEALTH),
            service("l2", VIP_L2, "l2-dsr", servers, scheduler="mh", health=HEALTH)]


def record(name: str, value: object) -> None:
    TIMINGS[name] = value
    print(f"bgp timing {name}: {value}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bgp.json").write_text(json.dumps(TIMINGS, indent=2) + "\n")


@pytest.fixture(scope="module")
def net():
    """The lab, every LB serving ``services()`` and announced."""
    lab = BgpLab().up()
    try:
        lab.apply_all(services())
        for vip in (VIP_L3, VIP_L2):
            lab.wait_next_hops(vip, LBS)
        yield lab
    finally:
        lab.down()


def placed(lab: BgpLab, vip: str, flows) -> dict[tuple[str, int], str]:
    """Which LB's IPVS holds each of these flows (client ip, port) -> LB."""
    out = {}
    for lb in LBS:
        for flow in lab.flows(lb, vip):
            if flow in flows:
                out[flow] = lb
    return out


# -- 1 ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("vip", [VIP_L3, VIP_L2])
def test_each_lb_announces_and_flows_spread_over_all_of_them(net, vip):
    lab = net
    assert lab.next_hops(vip) == sorted(LBS)
    for lb in LBS:
        assert "Established" in lab.birdc(lb, "show", "protocols")
        assert f"route {vip}/32 blackhole;" in (lab.bird_dir(lb) / "announce.conf").read_text()
    base = 20000 if vip == VIP_L3 else 21000
    flows = [(CLIENT_IPS[i % 4], base + i) for i in range(45)]
    answers = Counter(who_from(ip, port, vip) for ip, port in flows)
    where = placed(lab, vip, set(flows))
    per_lb = Counter(where.values())
    assert sorted(per_lb) == sorted(LBS) and sum(per_lb.values()) == len(flows), per_lb
    assert sorted(answers) == sorted(SERVERS), answers
    record(f"spread {vip}", {"lbs": dict(per_lb), "servers": dict(answers)})


# -- 2 ---------------------------------------------------------------------------------------

class Healthd:
    def __init__(self, lab: BgpLab, lb: str, config_path: Path):
        self.log = lab.lb_dir(lb) / "healthd.log"
        self.out = open(self.log, "w")
        argv = ["ip", "netns", "exec", lb, sys.executable, "-m", "pask_ipvs.cli.healthd",
                "--state-file", str(lab.state_file(lb)), "--health-file", str(lab.health_file(lb)),
                str(config_path)]
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=self.out, cwd=ROOT,
                                     start_new_session=True)
        (lab.lb_dir(lb) / "healthd.pid").write_text(f"{self.proc.pid}\n")

    def events(self, name: str) -> list[dict]:
        lines = self.log.read_text().splitlines()
        return [e for e in (json.loads(x) for x in lines if x.startswith("{")) if e["event"] == name]

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.out.close()


def block_probes(lb: str) -> None:
    """The LB loses its view of the servers (its own packets to port 80 are dropped);
    what it forwards for clients (ipip, or frames from the client's address) still passes."""
    rules = (f"add table inet bgptest\n"
             f"add chain inet bgptest out {{ type filter hook output priority 0; }}\n"
             f"add rule inet bgptest out ip saddr {LB_SRV[lb]} tcp dport {PORT} drop\n")
    run(["nft", "-f", "-"], ns=lb, input=rules)


def unblock_probes(lb: str) -> None:
    run(["nft", "delete", "table", "inet", "bgptest"], ns=lb, check=False)


def epoch(ts: str) -> float:
    import datetime
    return datetime.datetime.strptime(ts, "%Y-%m-%dT%H:%M:%S.%fZ").replace(
        tzinfo=datetime.timezone.utc).timestamp()


def test_an_lb_whose_servers_all_fail_withdraws_and_announces_again(net):
    lab = net
    lb, others = LBS[0], sorted(LBS[1:])
    cfg = lab.apply(lb, lb_config(lb, services()))
    daemon = Healthd(lab, lb, cfg.config_path)
    try:
        wait_for(lambda: len(json.loads(lab.health_file(lb).read_text())["servers"]) == 6,
                 what="pask-healthd to probe")
        assert lab.next_hops(VIP_L3) == sorted(LBS)
        block_probes(lb)
        t_fault, wall_fault = time.monotonic(), time.time()
        lab.wait_next_hops(VIP_L3, others, timeout=60)
        t_gone, wall_gone = time.monotonic(), time.time()
        lab.wait_next_hops(VIP_L2, others, timeout=60)
        down = [e for e in daemon.events("transition") if e["new"] == "down"]
        last = max(epoch(e["ts"]) for e in down if e["service"] == "l3")
        announce = [e for e in daemon.events("bgp_announce") if VIP_L3 in e["withdrawn"]]
        assert announce, daemon.log.read_text()
        # detection is the health contract: interval x fall (+ timeout); the withdrawal
        # itself follows the last transition within one probe interval
        after_last = wall_gone - last
        record("fault -> withdrawn (s)", round(t_gone - t_fault, 3))
        record("last transition -> router next hop gone (s)", round(after_last, 3))
        assert t_gone - t_fault <= INTERVAL * FALL + TIMEOUT + INTERVAL + 2.0, (t_gone - t_fault)
        assert after_last <= INTERVAL + 1.0, after_last
        assert wall_fault <= last
        assert "blackhole" not in (lab.bird_dir(lb) / "announce.conf").read_text()
        assert "Established" in lab.birdc(lb, "show", "protocols")      # the session stays
        # the service goes on through the other LBs
        assert {who_from(CLIENT_IPS[0], 22000 + i, VIP_L3) for i in range(6)} <= set(SERVERS)
        unblock_probes(lb)
        lab.wait_next_hops(VIP_L3, LBS, timeout=60)
        lab.wait_next_hops(VIP_L2, LBS, timeout=60)
        assert [e for e in daemon.events("bgp_announce") if VIP_L3 in e["announced"]]
        # the VIPs come back with the first usable server; the daemon stays until every
        # server is back in its view and its kernel (a server left at weight 0 would give
        # this LB another mh table than the others: the next tests move flows between them)
        record("servers up in the LB's view when its VIPs were back", sum(
            r["up"] for r in json.loads(lab.health_file(lb).read_text())["servers"].values()))
        wait_for(lambda: all(r["up"] for r in
                             json.loads(lab.health_file(lb).read_text())["servers"].values()),
                 what="every server back up in pask-healthd's view")
        lab.wait_same_tables((VIP_L3, VIP_L2))
    finally:
        unblock_probes(lb)
        daemon.stop()


# -- 3 ---------------------------------------------------------------------------------------

class Stream:
    """A long-lived keep-alive connection, asking again and again from its own thread."""

    def __init__(self, src: str, vip: str):
        self.conn = HttpConnection(CLIENT, vip, PORT, src=src, timeout=60)
        self.flow = (src, self.conn.sock.getsockname()[1])
        self.server = self.conn.who()[0]
        self.answers: list[tuple[float, str]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                name = self.conn.who()[0]
            except (HttpError, OSError) as e:
                self.errors.append(repr(e))
                return
            self.answers.append((time.monotonic(), name))
            self.stop.wait(0.2)           # pacing, so 20 streams leave the VM some CPU

    def finish(self) -> None:
        """Stop asking (the request in flight ends first), then close."""
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join(timeout=60)
        self.conn.close()

    def answered_after(self, t: float) -> int:
        return sum(1 for when, _ in self.answers if when > t)


@pytest.mark.parametrize("vip, mode", [(VIP_L3, "l3-dsr"), (VIP_L2, "l2-dsr")])
def test_an_lb_dies_and_every_connection_keeps_its_real_server(net, vip, mode):
    lab = net
    victim = None
    lab.wait_same_tables((vip,))       # a flow that moves finds its server on every LB
    streams = [Stream(CLIENT_IPS[i % 4], vip) for i in range(20)]
    try:
        where = placed(lab, vip, {s.flow for s in streams})
        assert len(where) == 20, where
        victim = Counter(where.values()).most_common(1)[0][0]
        others = sorted(set(LBS) - {victim})
        on_victim = [s for s in streams if where[s.flow] == victim]
        for s in streams:
            s.thread.start()
        wait_for(lambda: all(s.answers for s in streams), what="every stream to answer")
        t_dead = time.monotonic()
        lab.kill_links(victim)
        shrink = lab.wait_next_hops(vip, others, timeout=60)
        t_shrunk = time.monotonic()
        wait_for(lambda: all(s.answered_after(t_shrunk) >= 3 or s.errors for s in streams),
                 timeout=180, what="every stream to answer 3 times after the router moved them")
        for s in streams:
            s.stop.set()
        for s in streams:
            s.thread.join(timeout=60)
        after = placed(lab, vip, {s.flow for s in streams})
        moved = [s for s in streams if where[s.flow] != victim and after.get(s.flow, victim) != where[s.flow]]
        survived = [s for s in streams if not s.errors and all(n == s.server for _, n in s.answers)]
        record(f"{mode}: lb death -> next hop gone (s)", round(shrink, 3))
        record(f"{mode}: connections", {
            "total": len(streams), "on the dead LB": len(on_victim),
            "survived": len(survived), "survived of the dead LB's": len([s for s in on_victim if s in survived]),
            "moved between surviving LBs": len(moved),
            "longest silence, dead LB's (s)": round(max((gap(s, t_dead) for s in on_victim), default=0), 3),
            "longest silence, others (s)": round(max((gap(s, t_dead) for s in streams
                                                       if s not in on_victim), default=0), 3)})
        assert not [s.errors for s in streams if s.errors]
        assert len(survived) == len(streams), [(s.server, Counter(n for _, n in s.answers)) for s in streams]
        assert shrink <= HOLD_TIME + 3.0, shrink
        # the others never waited for the failover (some may have moved between the
        # surviving LBs when the router re-spread its hash: taken over in stride)
        assert all(gap(s, t_dead) < HOLD_TIME for s in streams if s not in on_victim)
    finally:
        for s in streams:
            s.stop.set()
        for s in streams:
            s.finish()
        if victim is not None:
            lab.revive_links(victim)
    lab.wait_next_hops(vip, LBS, timeout=120)


def gap(s: Stream, since: float) -> float:
    """The longest time without an answer after ``since`` (the outage a connection saw)."""
    times = [since] + [t for t, _ in s.answers if t > since]
    return max((b - a for a, b in zip(times, times[1:])), default=0.0)


# -- 4 ---------------------------------------------------------------------------------------

def test_a_server_added_everywhere_gets_every_lb_to_pick_the_same_server(net):
    lab = net
    two = [service("l3", VIP_L3, "l3-dsr", ("bgp-rs2", "bgp-rs3"), health=HEALTH),
           service("l2", VIP_L2, "l2-dsr", ("bgp-rs2", "bgp-rs3"), scheduler="mh", health=HEALTH)]
    lab.apply_all(two)
    # connections through the first LB while it re-adds rs2 and rs3 after rs1 (which sorts
    # below them): each re-added server comes back from IPVS's trash with its connections
    lab.pin_route(VIP_L3, LBS[0])
    streams = [Stream(CLIENT_IPS[i % 4], VIP_L3) for i in range(6)]
    try:
        for s in streams:
            s.thread.start()
        wait_for(lambda: all(s.answers for s in streams), what="every stream to answer")
        cp = lab.apply(LBS[0], lb_config(LBS[0], services()))
        assert "(mh order)" in cp.stdout, cp.stdout
        t_reordered = time.monotonic()
        wait_for(lambda: all(s.answered_after(t_reordered) >= 2 or s.errors for s in streams),
                 what="every stream to answer after the reorder")
    finally:
        for s in streams:
            s.stop.set()
        for s in streams:
            s.finish()
        lab.pin_route(VIP_L3, None)
    assert not [s.errors for s in streams if s.errors]
    assert all(n == s.server for s in streams for _, n in s.answers)
    lab.apply_all(services(), lbs=LBS[1:2])      # rs1 (10.99.5.11) sorts below: a reorder
    lab.reset_lb(LBS[2])                          # the third LB is built afresh
    lab.apply_all(services(), lbs=LBS[2:])
    lab.wait_next_hops(VIP_L3, LBS, timeout=120)
    tables = lab.wait_same_tables((VIP_L3,))
    assert lab.dest_order(LBS[0], VIP_L3) == ["10.99.5.13", "10.99.5.12", "10.99.5.11"], tables
    flows = [(CLIENT_IPS[i % 4], 23000 + i) for i in range(36)]
    picks = {}
    try:
        for lb in LBS:
            lab.pin_route(VIP_L3, lb)
            picks[lb] = [who_from(ip, port, VIP_L3) for ip, port in flows]
            seen = lab.flows(lb, VIP_L3)
            assert all(f in seen for f in flows), f"not all flows went through {lb}"
    finally:
        lab.pin_route(VIP_L3, None)
    assert picks[LBS[0]] == picks[LBS[1]] == picks[LBS[2]], picks
    assert set(picks[LBS[0]]) == set(SERVERS)
    record("same server on every lb", {"flows": len(flows), "servers": dict(Counter(picks[LBS[0]]))})


# -- 5 ---------------------------------------------------------------------------------------

BAD = [
    ("local_as: 65001", "local_as: 4294967296", "$.bgp.local_as", "4294967296 is too large (allowed: 1..4294967295)"),
    ("address: 10.99.4.1", "address: 10.99.4.2", "$.bgp.neighbors[0].address",
     "neighbor 10.99.4.2 is this LB itself"),
    ("announce: healthy", "announce: sometimes", "$.bgp.announce", "unknown value 'sometimes'"),
    ("scheduler: mh-port", "scheduler: sh", "$.services[0].scheduler", "scheduler sh cannot keep a flow"),
    ("nat_mode: l3-dsr", "nat_mode: dest-nat", "$.services[0].nat_mode", "no shared return path"),
]


def kernel_view(lab: BgpLab, lb: str) -> tuple:
    bird = lab.bird_dir(lb)
    return (run(["ipvsadm", "-Sn"], ns=lb).stdout, run(["nft", "list", "ruleset"], ns=lb).stdout,
            run(["ip", "-n", lb, "addr", "show", "dev", "pask0"]).stdout,
            run(["sysctl", "-a", "--pattern", "net.ipv4.vs"], ns=lb).stdout.replace("\n", " "),
            (bird / "bird.conf").read_text(), (bird / "announce.conf").read_text(),
            (bird / "bird.pid").read_text())


@pytest.mark.parametrize("old, new, path, words", BAD, ids=[b[2] for b in BAD])
def test_bad_bgp_input_fails_with_its_line_and_changes_nothing(net, old, new, path, words):
    lab = net
    lb = LBS[0]
    good = yaml_text(lb_config(lb, services(), announce="healthy"))
    assert old in good, good
    before = kernel_view(lab, lb), lab.next_hops(VIP_L3)
    cp = lab.apply(lb, good.replace(old, new, 1), expect=1)
    line = next((i for i, text in enumerate(good.replace(old, new, 1).splitlines(), 1) if new in text), None)
    assert f"{cp.config_path}:{line}: {path}: " in cp.stderr and words in cp.stderr, cp.stderr
    assert "nothing was changed" in cp.stderr
    assert (kernel_view(lab, lb), lab.next_hops(VIP_L3)) == before
