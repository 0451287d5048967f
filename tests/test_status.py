"""pask-status: rows by service name, health and counters; foreign services only with --all."""

import json

from pask_ipvs import status
from pask_ipvs.backend.base import Backends
from pask_ipvs.backend.fake_ipvs import FakeIpvs
from pask_ipvs.cli.status import main as status_main
from pask_ipvs.health_file import health_key
from pask_ipvs.objects import DestKey, IpvsDest, IpvsService, ServiceKey
from pask_ipvs.plan import Op
from pask_ipvs.state import PaskState, save_state
from pask_ipvs.storage import write_json_atomic

WEB = ServiceKey.virtual("tcp", "10.99.100.1", 80)
FOREIGN = ServiceKey.virtual("tcp", "10.99.50.1", 80)


def kernel() -> FakeIpvs:
    k = FakeIpvs()
    k.apply([Op("add", "service", "", None, IpvsService(WEB, "rr")),
             Op("add", "dest", "", None, IpvsDest(WEB, "10.99.2.11", 8080, weight=3)),
             Op("add", "dest", "", None, IpvsDest(WEB, "10.99.2.12", 8080, weight=0)),
             Op("add", "service", "", None, IpvsService(FOREIGN, "wlc"))])
    k.set_conns(DestKey(WEB, "10.99.2.11", 8080), 4, 7)
    return k


def test_rows_name_services_and_show_health_and_connections():
    obs = kernel().observe(stats=True)
    health = {health_key("web", "10.99.2.12", 8080): False}
    rows = status.status_rows(obs, {WEB: "web"}, health, show_all=False)
    assert [(r["service"], r["server"], r["weight"], r["health"]) for r in rows] == [
        ("web", "10.99.2.11:8080", 3, "unknown"), ("web", "10.99.2.12:8080", 0, "down")]
    assert (rows[0]["active"], rows[0]["inactive"]) == (4, 7)
    table = status.format_table(rows)
    assert table.splitlines()[0].split()[:4] == ["SERVICE", "VIRTUAL", "SCHED", "SERVER"]
    assert "10.99.2.12:8080" in table and "down" in table


def test_foreign_services_only_with_all():
    obs = kernel().observe(stats=True)
    rows = status.status_rows(obs, {WEB: "web"}, {}, show_all=True)
    assert ("(foreign)", None) in [(r["service"], r["server"]) for r in rows]


def test_pask_status_json_against_a_given_kernel(tmp_path, capsys):
    k = kernel()
    save_state(str(tmp_path / "s.json"), PaskState(services={"web": WEB}))
    write_json_atomic(str(tmp_path / "h.json"), {"version": 1, "servers": {
        health_key("web", "10.99.2.11", 8080): {"up": True}}})
    argv = ["--state-file", str(tmp_path / "s.json"), "--health-file", str(tmp_path / "h.json"),
            "--format", "json"]
    assert status_main(argv, backends=lambda: Backends(ipvs=k, nft=None, addr=None, sysctl=None)) == 0
    doc = json.loads(capsys.readouterr().out)
    assert [r["health"] for r in doc["services"]] == ["up", "unknown"]
