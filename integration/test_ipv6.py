"""IPv6 services carry real IPv6 traffic: each NAT mode through pask-apply, as
test_nat_modes.py proves them for IPv4, in the lab's IPv6 plan (fd00:99::/32).

The address a real server sees tells the mode: the client for Dest NAT and DSR,
snat_ip for Both NAT.  DSR replies must bypass the LB (IPVS OutPkts stay 0).
The DSR real servers are prepared only by `pask realserver up` (IPv6 VIP /128 on
lo, or on ip6tnl0 for ip6ip6), with the kernel's default accept_dad on them.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Iterator

import pytest

from lab import (
    CLIENT, CLIENT2_IP6, CLIENT_IP6, CLIENT_NET6, CLIENT_RETURN_IP6, DSR_PORT, LAN_CLIENT, LB,
    LB_LAN_IP6, SERVERS, UDP_PORT, VIP6, VIP_INTERFACE, HttpError, Lab, config, curl_vip,
    http_get, ip_batch, ipvs_stats, realserver, run, service, spread, sysctl, sysctls, udp_ask,
    wait_ipvs_stats, who,
)

EVEN_3 = {"rs1": 3, "rs2": 3, "rs3": 3}
DEAD_TIMEOUT = 4.0        # a request that must fail: how long to wait for it
FILTERED_PORT = 83

FILTERS = [
    {"action": "include", "protocol": "tcp", "src": "fd00:99:1::/64", "dst": f"{VIP6}/128",
     "dst_port": FILTERED_PORT},
    {"action": "exclude", "src": f"{CLIENT2_IP6}/128"},
]

NAT_MODES6 = config(
    service("dnat6", vip=VIP6, port=80, nat_mode="dest-nat"),
    service("bnat6", vip=VIP6, port=81, nat_mode="both-nat", snat_ip=LB_LAN_IP6),
    service("dns6", vip=VIP6, port=UDP_PORT, protocol="udp", nat_mode="dest-nat", server_port=UDP_PORT),
    service("filtered6", vip=VIP6, port=FILTERED_PORT, nat_mode="dest-nat", filters=FILTERS),
)


def peers(answers: list[tuple[str, str]]) -> set[str]:
    return {peer for _, peer in answers}


class TestNatModes6:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def applied(cls, lab: Lab) -> None:
        lab.reset_lb()
        sysctl(LB, "net.ipv6.conf.all.forwarding", 0)     # pask must turn it on for IPv6 services
        lab.apply(NAT_MODES6, expect=0)

    def test_vip6_is_on_the_vip_interface_and_forwarding_is_on(self) -> None:
        addrs = run(["ip", "-n", LB, "-o", "-6", "addr", "show", "dev", VIP_INTERFACE]).stdout
        assert f" {VIP6}/128 " in addrs, f"VIP6 not on {VIP_INTERFACE}: {addrs!r}"
        assert "tentative" not in addrs, addrs
        assert sysctl(LB, "net.ipv6.conf.all.forwarding") == "1"

    def test_dest_nat_spreads_rr_evenly_and_keeps_the_client_address(self) -> None:
        answers = curl_vip(CLIENT, VIP6, 80, 9)
        assert spread(answers) == EVEN_3, answers
        assert peers(answers) == {CLIENT_IP6}
        stats = wait_ipvs_stats(f"TCP [{VIP6}]:80", conns=9)
        assert stats.outpkts > 0, stats          # NAT: replies come back through IPVS

    def test_both_nat_servers_see_snat_ip(self) -> None:
        answers = curl_vip(CLIENT, VIP6, 81, 9)
        assert spread(answers) == EVEN_3, answers
        assert peers(answers) == {LB_LAN_IP6}

    def test_udp_service_balances_datagrams(self) -> None:
        answers = [udp_ask(CLIENT, VIP6, UDP_PORT) for _ in range(6)]
        assert spread(answers) == {"rs1": 2, "rs2": 2, "rs3": 2}, answers
        assert peers(answers) == {CLIENT_IP6}

    def test_filtered_service_takes_only_what_its_filters_allow(self) -> None:
        answers = curl_vip(CLIENT, VIP6, FILTERED_PORT, 6)
        assert spread(answers) == {"rs1": 2, "rs2": 2, "rs3": 2}, answers
        assert peers(answers) == {CLIENT_IP6}
        fwm = {k: v for k, v in ipvs_stats().items() if k.startswith("FWM ")}
        assert len(fwm) == 1 and next(iter(fwm)).endswith(" IPv6"), fwm   # an IPv6 fwmark service
        assert f"TCP [{VIP6}]:{FILTERED_PORT}" not in ipvs_stats()
        with pytest.raises(HttpError):           # excluded source: not marked, nobody serves it
            http_get(CLIENT, VIP6, FILTERED_PORT, src=CLIENT2_IP6, timeout=DEAD_TIMEOUT)
        name, peer = who(CLIENT, VIP6, 80, src=CLIENT2_IP6)   # the exclude is that service's only
        assert peer == CLIENT2_IP6 and name in SERVERS
        (key,) = fwm
        assert wait_ipvs_stats(key, conns=6).conns == 6        # the excluded try never reached IPVS


# ---- DSR, real servers prepared by `pask realserver` -----------------------------------
def addresses6(ns: str, dev: str) -> dict[str, list[str]]:
    """IPv6 addresses of ``dev``: "addr/plen" -> flags (tentative, nodad, ...)."""
    out = run(["ip", "-j", "-6", "addr", "show", "dev", dev], ns=ns, check=False).stdout or "[]"
    return {f"{a['local']}/{a['prefixlen']}": [k for k, v in a.items() if v is True]
            for link in json.loads(out) for a in link.get("addr_info", [])}


@pytest.fixture(params=["l2-dsr", "l3-dsr"])
def dsr6(request: pytest.FixtureRequest, lb: Lab) -> Iterator[str]:
    """Real servers as a stock kernel has them (accept_dad=1), replies routed past the LB."""
    mode = request.param
    saved = {ns: {k: sysctl(ns, k) for k in ("net.ipv6.conf.all.accept_dad",
                                                 "net.ipv6.conf.default.accept_dad")} for ns in SERVERS}
    for ns in SERVERS:
        sysctls(ns, {"net.ipv6.conf.all.accept_dad": 1, "net.ipv6.conf.default.accept_dad": 1})
    if mode == "l3-dsr":   # `up` must load ip6_tunnel itself; ip6tnl0 then starts with accept_dad=1
        subprocess.run(["modprobe", "-r", "ip6_tunnel"], capture_output=True)
    for ns in SERVERS:
        ip_batch(ns, [f"route add {CLIENT_NET6} via {CLIENT_RETURN_IP6}"])   # replies bypass the LB
    try:
        yield mode
    finally:
        for ns in SERVERS:
            for dev in ("lo", "ip6tnl0"):
                run(["ip", "-n", ns, "addr", "del", f"{VIP6}/128", "dev", dev], check=False)
            run(["ip", "-n", ns, "-6", "route", "del", CLIENT_NET6], check=False)
            sysctls(ns, saved[ns])


def test_dsr6_servers_see_the_client_and_replies_bypass_the_lb(dsr6: str, lb: Lab) -> None:
    mode = dsr6
    dev = "lo" if mode == "l2-dsr" else "ip6tnl0"
    lb.apply(config(service(vip=VIP6, nat_mode=mode, server_port=None)), expect=0)   # DSR keeps port 80
    with pytest.raises(HttpError):       # real servers not prepared yet: they drop the VIP's packets
        http_get(CLIENT, VIP6, DSR_PORT, timeout=DEAD_TIMEOUT)

    must_load = mode == "l3-dsr" and not Path("/sys/module/ip6_tunnel").exists()
    for ns in SERVERS:
        cp = realserver(ns, "up", "--vip", VIP6, "--mode", mode, "--detailed-exitcode", "--format", "json")
        assert cp.returncode == 2, cp.stderr + cp.stdout
        report = json.loads(cp.stdout)
        assert report["verified"] is True and report["errors"] == [], report
        ops = [(op["kind"], op["key"]) for op in report["ops"]]
        if must_load and ns == "rs1":
            assert ops[0] == ("module", "ip6_tunnel"), ops
        assert ("address", f"{VIP6}/128 dev {dev}") in ops and "sysctl" not in {k for k, _ in ops}, ops
        flags = addresses6(ns, dev)
        assert f"{VIP6}/128" in flags and "tentative" not in flags[f"{VIP6}/128"], flags
    if mode == "l3-dsr":
        # default accept_dad was 1 when ip6tnl0 was created: the kernel sets -1 (no DAD) on it
        assert sysctl("rs1", "net.ipv6.conf.ip6tnl0.accept_dad") == "-1"

    answers = curl_vip(CLIENT, VIP6, DSR_PORT, 6)
    assert spread(answers) == {"rs1": 2, "rs2": 2, "rs3": 2}, answers
    assert peers(answers) == {CLIENT_IP6}
    stats = wait_ipvs_stats(f"TCP [{VIP6}]:80", conns=6)
    assert stats.outpkts == 0, f"{mode}: replies went through IPVS: {stats}"
    fwd = "Route" if mode == "l2-dsr" else "Tunnel"
    assert fwd in lb.ipvsadm("-Ln").stdout

    cp = realserver("rs1", "up", "--vip", VIP6, "--mode", mode, "--detailed-exitcode")
    assert cp.returncode == 0 and cp.stdout.startswith(f"No changes: this real server is ready for {mode}"), \
        cp.stderr + cp.stdout

    # No real server answers neighbour solicitations for the VIP: a LAN host that
    # thinks the VIP is on-link gets no neighbour for it (so no server steals it).
    ip_batch(LAN_CLIENT, [f"route add {VIP6}/128 dev eth0"])
    try:
        with pytest.raises(HttpError):
            http_get(LAN_CLIENT, VIP6, DSR_PORT, timeout=DEAD_TIMEOUT)
        neigh = run(["ip", "-n", LAN_CLIENT, "-6", "neigh", "show", VIP6]).stdout
        assert "lladdr" not in neigh, f"someone answered NS for {VIP6}: {neigh!r}"
    finally:
        run(["ip", "-n", LAN_CLIENT, "-6", "route", "del", f"{VIP6}/128"], check=False)

    for ns in SERVERS:
        cp = realserver(ns, "down", "--vip", VIP6, "--mode", mode, "--detailed-exitcode")
        assert cp.returncode == 2 and f"- address {VIP6}/128 dev {dev}" in cp.stdout, cp.stderr + cp.stdout
        assert f"{VIP6}/128" not in addresses6(ns, dev)
    with pytest.raises(HttpError):
        http_get(CLIENT, VIP6, DSR_PORT, timeout=DEAD_TIMEOUT)
