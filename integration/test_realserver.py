"""`pask realserver` on a real kernel: real servers prepared ONLY by `pask realserver up`
(run in each real server's namespace) receive L2 DSR and L3 DSR traffic through
the load balancer; a second run changes nothing; `down` undoes it.

The load balancer is programmed with ipvsadm directly (-g / -i), so this tests
the real-server side alone; pask-apply's own DSR path is tested elsewhere.
"""

from __future__ import annotations

import json
import subprocess
from collections import Counter
from pathlib import Path

import pytest

from lab import (
    CLIENT, CLIENT_IP, DSR_PORT, LB, SERVERS, VIP, VIP2, HttpError, Lab, http_get, realserver, run,
    sysctl, sysctls, who,
)

USED = ("rs1", "rs2")
RS_KEYS = ("net.ipv4.conf.all.arp_ignore", "net.ipv4.conf.all.arp_announce",
           "net.ipv4.conf.lo.arp_ignore", "net.ipv4.conf.lo.arp_announce",
           "net.ipv4.conf.all.rp_filter")
DEAD_TIMEOUT = 4.0       # a request that must fail: how long to wait for it


def up(ns: str, vip: str, mode: str, *flags: str) -> subprocess.CompletedProcess:
    return realserver(ns, "up", "--vip", vip, "--mode", mode, "--detailed-exitcode", *flags)


def addresses(ns: str, dev: str) -> set[str]:
    out = run(["ip", "-j", "-4", "addr", "show", "dev", dev], ns=ns, check=False).stdout or "[]"
    return {f"{a['local']}/{a['prefixlen']}" for link in json.loads(out) for a in link.get("addr_info", [])}


def ask(vip: str, n: int) -> Counter:
    """``n`` requests from the client to ``vip``:80; each answer must show the client's own IP
    (DSR: the real server sees the client, no NAT)."""
    seen: Counter = Counter()
    for _ in range(n):
        name, peer = who(CLIENT, vip, DSR_PORT)
        assert peer == CLIENT_IP, f"{name} saw {peer}, not the client {CLIENT_IP}: not DSR"
        seen[name] += 1
    return seen


def assert_no_answer(vip: str) -> None:
    with pytest.raises(HttpError):
        http_get(CLIENT, vip, DSR_PORT, timeout=DEAD_TIMEOUT)


def program_lb(lab: Lab, vip: str, fwd: str) -> None:
    """IPVS service vip:80 over rs1, rs2 with ``fwd`` (-g direct routing, -i ipip)."""
    lab.add_vip(vip)
    sysctls(LB, {"net.ipv4.ip_forward": 1, "net.ipv4.conf.all.accept_local": 1})
    lab.ipvsadm("-A", "-t", f"{vip}:{DSR_PORT}", "-s", "rr")
    for ns in USED:
        lab.ipvsadm("-a", "-t", f"{vip}:{DSR_PORT}", "-r", f"{SERVERS[ns]}:{DSR_PORT}", fwd, "-w", "1")


@pytest.fixture(scope="module")
def servers_restored(lab: Lab):
    """Leave the real servers as this module found them (VIPs, sysctls, ipip loaded)."""
    saved = {ns: {k: sysctl(ns, k) for k in RS_KEYS} for ns in SERVERS}
    yield lab
    subprocess.run(["modprobe", "ipip"], capture_output=True)
    for ns in SERVERS:
        for vip in (VIP, VIP2):
            for dev in ("lo", "tunl0"):
                run(["ip", "-n", ns, "addr", "del", f"{vip}/32", "dev", dev], check=False)
        sysctls(ns, saved[ns])


@pytest.fixture
def dsr_lb(servers_restored: Lab, lb: Lab) -> Lab:
    return lb


def test_l2_dsr_real_servers_prepared_by_pask_realserver(dsr_lb: Lab):
    program_lb(dsr_lb, VIP, "-g")
    assert_no_answer(VIP)   # without the VIP on lo the real servers drop the packets

    for ns in USED:
        cp = up(ns, VIP, "l2-dsr", "--format", "json")
        assert cp.returncode == 2, cp.stderr + cp.stdout
        report = json.loads(cp.stdout)
        assert report["verified"] is True and report["errors"] == []
        assert {"action": "add", "kind": "address", "key": f"{VIP}/32 dev lo"} in [
            {k: op[k] for k in ("action", "kind", "key")} for op in report["ops"]]
        assert f"{VIP}/32" in addresses(ns, "lo")
        assert sysctl(ns, "net.ipv4.conf.all.arp_ignore") == "1"
        assert sysctl(ns, "net.ipv4.conf.all.arp_announce") == "2"
        assert sysctl(ns, "net.ipv4.conf.lo.arp_ignore") == "1"

    seen = ask(VIP, 6)
    assert set(seen) == set(USED), seen
    assert "Route" in dsr_lb.ipvsadm("-Ln").stdout

    cp = up("rs1", VIP, "l2-dsr")   # second run: nothing to do, and it says so
    assert cp.returncode == 0, cp.stderr + cp.stdout
    assert cp.stdout.startswith("No changes: this real server is ready for l2-dsr"), cp.stdout

    dry = up("rs3", VIP, "l2-dsr", "--dry-run")   # rs3 is not prepared: a plan, and no change
    assert dry.returncode == 2 and f"+ address {VIP}/32 dev lo" in dry.stdout, dry.stdout
    assert f"{VIP}/32" not in addresses("rs3", "lo")

    for ns in USED:
        cp = realserver(ns, "down", "--vip", VIP, "--detailed-exitcode")
        assert cp.returncode == 2, cp.stderr + cp.stdout
        assert f"- address {VIP}/32 dev lo" in cp.stdout and "Left as they are" in cp.stdout
        assert f"{VIP}/32" not in addresses(ns, "lo")
        assert sysctl(ns, "net.ipv4.conf.all.arp_ignore") == "1"   # down leaves sysctls
    again = realserver("rs1", "down", "--vip", VIP, "--detailed-exitcode")
    assert again.returncode == 0, again.stderr + again.stdout
    assert_no_answer(VIP)


def test_l3_dsr_real_servers_prepared_by_pask_realserver(dsr_lb: Lab):
    program_lb(dsr_lb, VIP2, "-i")
    # Unload ipip (a module, not built in, in the test VM's kernel), so that `up`
    # must load it itself; the module fixture loads it again at the end.
    unloaded = False
    if Path("/sys/module/ipip/initstate").exists():
        rm = subprocess.run(["modprobe", "-r", "ipip"], capture_output=True, text=True)
        assert rm.returncode == 0, f"cannot unload ipip to test its loading: {rm.stderr}"
        unloaded = True
        assert "tunl0" not in run(["ip", "-n", "rs1", "link"]).stdout

    for ns in USED:
        cp = up(ns, VIP2, "l3-dsr", "--format", "json")
        assert cp.returncode == 2, cp.stderr + cp.stdout
        report = json.loads(cp.stdout)
        assert report["verified"] is True, report
        kinds = [(op["kind"], op["key"]) for op in report["ops"]]
        if unloaded and ns == USED[0]:
            assert kinds[0] == ("module", "ipip"), kinds
        assert ("address", f"{VIP2}/32 dev tunl0") in kinds
        assert f"{VIP2}/32" in addresses(ns, "tunl0")
        assert sysctl(ns, "net.ipv4.conf.tunl0.rp_filter") == "0"
        assert sysctl(ns, "net.ipv4.conf.all.rp_filter") == "0"
        assert "UP" in run(["ip", "-n", ns, "link", "show", "tunl0"]).stdout

    seen = ask(VIP2, 6)
    assert set(seen) == set(USED), seen
    assert "Tunnel" in dsr_lb.ipvsadm("-Ln").stdout

    cp = up("rs1", VIP2, "l3-dsr")
    assert cp.returncode == 0 and "No changes" in cp.stdout, cp.stderr + cp.stdout

    for ns in USED:
        cp = realserver(ns, "down", "--vip", VIP2, "--mode", "l3-dsr", "--detailed-exitcode")
        assert cp.returncode == 2, cp.stderr + cp.stdout
        assert f"{VIP2}/32" not in addresses(ns, "tunl0")
    assert_no_answer(VIP2)


def test_errors_are_clear(servers_restored: Lab):
    cp = realserver("rs3", "up", "--vip", "10.99.100.0/24", "--mode", "l2-dsr")
    assert cp.returncode == 1 and "not a network" in cp.stderr
    cp = realserver("rs3", "up", "--vip", VIP)
    assert cp.returncode == 1 and "--mode" in cp.stderr
