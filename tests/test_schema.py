"""The JSON Schema itself, its agreement with the model and the loader, and stage-1 messages."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pask_ipvs import defaults, model, yaml_lines
from pask_ipvs.validate import (
    FAST_DEF, _def_schema, _translate, _validator, load_schema, passes, schema_issues,
)

REPO = Path(__file__).resolve().parent.parent
SCHEMA_FILE = REPO / "schemas" / "pask.schema.json"


def schema() -> dict:
    return load_schema()


def defs() -> dict:
    return schema()["$defs"]


# -- the schema file -------------------------------------------------------------------

def test_schema_is_valid_2020_12():
    s = json.loads(SCHEMA_FILE.read_text())
    assert s["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(s)


def test_package_ships_the_same_schema_through_the_symlink():
    link = REPO / "pask_ipvs" / "schemas"
    assert link.is_symlink() and os.readlink(link) == "../schemas"
    assert load_schema() == json.loads(SCHEMA_FILE.read_text())


def _object_schemas(node, where="$"):
    if isinstance(node, dict):
        if node.get("type") == "object" or "properties" in node and "if" not in where.split("/")[-1:]:
            yield where, node
        for key, value in node.items():
            yield from _object_schemas(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _object_schemas(value, f"{where}/{i}")


def test_every_object_is_closed():
    objects = [(w, n) for w, n in _object_schemas(schema()) if n.get("type") == "object"]
    assert len(objects) >= 6
    for where, node in objects:
        assert node.get("additionalProperties") is False, where


def test_enums_match_the_model():
    svc = defs()["service"]["properties"]
    assert tuple(svc["scheduler"]["enum"]) == model.SCHEDULERS
    assert defs()["protocol"]["enum"] == [p.value for p in model.Protocol]
    assert svc["nat_mode"]["enum"] == [m.value for m in model.NatMode]
    assert svc["on_failure"]["enum"] == [m.value for m in model.OnFailure]
    assert defs()["real_server"]["properties"]["state"]["enum"] == [s.value for s in model.ServerState]
    assert defs()["filter"]["properties"]["action"]["enum"] == [a.value for a in model.FilterAction]
    assert set(defs()["health"]["properties"]["type"]["enum"]) == set(defaults.HEALTH_PARAMS)


def test_defaults_match_build_model():
    top = schema()["properties"]
    svc = defs()["service"]["properties"]
    rs = defs()["real_server"]["properties"]
    health = defs()["health"]["properties"]
    assert top["vip_interface"]["default"] == defaults.DEFAULT_VIP_INTERFACE
    assert top["drain_timeout"]["default"] == defaults.DEFAULT_DRAIN_TIMEOUT
    assert top["metrics"]["properties"]["per_server"]["default"] == defaults.DEFAULT_METRICS_PER_SERVER
    assert svc["protocol"]["default"] == defaults.DEFAULT_PROTOCOL
    assert svc["scheduler"]["default"] == defaults.DEFAULT_SCHEDULER
    assert svc["nat_mode"]["default"] == defaults.DEFAULT_NAT_MODE
    assert svc["on_failure"]["default"] == defaults.DEFAULT_ON_FAILURE
    assert rs["weight"]["default"] == defaults.DEFAULT_WEIGHT
    assert rs["state"]["default"] == defaults.DEFAULT_STATE
    for key, value in defaults.DEFAULT_HEALTH.items():
        assert health[key]["default"] == value, key
    for params in defaults.HEALTH_PARAMS.values():
        for key, value in params.items():
            if value is not None:
                expected = list(value) if isinstance(value, tuple) else value
                assert health[key]["default"] == expected, key
    # and the model's own defaults agree too
    assert model.Config((),).vip_interface == defaults.DEFAULT_VIP_INTERFACE
    assert model.RealServer("10.99.2.1", 80).weight == defaults.DEFAULT_WEIGHT
    assert model.Health().interval == defaults.DEFAULT_HEALTH["interval"]


def test_health_keys_allowed_per_type_match_the_loader():
    """Each type-specific key is forbidden (in the schema) exactly for the types that lack it
    in defaults.HEALTH_PARAMS."""
    types = set(defaults.HEALTH_PARAMS)
    allowed: dict[str, set[str]] = {}
    for rule in defs()["health"]["allOf"]:
        cond = rule["if"]["properties"]["type"]
        when = set(cond["enum"]) if "enum" in cond else {cond["const"]}
        for key in rule["else"]["properties"]:
            allowed[key] = when
    expected = {key: {t for t, p in defaults.HEALTH_PARAMS.items() if key in p}
                for p in defaults.HEALTH_PARAMS.values() for key in p}
    assert allowed == expected
    assert all(when <= types for when in allowed.values())


# -- stage-1 messages (path and line) ---------------------------------------------------------

def one(problems, path):
    found = [p for p in problems if p.path == path]
    assert len(found) == 1, (path, [str(p) for p in problems])
    return found[0]


SVC = "version: 1\nservices:\n  - name: s\n    vip: 10.99.100.1\n    port: 80\n"   # service at line 3


@pytest.mark.parametrize("extra, path, line, message", [
    ("    protocol: TCP\n", "$.services[0].protocol", 6,
     "unknown value 'TCP' (allowed: tcp, udp, sctp); did you mean 'tcp'?"),
    ("    scheduler: least-connection\n", "$.services[0].scheduler", 6, "did you mean 'lc'?"),
    ("    nat_mode: dr\n", "$.services[0].nat_mode", 6, "did you mean 'l2-dsr'?"),
    ("    real_servers:\n      - {address: 10.99.2.1, weight: 70000}\n",
     "$.services[0].real_servers[0].weight", 7, "70000 is too large (allowed: 0..65535)"),
    ("    real_servers:\n      - {address: 10.99.2.1, port: 0}\n",
     "$.services[0].real_servers[0].port", 7, "0 is too small (allowed: 1..65535)"),
    ("    real_servers:\n      - address: 10.99.2.1\n        wieght: 2\n",
     "$.services[0].real_servers[0].wieght", 8,
     "unknown key 'wieght' (allowed: address, port, weight, state); did you mean 'weight'?"),
    ("    real_servers:\n      - {port: 80}\n", "$.services[0].real_servers[0]", 7,
     "missing required key 'address'"),
    ("    real_servers:\n      - 10.99.2.1\n", "$.services[0].real_servers[0]", 7,
     "expected a mapping, got '10.99.2.1'"),
    ("    real_servers:\n      - {address: 10.99.2.1, state: drain}\n",
     "$.services[0].real_servers[0].state", 7, "did you mean 'disabled'?"),
    ("    real_servers:\n      - {address: 10.99.2.1, weight: true}\n",
     "$.services[0].real_servers[0].weight", 7, "expected an integer, got true"),
    ("    real_servers: {address: 10.99.2.1}\n", "$.services[0].real_servers", 6,
     "expected a list, got a mapping"),
    ("    health: {interval: 0}\n", "$.services[0].health.interval", 6, "0 is too small (allowed: > 0)"),
    ("    health: {rise: 0}\n", "$.services[0].health.rise", 6, "0 is too small (allowed: >= 1)"),
    ("    health: {type: tcp, path: /x}\n", "$.services[0].health.path", 6,
     "key 'path' is not allowed for health type 'tcp' (only for health types http and https)"),
    ("    health: {path: /x}\n", "$.services[0].health.path", 6,
     "key 'path' is not allowed for health type 'none'"),
    ("    health: {type: http, sni: a.test}\n", "$.services[0].health.sni", 6,
     "key 'sni' is not allowed for health type 'http' (only for health type https)"),
    ("    health: {type: http, path: healthz}\n", "$.services[0].health.path", 6,
     "'healthz' is not valid (allowed: an HTTP path starting with /)"),
    ("    health: {type: http, expect_status: []}\n", "$.services[0].health.expect_status", 6,
     "an empty list is not allowed (allowed: at least 1 item)"),
    ("    health: {type: http, expect_status: [200, 700]}\n", "$.services[0].health.expect_status[1]", 6,
     "700 is too large (allowed: 100..599)"),
    ("    health:\n      type: dns\n", "$.services[0].health", 6,
     "missing required key 'query_name': health type dns needs it"),
    ("    health:\n      type: script\n", "$.services[0].health", 6,
     "missing required key 'command': health type script needs it"),
    ("    health: {type: script, command: 5}\n", "$.services[0].health.command", 6,
     "expected a shell command, or a list: program and arguments, got 5"),
    ("    health: {type: script, command: []}\n", "$.services[0].health.command", 6,
     "an empty list is not allowed"),
    ("    filters:\n      - {action: include, dst_port: 70000}\n", "$.services[0].filters[0].dst_port", 7,
     "70000 is too large (allowed: 1..65535)"),
    ("    filters:\n      - {action: include, dst_port: 'http'}\n", "$.services[0].filters[0].dst_port", 7,
     "'http' is not valid (allowed: a port range \"low-high\" such as \"1024-65535\")"),
    ("    filters:\n      - {action: include, dst_port: true}\n", "$.services[0].filters[0].dst_port", 7,
     "expected a port 1..65535 or a range \"low-high\", got true"),
    ("    filters:\n      - {src: 10.0.0.0/8}\n", "$.services[0].filters[0]", 7,
     "missing required key 'action'"),
    ("    persistence: {netmask: 255.255.255.0}\n", "$.services[0].persistence", 6,
     "missing required key 'timeout'"),
    ("    persistence: {timeout: 2678401}\n", "$.services[0].persistence.timeout", 6,
     "2678401 is too large (allowed: 1..2678400)"),
    ("    fwmark: 0\n", "$.services[0].fwmark", 6, "0 is too small (allowed: 1..4294967295)"),
    ("    nat_mode: both-nat\n    snat_ip: 17\n", "$.services[0].snat_ip", 7,
     "expected an IPv4 or IPv6 address, got 17"),
])
def test_schema_messages(problems_of, extra, path, line, message):
    problems = problems_of(SVC + extra)
    p = one(problems, path)
    assert p.line == line, str(p)
    assert message in p.message, str(p)
    assert "is not valid under any of the given schemas" not in p.message


@pytest.mark.parametrize("text, path, line, message", [
    ("services: []\n", "$", 1, "missing required key 'version'"),
    ("version: 1\n", "$", 1, "missing required key 'services'"),
    ("version: 2\nservices: []\n", "$.version", 1, "2 is not supported (allowed: 1)"),
    ("version: '1'\nservices: []\n", "$.version", 1, "'1' is not supported (allowed: 1)"),
    ("version: true\nservices: []\n", "$.version", 1, "true is not supported (allowed: 1)"),
    ("version: 1\nservices: {}\n", "$.services", 2, "expected a list, got a mapping"),
    ("version: 1\nservices:\n", "$.services", 2, "expected a list, got null (an empty value)"),
    ("version: 1\nservices: []\nvip_interface: abcdefghijklmnop\n", "$.vip_interface", 3,
     "'abcdefghijklmnop' is too long (allowed: at most 15 characters)"),
    ("version: 1\nservices: []\nvip_interface: 'a/b'\n", "$.vip_interface", 3, "is not valid (allowed: an interface name"),
    ("version: 1\nservices: []\nvip_interface: ''\n", "$.vip_interface", 3, "an empty string is not allowed"),
    ("version: 1\nservices: []\ndrain_timeout: -1\n", "$.drain_timeout", 3, "-1 is too small (allowed: >= 0)"),
    ("version: 1\nservices: []\nservice: []\n", "$.service", 3, "did you mean 'services'?"),
    ("- version: 1\n", "$", 1, "expected a mapping with version and services, got a list"),
    ("", "$", 1, "expected a mapping with version and services, got null"),
    ("version: 1\nservices:\n  - name: 'a b'\n    vip: 10.99.100.1\n    port: 1\n", "$.services[0].name", 3,
     "'a b' is not valid (allowed: a name of 1-64 characters from A-Z a-z 0-9 _ . -)"),
    ("version: 1\nservices:\n  - {name: x, vip: 10.99.100.1}\n", "$.services[0]", 3,
     "missing required key 'port'"),
    ("version: 1\nservices:\n  - {name: x, vip: 10.99.100.1, port: http}\n", "$.services[0].port", 3,
     "expected an integer, got 'http'"),
])
def test_top_level_messages(problems_of, text, path, line, message):
    p = one(problems_of(text), path)
    assert (p.line, p.file) == (line, "test.yaml"), str(p)
    assert message in p.message, str(p)


def test_every_unknown_key_is_reported_on_its_own_line(problems_of):
    problems = problems_of(SVC + "    colour: red\n    size: 3\n")
    assert [(p.line, p.path) for p in problems] == [(6, "$.services[0].colour"), (7, "$.services[0].size")]


def test_all_schema_problems_are_collected(problems_of):
    problems = problems_of("""
        version: 3
        services:
          - name: a
            vip: 10.99.100.1
            port: 70000
            real_servers:
              - {address: 10.99.2.1, weight: -1}
              - {address: 10.99.2.2, weight: 70000}
          - name: b
            port: 80
        """)
    assert [(p.line, p.path) for p in problems] == [
        (1, "$.version"), (5, "$.services[0].port"), (7, "$.services[0].real_servers[0].weight"),
        (8, "$.services[0].real_servers[1].weight"), (9, "$.services[1]")]


# -- the fast yes/no check (jsonschema-rs) against the reference (jsonschema) -----------------

def _full_errors(instance, name=None) -> list:
    schema = load_schema() if name is None else _def_schema(name)
    return list(jsonschema.Draft202012Validator(schema).iter_errors(instance))


def test_quick_check_passes_ordinary_real_servers():
    for rs in ({"address": "10.99.2.1"}, {"address": "10.99.2.1", "port": 8080, "weight": 0, "state": "backup"}):
        assert passes(rs, FAST_DEF) and not _full_errors(rs, FAST_DEF)
    assert not passes({"address": "10.99.2.1", "weight": 70000}, FAST_DEF)


_values = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 70000), st.integers(), st.floats(), st.text(max_size=4),
    st.sampled_from(["10.99.2.1", "", "enabled", "disabled", "backup", "x", "..", "a b", "1-2", "/x"]),
    st.lists(st.integers(), max_size=2), st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
    st.dates(), st.binary(max_size=2), st.frozensets(st.integers(), max_size=2),
)
_servers = st.one_of(
    _values,
    st.dictionaries(st.sampled_from(["address", "port", "weight", "state", "wieght", ""]), _values, max_size=5),
)


@settings(max_examples=300, deadline=None)
@given(_servers)
def test_quick_check_agrees_with_jsonschema_on_real_servers(rs):
    assert passes(rs, FAST_DEF) == (_full_errors(rs, FAST_DEF) == [])


_service_keys = ["name", "vip", "port", "protocol", "scheduler", "nat_mode", "snat_ip", "local_networks",
                 "persistence", "filters", "real_servers", "health", "on_failure", "bogus"]
_service_values = st.one_of(
    _values,
    st.sampled_from(["svc", "10.99.100.1", "tcp", "udp", "rr", "wrr", "dest-nat", "both-nat", "inhibit",
                     80, 0, 65536, ["10.99.2.0/24"], {"timeout": 300}, {"timeout": 0, "netmask": "x"},
                     [{"action": "include", "src": "10.0.0.0/8"}], [{"action": "drop"}],
                     {"type": "http", "path": "/h"}, {"type": "tcp", "path": "/h"}, {"type": "dns"},
                     [{"address": "10.99.2.1"}], []]),
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(_service_keys), _service_values, max_size=8),
       st.sampled_from([1, 2, "1"]), st.sampled_from(["pask0", None, "", 5]))
def test_quick_check_agrees_with_jsonschema_on_whole_documents(service, version, vip_interface):
    """The yes/no that lets a valid config skip jsonschema must be jsonschema's own yes/no."""
    doc = {"version": version, "vip_interface": vip_interface,
           "services": [{"name": "a", "vip": "10.99.100.1", "port": 80, **service}]}
    assert passes(doc) == (_full_errors(doc) == [])


def test_example_configs_pass_the_quick_check():
    for path in sorted((REPO / "examples").glob("*.yaml")):
        if path.name == "bad.yaml":
            continue
        data, _, _ = yaml_lines.parse_document(str(path), path.read_text())
        assert passes(data), path.name
    data, _, _ = yaml_lines.parse_document("bad.yaml", (REPO / "examples" / "bad.yaml").read_text())
    assert not passes(data)


def test_fast_path_gives_the_same_issues_as_plain_jsonschema():
    data = {"version": 1, "services": [
        {"name": "a", "vip": "10.99.100.1", "port": 80, "real_servers": [
            {"address": "10.99.2.1", "weight": 70000}, "x", {"port": 80}, {"address": 5, "state": "up", "q": 1},
            {"address": "10.99.2.2"}]},
        {"name": "b", "vip": "10.99.100.2", "port": 80, "real_servers": {"address": "10.99.2.1"}},
    ]}
    fast = sorted(schema_issues(data))
    plain = sorted(i for e in _validator().iter_errors(data) for i in _translate(e, data))
    assert fast == plain
    assert len(fast) == 7

