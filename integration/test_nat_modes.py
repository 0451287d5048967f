"""Each NAT mode through pask-apply, proven with real traffic.

The address a real server sees tells which NAT mode is really in effect:
the client for Dest NAT and DSR, snat_ip for Both NAT, the VIP for a LAN
client under LAN-to-LAN.  DSR replies must bypass the LB: IPVS counts no
packets out.  (test_lab_selfcheck.py proves the same topology with plain
ipvsadm/nft, so a failure here is pask's.)
"""

from __future__ import annotations

import subprocess
from typing import Iterator

import pytest

from lab import (CLIENT, CLIENT_IP, LAN_CLIENT, LAN_NET, LB, LB_LAN_IP, UDP_PORT, VIP,
                 VIP_INTERFACE, Lab, config, curl_vip, service, spread, udp_ask, wait_ipvs_stats)

EVEN_3 = {"rs1": 3, "rs2": 3, "rs3": 3}


def peers(answers: list[tuple[str, str]]) -> set[str]:
    return {peer for _, peer in answers}


# The NAT (non-DSR) modes side by side in one config, one port each: one apply,
# and a rule of one service that matched another's traffic would show here.
NAT_MODES = config(
    service("dnat", port=80, nat_mode="dest-nat"),
    service("bnat", port=81, nat_mode="both-nat", snat_ip=LB_LAN_IP),
    service("l2l", port=82, nat_mode="lan-to-lan", local_networks=[LAN_NET]),
    service("dns", port=UDP_PORT, protocol="udp", nat_mode="dest-nat", server_port=UDP_PORT),
)


class TestNatModes:
    @pytest.fixture(scope="class", autouse=True)
    @classmethod
    def applied(cls, lab: Lab) -> None:
        lab.reset_lb()
        lab.apply(NAT_MODES, expect=0)

    def test_vip_is_on_the_vip_interface(self) -> None:
        addrs = subprocess.run(["ip", "-n", LB, "-o", "addr", "show", "dev", VIP_INTERFACE],
                               capture_output=True, text=True).stdout
        assert f" {VIP}/" in addrs, f"VIP not on {VIP_INTERFACE}: {addrs!r}"

    def test_dest_nat_spreads_rr_evenly_and_keeps_the_client_address(self) -> None:
        answers = curl_vip(CLIENT, VIP, 80, 9)
        assert spread(answers) == EVEN_3, answers
        assert peers(answers) == {CLIENT_IP}
        stats = wait_ipvs_stats(f"TCP {VIP}:80", conns=9)
        assert stats.outpkts > 0, stats          # NAT: replies come back through IPVS

    def test_both_nat_servers_see_snat_ip(self) -> None:
        answers = curl_vip(CLIENT, VIP, 81, 9)
        assert spread(answers) == EVEN_3, answers
        assert peers(answers) == {LB_LAN_IP}

    def test_lan_to_lan_lan_client_is_seen_as_vip_outside_client_as_itself(self) -> None:
        lan = curl_vip(LAN_CLIENT, VIP, 82, 6)
        assert peers(lan) == {VIP}, lan          # so replies return through the LB
        assert set(spread(lan)) == {"rs1", "rs2", "rs3"}, lan
        outside = curl_vip(CLIENT, VIP, 82, 3)
        assert peers(outside) == {CLIENT_IP}, outside

    def test_udp_service_balances_datagrams(self) -> None:
        answers = [udp_ask(CLIENT, VIP, UDP_PORT) for _ in range(6)]
        assert spread(answers) == {"rs1": 2, "rs2": 2, "rs3": 2}, answers
        assert peers(answers) == {CLIENT_IP}


@pytest.fixture(params=["l2-dsr", "l3-dsr"])
def dsr_mode(request: pytest.FixtureRequest, lb: Lab) -> Iterator[str]:
    """Real servers prepared for the mode (VIP on lo / tunl0), undone afterwards."""
    lb.prepare_dsr(request.param)
    try:
        yield request.param
    finally:
        lb.unprepare_dsr(request.param)


def test_dsr_servers_see_the_client_and_replies_bypass_the_lb(dsr_mode: str, lb: Lab) -> None:
    lb.apply(config(service(nat_mode=dsr_mode, server_port=None)), expect=0)   # DSR keeps port 80
    answers = curl_vip(CLIENT, VIP, 80, 6)
    assert spread(answers) == {"rs1": 2, "rs2": 2, "rs3": 2}, answers
    assert peers(answers) == {CLIENT_IP}
    stats = wait_ipvs_stats(f"TCP {VIP}:80", conns=6)
    assert stats.outpkts == 0, f"{dsr_mode}: replies went through IPVS: {stats}"
