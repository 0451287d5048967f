"""The HA-pair lab proves itself without pask, keepalived or IPVS services.

If these pass and an HA test fails, the fault is in what runs on the LBs, not
in the rig: the topology (ha_lab.py), its failure knobs and the stream tool
(stream.py), which must report a clean stream as clean and a broken one as
broken.  The floating addresses are moved by hand here (``claim_floating``),
as keepalived would move them.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from typing import Iterator

import pytest

from ha_lab import (CLIENT, CLIENT_GW, CLIENT_IP, FLOATING, LB1, LB2, NODES, SERVER_GW, SERVERS, VIP,
                    HaLab, ping, stream_ask, tcp_reachable)
from lab import wait_for
from stream import STREAM_PORT, summary


@pytest.fixture(scope="module")
def ha() -> Iterator[HaLab]:
    lab = HaLab().up()
    try:
        yield lab
    finally:
        lab.down()


@pytest.fixture
def ha_clean(ha: HaLab) -> Iterator[HaLab]:
    """The lab with no floating address held and every LB link up, before and after."""
    for ns in NODES:
        ha.all_links_up(ns)
        ha.release_floating(ns, flush_neighbours=False)
    yield ha
    for ns in NODES:
        ha.all_links_up(ns)
        ha.release_floating(ns, flush_neighbours=False)


def test_nodes_hold_their_own_addresses_and_no_floating_one(ha_clean: HaLab) -> None:
    for n in NODES.values():
        assert {f"{n.client_ip}/24", f"{n.server_ip}/24", f"{n.peer_ip}/24"} <= ha_clean.addresses(n.ns)
        assert ha_clean.sysctl(n.ns, "net.ipv4.ip_forward") == "1"
        assert HaLab.node_ns(n.name) == n.ns == HaLab.node_ns(n.ns)
    for addr, _plen, _dev in FLOATING:
        assert ha_clean.holder_of(addr) is None
    assert HaLab.other("lb1") == LB2 and HaLab.other(LB2) == LB1


def test_client_reaches_both_lbs_on_eth0_and_the_peer_link_works(ha_clean: HaLab) -> None:
    for n in NODES.values():
        assert ping(CLIENT, n.client_ip), f"{CLIENT} cannot ping {n.ns} eth0 {n.client_ip}"
        assert tcp_reachable(CLIENT, n.client_ip), f"{CLIENT} gets no SYN answer from {n.client_ip}"
    assert ping(LB1, NODES[LB2].peer_ip) and ping(LB2, NODES[LB1].peer_ip)


def test_real_servers_answer_both_lbs_directly(ha_clean: HaLab) -> None:
    for lb in NODES:
        for name, ip in SERVERS.items():
            assert ping(lb, ip), f"{lb} cannot ping {name} {ip}"
            assert stream_ask(lb, ip) == name


def test_floating_addresses_route_the_client_through_the_holder(ha_clean: HaLab) -> None:
    ha = ha_clean
    assert not tcp_reachable(CLIENT, SERVERS["hrs1"], STREAM_PORT, timeout=2)   # no gateway yet
    for lb in (LB1, LB2):
        ha.claim_floating(lb)
        for addr, _plen, _dev in FLOATING:
            assert ha.holder_of(addr) == lb
        ha.wait_holder(VIP, lb, timeout=5)
        assert ping(CLIENT, CLIENT_GW) and ping("hrs2", SERVER_GW)
        assert stream_ask(CLIENT, SERVERS["hrs2"]) == "hrs2"       # routed via the holder
    ha.release_floating(LB2)
    ha.wait_holder(VIP, None, timeout=5)


def test_stream_to_a_real_server_is_clean(ha_clean: HaLab) -> None:
    ha_clean.claim_floating(LB1)
    stream = ha_clean.stream(connections=3, host=SERVERS["hrs1"], name="selfcheck", probe_interval=0.5)
    time.sleep(2.5)
    report = stream.stop()
    assert report["clean"], summary(report)
    assert report["servers"] == ["hrs1"], summary(report)
    for c in report["connections"]:
        assert c["sent"] >= 5 and c["answered"] == c["sent"], summary(report)
        assert not c["missing"] and not c["duplicates"] and c["error"] is None
        assert c["local"].startswith(CLIENT_IP + ":")
    assert report["probes"]["count"] >= 1 and report["probes"]["failed"] == 0, summary(report)


def test_stream_reports_a_server_that_goes_away(ha_clean: HaLab) -> None:
    """A stream that breaks must not read as clean: the server's end closes (EOF)."""
    ha_clean.claim_floating(LB1)
    stream = ha_clean.stream(connections=1, host=SERVERS["hrs3"], name="broken")
    try:
        time.sleep(1)
        ha_clean.stop_server("hrs3")
        time.sleep(1)
        report = stream.stop()
    finally:
        ha_clean.start_servers(["hrs3"])
    assert not report["clean"], summary(report)
    assert report["connections"][0]["error"] in ("eof", "reset"), summary(report)


def test_link_knobs_cut_and_restore_a_node(ha_clean: HaLab) -> None:
    ha = ha_clean
    ha.link_down(LB2, "eth1")
    assert not ping(LB2, SERVERS["hrs1"], timeout=2, count=2)
    assert ping(LB1, SERVERS["hrs1"])
    ha.link_up(LB2, "eth1")
    wait_for(lambda: ping(LB2, SERVERS["hrs1"], timeout=2), timeout=30, what="hlb2 eth1 back")
    ha.all_links_down(LB1)
    assert not ping(CLIENT, NODES[LB1].client_ip, timeout=2, count=2)
    assert not ping(LB2, NODES[LB1].peer_ip, timeout=2, count=2)
    assert ping(LB2, SERVERS["hrs1"])           # the other node's links are untouched (bridged peer link)
    ha.all_links_up(LB1)
    wait_for(lambda: ping(LB2, NODES[LB1].peer_ip, timeout=2), timeout=30, what="hlb1 links back")


def test_processes_are_found_by_namespace(ha_clean: HaLab) -> None:
    """What ``kill(node, "keepalived")`` relies on: a process is found by its namespace, not its name."""
    proc = subprocess.Popen(["ip", "netns", "exec", LB2, sys.executable, "-S", "-c", "import time; time.sleep(120)"])
    try:
        comm = wait_for(lambda: (c := _comm(proc.pid)) != "ip" and c, timeout=30, what="the sleeper to exec")
        assert proc.pid in ha_clean.pids(LB2, comm)
        assert proc.pid not in ha_clean.pids(LB1, comm)
        assert ha_clean.kill(LB2, comm, signal.SIGTERM) == [proc.pid]
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _comm(pid: int) -> str:
    with open(f"/proc/{pid}/comm", encoding="utf-8") as f:
        return f.read().strip()


def test_pask_apply_runs_per_node_with_its_own_state(ha_clean: HaLab) -> None:
    """pask-apply (no ``ha:`` here) on one node programs that node only, with that node's state file."""
    vip = "10.99.1.200"
    cfg = {"version": 1, "services": [{
        "name": "selfcheck", "vip": vip, "port": STREAM_PORT, "protocol": "tcp", "scheduler": "rr",
        "nat_mode": "dest-nat", "real_servers": [{"address": ip, "port": STREAM_PORT} for ip in SERVERS.values()]}]}
    try:
        ha_clean.pask_apply(LB2, cfg, expect=0)
        assert f"{vip}:{STREAM_PORT}" in ha_clean.ipvsadm(LB2, "-Ln").stdout
        assert f"{vip}:{STREAM_PORT}" not in ha_clean.ipvsadm(LB1, "-Ln").stdout
        assert ha_clean.state_file(LB2).exists() and not ha_clean.state_file(LB1).exists()
        assert ha_clean.state_file("lb2") == ha_clean.dir / LB2 / "state.json"
    finally:   # the lab's own namespace: a flush is fine here
        ha_clean.ipvsadm(LB2, "-C")
        ha_clean.nft(LB2, "flush", "ruleset")
        ha_clean.state_file(LB2).unlink(missing_ok=True)
        subprocess.run(["ip", "-n", LB2, "link", "del", "pask0"], capture_output=True)
