"""pask-healthd against a real kernel with real traffic (the IPVS VM lab).

A client keeps sending requests through the VIP while a real server's
listener is killed: the server's in-kernel weight must reach 0 within
interval x fall + 1 s, after which no client request fails; restarted, it
must be back after ``rise`` passed checks. With every enabled server down,
the backup (sorry) server answers. The weights are read from the kernel
(/proc/net/ip_vs of the LB namespace), never from pask's own files.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from lab import (CLIENT, HTTP_PORT, LB, ROOT, SERVERS, UDP_PORT, VIP, HttpError, Lab, config,
                 curl_cmd, in_netns, service, udp_ask, wait_for, who)

INTERVAL, TIMEOUT, RISE, FALL = 1.0, 0.5, 2, 3
# The contract: weight 0 within interval x fall + 1 s. PASK_LAB_HEALTH_SLACK adds time
# for a machine much slower than the test VM (never needed there so far).
SLACK = float(os.environ.get("PASK_LAB_HEALTH_SLACK", "0"))
DOWN_DEADLINE = INTERVAL * FALL + 1.0 + SLACK
UP_DEADLINE = INTERVAL * RISE + 1.0 + SLACK


def health(kind: str = "tcp", **extra) -> dict:
    return {"type": kind, "interval": INTERVAL, "timeout": TIMEOUT, "rise": RISE, "fall": FALL,
            **extra}


def yaml_text(cfg: dict) -> str:
    import yaml   # from the venv; only needed here
    return yaml.safe_dump(cfg, sort_keys=False)


def kernel_weights(vip: str = VIP, port: int = 80, proto: str = "TCP") -> dict[str, int]:
    """{real server ip: weight} of one service, read from the LB namespace's /proc/net/ip_vs."""
    want = f"{proto} {socket.inet_aton(vip).hex().upper()}:{port:04X}"
    with in_netns(LB):
        text = Path("/proc/thread-self/net/ip_vs").read_text()
    out, inside = {}, False
    for line in text.splitlines()[3:]:
        f = line.split()
        if f and f[0] in ("TCP", "UDP", "SCTP", "FWM"):
            inside = " ".join(f[:2]) == want
        elif inside and f and f[0] == "->":
            addr = socket.inet_ntoa(bytes.fromhex(f[1].split(":")[0]))
            out[addr] = int(f[3])
    return out


class Healthd:
    """pask-healthd running in the LB namespace on the lab's state and health files."""

    def __init__(self, lab: Lab, config_path: Path):
        self.lab = lab
        self.config_path = config_path
        self.log = lab.dir / "healthd.log"
        argv = ["ip", "netns", "exec", LB, sys.executable, "-m", "pask_ipvs.cli.healthd",
                "--state-file", str(lab.state_file), "--health-file", str(lab.health_file),
                str(config_path)]
        self.out = open(self.log, "w")
        self.proc = subprocess.Popen(argv, stdout=self.out, stderr=self.out, cwd=ROOT,
                                     start_new_session=True)

    def wait_ready(self, servers: int) -> None:
        """Until the daemon probes (it writes the health file when its loop starts)."""
        def ready() -> bool:
            assert self.proc.poll() is None, f"pask-healthd exited:\n{self.log.read_text()}"
            try:
                return len(json.loads(self.lab.health_file.read_text())["servers"]) == servers
            except (OSError, ValueError):
                return False
        wait_for(ready, what="pask-healthd to start probing")

    def events(self, name: str) -> list[dict]:
        lines = self.log.read_text().splitlines()
        return [e for e in (json.loads(l) for l in lines if l.startswith("{")) if e["event"] == name]

    def stop(self) -> int:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
        try:
            return self.proc.wait(timeout=30)
        finally:
            self.out.close()


@pytest.fixture
def healthd(lb: Lab):
    started: list[Healthd] = []

    def start(cfg: dict) -> Healthd:
        cp = lb.apply(cfg, expect=0)
        d = Healthd(lb, cp.config_path)
        started.append(d)
        d.wait_ready(sum(len(s["real_servers"]) for s in cfg["services"]))
        return d

    yield start
    for d in started:
        d.stop()
    for name in SERVERS:                     # every echo server back for the next test
        lb.health_down_file(name).unlink(missing_ok=True)
        if not lb.pidfile(name).exists():
            lb.start_server(name)


class ClientLoop:
    """Requests through the VIP, one new connection each, until stopped: (start time, answer)."""

    def __init__(self):
        self.results: list[tuple[float, str]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            t = time.monotonic()
            try:
                name, _ = who(CLIENT, VIP, 80)
            except HttpError as e:
                name = f"ERROR {e}"
            self.results.append((t, name))
            time.sleep(0.02)

    def stop(self) -> list[tuple[float, str]]:
        self._stop.set()
        self._thread.join(timeout=30)
        return self.results


def timed_wait(predicate, deadline: float, what: str) -> float:
    """Seconds until ``predicate`` holds, polled every 20 ms (lab.wait_for backs off to
    0.5 s, too coarse to time a 4 s contract); waits generously, asserts ``deadline``."""
    t0 = time.monotonic()
    while True:
        try:
            if predicate():
                break
        except (KeyError, OSError):      # the dest may be absent for a moment
            pass
        took = time.monotonic() - t0
        assert took < max(30.0, 5 * deadline), f"{what}: not within {took:.0f}s"
        time.sleep(0.02)
    took = time.monotonic() - t0
    assert took <= deadline, f"{what} took {took:.2f}s, the contract is {deadline:.1f}s"
    return took


def test_killed_server_leaves_within_interval_x_fall_and_comes_back_after_rise(lb, healthd):
    rs2 = SERVERS["rs2"]
    d = healthd(config(service(health=health(), on_failure="inhibit")))
    assert kernel_weights() == {ip: 1 for ip in SERVERS.values()}
    client = ClientLoop()
    try:
        wait_for(lambda: len(client.results) >= 5, what="the client loop to run")
        lb.stop_server("rs2")
        timed_wait(lambda: kernel_weights()[rs2] == 0, DOWN_DEADLINE, "rs2 to reach weight 0")
        drained_at = time.monotonic()
        wait_for(lambda: sum(t > drained_at for t, _ in client.results) >= 20,
                 what="20 requests after the drain")
        lb.start_server("rs2")
        timed_wait(lambda: kernel_weights()[rs2] == 1, UP_DEADLINE, "rs2 back at weight 1")
        back_at = time.monotonic()
        wait_for(lambda: any(t > back_at and n == "rs2" for t, n in client.results),
                 what="rs2 to answer again")
    finally:
        results = client.stop()
    after = [n for t, n in results if t > drained_at]
    assert not [n for n in after if n.startswith("ERROR")], f"requests failed after the drain: {after}"
    [down] = [e for e in d.events("transition") if e["new"] == "down"]
    assert down["server"] == f"{rs2}:{HTTP_PORT}" and down["service"] == "web"
    assert "connection refused" in down["detail"]
    assert json.loads(lb.health_file.read_text())["servers"][f"web/{rs2}:{HTTP_PORT}"]["up"] is True
    # SIGTERM: exit 0 and the kernel stays as it is
    before = kernel_weights()
    assert d.stop() == 0
    assert kernel_weights() == before


def test_backup_server_answers_when_all_enabled_servers_are_down(lb, healthd):
    cfg = config(service(health=health(), servers=("rs1", "rs2", "rs3")))
    cfg["services"][0]["real_servers"][2]["state"] = "backup"
    rs1, rs2, rs3 = SERVERS["rs1"], SERVERS["rs2"], SERVERS["rs3"]
    healthd(cfg)
    assert kernel_weights() == {rs1: 1, rs2: 1, rs3: 0}
    lb.stop_server("rs1")
    lb.stop_server("rs2")
    timed_wait(lambda: kernel_weights() == {rs1: 0, rs2: 0, rs3: 1}, DOWN_DEADLINE,
               "the sorry server to take over")
    assert {who(CLIENT, VIP, 80)[0] for _ in range(6)} == {"rs3"}
    lb.start_server("rs1")
    timed_wait(lambda: kernel_weights() == {rs1: 1, rs2: 0, rs3: 0}, UP_DEADLINE,
               "rs1 back and the sorry server aside")
    assert {who(CLIENT, VIP, 80)[0] for _ in range(6)} == {"rs1"}


def test_http_check_with_remove_and_a_dead_udp_server(lb, healthd):
    """Two services under one daemon: an HTTP check that fails on a 503 while the
    listener lives (on_failure: remove), and a UDP check that needs a reply, so a
    stopped server (ICMP port unreachable) goes to weight 0."""
    rs1, rs3 = SERVERS["rs1"], SERVERS["rs3"]
    healthd(config(
        service(health=health("http", path="/healthz", expect_status=[200]), on_failure="remove"),
        service("dns", port=53, protocol="udp", server_port=UDP_PORT,
                health=health("udp", payload="who\n", expect="^rs[0-9] "))))
    assert kernel_weights(port=53, proto="UDP") == {ip: 1 for ip in SERVERS.values()}

    lb.health_down_file("rs3").touch()
    timed_wait(lambda: rs3 not in kernel_weights(), DOWN_DEADLINE, "rs3 to be removed")
    assert "rs3" not in {who(CLIENT, VIP, 80)[0] for _ in range(6)}
    assert kernel_weights(port=53, proto="UDP")[rs3] == 1       # its UDP side is fine
    lb.health_down_file("rs3").unlink()
    timed_wait(lambda: kernel_weights().get(rs3) == 1, UP_DEADLINE, "rs3 to be added back")

    lb.stop_server("rs1")
    timed_wait(lambda: kernel_weights(port=53, proto="UDP")[rs1] == 0, DOWN_DEADLINE,
               "the dead UDP server to reach weight 0")
    assert {udp_ask(CLIENT, VIP, 53)[0] for _ in range(6)} <= {"rs2", "rs3"}


def test_sighup_applies_an_edited_weight_then_repairs_drift_elsewhere(lb, healthd):
    """keepalived's way of changing one server: edit the file, SIGHUP the daemon. The
    edited service is written at once (real traffic follows it); drift in another
    service, made by hand, is found after that by the kernel's fingerprints and repaired."""
    rs1, rs2 = SERVERS["rs1"], SERVERS["rs2"]
    cfg = config(service(health=health()),
                 service("dns", port=53, protocol="udp", server_port=UDP_PORT,
                         health=health("udp", payload="who\n", expect="^rs[0-9] ")))
    d = healthd(cfg)
    assert kernel_weights() == {ip: 1 for ip in SERVERS.values()}
    lb.ipvsadm("-e", "-u", f"{VIP}:53", "-r", f"{rs1}:{UDP_PORT}", "-m", "-w", "9")   # by hand
    cfg["services"][0]["real_servers"][1]["weight"] = 0                              # rs2: drain
    d.config_path.write_text(yaml_text(cfg))
    os.kill(d.proc.pid, signal.SIGHUP)
    wait_for(lambda: kernel_weights()[rs2] == 0, what="rs2 at weight 0 after SIGHUP")
    assert "rs2" not in {who(CLIENT, VIP, 80)[0] for _ in range(6)}
    wait_for(lambda: kernel_weights(port=53, proto="UDP")[rs1] == 1, what="the drift repaired")
    [reload] = d.events("reload")
    assert reload["changed"] == 1
    [drift] = d.events("drift")
    assert drift["services"] == ["dns"]
    ops = [e["op"] for e in d.events("kernel")]
    assert ops == [f"~ dest web {VIP}:80/tcp -> {rs2}:{HTTP_PORT} weight 1 -> 0",
                   f"~ dest dns {VIP}:53/udp -> {rs1}:{UDP_PORT} weight 9 -> 1  (drift)"], ops
    assert kernel_weights() == {rs1: 1, rs2: 0, SERVERS["rs3"]: 1}


METRICS = "127.0.0.1:9640"      # the LB namespace's own loopback


def scrape(ns: str = LB) -> dict[str, list[tuple[dict, float]]]:
    """pask-healthd's /metrics read by curl inside ``ns``, parsed by prometheus-client:
    sample name -> [(labels, value)]."""
    from prometheus_client.parser import text_string_to_metric_families

    out: dict[str, list[tuple[dict, float]]] = {}
    for family in text_string_to_metric_families(curl_cmd(ns, f"http://{METRICS}/metrics")):
        for s in family.samples:
            out.setdefault(s.name, []).append((s.labels, s.value))
    return out


def per_server(samples, name: str, **labels) -> dict[str, float]:
    """{real server ip: value} of one metric, filtered by ``labels``."""
    return {lab["real_server"]: v for lab, v in samples.get(name, [])
            if all(lab.get(k) == str(x) for k, x in labels.items())}


def test_metrics_count_the_traffic_and_show_a_dead_server_down(lb, healthd):
    """A scrape while real requests pass: IPVS's own counters move by what was sent, and
    a stopped server's pask_real_server_up and weight drop to 0."""
    rs2 = SERVERS["rs2"]
    t0 = time.time()
    d = healthd(config(service(health=health()), metrics={"listen": METRICS}))

    def scraped():
        try:
            return scrape()
        except subprocess.CalledProcessError:
            assert d.proc.poll() is None, f"pask-healthd exited:\n{d.log.read_text()}"
            return None
    before = wait_for(scraped, what="pask-healthd to serve /metrics")
    web = dict(service="web", vip=VIP, port=80, protocol="tcp")
    assert per_server(before, "pask_real_server_up", **web) == {ip: 1 for ip in SERVERS.values()}
    assert per_server(before, "pask_real_server_weight", **web) == {ip: 1 for ip in SERVERS.values()}
    [(_, applied)] = before["pask_apply_last_success_timestamp_seconds"]
    assert t0 - 120 < applied <= time.time()

    answers = [who(CLIENT, VIP, 80)[0] for _ in range(9)]
    assert sorted(answers) == sorted(["rs1", "rs2", "rs3"] * 3)         # rr: 3 each

    def service_total(samples) -> float:
        [value] = [v for lab, v in samples["pask_service_connections_total"] if lab["service"] == "web"]
        return value

    def moved():
        """Both counts caught up: IPVS folds its per-CPU counters into what a dump shows
        every 2 s, and a scrape reads the service and its servers in separate dumps, so a
        fold can land between them."""
        now = scrape()
        conns = per_server(now, "pask_real_server_connections_total", **web)
        old = per_server(before, "pask_real_server_connections_total", **web)
        servers_moved = all(conns[ip] - old[ip] == 3 for ip in SERVERS.values())
        return now if servers_moved and service_total(now) - service_total(before) == 9 else None
    after = wait_for(moved, what="3 new connections counted on each real server, 9 on the service")
    for name in ("pask_real_server_packets_total", "pask_real_server_bytes_total"):
        for direction in ("in", "out"):
            grew = {ip: per_server(after, name, direction=direction, **web)[ip]
                    - per_server(before, name, direction=direction, **web)[ip] for ip in SERVERS.values()}
            assert all(v > 0 for v in grew.values()), (name, direction, grew)

    lb.stop_server("rs2")
    wait_for(lambda: per_server(scrape(), "pask_real_server_up", **web)[rs2] == 0,
             what="pask_real_server_up of rs2 to drop to 0")
    down = scrape()
    assert per_server(down, "pask_real_server_weight", **web)[rs2] == 0
    assert kernel_weights()[rs2] == 0
    assert per_server(down, "pask_health_transitions_total", to="down") == {rs2: 1}
    assert [v for lab, v in down["pask_service_real_servers_up"] if lab["service"] == "web"] == [2]
    assert d.stop() == 0
