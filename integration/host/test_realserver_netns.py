"""`pask realserver` with the real backend, in a network namespace of this host (root;
no IPVS needed, so no VM)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from pask_ipvs.realserver import required_sysctls

VIP = "10.99.100.1"


def _netns_realserver(ns: str, *args: str) -> subprocess.CompletedProcess:
    root = Path(__file__).resolve().parents[2]
    return subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-m", "pask_ipvs.cli", "realserver",
                           *args], capture_output=True, text=True, timeout=120, cwd=root)


@pytest.fixture
def fresh_netns():
    if os.geteuid() != 0:
        pytest.fail("this test needs root (it creates a network namespace): run the suite as root")
    ns = f"pask-rs-{os.getpid()}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def _ns_sysctl(ns: str, key: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, "cat", "/proc/sys/" + key.replace(".", "/")],
                          capture_output=True, text=True, check=True).stdout.strip()


def _ns_addrs(ns: str, dev: str, family: str = "-4") -> set[str]:
    out = subprocess.run(["ip", "-n", ns, "-j", family, "addr", "show", "dev", dev],
                         capture_output=True, text=True, check=True).stdout
    return {f"{a['local']}/{a['prefixlen']}" for link in json.loads(out or "[]")
            for a in link.get("addr_info", [])}


@pytest.mark.netns
def test_linux_host_l2_dsr_in_a_network_namespace(fresh_netns):
    ns = fresh_netns
    cp = _netns_realserver(ns, "up", "--vip", VIP, "--mode", "l2-dsr", "--detailed-exitcode")
    assert cp.returncode == 2, cp.stderr + cp.stdout
    assert "~ link lo down -> up" in cp.stdout and "Applied and verified" in cp.stdout
    assert f"{VIP}/32" in _ns_addrs(ns, "lo")
    for key, value in required_sysctls("l2-dsr").items():
        assert _ns_sysctl(ns, key) == value, key

    again = _netns_realserver(ns, "up", "--vip", VIP, "--mode", "l2-dsr", "--detailed-exitcode")
    assert again.returncode == 0 and again.stdout.startswith("No changes"), again.stderr + again.stdout

    down = _netns_realserver(ns, "down", "--vip", VIP, "--detailed-exitcode", "--format", "json")
    assert down.returncode == 2, down.stderr + down.stdout
    assert json.loads(down.stdout)["verified"] is True
    assert f"{VIP}/32" not in _ns_addrs(ns, "lo")
    assert _ns_sysctl(ns, "net.ipv4.conf.all.arp_ignore") == "1"     # down leaves sysctls


@pytest.mark.netns
def test_linux_host_l3_dsr_without_changing_this_hosts_kernel(fresh_netns):
    """Loading ipip is global (it adds tunl0 to every namespace, the host's too), so
    here it is only planned; a kernel that cannot load it gives the clear error."""
    ns = fresh_netns
    dry = _netns_realserver(ns, "up", "--vip", VIP, "--mode", "l3-dsr", "--dry-run", "--format", "json")
    assert dry.returncode == 0, dry.stderr + dry.stdout
    kinds = [(op["kind"], op["key"]) for op in json.loads(dry.stdout)["ops"]]
    assert ("address", f"{VIP}/32 dev tunl0") in kinds
    loaded = os.path.isdir("/sys/module/ipip")
    assert (("module", "ipip") in kinds) is (not loaded)
    loadable = subprocess.run(["modprobe", "-n", "-q", "ipip"], capture_output=True).returncode == 0
    if not loaded and not loadable:
        cp = _netns_realserver(ns, "up", "--vip", VIP, "--mode", "l3-dsr")
        assert cp.returncode == 1
        assert "modprobe ipip" in cp.stderr and "l3-dsr needs the ipip module" in cp.stderr, cp.stderr
        assert _ns_addrs(ns, "lo") == set()


@pytest.mark.netns
def test_linux_host_ipv6_l2_dsr_in_a_network_namespace(fresh_netns):
    """An IPv6 VIP: /128 on lo, no sysctl (traffic: integration/test_ipv6.py)."""
    ns, vip6 = fresh_netns, "fd00:99:100::1"
    cp = _netns_realserver(ns, "up", "--vip", vip6, "--mode", "l2-dsr", "--detailed-exitcode",
                           "--format", "json")
    assert cp.returncode == 2, cp.stderr + cp.stdout
    report = json.loads(cp.stdout)
    assert report["verified"] is True
    assert [(op["kind"], op["key"]) for op in report["ops"]] == [
        ("link", "lo"), ("address", f"{vip6}/128 dev lo")]
    assert f"{vip6}/128" in _ns_addrs(ns, "lo", "-6")
    assert _ns_sysctl(ns, "net.ipv4.conf.all.arp_ignore") == "0"      # IPv6 needs no ARP settings
    again = _netns_realserver(ns, "up", "--vip", vip6, "--mode", "l2-dsr", "--detailed-exitcode")
    assert again.returncode == 0 and again.stdout.startswith("No changes"), again.stderr + again.stdout
    down = _netns_realserver(ns, "down", "--vip", vip6, "--detailed-exitcode")
    assert down.returncode == 2 and f"- address {vip6}/128 dev lo" in down.stdout, down.stderr + down.stdout
    assert f"{vip6}/128" not in _ns_addrs(ns, "lo", "-6")
