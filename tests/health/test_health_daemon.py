"""pask-healthd's loop against the fake kernel: scripted probes for the logic, real
loopback listeners (127.0.0.1) with very short intervals for the timing."""

from __future__ import annotations

import asyncio
import dataclasses
import io
import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time

import pytest


from builders import config as make_config, rs, svc
from pask_ipvs.backend.fake import fake_backends
from pask_ipvs.cli.healthd import main
from pask_ipvs.desired import expand
from pask_ipvs.errors import ConfigError, Problem
from pask_ipvs.health.checks import checks_of
from pask_ipvs.health.daemon import HealthDaemon
from pask_ipvs.health.events import EventLog
from pask_ipvs.health.probes import Result, Target
from pask_ipvs.health_file import health_key
from pask_ipvs.model import Health
from pask_ipvs.objects import DestKey, IpvsDest, ServiceKey

LOOPBACK = "127.0.0.1"
WEB = ServiceKey.virtual("tcp", "10.99.100.1", 80)
PY = sys.executable


def tcp(interval: float = 2.0, timeout: float = 1.0, rise: int = 2, fall: int = 3) -> Health:
    return Health(type="tcp", interval=interval, timeout=timeout, rise=rise, fall=fall)


def web(*servers, health: Health | None = None, on_failure: str = "inhibit", name: str = "web",
        vip: str = "10.99.100.1"):
    s = svc(name, vip, 80, servers=list(servers), on_failure=on_failure)
    return dataclasses.replace(s, health=health or tcp(rise=1, fall=1))


A = rs("10.99.2.11", 8080, weight=3)
B = rs("10.99.2.12", 8080, weight=2)
SORRY = rs("10.99.2.99", 8080, weight=5, state="backup")


class ScriptedProbe:
    """Probe results by (addr, port): True/False, changed by the test between rounds."""

    def __init__(self, default: bool = True):
        self.default = default
        self.ok: dict[tuple[str, int], bool] = {}
        self.calls: list[tuple[str, int]] = []

    async def __call__(self, health: Health, target: Target) -> Result:
        self.calls.append((target.addr, target.port))
        ok = self.ok.get((target.addr, target.port), self.default)
        return Result(ok, "ok" if ok else "connect: connection refused", 0.001)


def build(config, *, probe=None, health_file=None, previous=None, seed=True, **kw):
    backends = fake_backends()
    if seed:   # what pask-apply left: the services and dests of the config, all up
        desired = expand(config, {}, {})
        backends.ipvs.seed(desired.services.values(), desired.dests.values())
    log = EventLog(stream=io.StringIO())
    daemon = HealthDaemon(config, backends, health_file=health_file, previous=previous,
                          probe=probe or ScriptedProbe(), log=log, rng=random.Random(7), **kw)
    return daemon, backends


def weight(backends, addr: str, port: int = 8080, key: ServiceKey = WEB) -> int | None:
    dest = backends.ipvs.dests.get(key, {}).get(DestKey(key, addr, port))
    return None if dest is None else dest.weight


def events(daemon, name: str) -> list[dict]:
    lines = daemon.log.stream.getvalue().splitlines()
    return [e for e in map(json.loads, lines) if e["event"] == name]


# -- one transition, one kernel write -----------------------------------------------

def test_steady_state_writes_nothing():
    d, b = build(make_config(web(A, B)))
    for _ in range(5):
        asyncio.run(d.run_round())
    assert b.ipvs.writes == 0 and d.kernel_writes == 0


def test_a_transition_costs_exactly_one_kernel_write(tmp_path):
    probe = ScriptedProbe()
    hf = tmp_path / "health.json"
    d, b = build(make_config(web(A, B)), probe=probe, health_file=str(hf))
    asyncio.run(d.run_round())
    probe.ok[("10.99.2.11", 8080)] = False
    [t] = asyncio.run(d.run_round())
    assert (t.old, t.new) == (True, False)
    assert b.ipvs.writes == 1 and d.kernel_writes == 1
    assert weight(b, "10.99.2.11") == 0 and weight(b, "10.99.2.12") == 2
    [op] = b.ipvs.applied
    assert (op.action, op.kind, op.reason, op.service) == ("set", "dest", "health", "web")
    # and back: one more write
    probe.ok[("10.99.2.11", 8080)] = True
    asyncio.run(d.run_round())
    assert b.ipvs.writes == 2 and weight(b, "10.99.2.11") == 3


def test_health_file_is_written_before_the_kernel(tmp_path):
    hf = tmp_path / "health.json"
    seen = []

    def execute(plan, backends, **kw):
        seen.append(json.loads(hf.read_text()))
        from pask_ipvs.apply import execute as real
        return real(plan, backends, **kw)

    probe = ScriptedProbe()
    d, b = build(make_config(web(A, B)), probe=probe, health_file=str(hf), execute=execute)
    probe.ok[("10.99.2.12", 8080)] = False
    asyncio.run(d.run_round())
    entry = seen[0]["servers"]["web/10.99.2.12:8080"]
    assert entry["up"] is False and entry["detail"] == "connect: connection refused"
    data = json.loads(hf.read_text())
    assert data["version"] == 1
    assert set(data["servers"]) == {"web/10.99.2.11:8080", "web/10.99.2.12:8080"}
    assert data["servers"]["web/10.99.2.11:8080"]["up"] is True
    assert isinstance(data["servers"]["web/10.99.2.11:8080"]["since"], float)


def test_transition_is_logged_as_one_json_line():
    probe = ScriptedProbe()
    d, b = build(make_config(web(A, B, health=tcp(rise=2, fall=2))), probe=probe)
    probe.ok[("10.99.2.11", 8080)] = False
    asyncio.run(d.run_round())
    assert events(d, "transition") == []
    asyncio.run(d.run_round())
    [e] = events(d, "transition")
    assert e["service"] == "web" and e["server"] == "10.99.2.11:8080"
    assert (e["old"], e["new"]) == ("up", "down")
    assert e["reason"] == "2 consecutive failures (fall 2)"
    assert e["detail"] == "connect: connection refused"
    [k] = events(d, "kernel")
    assert "weight 3 -> 0" in k["op"] and k["ok"] is True


def test_on_failure_remove_deletes_and_adds_back():
    probe = ScriptedProbe()
    d, b = build(make_config(web(A, B, on_failure="remove")), probe=probe)
    probe.ok[("10.99.2.11", 8080)] = False
    asyncio.run(d.run_round())
    assert weight(b, "10.99.2.11") is None and [op.action for op in b.ipvs.applied] == ["delete"]
    probe.ok[("10.99.2.11", 8080)] = True
    asyncio.run(d.run_round())
    assert weight(b, "10.99.2.11") == 3 and b.ipvs.writes == 2


def test_sorry_server_takes_over_when_all_enabled_servers_are_down():
    probe = ScriptedProbe()
    d, b = build(make_config(web(A, B, SORRY)), probe=probe)
    assert weight(b, "10.99.2.99") == 0
    probe.ok[("10.99.2.11", 8080)] = False
    asyncio.run(d.run_round())
    assert weight(b, "10.99.2.99") == 0
    probe.ok[("10.99.2.12", 8080)] = False
    writes = d.kernel_writes
    asyncio.run(d.run_round())
    assert d.kernel_writes == writes + 1          # B to 0 and the sorry server up: one batch
    assert (weight(b, "10.99.2.11"), weight(b, "10.99.2.12"), weight(b, "10.99.2.99")) == (0, 0, 5)
    probe.ok[("10.99.2.12", 8080)] = True
    asyncio.run(d.run_round())
    assert (weight(b, "10.99.2.12"), weight(b, "10.99.2.99")) == (2, 0)


def test_disabled_server_is_probed_but_never_weighted():
    probe = ScriptedProbe()
    off = rs("10.99.2.13", 8080, weight=4, state="disabled")
    d, b = build(make_config(web(A, off)), probe=probe)
    asyncio.run(d.run_round())
    assert ("10.99.2.13", 8080) in probe.calls
    assert weight(b, "10.99.2.13") == 0 and b.ipvs.writes == 0


def test_two_transitions_in_one_round_of_two_services():
    probe = ScriptedProbe()
    api = web(rs("10.99.3.11", 8080), rs("10.99.3.12", 8080), name="api", vip="10.99.100.2")
    d, b = build(make_config(web(A, B), api), probe=probe)
    probe.ok[("10.99.2.11", 8080)] = False
    probe.ok[("10.99.3.11", 8080)] = False
    assert len(asyncio.run(d.run_round())) == 2
    assert b.ipvs.writes == 2 and d.kernel_writes == 1
    api_key = ServiceKey.virtual("tcp", "10.99.100.2", 80)
    assert weight(b, "10.99.3.11", key=api_key) == 0


def test_health_port_is_probed_instead_of_the_server_port():
    probe = ScriptedProbe()
    h = dataclasses.replace(tcp(), port=9100)
    d, b = build(make_config(web(A, health=h)), probe=probe)
    asyncio.run(d.run_round())
    assert probe.calls == [("10.99.2.11", 9100)]


def test_services_without_health_check_are_not_probed():
    probe = ScriptedProbe()
    d, b = build(make_config(web(A, health=Health())), probe=probe)
    assert d.checks == {}
    asyncio.run(d.run_round())
    assert probe.calls == [] and b.ipvs.writes == 0


# -- what the daemon must not touch ------------------------------------------------------

def test_a_draining_dest_not_in_the_config_is_left_alone():
    probe = ScriptedProbe()
    d, b = build(make_config(web(A, B)), probe=probe)
    old = IpvsDest(WEB, "10.99.2.50", 8080, "masq", 0)        # pask-apply is draining it
    b.ipvs.seed(dests=[old])
    d.observe()
    probe.ok[("10.99.2.11", 8080)] = False
    asyncio.run(d.run_round())
    assert weight(b, "10.99.2.50") == 0
    assert [op.action for op in b.ipvs.applied] == ["set"]


def test_a_service_missing_from_the_kernel_is_not_created():
    probe = ScriptedProbe()
    d, b = build(make_config(web(A, B)), probe=probe, seed=False)
    probe.ok[("10.99.2.11", 8080)] = False
    asyncio.run(d.run_round())
    assert b.ipvs.services == {} and b.ipvs.writes == 0
    assert events(d, "service_missing")[0]["service"] == "web"


def test_start_up_reconciles_a_server_stuck_at_weight_0():
    """kubernetes #92019: after a restart no server may stay at weight 0 while healthy."""
    config = make_config(web(A, B))
    d, b = build(config)
    b.ipvs.seed(dests=[IpvsDest(WEB, "10.99.2.11", 8080, "masq", 0)])
    d.observe()
    asyncio.run(d.run_round())
    assert weight(b, "10.99.2.11") == 3


def test_start_up_from_a_health_file_that_says_down(tmp_path):
    previous = {"web/10.99.2.11:8080": {"up": False, "since": 5.0, "detail": "refused"}}
    probe = ScriptedProbe()
    d, b = build(make_config(web(A, B, health=tcp(rise=2, fall=3))), probe=probe,
                 previous=previous)
    asyncio.run(d.run_round())             # first round: the file's state is applied
    assert weight(b, "10.99.2.11") == 0
    asyncio.run(d.run_round())             # second success: rise 2 reached
    assert weight(b, "10.99.2.11") == 3


# -- errors ----------------------------------------------------------------------------------

def test_kernel_error_re_observes_and_retries():
    probe = ScriptedProbe()
    d, b = build(make_config(web(A, B)), probe=probe)
    d.observe()
    # someone deletes the dest behind the daemon's back: its view is stale
    del b.ipvs.dests[WEB][DestKey(WEB, "10.99.2.11", 8080)]
    probe.ok[("10.99.2.11", 8080)] = False
    asyncio.run(d.run_round())
    assert events(d, "kernel_error")
    assert d.dirty == {"web"} and d.retry_at is not None
    assert d.flush() is True                       # re-observed: now an add at weight 0
    assert weight(b, "10.99.2.11") == 0 and d.dirty == set()


def test_plan_error_does_not_stop_the_daemon():
    def broken_expand(*a, **k):
        raise KeyError("fwmark of web")
    d, b = build(make_config(web(A)), expand=broken_expand)
    asyncio.run(d.run_round())
    assert events(d, "plan_failed") and d.dirty == {"web"}


# -- reload ------------------------------------------------------------------------------------

def test_reload_keeps_the_health_of_servers_that_stay(tmp_path):
    probe = ScriptedProbe()
    C = rs("10.99.2.13", 8080, weight=7)
    first = make_config(web(A, B))
    second = make_config(web(A, C, health=tcp(interval=1.0, rise=1, fall=1)))
    hf = tmp_path / "health.json"
    d, b = build(first, probe=probe, health_file=str(hf), loader=lambda: (second, {}))
    probe.ok[("10.99.2.11", 8080)] = False
    asyncio.run(d.run_round())
    assert weight(b, "10.99.2.11") == 0
    assert d.reload() is True
    assert d.machine.servers["web/10.99.2.11:8080"].up is False         # kept
    assert d.machine.servers["web/10.99.2.13:8080"].up is True          # new: starts up
    assert "web/10.99.2.12:8080" not in d.machine.servers               # removed: forgotten
    assert d.checks["web/10.99.2.13:8080"].health.interval == 1.0
    d.flush()
    assert weight(b, "10.99.2.11") == 0                                  # not reset to 3
    assert weight(b, "10.99.2.13") == 7                                  # added (config)
    assert weight(b, "10.99.2.12") == 2      # a dest the config dropped: pask-apply's to remove
    assert set(json.loads(hf.read_text())["servers"]) == {"web/10.99.2.11:8080",
                                                          "web/10.99.2.13:8080"}
    [e] = events(d, "reload")
    assert e["servers"] == 2


def test_reload_with_a_bad_config_keeps_the_running_one():
    def loader():
        raise ConfigError([Problem("x.yaml", 3, "$.services[0].port", "must be 1..65535")])
    d, b = build(make_config(web(A, B)), loader=loader)
    before = d.checks
    assert d.reload() is False
    assert d.checks is before
    [e] = events(d, "reload_failed")
    assert e["errors"] == ["x.yaml:3: $.services[0].port: must be 1..65535"]


def test_reload_from_a_file(tmp_path):
    path = tmp_path / "pask.yaml"
    path.write_text(config_yaml(18080, 18081))
    from pask_ipvs.cli.healthd import load_inputs
    config, fwmarks = load_inputs(str(path), str(tmp_path / "state.json"))
    d, b = build(config, loader=lambda: load_inputs(str(path), str(tmp_path / "state.json")))
    path.write_text(config_yaml(18080, 18082))
    assert d.reload()
    assert {c.target.port for c in d.checks.values()} == {18080, 18082}


# -- a reload costs what changed (keepalived's reload is the peer) -----------------------------

API = ServiceKey.virtual("tcp", "10.99.100.2", 80)
DNS = ServiceKey.virtual("tcp", "10.99.100.3", 80)


def three(weight_a: int = 3):
    """Three services with no health check (as keepalived's real servers without a checker)."""
    none = Health(type="none", interval=2, timeout=1, rise=2, fall=3)
    return make_config(web(rs("10.99.2.11", 8080, weight=weight_a), B, health=none),
                       web(A, B, name="api", vip="10.99.100.2", health=none),
                       web(A, B, name="dns", vip="10.99.100.3", health=none))


def settled(config, **kw):
    """A daemon that has started, read the kernel and written what it had to."""
    d, b = build(config, **kw)
    d.flush()
    b.ipvs.observe_services_calls.clear()
    b.ipvs.observe_calls = b.ipvs.service_digest_calls = 0
    return d, b


def test_a_reload_with_one_weight_changed_reads_that_service_and_writes_once():
    new = three(weight_a=9)
    d, b = settled(three(), loader=lambda: (new, {}))
    assert d.reload()
    assert b.ipvs.observe_calls == 0 and b.ipvs.observe_services_calls == [[WEB]]
    assert d.dirty == {"web"}
    d.flush()
    assert b.ipvs.writes == 1 and weight(b, "10.99.2.11") == 9
    [e] = events(d, "reload")
    assert e["changed"] == 1
    [k] = events(d, "kernel")
    assert k["op"].endswith("weight 3 -> 9")            # the config's change: no "(health)"


def test_a_reload_of_the_same_config_reads_and_writes_nothing():
    same = three()
    d, b = settled(same, loader=lambda: (same, {}))
    assert d.reload() and d.dirty == set()
    d.flush()
    assert b.ipvs.writes == 0 and b.ipvs.observe_services_calls == [] and b.ipvs.observe_calls == 0
    assert d.resync() == set()                       # fingerprints agree: nothing read again
    assert b.ipvs.service_digest_calls == 1 and b.ipvs.observe_services_calls == []


def test_after_a_reload_resync_finds_drift_elsewhere_and_repairs_it():
    new = three(weight_a=9)
    d, b = settled(three(), loader=lambda: (new, {}))
    b.ipvs.seed((), [IpvsDest(API, "10.99.2.12", 8080, "masq", 77)])   # someone, by hand
    assert d.reload()
    d.flush()                                          # the reload's own change first
    assert weight(b, "10.99.2.11") == 9 and b.ipvs.writes == 1
    assert d.resync() == {"api", "web"}                # web: written by us, its digest unknown
    d.flush()
    assert weight(b, "10.99.2.12", key=API) == 2 and b.ipvs.writes == 2
    [e] = events(d, "drift")
    assert e["services"] == ["api"]                    # our own write is not called drift
    assert events(d, "kernel")[-1]["op"].endswith("weight 77 -> 2  (drift)")
    assert d.resync() == {"api"}                       # our repair: read back once, no write
    d.flush()
    assert b.ipvs.writes == 2 and len(events(d, "drift")) == 1
    assert d.resync() == set()


def test_a_reload_forgets_removed_services_and_keeps_unchanged_checks():
    first = make_config(web(A, B), web(A, B, name="api", vip="10.99.100.2"))
    second = make_config(web(A, B))
    d, b = build(first, loader=lambda: (second, {}))
    kept = d.checks["web/10.99.2.11:8080"]
    d.flush()
    d.dirty.add("api")                    # a write of the removed service still pending
    assert d.reload()
    assert "api" not in d.dirty
    assert d.checks["web/10.99.2.11:8080"] is kept
    assert set(d.checks) == {"web/10.99.2.11:8080", "web/10.99.2.12:8080"}
    assert set(d.machine.servers) == set(d.checks)


def test_a_reload_rewrites_the_health_file_only_when_servers_come_or_go(tmp_path):
    hf = tmp_path / "health.json"
    first = make_config(web(A, B), web(A, B, name="api", vip="10.99.100.2"))
    heavier = make_config(web(rs("10.99.2.11", 8080, weight=9), B), web(A, B, name="api", vip="10.99.100.2"))
    more = make_config(web(rs("10.99.2.11", 8080, weight=9), B, SORRY), web(A, B, name="api", vip="10.99.100.2"))
    configs = iter([heavier, more])
    d, b = build(first, health_file=str(hf), loader=lambda: (next(configs), {}))
    d.flush()
    assert not d.health_dirty
    assert d.reload() and not d.health_dirty            # a weight: the same servers
    assert d.reload() and d.health_dirty                # a server more
    d.flush()
    assert "web/10.99.2.99:8080" in json.loads(hf.read_text())["servers"]


def test_a_reload_that_changes_a_fwmark_reconciles_that_service():
    config = three()
    d, b = settled(config, loader=lambda: (config, {"dns": 7}))
    assert d.reload() and d.dirty == {"dns"}


def test_sighup_applies_the_change_before_looking_for_drift():
    new = three(weight_a=9)
    d, b = settled(three(), loader=lambda: (new, {}))
    order = []
    execute = d.execute
    d.execute = lambda *a, **k: (order.append("write"), execute(*a, **k))[1]
    fingerprint = b.ipvs.service_digests
    b.ipvs.service_digests = lambda: (order.append("fingerprint"), fingerprint())[1]

    async def run():
        task = asyncio.create_task(d.serve())
        while not events(d, "ready"):
            await asyncio.sleep(0.01)
        d.request_reload()
        deadline = time.monotonic() + 10
        while "fingerprint" not in order:
            assert time.monotonic() < deadline, "no resync after the reload"
            await asyncio.sleep(0.01)
        d.stop()
        await task
    asyncio.run(run())
    assert order == ["write", "fingerprint"] and weight(b, "10.99.2.11") == 9


def test_checks_of():
    checks = checks_of(make_config(web(A, health=dataclasses.replace(tcp(), port=9000))).services)
    [c] = checks.values()
    assert c.key == health_key("web", "10.99.2.11", 8080)
    assert (c.service, c.server, c.target) == ("web", "10.99.2.11:8080",
                                               Target("10.99.2.11", 9000, "web"))


# -- the real loop on loopback listeners -----------------------------------------------------

class Listener:
    """A TCP listener on 127.0.0.1 that can be killed and restarted on the same port."""

    def __init__(self, port: int = 0):
        self.port = port
        self.server: asyncio.base_events.Server | None = None

    async def start(self) -> "Listener":
        async def handle(reader, writer):
            writer.close()
        self.server = await asyncio.start_server(handle, LOOPBACK, self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def kill(self) -> None:
        self.server.close()
        await self.server.wait_closed()


async def wait_for(predicate, timeout: float, step: float = 0.005) -> float:
    """Seconds until predicate() holds; fails at the timeout."""
    t0 = time.monotonic()
    while not predicate():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(step)
    return time.monotonic() - t0


def test_killed_listener_goes_to_weight_0_after_fall_and_back_after_rise(tmp_path):
    interval, fall, rise = 0.1, 3, 2
    hf = tmp_path / "health.json"

    async def scenario():
        one, two = await Listener().start(), await Listener().start()
        s = web(rs(LOOPBACK, one.port, weight=5), rs(LOOPBACK, two.port, weight=5),
                health=tcp(interval=interval, timeout=0.1, rise=rise, fall=fall))
        d, b = build(make_config(s), health_file=str(hf))
        from pask_ipvs.health.probes import run_probe
        d.probe = run_probe
        task = asyncio.create_task(d.serve())
        await asyncio.sleep(2 * interval)
        assert d.kernel_writes == 0
        await one.kill()
        down = await wait_for(lambda: weight(b, LOOPBACK, one.port) == 0, interval * fall + 1)
        assert d.kernel_writes == 1 and b.ipvs.writes == 1
        assert weight(b, LOOPBACK, two.port) == 5
        assert json.loads(hf.read_text())["servers"][f"web/{LOOPBACK}:{one.port}"]["up"] is False
        await Listener(one.port).start()
        up = await wait_for(lambda: weight(b, LOOPBACK, one.port) == 5, interval * rise + 1)
        assert d.kernel_writes == 2 and b.ipvs.writes == 2
        d.stop()
        await task
        return down, up

    down, up = asyncio.run(scenario())
    # fall failures, the first within one interval of the kill (the upper bound is the
    # contract, interval x fall + 1 s: generous for a loaded CI machine)
    assert (fall - 1) * interval - 0.05 <= down <= fall * interval + 1
    assert (rise - 1) * interval - 0.05 <= up <= rise * interval + 1


def test_probe_start_times_are_spread_over_the_interval():
    first: dict[tuple[str, int], float] = {}

    async def probe(health, target):
        first.setdefault((target.addr, target.port), time.monotonic())
        return Result(True, "ok", 0.0)

    async def scenario():
        servers = [rs(f"10.99.2.{i}", 8080) for i in range(1, 41)]
        d, b = build(make_config(web(*servers, health=tcp(interval=0.4))), probe=probe)
        task = asyncio.create_task(d.serve())
        await wait_for(lambda: len(first) == 40, 5)
        d.stop()
        await task

    asyncio.run(scenario())
    spread = max(first.values()) - min(first.values())
    assert spread > 0.25, f"first probes within {spread:.3f}s of each other: no jitter"


def test_hanging_server_is_bounded_by_the_timeout_and_does_not_hold_up_others():
    async def hang(reader, writer):
        await asyncio.sleep(10)

    async def healthy(reader, writer):
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n")
        writer.close()

    async def scenario():
        hung = await asyncio.start_server(hang, LOOPBACK, 0)
        good = await asyncio.start_server(healthy, LOOPBACK, 0)
        hport, gport = (s.sockets[0].getsockname()[1] for s in (hung, good))
        h = Health(type="http", interval=0.1, timeout=0.1, rise=1, fall=2)
        d, b = build(make_config(web(rs(LOOPBACK, hport), rs(LOOPBACK, gport), health=h)))
        from pask_ipvs.health.probes import run_probe
        d.probe = run_probe
        task = asyncio.create_task(d.serve())
        await wait_for(lambda: weight(b, LOOPBACK, hport) == 0, 0.1 * 2 + 1)
        await asyncio.sleep(0.3)
        d.stop()
        await task
        hung.close()
        good.close()
        return d, b, gport

    d, b, gport = asyncio.run(scenario())
    assert weight(b, LOOPBACK, gport) == 1
    [e] = events(d, "transition")
    assert e["detail"] == "timeout after 0.1s (status line)"


def test_stop_leaves_the_kernel_as_it_is():
    probe = ScriptedProbe(default=False)

    async def scenario():
        d, b = build(make_config(web(A, B, health=tcp(interval=0.05, rise=1, fall=1))),
                     probe=probe)
        task = asyncio.create_task(d.serve())
        await wait_for(lambda: weight(b, "10.99.2.11") == 0 and weight(b, "10.99.2.12") == 0, 2)
        writes = b.ipvs.writes
        d.stop()
        await task
        return b, writes

    b, writes = asyncio.run(scenario())
    assert b.ipvs.writes == writes and WEB in b.ipvs.services


# -- the command line -------------------------------------------------------------------

def config_yaml(*ports: int, interval: float = 0.1, rise: int = 1, fall: int = 1) -> str:
    servers = "\n".join(f"      - {{address: 127.0.0.1, port: {p}, weight: 4}}" for p in ports)
    return textwrap.dedent("""\
        version: 1
        vip_interface: null
        services:
          - name: web
            vip: 10.99.100.1
            port: 80
            real_servers:
        {servers}
            health: {{type: tcp, interval: {interval}, timeout: {interval}, rise: {rise}, fall: {fall}}}
        """).format(servers=servers, interval=interval, rise=rise, fall=fall)


def test_main_config_error_exits_1_with_file_line_messages(tmp_path, capsys):
    path = tmp_path / "bad.yaml"
    path.write_text(config_yaml(18080).replace("weight: 4", "weight: -4"))
    assert main([str(path), "--state-file", str(tmp_path / "s.json"),
                 "--health-file", str(tmp_path / "h.json")], backends=fake_backends) == 1
    err = capsys.readouterr().err
    assert f"{path}:8: $.services[0].real_servers[0].weight:" in err
    assert not (tmp_path / "h.json").exists()


def test_main_once_probes_applies_and_exits(tmp_path, capsys):
    async def listen():
        return await asyncio.start_server(lambda r, w: w.close(), LOOPBACK, 0)

    loop = asyncio.new_event_loop()
    try:
        server = loop.run_until_complete(listen())
        alive = server.sockets[0].getsockname()[1]
        dead = free_tcp_port()
        path = tmp_path / "pask.yaml"
        path.write_text(config_yaml(alive, dead))
        b = fake_backends()
        from pask_ipvs.cli.healthd import load_inputs
        config, _ = load_inputs(str(path), str(tmp_path / "s.json"))
        desired = expand(config, {}, {})
        b.ipvs.seed(desired.services.values(), desired.dests.values())
        hf = tmp_path / "h.json"
        # the probes need the listener's loop running: run main in a thread-free way
        code = loop.run_until_complete(asyncio.to_thread(
            main, [str(path), "--once", "--state-file", str(tmp_path / "s.json"),
                   "--health-file", str(hf)], backends=lambda: b))
    finally:
        server.close()
        loop.close()
    assert code == 0
    servers = json.loads(hf.read_text())["servers"]
    assert servers[f"web/127.0.0.1:{alive}"]["up"] is True
    assert servers[f"web/127.0.0.1:{dead}"]["up"] is False
    assert weight(b, LOOPBACK, dead, WEB) == 0 and weight(b, LOOPBACK, alive, WEB) == 4


def free_tcp_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


SIGNAL_SCRIPT = """
import sys
from pask_ipvs.backend.fake import fake_backends
from pask_ipvs.cli.healthd import load_inputs, main
from pask_ipvs.desired import expand
config, _ = load_inputs(sys.argv[1], sys.argv[2])
b = fake_backends()
d = expand(config, {}, {})
b.ipvs.seed(d.services.values(), d.dests.values())
code = main([sys.argv[1], "--state-file", sys.argv[2], "--health-file", sys.argv[3]], backends=lambda: b)
print("writes", b.ipvs.writes, flush=True)
sys.exit(code)
"""


def test_sighup_reloads_and_sigterm_exits_0(tmp_path):
    path = tmp_path / "pask.yaml"
    dead = free_tcp_port()
    path.write_text(config_yaml(dead, interval=0.05))
    hf = tmp_path / "h.json"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.Popen([PY, "-c", SIGNAL_SCRIPT, str(path), str(tmp_path / "s.json"), str(hf)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=root))
    try:
        deadline = time.monotonic() + 20
        while not (hf.exists() and f":{dead}" in hf.read_text()
                   and '"up": false' in hf.read_text()):
            assert time.monotonic() < deadline, "the dead server never went down"
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        other = free_tcp_port()
        path.write_text(config_yaml(dead, other, interval=0.05))
        proc.send_signal(signal.SIGHUP)
        while f":{other}" not in hf.read_text():
            assert time.monotonic() < deadline, "SIGHUP did not reload"
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    logged = [json.loads(line)["event"] for line in err.splitlines() if line.startswith("{")]
    assert logged[0] == "start" and "reload" in logged and logged[-1] == "stop"
    assert json.loads(hf.read_text())["servers"][f"web/127.0.0.1:{dead}"]["up"] is False


def test_a_service_created_after_start_up_is_seen_at_the_next_transition():
    probe = ScriptedProbe()
    config = make_config(web(A, B))
    d, b = build(config, probe=probe, seed=False)
    asyncio.run(d.run_round())                           # nothing in the kernel yet
    desired = expand(config, {}, {})
    b.ipvs.seed(desired.services.values(), desired.dests.values())   # pask-apply runs now
    probe.ok[("10.99.2.11", 8080)] = False
    asyncio.run(d.run_round())
    assert weight(b, "10.99.2.11") == 0 and b.ipvs.writes == 1


def test_verbose_logs_every_probe_quiet_logs_only_changes():
    probe = ScriptedProbe()
    d, b = build(make_config(web(A, B)), probe=probe)
    asyncio.run(d.run_round())
    assert events(d, "probe") == []
    d.log.verbose = True
    asyncio.run(d.run_round())
    assert {(e["server"], e["ok"], e["level"]) for e in events(d, "probe")} == {
        ("10.99.2.11:8080", True, "debug"), ("10.99.2.12:8080", True, "debug")}


def test_main_usage_error_exits_1(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--no-such-option", "x.yaml"], backends=fake_backends)
    assert e.value.code == 1
    assert "pask-healthd: error:" in capsys.readouterr().err


def test_a_storm_of_transitions_is_written_in_few_batches(tmp_path):
    """50 servers fail at staggered moments: far fewer writes than transitions."""
    servers = [rs(f"10.99.2.{i}", 8080) for i in range(1, 51)]
    probe = ScriptedProbe(default=False)

    async def scenario():
        d, b = build(make_config(web(*servers, health=tcp(interval=0.5, rise=1, fall=1))),
                     probe=probe, health_file=str(tmp_path / "h.json"))
        task = asyncio.create_task(d.serve())
        await wait_for(lambda: all(weight(b, f"10.99.2.{i}") == 0 for i in range(1, 51)), 5)
        d.stop()
        await task
        return d, b

    d, b = asyncio.run(scenario())
    assert len(events(d, "transition")) == 50 and b.ipvs.writes == 50
    assert d.kernel_writes <= 10, d.kernel_writes


# -- the health file a restarted daemon starts from ---------------------------------------

@pytest.mark.parametrize("content, want, warned", [
    (None, {}, False),                                                     # no file yet
    (b'{"version": 1, "servers": {"web/10.99.2.11:80": {"up": false, "since": 5.0}}}',
     {"web/10.99.2.11:80": {"up": False, "since": 5.0}}, False),
    (b"{not json", {}, True),
    (b'{"version": 7, "servers": {}}', {}, True),
    (b'[1, 2]', {}, True),
    (b'{"version": 1, "servers": {"x": 3}}', {}, True),
])
def test_previous_health_is_read_or_ignored_with_a_warning(tmp_path, content, want, warned):
    from pask_ipvs.cli.healthd import load_previous_health
    from pask_ipvs.health_file import load_health
    path = tmp_path / "health.json"
    if content is not None:
        path.write_bytes(content)
    events = []
    got = load_previous_health(str(path), lambda event, **kw: events.append((event, kw)))
    assert got == want
    assert bool(events) == warned and all(e == "health_file_ignored" for e, _ in events)
    if warned:                      # pask-apply refuses what the daemon ignores
        with pytest.raises(ValueError):
            load_health(str(path))
    else:
        assert load_health(str(path)) == {k: v["up"] for k, v in want.items()}
