"""Stage 2: semantic checks. Each check: its message, its JSON path and its line."""

from __future__ import annotations

import pytest

from pask_ipvs.load import load_document
from pask_ipvs.yaml_lines import LineMap
from pask_ipvs.validate import semantic_issues, validate


def only(problems):
    assert len(problems) == 1, [str(p) for p in problems]
    return problems[0]


def where(problems):
    return [(p.line, p.path) for p in problems]


# -- across services -------------------------------------------------------------------------

def test_duplicate_service_names(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - {name: web, vip: 10.99.100.1, port: 80}
          - {name: api, vip: 10.99.100.1, port: 81}
          - name: web
            vip: 10.99.100.1
            port: 82
        """))
    assert (p.line, p.path) == (5, "$.services[2].name")
    assert p.message == "duplicate service name 'web' (first at line 3; names must be unique)"


def test_duplicate_vip_port_protocol(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - {name: a, vip: 10.99.100.1, port: 80}
          - {name: b, vip: 10.99.100.1, port: 80, protocol: udp}
          - {name: c, vip: 10.99.100.1, port: 80, filters: [{action: include, src: 10.99.9.0/24}]}
          - name: d
            vip: 10.99.100.1
            port: 80
            protocol: tcp
        """))
    assert (p.line, p.path) == (6, "$.services[3]")
    assert "10.99.100.1:80/tcp like service 'a' (line 3)" in p.message


def test_duplicate_vip_compares_canonical_ipv6(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - {name: a, vip: "fd00::1", port: 80}
          - {name: b, vip: "FD00:0::1", port: 80}
        """))
    assert (p.line, p.path) == (4, "$.services[1]")
    assert "[fd00::1]:80/tcp" in p.message


def test_duplicate_explicit_fwmark(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            fwmark: 7
            filters: [{action: include, dst_port: 80}]
          - name: b
            vip: 10.99.100.2
            port: 80
            filters: [{action: include, dst_port: 81}]
            fwmark: 7
        """))
    assert (p.line, p.path) == (12, "$.services[1].fwmark")
    assert p.message == "fwmark 7 is already used by service 'a' (line 6); each service needs its own fwmark"


def test_fwmark_without_filters(problems_of):
    p = only(problems_of("version: 1\nservices:\n  - {name: a, vip: 10.99.100.1, port: 80, fwmark: 9}\n"))
    assert (p.line, p.path) == (3, "$.services[0].fwmark")
    assert "only used by a service with filters" in p.message


# -- NAT modes -------------------------------------------------------------------------------

def test_both_nat_without_snat_ip(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            nat_mode: both-nat
        """))
    assert (p.line, p.path) == (3, "$.services[0]")
    assert p.message.startswith("nat_mode both-nat needs snat_ip")


def test_snat_ip_on_other_mode(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            snat_ip: 10.99.2.1
        """))
    assert (p.line, p.path) == (6, "$.services[0].snat_ip")
    assert p.message == "snat_ip is only used with nat_mode both-nat (this service is dest-nat)"


def test_snat_ip_family_mismatch(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            nat_mode: both-nat
            snat_ip: "fd00::2"
        """))
    assert (p.line, p.path) == (7, "$.services[0].snat_ip")
    assert p.message == "snat_ip fd00::2 is IPv6 but the VIP 10.99.100.1 is IPv4 (allowed: IPv4 only)"


@pytest.mark.parametrize("extra, line, path", [
    ("", 3, "$.services[0]"),
    ("    local_networks: []\n", 7, "$.services[0].local_networks"),
])
def test_lan_to_lan_without_local_networks(problems_of, extra, line, path):
    p = only(problems_of(
        "version: 1\nservices:\n  - name: a\n    vip: 10.99.100.1\n    port: 80\n    nat_mode: lan-to-lan\n"
        + extra))
    assert (p.line, p.path) == (line, path)
    assert p.message.startswith("nat_mode lan-to-lan needs local_networks")


def test_local_networks_on_other_mode(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            nat_mode: both-nat
            snat_ip: 10.99.2.1
            local_networks: [10.99.2.0/24]
        """))
    assert (p.line, p.path) == (8, "$.services[0].local_networks")
    assert p.message == "local_networks is only used with nat_mode lan-to-lan (this service is both-nat)"


def test_empty_local_networks_on_other_mode_is_harmless(load_text):
    load_text("version: 1\nservices:\n  - {name: a, vip: 10.99.100.1, port: 80, local_networks: []}\n")


def test_local_network_family_and_host_bits(problems_of):
    problems = problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            nat_mode: lan-to-lan
            local_networks:
              - 10.99.2.0/24
              - "fd00::/64"
              - 10.99.3.1/24
        """)
    assert where(problems) == [(9, "$.services[0].local_networks[1]"), (10, "$.services[0].local_networks[2]")]
    assert "local network fd00::/64 is IPv6 but the VIP 10.99.100.1 is IPv4" in problems[0].message
    assert "10.99.3.1/24 has host bits set; did you mean 10.99.3.0/24?" in problems[1].message


@pytest.mark.parametrize("mode", ["l2-dsr", "l3-dsr"])
def test_dsr_real_server_port_must_equal_service_port(problems_of, mode):
    p = only(problems_of(f"""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            nat_mode: {mode}
            real_servers:
              - {{address: 10.99.2.11}}
              - {{address: 10.99.2.12, port: 80}}
              - address: 10.99.2.13
                port: 8080
        """))
    assert (p.line, p.path) == (11, "$.services[0].real_servers[2].port")
    assert p.message == (f"{mode} forwards packets unchanged, so a real server's port must be the "
                         "service port (allowed: 80, or leave port out)")


def test_dsr_out_of_range_port_reported_once(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            nat_mode: l2-dsr
            real_servers: [{address: 10.99.2.11, port: 70000}]
        """))
    assert p.path == "$.services[0].real_servers[0].port"
    assert "too large" in p.message


def test_port_zero_needs_persistence(problems_of, load_text):
    p = only(problems_of("version: 1\nservices:\n  - name: a\n    vip: 10.99.100.1\n    port: 0\n"))
    assert (p.line, p.path) == (5, "$.services[0].port")
    assert p.message.startswith("port 0 (all ports) needs persistence")
    load_text("version: 1\nservices:\n  - {name: a, vip: 10.99.100.1, port: 0, persistence: {timeout: 60}}\n")


# -- filters ---------------------------------------------------------------------------------

def test_filter_family_mismatch(problems_of):
    problems = problems_of("""
        version: 1
        services:
          - name: v6
            vip: "fd00::1"
            port: 80
            filters:
              - {action: include, src: "fd00:9::/32"}
              - {action: include, src: 10.0.0.0/8}
              - action: exclude
                dst: 10.99.100.1
        """)
    assert where(problems) == [(8, "$.services[0].filters[1].src"), (10, "$.services[0].filters[2].dst")]
    assert problems[0].message == "filter src 10.0.0.0/8 is IPv4 but the VIP fd00::1 is IPv6 (allowed: IPv6 only)"
    assert problems[1].message.startswith("filter dst 10.99.100.1/32 is IPv4")


def test_filter_protocol_contradicts_service(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: dns
            vip: 10.99.100.1
            port: 53
            protocol: udp
            filters:
              - {action: include, protocol: udp, dst_port: 53}
              - {action: include, protocol: tcp, dst_port: 53}
        """))
    assert (p.line, p.path) == (9, "$.services[0].filters[1].protocol")
    assert p.message == ("filter protocol tcp contradicts the service protocol udp "
                         "(allowed: udp, or leave protocol out)")


def test_filter_port_ranges(problems_of):
    problems = problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            filters:
              - {action: include, src_port: "1024-65535", dst_port: "80-80"}
              - {action: include, src_port: "2000-1000"}
              - {action: include, dst_port: "0-80"}
              - {action: include, dst_port: "1-99999"}
        """)
    assert where(problems) == [(8, "$.services[0].filters[1].src_port"), (9, "$.services[0].filters[2].dst_port"),
                               (10, "$.services[0].filters[3].dst_port")]
    assert problems[0].message == ("port range '2000-1000' is reversed: 2000 > 1000 "
                                   "(allowed: low <= high, e.g. '1000-2000')")
    assert problems[1].message == "port range '0-80' is out of range (allowed: ports 1..65535)"


def test_filter_bad_network(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            filters: [{action: include, src: 10.0.0.0/33}]
        """))
    assert (p.line, p.path) == (6, "$.services[0].filters[0].src")
    assert p.message.startswith("'10.0.0.0/33' is not an IPv4 or IPv6 address or CIDR network")


# -- real servers ----------------------------------------------------------------------------

def test_real_server_family_mismatch(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            real_servers:
              - {address: 10.99.2.11}
              - {address: "fd00::11"}
        """))
    assert (p.line, p.path) == (8, "$.services[0].real_servers[1].address")
    assert p.message == "real server fd00::11 is IPv6 but the VIP 10.99.100.1 is IPv4 (allowed: IPv4 only)"


def test_duplicate_real_server(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: "fd00::1"
            port: 80
            real_servers:
              - {address: "fd00::11", port: 80}
              - {address: "fd00::12"}
              - {address: "FD00:0::11"}
        """))
    assert (p.line, p.path) == (9, "$.services[0].real_servers[2].address")
    assert p.message == "duplicate real server [fd00::11]:80 (first at line 7)"


def test_same_address_other_port_is_fine(load_text):
    load_text("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            real_servers: [{address: 10.99.2.11, port: 8080}, {address: 10.99.2.11, port: 8081}]
        """)


def test_real_server_is_the_vip(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            real_servers:
              - address: 10.99.100.1
                port: 8080
        """))
    assert (p.line, p.path) == (7, "$.services[0].real_servers[0].address")
    assert p.message == "real server 10.99.100.1 is the VIP itself (allowed: any address but the VIP)"


@pytest.mark.parametrize("key, value, message", [
    ("vip", "10.99.100.300", "'10.99.100.300' is not an IPv4 or IPv6 address (Octet 300 (> 255) not permitted)"),
    ("vip", "web.example.test", "'web.example.test' is not an IPv4 or IPv6 address (host names are not "
                                "resolved)"),
    ("vip", "10.99.100.1/32", "'10.99.100.1/32' is not an IPv4 or IPv6 address (Unexpected '/')"),
    ("vip", "0.0.0.0", "0.0.0.0 is the unspecified address; a VIP must be a unicast address"),
    ("vip", "224.0.0.1", "224.0.0.1 is a multicast address; a VIP must be a unicast address"),
    ("vip", "fd00::1::2", "'fd00::1::2' is not an IPv4 or IPv6 address (At most one '::' permitted)"),
])
def test_bad_addresses(problems_of, key, value, message):
    p = only(problems_of(f"version: 1\nservices:\n  - name: a\n    port: 80\n    {key}: '{value}'\n"))
    assert (p.line, p.path) == (5, f"$.services[0].{key}")
    assert p.message == message


def test_bad_real_server_address(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            real_servers:
              - {address: 10.99.2.11}
              - {address: 10.99.2.256}
        """))
    assert (p.line, p.path) == (8, "$.services[0].real_servers[1].address")
    assert "not an IPv4 or IPv6 address" in p.message


# -- persistence -----------------------------------------------------------------------------

@pytest.mark.parametrize("vip, netmask, message", [
    ("10.99.100.1", "255.0.255.0", "255.0.255.0 is not a contiguous netmask"),
    ("10.99.100.1", "0.0.0.0", "0.0.0.0 is not a contiguous netmask"),
    ("10.99.100.1", "255.255.255.256", "'255.255.255.256' is not a dotted IPv4 netmask"),
    ("10.99.100.1", "'/24'", "'/24' is not a dotted IPv4 netmask"),
    ("10.99.100.1", "24", "24 is a prefix length; an IPv4 service takes a dotted netmask, e.g. 255.255.255.0 for /24"),
    ("'fd00::1'", "0", "0 is not valid for an IPv6 service (allowed: a prefix length 1..128)"),
    ("'fd00::1'", "129", "129 is not valid for an IPv6 service"),
    ("'fd00::1'", "'ffff:ffff::'", "'ffff:ffff::' is not valid for an IPv6 service"),
])
def test_bad_netmask(problems_of, vip, netmask, message):
    p = only(problems_of(f"""
        version: 1
        services:
          - name: a
            vip: {vip}
            port: 80
            persistence:
              timeout: 300
              netmask: {netmask}
        """))
    assert (p.line, p.path) == (8, "$.services[0].persistence.netmask")
    assert p.message.startswith(message), p.message


@pytest.mark.parametrize("vip, netmask", [("10.99.100.1", "255.255.255.255"), ("10.99.100.1", "128.0.0.0"),
                                          ("10.99.100.1", "255.255.0.0"), ("'fd00::1'", "64"),
                                          ("'fd00::1'", "1"), ("'fd00::1'", "128")])
def test_good_netmask(load_text, vip, netmask):
    load_text(f"version: 1\nservices:\n  - name: a\n    vip: {vip}\n    port: 80\n"
              f"    persistence: {{timeout: 300, netmask: {netmask}}}\n")


# -- health ----------------------------------------------------------------------------------

@pytest.mark.parametrize("health, line, path, message", [
    ("    health:\n      interval: 2\n      timeout: 3\n", 8, "$.services[0].health.timeout",
     "timeout 3 is longer than interval 2 (allowed: timeout <= interval)"),
    ("    health:\n      timeout: 2.5\n", 7, "$.services[0].health.timeout",
     "timeout 2.5 is longer than interval 2 (allowed: timeout <= interval)"),
    ("    health:\n      interval: 0.5\n", 7, "$.services[0].health.interval",
     "timeout 1 is longer than interval 0.5 (allowed: timeout <= interval)"),
    ("    health:\n      type: http\n      body_regex: '(ok'\n", 8, "$.services[0].health.body_regex",
     "invalid regular expression '(ok': missing ), unterminated subpattern at position 0"),
    ("    health:\n      type: udp\n      expect: '[a-'\n", 8, "$.services[0].health.expect",
     "invalid regular expression '[a-'"),
])
def test_health_semantics(problems_of, health, line, path, message):
    p = only(problems_of("version: 1\nservices:\n  - name: a\n    vip: 10.99.100.1\n    port: 80\n" + health))
    assert (p.line, p.path) == (line, path)
    assert p.message.startswith(message), p.message


def test_timeout_equal_to_interval_is_fine(load_text):
    load_text("version: 1\nservices:\n  - {name: a, vip: 10.99.100.1, port: 80, health: {interval: 1, timeout: 1}}\n")


# -- collecting everything -------------------------------------------------------------------

def test_semantic_checks_run_when_the_schema_fails_elsewhere(problems_of):
    problems = problems_of("""
        version: 2
        services:
          - name: a
            vip: 10.99.100.1
            port: 80
            scheduler: fastest
            nat_mode: both-nat
            real_servers:
              - {address: 10.99.2.11, weight: -5}
              - {address: 10.99.2.11}
          - name: a
            vip: 10.99.100.2
            port: 80
            colour: blue
        """)
    assert where(problems) == [
        (1, "$.version"),
        (3, "$.services[0]"),                             # both-nat without snat_ip
        (6, "$.services[0].scheduler"),
        (9, "$.services[0].real_servers[0].weight"),
        (10, "$.services[0].real_servers[1].address"),   # duplicate despite the bad weight above
        (11, "$.services[1].name"),                       # duplicate name
        (14, "$.services[1].colour"),
    ]


def test_value_rejected_by_the_schema_is_not_reported_twice(problems_of):
    p = only(problems_of("""
        version: 1
        services:
          - name: a
            vip: 17
            port: 80
            real_servers: [{address: 10.99.2.11}]
        """))
    assert (p.line, p.path) == (4, "$.services[0].vip")
    assert p.message == "expected an IPv4 or IPv6 address, got 17"


def test_semantic_stage_tolerates_any_shape():
    """Garbage in every place: the semantic stage must never raise."""
    shapes = [None, 1, "x", [], {}, [1, "x", None], {"services": "x"}, {"services": [1, None, []]},
              {"services": [{"vip": [], "port": "x", "real_servers": [1, {"address": 5, "port": "p"}],
                             "filters": [None, {"src": 5, "src_port": [1]}], "health": {"timeout": "x"},
                             "persistence": {"netmask": None}, "local_networks": "x", "snat_ip": 5,
                             "nat_mode": 5, "protocol": [], "fwmark": "x", "name": []}]}]
    for data in shapes:
        semantic_issues(data, LineMap(None))
        validate(data, LineMap(None), "x.yaml")


def test_validate_returns_problems_with_lines():
    data, lines = load_document("f.yaml", "version: 1\nservices:\n  - {name: a, vip: 10.99.100.1, port: 0}\n")
    [p] = validate(data, lines, "f.yaml")
    assert (p.file, p.line, p.path) == ("f.yaml", 3, "$.services[0].port")


# -- the dotted-quad fast path agrees with ipaddress ------------------------------------
from hypothesis import given as _given, settings as _settings, strategies as _st  # noqa: E402

_octet = _st.one_of(_st.integers(0, 255).map(str), _st.integers(0, 999).map(str),
                    _st.sampled_from(["00", "010", "0x1f", "1 ", " 1", "", "-1", "1\x00", "٣"]))


@_settings(max_examples=400, deadline=None)
@_given(_st.one_of(_st.lists(_octet, min_size=1, max_size=6).map(".".join), _st.text(max_size=20)))
def test_address_fast_path_agrees_with_ipaddress(text):
    import ipaddress
    from pask_ipvs.objects import canonical_address
    from pask_ipvs.validate import _parse_address
    try:
        want = ipaddress.ip_address(text)
    except ValueError:
        want = None
    got = _parse_address.__wrapped__(text)
    if want is None:
        assert isinstance(got, str)
    else:
        assert got == want and type(got) is type(want)
        assert canonical_address.__wrapped__(text) == str(want)


# -- the real servers' IPv4 fast path reports what the general path reports ----------------

_rs_address = _st.one_of(
    _st.sampled_from(["10.99.2.1", "10.99.2.2", "10.99.100.1", "0.0.0.0", "224.0.0.5", "239.1.1.1",
                      "255.255.255.255", "010.99.2.1", "10.99.2", "fd00::1", "fd00:0::1", "::",
                      "ff02::1", "web1", "", "10.99.2.1 "]),
    _st.integers(0, 3), _st.none())
_rs = _st.fixed_dictionaries({"address": _rs_address},
                             optional={"port": _st.sampled_from([80, 8080, 0, 70000, "80", True])})


@_settings(max_examples=300, deadline=None)
@_given(servers=_st.lists(_st.one_of(_rs, _st.just("not a dict")), max_size=8),
        vip=_st.sampled_from(["10.99.100.1", "fd00::100", "10.99.100", 5]),
        port=_st.sampled_from([80, 0, None]),
        mode=_st.sampled_from(["dest-nat", "l2-dsr", "l3-dsr"]))
def test_real_server_fast_path_reports_as_the_general_path(servers, vip, port, mode):
    from pask_ipvs import validate as v

    svc = {"name": "a", "vip": vip, "nat_mode": mode, "real_servers": servers}
    if port is not None:
        svc["port"] = port
    data = {"version": 1, "services": [svc]}
    _, lines = load_document("f.yaml", "version: 1\n")
    fast = semantic_issues(data, lines)
    with pytest.MonkeyPatch.context() as m:
        m.setattr(v, "dotted_quad", lambda text: None)       # every address the general way
        general = semantic_issues(data, lines)
    assert fast == general
