"""Every example loads; bad.yaml shows the error output; the scale generator and load speed."""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pask_ipvs.errors import ConfigError
from pask_ipvs.load import load_config, load_document
from pask_ipvs.model import Application, NatMode, ServerState

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
SCALE = EXAMPLES / "scale-1024.yaml"
GOOD = sorted(p for p in EXAMPLES.glob("*.yaml") if p.name not in ("bad.yaml", SCALE.name))
LAB = ipaddress.ip_network("10.99.0.0/16")

sys.path.insert(0, str(EXAMPLES))
import gen_scale  # noqa: E402


def test_the_expected_examples_exist():
    names = {p.name for p in EXAMPLES.glob("*.yaml")}
    assert {"dest-nat.yaml", "both-nat.yaml", "l2-dsr.yaml", "l3-dsr.yaml", "lan-to-lan.yaml",
            "filters.yaml", "persistence.yaml", "health.yaml", "udp.yaml", "demo.yaml",
            "scale-1024.yaml", "bad.yaml", "applications.yaml"} <= names


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_example_loads(path):
    config = load_config(str(path))
    assert config.services
    assert config.source == str(path)


def _addresses(data: dict):
    """(where, address) of every address in a config, filter match criteria left out."""
    for i, svc in enumerate(data["services"]):
        yield f"services[{i}].vip", svc["vip"]
        if "snat_ip" in svc:
            yield f"services[{i}].snat_ip", svc["snat_ip"]
        for net in svc.get("local_networks", ()):
            yield f"services[{i}].local_networks", net
        for j, rs in enumerate(svc.get("real_servers", ())):
            yield f"services[{i}].real_servers[{j}]", rs["address"]


@pytest.mark.parametrize("path", GOOD, ids=lambda p: p.name)
def test_examples_use_only_the_lab_network(path):
    data, _ = load_document(str(path), path.read_text())
    for where, text in _addresses(data):
        assert ipaddress.ip_network(text, strict=False).subnet_of(LAB), (path.name, where, text)


def test_demo_lab():
    [svc] = load_config(str(EXAMPLES / "demo.yaml")).services
    assert (svc.vip, svc.port, svc.protocol.value, svc.scheduler, svc.nat_mode) == \
        ("10.99.100.1", 80, "tcp", "rr", NatMode.DEST_NAT)
    assert [(rs.address, rs.port) for rs in svc.real_servers] == \
        [("10.99.2.11", 8080), ("10.99.2.12", 8080), ("10.99.2.13", 8080)]
    assert svc.health.type == "http" and svc.health.param("path") == "/healthz"


def test_examples_cover_every_nat_mode_and_feature():
    configs = [load_config(str(p)) for p in GOOD]
    services = [s for c in configs for s in c.services]
    assert {s.nat_mode for s in services} == set(NatMode)
    assert {rs.state for s in services for rs in s.real_servers} == set(ServerState)
    assert any(s.port == 0 and s.persistence for s in services)
    assert any(f.src_port and f.src_port.low != f.src_port.high for s in services for f in s.filters)
    assert any(f.action.value == "exclude" for s in services for f in s.filters)
    assert any(s.fwmark for s in services)
    assert {s.health.type for s in services} >= {"tcp", "http", "https", "udp", "dns"}
    assert {s.application for s in services} == set(Application)


def test_health_example_has_backup_and_disabled_servers():
    svc = load_config(str(EXAMPLES / "health.yaml")).service("web")
    assert svc.health.type == "http"
    states = [rs.state for rs in svc.real_servers]
    assert ServerState.BACKUP in states and ServerState.DISABLED in states


def test_bad_example_lists_every_problem():
    with pytest.raises(ConfigError) as info:
        load_config("examples/bad.yaml", (EXAMPLES / "bad.yaml").read_text())
    assert str(info.value).splitlines() == [
        "examples/bad.yaml:8: $.services[0].scheduler: unknown value 'round-robin' (allowed: rr, wrr, lc, "
        "wlc, sh, sh-port, dh, sed, nq, lblc, lblcr, mh, mh-port, fo, ovf, twos); did you mean 'rr'?",
        "examples/bad.yaml:11: $.services[0].real_servers[1].wieght: unknown key 'wieght' "
        "(allowed: address, port, weight, state); did you mean 'weight'?",
        "examples/bad.yaml:12: $.services[0].real_servers[2].weight: 70000 is too large (allowed: 0..65535)",
        "examples/bad.yaml:13: $.services[0].real_servers[3].address: duplicate real server 10.99.2.11:8080 "
        "(first at line 10)",
        "examples/bad.yaml:14: $.services[0].health.timeout: timeout 5 is longer than interval 2 "
        "(allowed: timeout <= interval)",
        "examples/bad.yaml:15: $.services[1]: nat_mode both-nat needs snat_ip: the source address for "
        "traffic toward the real servers",
        "examples/bad.yaml:15: $.services[1].name: duplicate service name 'web' (first at line 5; "
        "names must be unique)",
        "examples/bad.yaml:16: $.services[1].vip: '10.99.100.300' is not an IPv4 or IPv6 address "
        "(Octet 300 (> 255) not permitted)",
    ]


# -- the scale example -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def scale_text() -> str:
    return SCALE.read_text()


def test_committed_scale_example_is_what_the_generator_writes(scale_text):
    assert scale_text == gen_scale.generate(1024, 32)


def test_scale_example_loads_fast_and_has_its_shape(scale_text):
    """1024 services x 32 real servers: load + validate + model well under 2 s of CPU (~0.8 s here).
    Timed twice at most, so that one slow moment of a busy machine does not fail it."""
    load_config("warm-up.yaml", "version: 1\nservices: []\n")
    took = []
    for _ in range(2):
        start = time.process_time()
        config = load_config(str(SCALE), scale_text)
        took.append(time.process_time() - start)
        if took[-1] < 2.0:
            break
    assert min(took) < 2.0, took
    assert len(config.services) == 1024
    assert all(len(s.real_servers) == 32 for s in config.services)
    vips = {s.vip for s in config.services}
    assert len(vips) == 1024
    assert all(ipaddress.ip_address(v) in ipaddress.ip_network("10.99.128.0/17") for v in vips)
    assert all(ipaddress.ip_address(rs.address) in LAB for s in config.services for rs in s.real_servers)


@pytest.mark.parametrize("services, servers", [(0, 0), (3, 2)])
def test_generator_sizes_load(tmp_path, services, servers):
    out = tmp_path / "s.yaml"
    assert gen_scale.main(["--services", str(services), "--servers", str(servers), "-o", str(out)]) == 0
    config = load_config(str(out))
    assert len(config.services) == services
    assert all(len(s.real_servers) == servers for s in config.services)


def test_generator_keeps_servers_unique_when_addresses_run_out():
    text = gen_scale.generate(2, 17000)                 # 34,000 servers > 32,512 addresses
    last = text[text.index("svc-00001"):]
    pairs = re.findall(r"address: ([0-9.]+), port: (\d+)", last)
    assert len(pairs) == len(set(pairs)) == 17000
    assert {port for _, port in pairs} == {"8080", "8081"}
    assert all(ipaddress.ip_address(a) in LAB for a, _ in pairs)


def test_generator_command_line(tmp_path):
    out = tmp_path / "x.yaml"
    run = subprocess.run([sys.executable, str(EXAMPLES / "gen_scale.py"), "--services", "4", "--servers", "3",
                          "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "--services 4 --servers 3" in out.read_text()
    assert len(load_config(str(out)).services) == 4
    bad = subprocess.run([sys.executable, str(EXAMPLES / "gen_scale.py"), "--services", "40000"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "at most" in bad.stderr
