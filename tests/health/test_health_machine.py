"""The health state machine and the weight policy: pure, with a fake clock."""

from __future__ import annotations

import pytest

from pask_ipvs.desired import effective_weights
from pask_ipvs.health.machine import (
    HealthMachine, ServerHealth, initial, step,
)
from pask_ipvs.model import (
    Health, OnFailure, RealServer, ServerState,
)
from pask_ipvs.health_file import health_key
from builders import svc as make_svc


class FakeClock:
    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now

    def tick(self, seconds: float = 2.0) -> None:
        self.now += seconds


TCP_CHECK = Health(type="tcp", rise=2, fall=3)
A = RealServer("10.99.2.11", 8080, weight=3)
B = RealServer("10.99.2.12", 8080, weight=2)
SORRY = RealServer("10.99.2.99", 8080, weight=5, state=ServerState.BACKUP)
OFF = RealServer("10.99.2.13", 8080, weight=4, state=ServerState.DISABLED)


def key(rs: RealServer, name: str = "web") -> str:
    return health_key(name, rs.address, rs.port)


# -- rise / fall -------------------------------------------------------------------------

def feed(machine: HealthMachine, k: str, results: str, clock: FakeClock):
    """'ffs' -> fail, fail, success; returns the transitions produced."""
    out = []
    for c in results:
        clock.tick()
        t = machine.record(k, c == "s", "ok" if c == "s" else "connect: connection refused")
        if t is not None:
            out.append(t)
    return out


def test_goes_down_only_after_fall_consecutive_failures():
    clock = FakeClock()
    m = HealthMachine(clock)
    m.track("k", rise=2, fall=3)
    assert feed(m, "k", "ff", clock) == []
    assert m.up_map() == {"k": True}
    [t] = feed(m, "k", "f", clock)
    assert (t.who, t.old, t.new) == ("k", True, False)
    assert t.why == "3 consecutive failures (fall 3)"
    assert t.detail == "connect: connection refused"
    assert t.at == clock.now
    assert m.up_map() == {"k": False}
    assert m.servers["k"].since == clock.now


def test_a_success_resets_the_failure_count():
    clock = FakeClock()
    m = HealthMachine(clock)
    m.track("k", rise=2, fall=3)
    assert feed(m, "k", "ffsffsff", clock) == []
    assert m.up_map()["k"] is True


def test_comes_back_only_after_rise_consecutive_successes():
    clock = FakeClock()
    m = HealthMachine(clock)
    m.track("k", rise=2, fall=1)
    [down] = feed(m, "k", "f", clock)
    assert down.why == "1 consecutive failure (fall 1)"
    assert feed(m, "k", "sfsf", clock) == []          # flapping server stays down
    assert m.up_map()["k"] is False
    [up] = feed(m, "k", "ss", clock)
    assert (up.old, up.new, up.why) == (False, True, "2 consecutive successes (rise 2)")
    assert up.old_name == "down" and up.new_name == "up"


def test_notifies_only_on_change():
    clock = FakeClock()
    m = HealthMachine(clock)
    m.track("k", rise=1, fall=1)
    ts = feed(m, "k", "sssffffsssff", clock)
    assert [(t.old, t.new) for t in ts] == [(True, False), (False, True), (True, False)]


def test_flapping_server_with_rise_and_fall_never_transitions():
    clock = FakeClock()
    m = HealthMachine(clock)
    m.track("k", rise=2, fall=2)
    assert feed(m, "k", "fsfsfsfsfs", clock) == []


def test_step_is_pure():
    s = ServerHealth(True, 0.0)
    s2, t = step(s, False, "x", rise=2, fall=2, now=5.0)
    assert s == ServerHealth(True, 0.0) and t is None
    assert s2.failures == 1 and s2.up


# -- start-up ------------------------------------------------------------------------------

def test_starts_up_without_a_health_file():
    clock = FakeClock(50.0)
    m = HealthMachine(clock)
    state = m.track("k", rise=2, fall=3)
    assert state.up and state.since == 50.0
    # one failure at start-up does not take it down (no flap on start)
    assert feed(m, "k", "f", clock) == []


def test_starts_down_when_the_health_file_says_so():
    clock = FakeClock()
    m = HealthMachine(clock, previous={"k": {"up": False, "since": 123.0, "detail": "refused"}})
    state = m.track("k", rise=2, fall=3)
    assert (state.up, state.since, state.detail) == (False, 123.0, "refused")
    assert feed(m, "k", "s", clock) == []            # one success is not enough
    [t] = feed(m, "k", "s", clock)
    assert t.new is True


def test_health_file_up_entry_starts_up_and_keeps_its_since():
    assert initial({"up": True, "since": 1.0, "detail": "connected"}, 9.0) == \
        ServerHealth(True, 1.0, "connected")
    assert initial(None, 9.0) == ServerHealth(True, 9.0)
    assert initial({"up": False, "since": "garbage"}, 9.0) == ServerHealth(False, 9.0)


def test_track_keeps_state_and_retain_forgets_removed():
    clock = FakeClock()
    m = HealthMachine(clock, previous={"gone": {"up": False}})
    m.track("a", 1, 1)
    m.track("gone", 1, 1)
    feed(m, "a", "f", clock)
    m.track("a", 5, 5)                                   # a reload with new limits
    assert m.servers["a"].up is False and m.limits["a"] == (5, 5)
    assert m.retain(["a"]) == ["gone"]
    assert "gone" not in m.servers
    # re-added later: the initial rule again, not the forgotten file entry
    assert m.track("gone", 1, 1).up is True


def test_to_json_is_the_health_file_format():
    clock = FakeClock(7.0)
    m = HealthMachine(clock)
    m.track("web/10.99.2.11:8080", 1, 1)
    m.record("web/10.99.2.11:8080", False, "refused")
    assert m.to_json() == {"version": 1, "servers": {
        "web/10.99.2.11:8080": {"up": False, "since": 7.0, "detail": "refused"}}}


# -- weights: inhibit / remove / backup / disabled -------------------------------------

def test_all_up_gives_configured_weights():
    svc = make_svc(servers=(A, B,), health=TCP_CHECK)
    assert effective_weights(svc, {}) == {("10.99.2.11", 8080): 3, ("10.99.2.12", 8080): 2}


@pytest.mark.parametrize("on_failure, expected", [
    (OnFailure.INHIBIT, 0),
    (OnFailure.REMOVE, None),
])
def test_down_server_inhibit_vs_remove(on_failure, expected):
    svc = make_svc(servers=(A, B,), health=TCP_CHECK, on_failure=on_failure)
    w = effective_weights(svc, {key(A): False, key(B): True})
    assert w[("10.99.2.11", 8080)] == expected
    assert w[("10.99.2.12", 8080)] == 2


def test_backup_carries_weight_only_while_no_enabled_server_is_up():
    svc = make_svc(servers=(A, B, SORRY,), health=TCP_CHECK)
    assert effective_weights(svc, {})[("10.99.2.99", 8080)] == 0
    one_up = {key(A): False, key(B): True}
    assert effective_weights(svc, one_up)[("10.99.2.99", 8080)] == 0
    all_down = {key(A): False, key(B): False}
    w = effective_weights(svc, all_down)
    assert w == {("10.99.2.11", 8080): 0, ("10.99.2.12", 8080): 0, ("10.99.2.99", 8080): 5}
    # a primary comes back: the sorry server steps aside (stays at weight 0 to drain)
    assert effective_weights(svc, {key(A): True, key(B): False})[("10.99.2.99", 8080)] == 0


def test_backup_that_is_itself_down_gets_no_weight():
    svc = make_svc(servers=(A, SORRY,), health=TCP_CHECK, on_failure=OnFailure.REMOVE)
    w = effective_weights(svc, {key(A): False, key(SORRY): False})
    assert w == {("10.99.2.11", 8080): None, ("10.99.2.99", 8080): None}


def test_inactive_backup_stays_at_zero_even_with_remove():
    svc = make_svc(servers=(A, SORRY,), health=TCP_CHECK, on_failure=OnFailure.REMOVE)
    assert effective_weights(svc, {})[("10.99.2.99", 8080)] == 0


def test_disabled_server_never_gets_weight_from_health():
    svc = make_svc(servers=(A, OFF,), health=TCP_CHECK)
    assert effective_weights(svc, {key(OFF): True})[("10.99.2.13", 8080)] == 0
    assert effective_weights(svc, {})[("10.99.2.13", 8080)] == 0
    # nor is it removed when its probe fails, even with on_failure: remove
    svc = make_svc(servers=(A, OFF,), health=TCP_CHECK, on_failure=OnFailure.REMOVE)
    assert effective_weights(svc, {key(OFF): False})[("10.99.2.13", 8080)] == 0


def test_disabled_server_does_not_count_as_an_up_pool_member():
    svc = make_svc(servers=(A, OFF, SORRY,), health=TCP_CHECK)
    w = effective_weights(svc, {key(A): False, key(OFF): True})
    assert w[("10.99.2.99", 8080)] == 5


def test_health_of_another_service_with_the_same_server_is_separate():
    svc = make_svc(servers=(A, B,), health=TCP_CHECK)
    other = {health_key("api", A.address, A.port): False}
    assert effective_weights(svc, other)[("10.99.2.11", 8080)] == 3


def test_machine_up_map_drives_weights_end_to_end():
    clock = FakeClock()
    svc = make_svc(servers=(A, B, SORRY,), health=TCP_CHECK)
    m = HealthMachine(clock)
    for rs in (A, B, SORRY):
        m.track(key(rs), rise=2, fall=3)
    for rs in (A, B):
        feed(m, key(rs), "fff", clock)
    w = effective_weights(svc, m.up_map())
    assert (w[("10.99.2.11", 8080)], w[("10.99.2.12", 8080)], w[("10.99.2.99", 8080)]) == (0, 0, 5)
    feed(m, key(A), "ss", clock)
    w = effective_weights(svc, m.up_map())
    assert (w[("10.99.2.11", 8080)], w[("10.99.2.99", 8080)]) == (3, 0)
