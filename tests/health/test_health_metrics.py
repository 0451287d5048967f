"""pask-healthd's /metrics: what each series says, read back through prometheus-client's parser."""

from __future__ import annotations

import asyncio
import dataclasses
import gzip
import socket
import urllib.error
import urllib.request

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from builders import config, include, rs, svc
from daemons import metrics_daemon, scrape
from pask_ipvs.backend.fake import fake_backends
from pask_ipvs.cli.healthd import main, serve_metrics
from pask_ipvs.health.metrics import KernelCollector, registry_for
from pask_ipvs.model import Health, Metrics
from pask_ipvs.objects import DestKey, ServiceKey, Stats
from pask_ipvs.state import mark_applied

WEB = ServiceKey.virtual("tcp", "10.99.100.1", 80)
A = rs("10.99.2.11", 8080, weight=3)
B = rs("10.99.2.12", 8080, weight=2)
TCP = Health(type="tcp", interval=2, timeout=1, rise=1, fall=1)


def web(*servers, name="web", **kw):
    return dataclasses.replace(svc(name, "10.99.100.1", 80, servers=list(servers), **kw), health=TCP)


daemon_for = metrics_daemon


def value(samples, name, **labels):
    found = [v for lab, v in samples.get(name, []) if all(lab.get(k) == str(x) for k, x in labels.items())]
    assert len(found) == 1, (name, labels, samples.get(name))
    return found[0]


def test_per_server_series_from_the_kernel_and_the_health_machine():
    d, b, probe, registry = daemon_for(config(web(A, B)))
    b.ipvs.set_conns(DestKey(WEB, "10.99.2.11", 8080), active=4, inactive=2)
    b.ipvs.set_stats(DestKey(WEB, "10.99.2.11", 8080),
                     Stats(conns=9, inpkts=100, outpkts=80, inbytes=6000, outbytes=90000))
    b.ipvs.set_stats(WEB, Stats(conns=12, inpkts=130, outpkts=90, inbytes=7000, outbytes=99000))
    m = scrape(registry)
    one = dict(service="web", vip="10.99.100.1", port=80, protocol="tcp",
               real_server="10.99.2.11", real_port=8080)
    assert value(m, "pask_real_server_up", **one) == 1
    assert value(m, "pask_real_server_weight", **one) == 3
    assert value(m, "pask_real_server_weight", **{**one, "real_server": "10.99.2.12"}) == 2
    assert value(m, "pask_real_server_connections_active", **one) == 4
    assert value(m, "pask_real_server_connections_inactive", **one) == 2
    assert value(m, "pask_real_server_connections_total", **one) == 9
    assert value(m, "pask_real_server_packets_total", direction="in", **one) == 100
    assert value(m, "pask_real_server_bytes_total", direction="out", **one) == 90000
    svc_labels = dict(service="web", vip="10.99.100.1", port=80, protocol="tcp")
    assert value(m, "pask_service_connections_total", **svc_labels) == 12
    assert value(m, "pask_service_connections_active", **svc_labels) == 4      # sum of its dests
    assert value(m, "pask_service_bytes_total", direction="in", **svc_labels) == 7000
    assert value(m, "pask_service_real_servers_up", **svc_labels) == 2
    assert value(m, "pask_service_in_kernel", **svc_labels) == 1
    assert value(m, "pask_ipvs_read_success") == 1


def test_a_failed_server_goes_down_with_its_weight_and_the_transition_is_counted():
    d, b, probe, registry = daemon_for(config(web(A, B)))
    asyncio.run(d.run_round())
    probe.ok["10.99.2.11"] = False
    asyncio.run(d.run_round())
    m = scrape(registry)
    one = dict(service="web", real_server="10.99.2.11", real_port=8080)
    assert value(m, "pask_real_server_up", **one) == 0
    assert value(m, "pask_real_server_weight", **one) == 0
    assert value(m, "pask_real_server_up", **{**one, "real_server": "10.99.2.12"}) == 1
    assert value(m, "pask_health_transitions_total", to="down", **one) == 1
    assert "pask_health_transitions_total" not in m or all(
        lab["to"] == "down" for lab, _ in m["pask_health_transitions_total"])
    assert value(m, "pask_service_real_servers_up", service="web") == 1
    # 2 rounds x 2 servers; 3 passes and one failure, each 3 ms
    assert value(m, "pask_health_check_duration_seconds_count", service="web", result="pass") == 3
    assert value(m, "pask_health_check_duration_seconds_count", service="web", result="fail") == 1
    assert value(m, "pask_health_check_duration_seconds_bucket", service="web", result="pass",
                 le="0.0025") == 0
    assert value(m, "pask_health_check_duration_seconds_bucket", service="web", result="pass",
                 le="0.005") == 3


def test_removed_server_has_no_weight_series_but_stays_down():
    d, b, probe, registry = daemon_for(config(web(A, B, on_failure="remove")))
    probe.ok["10.99.2.12"] = False
    asyncio.run(d.run_round())
    m = scrape(registry)
    assert value(m, "pask_real_server_up", real_server="10.99.2.12") == 0
    assert [lab["real_server"] for lab, _ in m["pask_real_server_weight"]] == ["10.99.2.11"]


def test_fwmark_services_on_one_vip_and_port_never_share_a_series():
    """node_exporter #1296: two fwmark services of one VIP gave duplicate series."""
    inner = svc("inner", "10.99.100.1", 80, servers=[A], filters=[include(src="10.99.1.0/24")])
    outer = svc("outer", "10.99.100.1", 80, servers=[A], filters=[include(src="10.99.9.0/24")])
    plain = svc("plain", "10.99.100.1", 80, proto="udp", servers=[A])
    d, b, probe, registry = daemon_for(config(inner, outer, plain), {"inner": 1, "outer": 2})
    text = generate_latest(registry).decode()
    seen = set()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            ident = (sample.name, tuple(sorted(sample.labels.items())))
            assert ident not in seen, ident
            seen.add(ident)
    m = scrape(registry)
    assert {lab["service"] for lab, _ in m["pask_real_server_up"]} == {"inner", "outer", "plain"}
    assert value(m, "pask_real_server_weight", service="outer") == 3
    assert value(m, "pask_service_in_kernel", service="inner") == 1


def test_per_server_false_keeps_only_service_series():
    d, b, probe, registry = daemon_for(config(web(A, B)), per_server=False)
    probe.ok["10.99.2.11"] = False
    asyncio.run(d.run_round())
    m = scrape(registry)
    assert not [name for name in m if name.startswith("pask_real_server_")]
    assert any(name.startswith("pask_service_connections") for name in m)
    [(labels, count)] = m["pask_health_transitions_total"]
    assert labels == {"service": "web", "to": "down"} and count == 1


def test_a_service_not_yet_in_the_kernel_says_so():
    cfg = config(web(A), svc("filtered", "10.99.100.2", 80, servers=[A],
                             filters=[include(src="10.99.1.0/24")]))
    d, b, probe, registry = daemon_for(cfg, seed=False)
    m = scrape(registry)
    assert value(m, "pask_service_in_kernel", service="web") == 0
    assert value(m, "pask_service_in_kernel", service="filtered") == 0     # no fwmark allocated yet
    assert "pask_real_server_weight" not in m


def test_one_ipvs_dump_with_stats_per_scrape():
    d, b, probe, registry = daemon_for(config(web(A, B), web(A, name="api", proto="udp")))
    calls = []
    real = b.ipvs.observe
    b.ipvs.observe = lambda stats=False: calls.append(stats) or real(stats=stats)
    b.ipvs.observe_services = None           # any other read would fail the scrape
    scrape(registry)
    assert calls == [True]
    scrape(registry)
    assert calls == [True, True]


def test_an_ipvs_read_error_is_reported_not_raised():
    d, b, probe, registry = daemon_for(config(web(A)))
    errors = []

    def broken(stats=False):
        raise OSError("netlink: no such family")

    b.ipvs.observe = broken
    collector = KernelCollector(lambda: (d.config, d.fwmarks, {}), b.ipvs, None,
                                on_error=errors.append)
    m = scrape(registry_for(collector))
    assert value(m, "pask_ipvs_read_success") == 0
    assert "pask_real_server_up" not in m and len(errors) == 1


def test_last_apply_time_from_the_applied_marker(tmp_path):
    state = tmp_path / "state.json"
    d, b, probe, registry = daemon_for(config(web(A)), state_file=str(state))
    assert "pask_apply_last_success_timestamp_seconds" not in scrape(registry)
    mark_applied(str(state), 1767225600.25)
    assert value(scrape(registry), "pask_apply_last_success_timestamp_seconds") == 1767225600.25


def test_exported_names_follow_prometheus_conventions():
    d, b, probe, registry = daemon_for(config(web(A, B)))
    asyncio.run(d.run_round())
    types = {f.name: f.type for f in text_string_to_metric_families(generate_latest(registry).decode())}
    for name, kind in types.items():
        assert name.startswith("pask_"), name
        if kind == "counter":
            assert not name.endswith("_total")           # the parser strips it; the text has it
    assert types["pask_real_server_packets"] == "counter"
    assert types["pask_real_server_weight"] == "gauge"
    assert types["pask_health_check_duration_seconds"] == "histogram"


# -- the daemon serving it ------------------------------------------------------------------

def test_healthd_serves_metrics_over_http(tmp_path):
    cfg = config(web(A, B))
    d, b, probe, _ = daemon_for(cfg)
    d.config = dataclasses.replace(cfg, metrics=Metrics("127.0.0.1", 0))
    where = serve_metrics(d, lambda: b, str(tmp_path / "state.json"), d.log)
    host, port = where.rsplit(":", 1)
    assert host == "127.0.0.1" and int(port) > 0
    with urllib.request.urlopen(f"http://{where}/metrics", timeout=10) as response:
        body = response.read().decode()
    assert 'pask_real_server_weight{port="80",protocol="tcp",real_port="8080",' \
           'real_server="10.99.2.11",service="web",vip="10.99.100.1"} 3.0' in body
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(f"http://{where}/nothing", timeout=10)
    assert info.value.code == 404

    # Prometheus asks for gzip: the same text, compressed (once per snapshot, not per scrape)
    request = urllib.request.Request(f"http://{where}/metrics", headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(request, timeout=10) as response:
        assert response.headers["Content-Encoding"] == "gzip"
        text = gzip.decompress(response.read()).decode()
    assert 'real_server="10.99.2.11",service="web",vip="10.99.100.1"} 3.0' in text
    assert text.splitlines()[:3] == body.splitlines()[:3]


@pytest.mark.parametrize("header, gzipped", [
    ("gzip", True), ("deflate, gzip", True), ("x-gzip", True), ("GZip;q=0.5", True),
    ("", False), ("deflate", False), ("gzip;q=0", False), ("gzip;q=0.0", False), ("identity", False)])
def test_gzip_only_for_a_client_that_accepts_it(header, gzipped):
    from pask_ipvs.health.metrics import accepts_gzip
    assert accepts_gzip(header) is gzipped


def test_a_listen_address_that_cannot_be_bound_stops_the_daemon_at_start(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        path = tmp_path / "pask.yaml"
        path.write_text(f"""\
version: 1
metrics: {{listen: "127.0.0.1:{port}"}}
services:
  - name: web
    vip: 10.99.100.1
    port: 80
    health: {{type: tcp}}
    real_servers: [{{address: 10.99.2.11, port: 8080}}]
""")
        b = fake_backends()
        code = main([str(path), "--state-file", str(tmp_path / "s.json"),
                     "--health-file", str(tmp_path / "h.json")], backends=lambda: b)
    assert code == 1
    err = capsys.readouterr().err
    assert f"pask-healthd: cannot serve metrics on 127.0.0.1:{port} (metrics.listen): " \
           "Address already in use" in err


def test_a_reload_keeps_the_metrics_settings_it_started_with():
    cfg = dataclasses.replace(config(web(A)), metrics=Metrics("127.0.0.1", 9640))
    d, b, probe, registry = daemon_for(cfg)
    moved = dataclasses.replace(cfg, metrics=Metrics("127.0.0.1", 9641))
    d.loader = lambda: (moved, {})
    assert d.reload()
    assert d.config.metrics == Metrics("127.0.0.1", 9640)
    assert "metrics settings take effect when pask-healthd restarts" in d.log.stream.getvalue()


# -- snapshots: a big table never makes a scrape slow ------------------------------------------

class SlowCollector:
    """A gauge that counts its collections; blocks while ``gate`` is clear."""

    def __init__(self):
        import threading
        self.n = 0
        self.gate = threading.Event()
        self.gate.set()

    def describe(self):
        return ()

    def collect(self):
        from prometheus_client.core import GaugeMetricFamily
        assert self.gate.wait(timeout=30)
        self.n += 1
        g = GaugeMetricFamily("pask_test_collections", "collections so far")
        g.add_metric((), self.n)
        yield g


def collections(body: bytes) -> float:
    [family] = text_string_to_metric_families(body.decode())
    return family.samples[0].value


def test_a_fast_snapshot_is_served_fresh_every_scrape():
    from pask_ipvs.health.metrics import Snapshots

    slow = SlowCollector()
    registry = registry_for()
    registry.register(slow)
    snaps = Snapshots(registry, budget=5.0)
    assert [collections(snaps.get()) for _ in range(3)] == [1, 2, 3]
    assert collections(gzip.decompress(snaps.get(gzipped=True))) == 4    # the same snapshot, gzipped
    assert collections(snaps.get()) == 5


def test_a_slow_snapshot_is_not_waited_for_past_the_budget():
    import time as _time
    from pask_ipvs.health.metrics import Snapshots

    slow = SlowCollector()
    registry = registry_for()
    registry.register(slow)
    snaps = Snapshots(registry, budget=0.05)
    assert collections(snaps.get()) == 1            # the first: waited for, however long
    slow.gate.clear()                               # the next collection hangs
    t = _time.monotonic()
    assert collections(snaps.get()) == 1            # the last finished one, within the budget
    assert _time.monotonic() - t < 5
    assert collections(snaps.get()) == 1            # still running: no second collection started
    slow.gate.set()
    deadline = _time.monotonic() + 30
    while snaps.running:
        assert _time.monotonic() < deadline
        _time.sleep(0.01)
    assert slow.n == 2                              # one collection for those two scrapes
    assert collections(snaps.get()) == 3


def test_a_failing_snapshot_keeps_the_last_good_one():
    from pask_ipvs.health.metrics import Snapshots

    slow = SlowCollector()
    registry = registry_for()
    registry.register(slow)
    errors = []
    snaps = Snapshots(registry, budget=5.0, on_error=errors.append)
    assert collections(snaps.get()) == 1
    slow.collect = lambda: (_ for _ in ()).throw(RuntimeError("collector bug"))
    assert collections(snaps.get()) == 1
    assert [str(e) for e in errors] == ["collector bug"]
    empty = Snapshots(registry, budget=5.0, on_error=errors.append)
    assert empty.get() is None                      # nothing ever made: the server answers 500


def test_ha_state_is_the_role_keepalived_last_reported(tmp_path):
    from pask_ipvs.model import Ha, HaNode
    from pask_ipvs.render.ha import EnginePaths

    state = tmp_path / "state.json"
    pair = Ha(virtual_router_id=51, peer_link="eth2",
              nodes=(HaNode("lb1", "10.99.3.1", 200), HaNode("lb2", "10.99.3.2", 100)))
    d, b, probe, registry = daemon_for(dataclasses.replace(config(web(A)), ha=pair), state_file=str(state))
    samples = scrape(registry)
    assert [value(samples, "pask_ha_state", state=s) for s in ("MASTER", "BACKUP", "FAULT")] == [0, 0, 0]
    paths = EnginePaths.for_state_file(str(state))
    (tmp_path / "ha").mkdir()
    (tmp_path / "ha" / "role").write_text("BACKUP 1767225600\n")
    assert paths.role == str(tmp_path / "ha" / "role")
    samples = scrape(registry)
    assert [value(samples, "pask_ha_state", state=s) for s in ("MASTER", "BACKUP", "FAULT")] == [0, 1, 0]


def test_no_ha_state_without_ha(tmp_path):
    d, b, probe, registry = daemon_for(config(web(A)), state_file=str(tmp_path / "state.json"))
    assert "pask_ha_state" not in scrape(registry)
