"""render/nft.py: the ``inet pask`` table as libnftables JSON, asserted rule by rule."""

from __future__ import annotations

import json

import pytest

from pask_ipvs.objects import NftTable
from pask_ipvs.model import (
    Filter, FilterAction, NatMode, PortRange, Protocol, Service,
)
from pask_ipvs.render.nft import render_table, service_chain_names
from builders import svc

INC, EXC = FilterAction.INCLUDE, FilterAction.EXCLUDE
T = {"family": "inet", "table": "pask"}
COUNTER = {"counter": None}


def match(left: dict, right: object) -> dict:
    return {"match": {"op": "==", "left": left, "right": right}}


def payload(proto: str, fld: str) -> dict:
    return {"payload": {"protocol": proto, "field": fld}}


L4 = {"meta": {"key": "l4proto"}}
NFPROTO = {"meta": {"key": "nfproto"}}
CT_MARK = {"ct": {"key": "mark"}}
ORIG_PORT = {"ct": {"key": "proto-dst", "dir": "original"}}


def mark_stmts(mark: int) -> list[dict]:
    return [COUNTER, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": mark}},
            {"mangle": {"key": CT_MARK, "value": {"meta": {"key": "mark"}}}}, {"accept": None}]


def cmds(table: NftTable | None) -> list[dict]:
    assert table is not None
    return table.command_list()


def objects(table: NftTable, kind: str) -> dict[str, dict]:
    return {c["add"][kind]["name"]: c["add"][kind] for c in cmds(table) if kind in c["add"]}


def rules(table: NftTable, chain: str) -> list[list[dict]]:
    return [c["add"]["rule"]["expr"] for c in cmds(table)
            if "rule" in c["add"] and c["add"]["rule"]["chain"] == chain]


# -- no nft needed ---------------------------------------------------------------------

def test_no_filters_and_no_snat_needs_no_table():
    services = [svc("web"), svc("dr", mode=NatMode.L2_DSR), svc("tun", mode=NatMode.L3_DSR),
                svc("v6", vip="fd00:99::1")]
    assert render_table(services, {}) is None
    assert render_table([], {}) is None


# -- filters -----------------------------------------------------------------------------

def test_filtered_service_chain_excludes_first_then_includes_mark_and_accept():
    s = svc("web", filters=(
        Filter(INC, Protocol.TCP, "10.0.0.0/8", "10.99.100.1/32", PortRange(1024, 65535), PortRange(80, 80)),
        Filter(EXC, src="192.0.2.0/24"),
        Filter(INC, src="10.99.5.5"),
    ))
    t = render_table([s], {"web": 0x10000})
    prerouting = objects(t, "chain")["prerouting"]
    assert prerouting == {**T, "name": "prerouting", "type": "filter", "hook": "prerouting",
                          "prio": -150, "policy": "accept"}
    assert rules(t, "svc_web") == [
        [match(payload("ip", "saddr"), {"prefix": {"addr": "192.0.2.0", "len": 24}}), COUNTER, {"return": None}],
        [match(payload("ip", "saddr"), {"prefix": {"addr": "10.0.0.0", "len": 8}}),
         match(payload("ip", "daddr"), "10.99.100.1"),
         match(L4, "tcp"),
         match(payload("th", "sport"), {"range": [1024, 65535]}),
         match(payload("th", "dport"), 80), *mark_stmts(0x10000)],
        [match(payload("ip", "saddr"), "10.99.5.5"), *mark_stmts(0x10000)],
    ]
    # the src-only include is broader than one (dst, proto, port): dispatched by a jump
    assert rules(t, "prerouting") == [[match(NFPROTO, "ipv4"), {"jump": {"target": "svc_web"}}]]
    assert "postrouting" not in objects(t, "chain")


def test_ports_without_protocol_use_the_service_protocol():
    s = svc("dns", port=53, proto=Protocol.UDP,
            filters=(Filter(INC, dst_port=PortRange(53, 53)), Filter(EXC, src_port=PortRange(1, 1023))))
    t = render_table([s], {"dns": 7})
    assert rules(t, "svc_dns") == [
        [match(L4, "udp"), match(payload("th", "sport"), {"range": [1, 1023]}), COUNTER, {"return": None}],
        [match(L4, "udp"), match(payload("th", "dport"), 53), *mark_stmts(7)],
    ]


def test_a_filter_field_left_out_matches_anything():
    s = svc("all", filters=(Filter(INC),))
    t = render_table([s], {"all": 9})
    assert rules(t, "svc_all") == [mark_stmts(9)]
    # only IPv4 packets reach an IPv4 service's chain
    assert rules(t, "prerouting") == [[match(NFPROTO, "ipv4"), {"jump": {"target": "svc_all"}}]]


def test_filter_protocol_overrides_service_protocol():
    s = svc("x", filters=(Filter(INC, protocol=Protocol.SCTP, dst_port=PortRange(9, 9)),))
    t = render_table([s], {"x": 5})
    assert rules(t, "svc_x") == [[match(L4, "sctp"), match(payload("th", "dport"), 9), *mark_stmts(5)]]


def test_exact_services_share_one_verdict_map_in_config_order():
    a = svc("a", filters=(Filter(INC, Protocol.TCP, dst="10.99.100.1/32", dst_port=PortRange(80, 80)),))
    b = svc("b", vip="10.99.100.2", proto=Protocol.UDP,
            filters=(Filter(INC, dst="10.99.100.2", dst_port=PortRange(53, 53)),
                     Filter(EXC, src="10.99.9.0/24")))
    broad = svc("broad", vip="10.99.100.3", filters=(Filter(INC, src="10.99.1.0/24"),))
    c = svc("c", vip="10.99.100.4", filters=(Filter(INC, Protocol.TCP, dst="10.99.100.4", dst_port=PortRange(80, 80)),))
    t = render_table([a, b, broad, c], {"a": 1, "b": 2, "broad": 3, "c": 4})
    maps = objects(t, "map")
    key = {"concat": [payload("ip", "daddr"), L4, payload("th", "dport")]}
    assert rules(t, "prerouting") == [
        [{"vmap": {"key": key, "data": "@dispatch4_0"}}],
        [match(NFPROTO, "ipv4"), {"jump": {"target": "svc_broad"}}],
        [{"vmap": {"key": key, "data": "@dispatch4_1"}}],
    ]
    assert maps["dispatch4_0"] == {
        **T, "name": "dispatch4_0", "type": ["ipv4_addr", "inet_proto", "inet_service"], "map": "verdict",
        "elem": [[{"concat": ["10.99.100.1", "tcp", 80]}, {"jump": {"target": "svc_a"}}],
                 [{"concat": ["10.99.100.2", "udp", 53]}, {"jump": {"target": "svc_b"}}]]}
    assert maps["dispatch4_1"]["elem"] == [[{"concat": ["10.99.100.4", "tcp", 80]}, {"jump": {"target": "svc_c"}}]]


def test_overlapping_exact_services_keep_first_match_order():
    # Same (dst, proto, port) twice: a map could hold only one; the first service must be tried first.
    f = Filter(INC, Protocol.TCP, dst="10.99.100.1/32", dst_port=PortRange(80, 80))
    first = svc("first", filters=(Filter(INC, Protocol.TCP, "10.99.1.0/24", "10.99.100.1/32", None, PortRange(80, 80)),))
    second = svc("second", vip="10.99.100.9", filters=(f,))
    t = render_table([first, second], {"first": 1, "second": 2})
    assert [r[0]["vmap"]["data"] for r in rules(t, "prerouting")] == ["@dispatch4_0", "@dispatch4_1"]
    maps = objects(t, "map")
    assert maps["dispatch4_0"]["elem"][0][1] == {"jump": {"target": "svc_first"}}
    assert maps["dispatch4_1"]["elem"][0][1] == {"jump": {"target": "svc_second"}}


def test_chains_before_maps_before_rules():
    s = svc("a", filters=(Filter(INC, Protocol.TCP, dst="10.99.100.1", dst_port=PortRange(80, 80)),))
    kinds = [next(iter(c["add"])) for c in cmds(render_table([s], {"a": 1}))]
    assert kinds[0] == "table"
    last_chain = max(i for i, k in enumerate(kinds) if k == "chain")
    first_map = min(i for i, k in enumerate(kinds) if k in ("map", "set"))
    first_rule = kinds.index("rule")
    assert last_chain < first_map < first_rule
    assert cmds(render_table([s], {"a": 1}))[0] == {"add": {"table": {"family": "inet", "name": "pask"}}}


def test_ipv6_filters():
    s = svc("v6", vip="fd00:99::1", filters=(
        Filter(INC, Protocol.TCP, "fd00:1::/64", "fd00:99::1/128", None, PortRange(443, 443)),
        Filter(EXC, src="fd00:1::bad"),
    ))
    t = render_table([s], {"v6": 0x10001})
    assert rules(t, "svc_v6") == [
        [match(payload("ip6", "saddr"), "fd00:1::bad"), COUNTER, {"return": None}],
        [match(payload("ip6", "saddr"), {"prefix": {"addr": "fd00:1::", "len": 64}}),
         match(payload("ip6", "daddr"), "fd00:99::1"), match(L4, "tcp"),
         match(payload("th", "dport"), 443), *mark_stmts(0x10001)],
    ]
    key = {"concat": [payload("ip6", "daddr"), L4, payload("th", "dport")]}
    assert rules(t, "prerouting") == [[{"vmap": {"key": key, "data": "@dispatch6_0"}}]]
    assert objects(t, "map")["dispatch6_0"]["type"] == ["ipv6_addr", "inet_proto", "inet_service"]


def test_filter_of_the_wrong_family_is_an_error():
    s = svc("v4", filters=(Filter(INC, src="fd00::/64"),))
    with pytest.raises(ValueError, match="IPv6"):
        render_table([s], {"v4": 1})


def test_filtered_service_without_fwmark_is_an_error_and_explicit_fwmark_is_used():
    s = svc("web", filters=(Filter(INC, src="10.99.1.0/24"),))
    with pytest.raises(ValueError, match="fwmark"):
        render_table([s], {})
    t = render_table([svc("web", filters=(Filter(INC),), fwmark=42)], {})
    assert rules(t, "svc_web") == [mark_stmts(42)]


# -- both-NAT / LAN-to-LAN ---------------------------------------------------------------------

def test_both_nat_vip_service_snat_by_original_destination():
    t = render_table([svc("web", mode=NatMode.BOTH_NAT, snat_ip="10.99.2.1")], {})
    chains = objects(t, "chain")
    assert chains["postrouting"] == {**T, "name": "postrouting", "type": "nat", "hook": "postrouting",
                                     "prio": 100, "policy": "accept"}
    assert "prerouting" not in chains
    assert rules(t, "postrouting") == [
        [{"vmap": {"key": {"ct": {"key": "ip daddr", "dir": "original"}}, "data": "@snat_vip4"}}]]
    assert objects(t, "map")["snat_vip4"] == {
        **T, "name": "snat_vip4", "type": "ipv4_addr", "map": "verdict",
        "elem": [["10.99.100.1", {"jump": {"target": "snat4_10_99_100_1"}}]]}
    assert rules(t, "snat4_10_99_100_1") == [
        [match(L4, "tcp"), match(ORIG_PORT, 80), COUNTER, {"snat": {"family": "ip", "addr": "10.99.2.1"}}]]


def test_port_zero_service_omits_the_port_match_and_comes_after_ports():
    services = [
        svc("all", port=0, mode=NatMode.BOTH_NAT, snat_ip="10.99.2.2", persistence=None),
        svc("web", mode=NatMode.BOTH_NAT, snat_ip="10.99.2.1"),
        svc("l2l", port=443, mode=NatMode.LAN_TO_LAN, local_networks=("10.99.2.0/24",)),
        svc("plain", port=8080),
        svc("udp", port=8080, proto=Protocol.UDP),
    ]
    t = render_table(services, {})
    snat = lambda a: {"snat": {"family": "ip", "addr": a}}  # noqa: E731
    assert rules(t, "snat4_10_99_100_1") == [
        [match(L4, "tcp"), match(ORIG_PORT, 80), COUNTER, snat("10.99.2.1")],
        [match(L4, "tcp"), match(ORIG_PORT, 443), match(payload("ip", "saddr"),
                                                        {"prefix": {"addr": "10.99.2.0", "len": 24}}),
         COUNTER, snat("10.99.100.1")],
        # clients outside the local networks and other services' ports are not the all-ports service's
        [match(L4, "tcp"), match(ORIG_PORT, 443), {"accept": None}],
        [match(L4, "tcp"), match(ORIG_PORT, 8080), {"accept": None}],
        # udp has no all-ports service: no accept needed for udp/8080
        [match(L4, "tcp"), COUNTER, snat("10.99.2.2")],
    ]


def test_lan_to_lan_vip_service_snat_to_vip_for_local_networks_only():
    s = svc("l2l", mode=NatMode.LAN_TO_LAN, local_networks=("10.99.3.0/24", "10.99.2.0/24", "10.99.2.128/25"))
    t = render_table([s], {})
    # networks are collapsed (an interval set/map refuses overlaps)
    assert rules(t, "snat4_10_99_100_1") == [
        [match(L4, "tcp"), match(ORIG_PORT, 80),
         match(payload("ip", "saddr"), {"prefix": {"addr": "10.99.2.0", "len": 23}}),
         COUNTER, {"snat": {"family": "ip", "addr": "10.99.100.1"}}]]
    two = svc("l2l", mode=NatMode.LAN_TO_LAN, local_networks=("10.99.2.0/24", "10.99.9.0/24"))
    expr = rules(render_table([two], {}), "snat4_10_99_100_1")[0]
    assert expr[2] == match(payload("ip", "saddr"), {"set": [
        {"prefix": {"addr": "10.99.2.0", "len": 24}}, {"prefix": {"addr": "10.99.9.0", "len": 24}}]})


def test_fwmark_services_snat_by_ct_mark_and_are_kept_off_vip_chains():
    both = svc("both", vip="10.99.100.5", mode=NatMode.BOTH_NAT, snat_ip="10.99.2.1",
               filters=(Filter(INC, src="10.99.1.0/24"),))
    l2l = svc("l2l", vip="10.99.100.6", mode=NatMode.LAN_TO_LAN, local_networks=("10.99.2.0/24",),
              filters=(Filter(INC, src="10.99.2.0/24"),))
    plain = svc("plain", mode=NatMode.BOTH_NAT, snat_ip="10.99.2.9")
    dnat = svc("dnat", vip="10.99.100.7", filters=(Filter(INC, src="10.99.7.0/24"),))
    t = render_table([both, l2l, plain, dnat], {"both": 0x10000, "l2l": 0x10001, "dnat": 0x10002})
    maps = objects(t, "map")
    assert maps["snat_mark4"] == {**T, "name": "snat_mark4", "type": "mark", "map": "ipv4_addr",
                                  "elem": [[0x10000, "10.99.2.1"]]}
    assert maps["l2l_mark4"] == {**T, "name": "l2l_mark4", "type": ["ipv4_addr", "mark"], "map": "ipv4_addr",
                                 "flags": ["interval"],
                                 "elem": [[{"concat": [{"prefix": {"addr": "10.99.2.0", "len": 24}}, 0x10001]},
                                           "10.99.100.6"]]}
    assert objects(t, "set")["marks"]["elem"] == [0x10000, 0x10001, 0x10002]
    assert rules(t, "postrouting") == [
        [match(NFPROTO, "ipv4"), {"snat": {"family": "ip", "addr": {"map": {"key": CT_MARK, "data": "@snat_mark4"}}}}],
        [match(NFPROTO, "ipv4"), {"snat": {"family": "ip", "addr": {"map": {
            "key": {"concat": [payload("ip", "saddr"), CT_MARK]}, "data": "@l2l_mark4"}}}}],
        [match(CT_MARK, "@marks"), {"accept": None}],
        [{"vmap": {"key": {"ct": {"key": "ip daddr", "dir": "original"}}, "data": "@snat_vip4"}}],
    ]
    # fwmark services never get a VIP chain
    assert set(objects(t, "chain")) == {"prerouting", "postrouting", "svc_both", "svc_l2l", "svc_dnat",
                                        "snat4_10_99_100_1"}


def test_fwmark_only_snat_needs_no_marks_set():
    both = svc("both", mode=NatMode.BOTH_NAT, snat_ip="10.99.2.1", filters=(Filter(INC, src="10.99.1.0/24"),))
    t = render_table([both], {"both": 3})
    assert "marks" not in objects(t, "set")
    assert len(rules(t, "postrouting")) == 1


def test_ipv6_snat():
    both6 = svc("b6", vip="fd00:99::1", mode=NatMode.BOTH_NAT, snat_ip="fd00:2::1")
    l2l6 = svc("l6", vip="fd00:99::1", port=443, mode=NatMode.LAN_TO_LAN, local_networks=("fd00:2::/64",))
    mark6 = svc("m6", vip="fd00:99::2", mode=NatMode.BOTH_NAT, snat_ip="fd00:2::2",
                filters=(Filter(INC, src="fd00:1::/64"),))
    t = render_table([both6, l2l6, mark6], {"m6": 11})
    assert rules(t, "snat6_fd00_99__1") == [
        [match(L4, "tcp"), match(ORIG_PORT, 80), COUNTER, {"snat": {"family": "ip6", "addr": "fd00:2::1"}}],
        [match(L4, "tcp"), match(ORIG_PORT, 443), match(payload("ip6", "saddr"),
                                                        {"prefix": {"addr": "fd00:2::", "len": 64}}),
         COUNTER, {"snat": {"family": "ip6", "addr": "fd00:99::1"}}],
    ]
    maps = objects(t, "map")
    assert maps["snat_vip6"]["type"] == "ipv6_addr"
    assert maps["snat_mark6"] == {**T, "name": "snat_mark6", "type": "mark", "map": "ipv6_addr",
                                  "elem": [[11, "fd00:2::2"]]}
    post = rules(t, "postrouting")
    assert post[0] == [match(NFPROTO, "ipv6"), {"snat": {"family": "ip6", "addr": {"map": {
        "key": CT_MARK, "data": "@snat_mark6"}}}}]
    assert post[-1] == [{"vmap": {"key": {"ct": {"key": "ip6 daddr", "dir": "original"}}, "data": "@snat_vip6"}}]


def test_snat_ip_of_the_wrong_family_is_an_error():
    with pytest.raises(ValueError, match="snat_ip"):
        render_table([svc("x", mode=NatMode.BOTH_NAT, snat_ip="fd00::1")], {})


# -- determinism, names -------------------------------------------------------------------------

def _mixed() -> tuple[list[Service], dict[str, int]]:
    services = [
        svc("web", mode=NatMode.BOTH_NAT, snat_ip="10.99.2.1",
            filters=(Filter(INC, Protocol.TCP, dst="10.99.100.1", dst_port=PortRange(80, 80)),)),
        svc("l2l", vip="10.99.100.2", mode=NatMode.LAN_TO_LAN, local_networks=("10.99.2.0/24",)),
        svc("v6", vip="fd00:99::1", mode=NatMode.BOTH_NAT, snat_ip="fd00:2::1"),
    ]
    return services, {"web": 0x10000}


def test_output_is_deterministic_and_the_digest_stable():
    services, marks = _mixed()
    a, b = render_table(services, marks), render_table(list(services), dict(marks))
    assert a == b and a.digest == b.digest
    assert a.commands == json.dumps(a.command_list(), sort_keys=True, separators=(",", ":"))
    assert a.digest == "%s" % NftTable.from_commands(a.command_list()).digest
    # a change of content changes the digest
    services[1] = svc("l2l", vip="10.99.100.2", mode=NatMode.LAN_TO_LAN, local_networks=("10.99.3.0/24",))
    assert render_table(services, marks).digest != a.digest


def test_no_table_comment_in_the_content():
    services, marks = _mixed()
    for c in cmds(render_table(services, marks)):
        for obj in c["add"].values():
            assert "comment" not in obj


def test_chain_names_are_safe_and_unique():
    names = ["web", "web-1", "web_1", "web.1", "web 1", "a" * 200, "a" * 199 + "b", "ünï"]
    chains = service_chain_names(names)
    assert chains["web"] == "svc_web"
    assert chains["web-1"] == "svc_web-1"
    assert chains["web_1"] == "svc_web_1"
    assert len(set(chains.values())) == len(names)
    for c in chains.values():
        assert c.startswith("svc_") and len(c) <= 64
        assert all(ch.isascii() and (ch.isalnum() or ch in "_-") for ch in c)
    # the name of one service does not depend on the others
    assert service_chain_names(["web.1"])["web.1"] == chains["web.1"]


def test_sanitized_name_clash_gets_a_counter():
    # A service literally named like the sanitized form of another one.
    sanitized = service_chain_names(["x."])["x."]            # svc_x__<hash>
    chains = service_chain_names(["x.", sanitized[len("svc_"):]])
    assert chains == {"x.": sanitized, sanitized[len("svc_"):]: sanitized + "_2"}


def test_rendered_services_chains_map_to_service_names():
    services = [svc("web-1", filters=(Filter(INC),)), svc("web_1", vip="10.99.100.2", filters=(Filter(INC),))]
    t = render_table(services, {"web-1": 1, "web_1": 2})
    chains = [n for n in objects(t, "chain") if n.startswith("svc_")]
    assert chains == ["svc_web-1", "svc_web_1"]
    assert rules(t, "svc_web-1") == [mark_stmts(1)]
    assert rules(t, "svc_web_1") == [mark_stmts(2)]
