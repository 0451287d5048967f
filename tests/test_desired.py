"""expand(): PAS-K concepts -> kernel objects (docs/design.md "Mapping")."""

import pytest

from builders import config, include, rs, svc
from pask_ipvs.desired import effective_weights, expand
from pask_ipvs.health_file import health_key
from pask_ipvs.objects import FWD_MASQ, FWD_ROUTE, FWD_TUNNEL, DestKey, ServiceKey, VipAddress

KEY = ServiceKey.virtual("tcp", "10.99.100.1", 80)


@pytest.mark.parametrize("mode,fwd", [("dest-nat", FWD_MASQ), ("both-nat", FWD_MASQ),
                                      ("lan-to-lan", FWD_MASQ), ("l2-dsr", FWD_ROUTE),
                                      ("l3-dsr", FWD_TUNNEL)])
def test_nat_mode_sets_forwarding_method(mode, fwd):
    extra = {"snat_ip": "10.99.2.1"} if mode == "both-nat" else {}
    if mode == "lan-to-lan":
        extra = {"local_networks": ["10.99.2.0/24"]}
    d = expand(config(svc(mode=mode, **extra)), {})
    assert {x.fwd for x in d.dests.values()} == {fwd}


def test_plain_service_is_vip_port_proto_with_defaults():
    d = expand(config(svc(port=80, servers=[rs("10.99.2.11", 8080, 3)])), {})
    assert list(d.services) == [KEY]
    s = d.services[KEY]
    assert (s.scheduler, s.flags, s.timeout, s.netmask) == ("rr", frozenset(), 0, 32)
    dest = d.dests[DestKey(KEY, "10.99.2.11", 8080)]
    assert (dest.weight, dest.fwd) == (3, FWD_MASQ)
    assert d.owners == {KEY: "web"}
    assert d.vips == {VipAddress("pask0", "10.99.100.1", 32)}
    assert d.nft is None            # no filters, no SNAT: nothing for nftables


def test_sh_port_is_sh_with_flag_and_persistence_sets_flag_and_mask():
    d = expand(config(svc(sched="sh-port", persistence=(300, "255.255.255.0"))), {})
    s = d.services[KEY]
    assert s.scheduler == "sh"
    assert s.flags == {"sh-port", "persistent"}
    assert (s.timeout, s.netmask) == (300, 24)
    assert d.schedulers == {"sh"}


def test_filtered_service_becomes_fwmark_service_and_keeps_packet_port_by_default():
    s = svc(filters=[include(src="10.99.1.0/24")],
            servers=[rs("10.99.2.11", 80, explicit=False), rs("10.99.2.12", 8080)])
    d = expand(config(s), {"web": 0x10000})
    key = ServiceKey.mark(0x10000, 4)
    assert list(d.services) == [key]
    ports = sorted(k.port for k in d.dests)
    assert ports == [0, 8080]       # defaulted port -> 0 (kept); explicit port -> rewritten
    assert d.nft is not None


def test_sysctls_follow_the_modes_in_use():
    assert expand(config(svc()), {}).sysctls == {
        "net.ipv4.ip_forward": "1", "net.ipv4.vs.expire_nodest_conn": "1"}
    both = expand(config(svc(mode="both-nat", snat_ip="10.99.2.1")), {}).sysctls
    assert both["net.ipv4.vs.conntrack"] == "1"
    dsr = expand(config(svc(mode="l2-dsr")), {}).sysctls
    assert dsr["net.ipv4.conf.all.accept_local"] == "1" and "net.ipv4.vs.conntrack" not in dsr
    assert expand(config(), {}).sysctls == {}


def test_vip_interface_null_manages_no_addresses():
    d = expand(config(svc(), vip_interface=None), {})
    assert d.vips == frozenset() and d.vip_interface is None


def test_shared_vip_is_one_address():
    d = expand(config(svc("a", port=80), svc("b", port=443)), {})
    assert d.vips == {VipAddress("pask0", "10.99.100.1", 32)}


def test_ipv6_service():
    s = svc(vip="fd00:99::1", servers=[rs("fd00:99::11")], persistence=(60, "64"))
    d = expand(config(s), {})
    (key, ipvs), = d.services.items()
    assert key.af == 6 and ipvs.netmask == 64
    assert d.vips == {VipAddress("pask0", "fd00:99::1", 128)}
    assert d.sysctls["net.ipv6.conf.all.forwarding"] == "1"


# -- weights: state, health, sorry servers ----------------------------------------

def _w(service, down=()):
    up = {health_key(service.name, a, p): False for a, p in down}
    return effective_weights(service, up)


def test_disabled_server_is_drained_at_weight_zero():
    s = svc(servers=[rs("10.99.2.11", weight=5), rs("10.99.2.12", weight=5, state="disabled")])
    assert _w(s) == {("10.99.2.11", 80): 5, ("10.99.2.12", 80): 0}


def test_down_server_inhibit_vs_remove():
    servers = [rs("10.99.2.11", weight=2), rs("10.99.2.12", weight=2)]
    assert _w(svc(servers=servers), down=[("10.99.2.11", 80)])[("10.99.2.11", 80)] == 0
    assert _w(svc(servers=servers, on_failure="remove"),
              down=[("10.99.2.11", 80)])[("10.99.2.11", 80)] is None


def test_backup_server_serves_only_while_no_enabled_server_is_up():
    s = svc(servers=[rs("10.99.2.11"), rs("10.99.2.12"), rs("10.99.2.99", weight=7, state="backup")])
    assert _w(s)[("10.99.2.99", 80)] == 0
    assert _w(s, down=[("10.99.2.11", 80)])[("10.99.2.99", 80)] == 0
    assert _w(s, down=[("10.99.2.11", 80), ("10.99.2.12", 80)])[("10.99.2.99", 80)] == 7


def test_disabled_servers_do_not_count_as_up_for_the_sorry_server():
    s = svc(servers=[rs("10.99.2.11", state="disabled"), rs("10.99.2.99", weight=4, state="backup")])
    assert _w(s)[("10.99.2.99", 80)] == 4


def test_removed_down_server_leaves_desired():
    s = svc(servers=[rs("10.99.2.11"), rs("10.99.2.12")], on_failure="remove")
    d = expand(config(s), {}, {health_key("web", "10.99.2.12", 80): False})
    assert sorted(k.addr for k in d.dests) == ["10.99.2.11"]
