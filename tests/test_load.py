"""YAML loading (lines, duplicate keys, syntax errors) and build_model (defaults, canonical forms)."""

from __future__ import annotations

import ipaddress

import pytest
import yaml

from pask_ipvs import yaml_lines as lines_module
from pask_ipvs.defaults import HEALTH_PARAMS
from pask_ipvs.errors import ConfigError, Problem, format_path, parse_path
from pask_ipvs.load import load_config, load_document
from pask_ipvs.yaml_lines import LineMap, _Loader, parse_document
from pask_ipvs.model import build_model
from pask_ipvs.model import (
    Config, FilterAction, Health, NatMode, OnFailure, Persistence, PortRange, Protocol, ServerState,
)

MINIMAL = """\
version: 1
services:
  - name: web
    vip: 10.99.100.1
    port: 80
    real_servers:
      - {address: 10.99.2.11}
"""


# -- errors.py -----------------------------------------------------------------------

def test_problem_str_and_order():
    a = Problem("f.yaml", 14, "$.services[2].real_servers[0].weight", "70000 is too large (allowed: 0..65535)")
    assert str(a) == "f.yaml:14: $.services[2].real_servers[0].weight: 70000 is too large (allowed: 0..65535)"
    b = Problem("f.yaml", 3, "$.version", "x")
    err = ConfigError([a, b, a])
    assert err.problems == [b, a]                      # sorted by line, duplicate dropped
    assert str(err) == f"{b}\n{a}"


@pytest.mark.parametrize("parts, text", [
    ((), "$"),
    (("services", 2, "real_servers", 0, "weight"), "$.services[2].real_servers[0].weight"),
    (("a b",), "$['a b']"),
    (("x", "it's"), "$.x[\"it's\"]"),
    (("1",), "$['1']"),
])
def test_format_and_parse_path(parts, text):
    assert format_path(parts) == text
    assert parse_path(text) == parts


def test_parse_path_rejects_garbage():
    with pytest.raises(ValueError):
        parse_path("services[0]")
    with pytest.raises(ValueError):
        parse_path("$.services[x]")


# -- YAML and lines ------------------------------------------------------------------

def test_load_document_data_and_lines():
    text = (
        "version: 1\n"            # 1
        "services:\n"             # 2
        "  - name: web\n"         # 3
        "    vip: 10.99.100.1\n"  # 4
        "    real_servers:\n"     # 5
        "      - address: 10.99.2.11\n"   # 6
        "        weight: 3\n"     # 7
        "      - {address: 10.99.2.12, weight: 4}\n"  # 8
    )
    data, lines = load_document("f.yaml", text)
    assert data == {"version": 1, "services": [{"name": "web", "vip": "10.99.100.1", "real_servers": [
        {"address": "10.99.2.11", "weight": 3}, {"address": "10.99.2.12", "weight": 4}]}]}
    assert lines.line(()) == 1
    assert lines.line(("version",)) == 1
    assert lines.line(("services",)) == 2
    assert lines.line(("services", 0)) == 3
    assert lines.line(("services", 0, "vip")) == 4
    assert lines.line(("services", 0, "real_servers", 0, "weight")) == 7
    assert lines.line("$.services[0].real_servers[1].weight") == 8
    # a path that does not exist: the deepest object that does
    assert lines.line(("services", 0, "real_servers", 1, "port")) == 8
    assert lines.line(("services", 0, "health", "type")) == 3
    assert lines.line(("services", 5)) == 2


def test_empty_document_has_line_1():
    data, lines = load_document("f.yaml", "# nothing\n")
    assert data is None
    assert lines.line(("services",)) == 1
    assert LineMap(None).line(()) == 1


def test_duplicate_key_is_an_error_with_both_lines():
    text = "version: 1\nservices:\n  - name: a\n    port: 80\n    vip: 10.99.100.1\n    port: 81\n"
    with pytest.raises(ConfigError) as info:
        load_document("f.yaml", text)
    [p] = info.value.problems
    assert (p.line, p.path) == (6, "$.services[0].port")
    assert "duplicate key 'port' (first at line 4)" in p.message


def test_duplicate_top_level_key():
    with pytest.raises(ConfigError) as info:
        load_document("f.yaml", "version: 1\nversion: 1\nservices: []\n")
    assert [(p.line, p.path) for p in info.value.problems] == [(2, "$.version")]


def test_duplicate_key_reported_with_other_problems(problems_of):
    problems = problems_of("""
        version: 1
        services:
          - name: web
            name: web2
            vip: 10.99.100.1
            port: 99999
        """)
    assert [(p.line, p.path) for p in problems] == [(4, "$.services[0].name"), (6, "$.services[0].port")]


def test_yaml_syntax_error_has_line():
    with pytest.raises(ConfigError) as info:
        load_config("f.yaml", "version: 1\nservices:\n  - name: a\n   vip: [1\n")
    [p] = info.value.problems
    assert p.file == "f.yaml" and p.path == "$"
    assert p.message.startswith("invalid YAML: ")
    assert p.line in (4, 5)


def test_yaml_tab_indent_error():
    with pytest.raises(ConfigError) as info:
        load_config("f.yaml", "version: 1\nservices:\n\t- name: a\n")
    [p] = info.value.problems
    assert p.line == 3
    assert "invalid YAML" in p.message


def test_several_documents_are_an_error():
    with pytest.raises(ConfigError) as info:
        load_config("f.yaml", "version: 1\n---\nversion: 1\n")
    assert "invalid YAML" in info.value.problems[0].message


def test_unsafe_tag_is_an_error():
    with pytest.raises(ConfigError) as info:
        load_config("f.yaml", "version: !!python/object:os.system {}\n")
    assert "invalid YAML" in info.value.problems[0].message


def test_recursive_alias_is_an_error():
    with pytest.raises(ConfigError) as info:
        load_document("f.yaml", "a: &x\n  b: *x\n")
    assert "recursive alias" in info.value.problems[0].message


def test_keys_stay_text():
    data, _ = load_document("f.yaml", "on: 1\n1: a\nnull: b\n")
    assert data == {"on": 1, "1": "a", "null": "b"}


def test_complex_key_is_a_problem():
    with pytest.raises(ConfigError) as info:
        load_document("f.yaml", "a:\n  ? [1, 2]\n  : x\n")
    [p] = info.value.problems
    assert (p.line, p.path) == (2, "$.a")
    assert "plain name" in p.message


def test_merge_keys_and_anchors():
    text = (
        "defaults: &d {weight: 2, state: backup}\n"
        "servers:\n"
        "  - <<: *d\n"
        "    address: 10.99.2.11\n"
        "    weight: 5\n"
        "  - *d\n"
    )
    data, lines = load_document("f.yaml", text)
    assert data["servers"][0] == {"weight": 5, "state": "backup", "address": "10.99.2.11"}
    assert data["servers"][1] == {"weight": 2, "state": "backup"}
    assert lines.line(("servers", 0, "weight")) == 5   # own key, not the merged one


def test_duplicate_key_next_to_a_merge_key():
    with pytest.raises(ConfigError) as info:
        load_document("f.yaml", "d: &d {a: 1}\ne:\n  <<: *d\n  b: 1\n  b: 2\n")
    assert [(p.line, p.path) for p in info.value.problems] == [(5, "$.e.b")]


YAML_SAMPLES = [
    "a: 1\nb: -2\nc: +3\nd: 0\ne: 010\nf: 0x1F\ng: 1_000\nh: 1:30\ni: 08\n",
    "a: 1.5\nb: .inf\nc: -.INF\nd: .nan\ne: 1e3\nf: 6.8523015e+5\n",
    "a: yes\nb: No\nc: on\nd: OFF\ne: true\nf: ~\ng: null\nh:\n",
    "a: '1'\nb: \"0x10\"\nc: |\n  x\n  y\nd: >\n  folded\n  text\n",
    "a: 2001-12-14\nb: 2001-12-14t21:59:43.10-05:00\n",
    "a: !!str 5\nb: !!int '7'\nc: !!float 1\nd: !!binary aGVsbG8=\n",
    "a: !!set {x, y}\nb: !!omap [{x: 1}, {y: 2}]\n",
    "x: &a [1, {b: 2}]\ny: *a\nz: [*a, *a]\n",
    "- 10.99.2.11\n- fd00::1\n- '::1'\n- 1:2:3:4\n- 10.99.2.0/24\n",
    "é: ünïcödé\n'a b': \"tab\\tx\"\n",
    "[]\n", "{}\n", "42\n", "plain\n",
]


@pytest.mark.parametrize("text", YAML_SAMPLES)
def test_fast_builder_matches_pyyaml_safe_load(text):
    """The fast builder gives the same data as PyYAML's SafeLoader (keys aside: always text)."""
    def keys_as_text(value):
        if isinstance(value, dict):
            return {str(k): keys_as_text(v) for k, v in value.items()}
        if isinstance(value, list):
            return [keys_as_text(v) for v in value]
        return value

    data, _ = load_document("f.yaml", text)
    expected = keys_as_text(yaml.load(text, Loader=yaml.SafeLoader))
    assert repr(data) == repr(expected)                  # repr: nan != nan


@pytest.mark.parametrize("text", YAML_SAMPLES + [MINIMAL, "a: 1\nb: 2\na: 3\n", "x: &d {a: 1}\ny: {<<: *d, b: 2}\n"])
def test_pure_python_fallback_gives_the_same_result(monkeypatch, text):
    """Where PyYAML has no libyaml, the pure-Python loader gives the same data, lines and problems."""
    fast = parse_document("f.yaml", text)
    monkeypatch.setattr(lines_module, "_Loader", lines_module._PyLoader)
    slow = parse_document("f.yaml", text)
    assert repr(fast[0]) == repr(slow[0])
    assert fast[2] == slow[2]
    assert fast[1].root is not slow[1].root
    if isinstance(fast[0], dict):
        for key in fast[0]:
            assert fast[1].line((key,)) == slow[1].line((key,))


def test_loader_resolves_tags_like_pyyaml():
    loader = _Loader("a: 1\n")
    try:
        for value in ("1", "1.5", "yes", "~", "x", "1:30", "2001-12-14"):
            assert loader.resolve(yaml.ScalarNode, value, (True, False)) == \
                yaml.SafeLoader.resolve(loader, yaml.ScalarNode, value, (True, False))
    finally:
        loader.dispose()


def test_parse_document_returns_duplicates_as_problems():
    data, lines, problems = parse_document("f.yaml", "a: 1\na: 2\n")
    assert data == {"a": 2}
    assert [p.line for p in problems] == [2]


def test_missing_file_is_a_config_error(tmp_path):
    path = str(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    [p] = info.value.problems
    assert p.file == path and p.line == 0 and "cannot read" in p.message


def test_load_config_reads_the_file(write_config):
    path = write_config(MINIMAL)
    config = load_config(str(path))
    assert config.source == str(path)
    assert [s.name for s in config.services] == ["web"]


def test_non_utf8_file(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("version: 1\n# caf\xe9\n".encode("latin-1"))
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    assert "cannot read" in info.value.problems[0].message


# -- build_model: defaults and canonical forms ---------------------------------------------

def test_defaults(load_text):
    config = load_text(MINIMAL)
    assert isinstance(config, Config)
    assert config.vip_interface == "pask0"
    assert config.drain_timeout == 0
    assert config.source == "test.yaml"
    [svc] = config.services
    assert svc.protocol is Protocol.TCP
    assert svc.scheduler == "wlc"
    assert svc.nat_mode is NatMode.DEST_NAT
    assert svc.on_failure is OnFailure.INHIBIT
    assert svc.persistence is None and svc.snat_ip is None and svc.fwmark is None
    assert svc.filters == () and svc.local_networks == ()
    assert svc.health == Health()
    [rs] = svc.real_servers
    assert (rs.address, rs.port, rs.weight, rs.state, rs.explicit_port) == \
        ("10.99.2.11", 80, 1, ServerState.ENABLED, False)


def test_explicit_values(load_text):
    config = load_text("""
        version: 1
        vip_interface: null
        drain_timeout: 30
        services:
          - name: s
            vip: 10.99.100.1
            port: 443
            protocol: sctp
            scheduler: mh-port
            nat_mode: both-nat
            snat_ip: 10.99.2.1
            on_failure: remove
            real_servers:
              - {address: 10.99.2.11, port: 8443, weight: 0, state: disabled}
              - {address: 10.99.2.12, state: backup}
        """)
    assert config.vip_interface is None
    assert config.drain_timeout == 30
    [svc] = config.services
    assert (svc.protocol, svc.scheduler, svc.nat_mode, svc.snat_ip, svc.on_failure) == \
        (Protocol.SCTP, "mh-port", NatMode.BOTH_NAT, "10.99.2.1", OnFailure.REMOVE)
    a, b = svc.real_servers
    assert (a.port, a.weight, a.state, a.explicit_port) == (8443, 0, ServerState.DISABLED, True)
    assert (b.port, b.weight, b.state, b.explicit_port) == (443, 1, ServerState.BACKUP, False)


def test_canonical_ipv6_addresses_and_networks(load_text):
    config = load_text("""
        version: 1
        services:
          - name: v6
            vip: "FD00:0:0::0:1"
            port: 80
            nat_mode: lan-to-lan
            local_networks: ["fd00:99:0::/48", "fd00:98::5"]
            filters:
              - {action: include, src: "FD00:1::/32", dst: "fd00::1"}
            real_servers:
              - {address: "fd00:0::0:2"}
        """)
    [svc] = config.services
    assert svc.vip == "fd00::1" and svc.family == 6
    assert svc.real_servers[0].address == "fd00::2"
    assert svc.local_networks == ("fd00:99::/48", "fd00:98::5/128")
    assert (svc.filters[0].src, svc.filters[0].dst) == ("fd00:1::/32", "fd00::1/128")


def test_persistence_netmask_defaults_and_text(load_text):
    config = load_text("""
        version: 1
        services:
          - {name: a, vip: 10.99.100.1, port: 80, persistence: {timeout: 300}}
          - {name: b, vip: 10.99.100.1, port: 81, persistence: {timeout: 300, netmask: 255.255.255.0}}
          - {name: c, vip: "fd00::1", port: 80, persistence: {timeout: 60}}
          - {name: d, vip: "fd00::1", port: 81, persistence: {timeout: 60, netmask: 64}}
        """)
    assert [s.persistence for s in config.services] == [
        Persistence(300, "255.255.255.255"), Persistence(300, "255.255.255.0"),
        Persistence(60, "128"), Persistence(60, "64")]


def test_port_zero_service_real_server_port_defaults_to_zero(load_text):
    config = load_text("""
        version: 1
        services:
          - name: all
            vip: 10.99.100.1
            port: 0
            persistence: {timeout: 60}
            real_servers: [{address: 10.99.2.11}, {address: 10.99.2.12, port: 8080}]
        """)
    assert [(rs.port, rs.explicit_port) for rs in config.services[0].real_servers] == [(0, False), (8080, True)]


def test_filters_in_config_order(load_text):
    config = load_text("""
        version: 1
        services:
          - name: f
            vip: 10.99.100.1
            port: 80
            filters:
              - {action: include, protocol: tcp, src: 10.0.0.0/8, dst: 10.99.100.1, src_port: "1024-65535", dst_port: 80}
              - {action: exclude, src: 192.0.2.7}
              - {action: include}
        """)
    a, b, c = config.services[0].filters
    assert (a.action, a.protocol, a.src, a.dst, a.src_port, a.dst_port) == (
        FilterAction.INCLUDE, Protocol.TCP, "10.0.0.0/8", "10.99.100.1/32", PortRange(1024, 65535),
        PortRange(80, 80))
    assert (b.action, b.src, b.protocol, b.dst_port) == (FilterAction.EXCLUDE, "192.0.2.7/32", None, None)
    assert c.action is FilterAction.INCLUDE and c.src is None and c.src_port is None


@pytest.mark.parametrize("health, expected", [
    ("{type: tcp}", Health(type="tcp")),
    ("{type: http}", Health(type="http", params=(
        ("expect_status", (200,)), ("method", "GET"), ("path", "/")))),
    ("{type: https, path: /h, expect_status: [200, 301], sni: x.test, interval: 5, timeout: 2.5, "
     "rise: 1, fall: 1, port: 8443}",
     Health(type="https", interval=5.0, timeout=2.5, rise=1, fall=1, port=8443, params=(
         ("expect_status", (200, 301)), ("method", "GET"), ("path", "/h"), ("sni", "x.test"),
         ("verify_tls", False)))),
    ("{type: udp, payload: hi}", Health(type="udp", params=(("payload", "hi"),))),
    ("{type: dns, query_name: a.test}", Health(type="dns", params=(
        ("expect_rcode", "NOERROR"), ("query_name", "a.test"), ("query_type", "A")))),
    ("{type: script, command: [/bin/check, --fast]}",
     Health(type="script", params=(("command", ("/bin/check", "--fast")),))),
    ("{type: script, command: 'check.sh x'}", Health(type="script", params=(("command", "check.sh x"),))),
    ("{}", Health()),
])
def test_health_params(load_text, health, expected):
    config = load_text(f"""
        version: 1
        services:
          - {{name: s, vip: 10.99.100.1, port: 53, health: {health}}}
        """)
    h = config.services[0].health
    assert h == expected
    assert list(h.params) == sorted(h.params)
    hash(h)                                          # frozen, hashable (reload diffing)


def test_health_param_table_covers_every_type():
    assert set(HEALTH_PARAMS) == {"none", "tcp", "http", "https", "udp", "dns", "script"}


def test_build_model_directly():
    data = {"version": 1, "services": [{"name": "x", "vip": "10.99.100.1", "port": 80.0,
                                        "real_servers": [{"address": "10.99.2.1", "port": 81.0}]}]}
    config = build_model(data, "src.yaml")
    assert config.source == "src.yaml"
    assert config.services[0].port == 80 and type(config.services[0].port) is int
    assert config.services[0].real_servers[0].port == 81


def test_model_is_hashable_and_equal_across_loads(load_text):
    a = load_text(MINIMAL)
    b = load_text(MINIMAL)
    assert a == b and hash(a) == hash(b)


def test_ipaddress_canonical_forms_are_what_kernel_module_uses(load_text):
    svc = load_text(MINIMAL).services[0]
    assert svc.vip == str(ipaddress.ip_address(svc.vip))
