"""The lab proves itself without pask: plain ipvsadm / nft, real traffic.

If these pass and a pask test fails, the fault is pask's, not the rig's.
Each test sets up by hand exactly what the matching NAT mode needs
(docs/kernel-facts.md "LB sysctls", "L2 DSR real server", "L3 DSR real server",
"SNAT of IPVS NAT traffic", "Filters as fwmark services"), so these are also
the reference for what pask must do.
"""

from __future__ import annotations

import pytest

from lab import (CLIENT, CLIENT2_IP, CLIENT_IP, DSR_PORT, HTTP_PORT, LAN_CLIENT, LAN_CLIENT_IP,
                 LAN_NET, LB_LAN_IP, SERVERS, UDP_PORT, VIP, Lab, curl_cmd, curl_vip,
                 spread, udp_ask, wait_ipvs_stats, who)

ALL = set(SERVERS)


def nat_service(lab: Lab, proto: str = "-t", port: int = 80, rport: int = HTTP_PORT) -> None:
    lab.lb_sysctl("net.ipv4.ip_forward", 1)
    lab.add_vip()
    lab.ipvsadm("-A", proto, f"{VIP}:{port}", "-s", "rr")
    for ip in SERVERS.values():
        lab.ipvsadm("-a", proto, f"{VIP}:{port}", "-r", f"{ip}:{rport}", "-m")


def test_topology_routes_client_and_lan(lb: Lab) -> None:
    lb.lb_sysctl("net.ipv4.ip_forward", 1)
    for name, ip in SERVERS.items():
        assert who(CLIENT, ip, HTTP_PORT) == (name, CLIENT_IP)            # routed through the LB
        assert who(CLIENT, ip, DSR_PORT, src=CLIENT2_IP) == (name, CLIENT2_IP)
        assert who(LAN_CLIENT, ip, HTTP_PORT) == (name, LAN_CLIENT_IP)    # same LAN, bridged
    assert curl_cmd(CLIENT, f"http://{SERVERS['rs1']}:{HTTP_PORT}/").split() == ["rs1", CLIENT_IP]


def test_ipvs_nat_service_spreads_real_tcp_rr(lb: Lab) -> None:
    nat_service(lb)
    answers = curl_vip(CLIENT, VIP, 80, 9)
    assert spread(answers) == {"rs1": 3, "rs2": 3, "rs3": 3}, answers
    assert {peer for _, peer in answers} == {CLIENT_IP}
    assert curl_cmd(CLIENT, f"http://{VIP}/").split()[1] == CLIENT_IP      # the real curl too
    stats = wait_ipvs_stats(f"TCP {VIP}:80", conns=10)
    assert stats.conns == 10 and stats.outpkts > 0, stats                   # NAT: replies via IPVS


def test_ipvs_nat_udp(lb: Lab) -> None:
    nat_service(lb, proto="-u", port=UDP_PORT, rport=UDP_PORT)
    answers = [udp_ask(CLIENT, VIP, UDP_PORT) for _ in range(6)]
    assert spread(answers) == {"rs1": 2, "rs2": 2, "rs3": 2}, answers
    assert {peer for _, peer in answers} == {CLIENT_IP}


@pytest.mark.parametrize("mode,fwd", [("l2-dsr", "-g"), ("l3-dsr", "-i")])
def test_ipvs_dsr_replies_bypass_ipvs(lb: Lab, mode: str, fwd: str) -> None:
    lb.prepare_dsr(mode)
    try:
        lb.lb_sysctl("net.ipv4.ip_forward", 1)
        lb.lb_sysctl("net.ipv4.conf.all.accept_local", 1)   # replies with source = VIP come back through
        lb.add_vip()
        lb.ipvsadm("-A", "-t", f"{VIP}:80", "-s", "rr")
        for ip in SERVERS.values():
            lb.ipvsadm("-a", "-t", f"{VIP}:80", "-r", f"{ip}:{DSR_PORT}", fwd)
        answers = curl_vip(CLIENT, VIP, 80, 6)
        assert spread(answers) == {"rs1": 2, "rs2": 2, "rs3": 2}, answers
        assert {peer for _, peer in answers} == {CLIENT_IP}
        stats = wait_ipvs_stats(f"TCP {VIP}:80", conns=6)
        assert stats.conns == 6 and stats.outpkts == 0, stats                 # replies bypass the LB
    finally:
        lb.unprepare_dsr(mode)


def test_ipvs_nat_plus_nft_snat_both_nat_and_lan_to_lan(lb: Lab) -> None:
    nat_service(lb)
    lb.lb_sysctl("net.ipv4.vs.conntrack", 1)
    lb.nft("-f", "-", input=f"""
table ip labsnat {{
  chain post {{
    type nat hook postrouting priority srcnat; policy accept;
    ct original ip daddr {VIP} meta l4proto tcp ct original proto-dst 80 ip saddr {LAN_NET} snat ip to {VIP}
    ct original ip daddr {VIP} meta l4proto tcp ct original proto-dst 80 ip saddr {CLIENT2_IP} snat ip to {LB_LAN_IP}
  }}
}}
""")
    lan = curl_vip(LAN_CLIENT, VIP, 80, 3)          # LAN-to-LAN: the server sees the VIP
    assert {peer for _, peer in lan} == {VIP} and {name for name, _ in lan} == ALL, lan
    both = curl_vip(CLIENT, VIP, 80, 3, src=CLIENT2_IP)   # Both NAT: the server sees snat_ip
    assert {peer for _, peer in both} == {LB_LAN_IP}, both
    plain = curl_vip(CLIENT, VIP, 80, 3)            # an outside client keeps its address
    assert {peer for _, peer in plain} == {CLIENT_IP}, plain
