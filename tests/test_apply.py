"""observe -> plan -> execute -> verify against fakes that behave like the kernel."""

import errno
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from builders import config, exclude, include, many, rs, svc
from pask_ipvs.apply import execute, observe, preflight, reconcile as run_reconcile
from pask_ipvs.backend.base import BackendError
from pask_ipvs.backend.fake import fake_backends, kernel_writes
from pask_ipvs.desired import expand
from pask_ipvs.kernel import IpvsDest, IpvsService, ServiceKey
from pask_ipvs.plan import Op, diff
from pask_ipvs.state import PaskState, allocate_fwmarks

FOREIGN = ServiceKey.virtual("tcp", "10.99.50.1", 80)


def fwmarks_for(cfg, state=None):
    return allocate_fwmarks([s.name for s in cfg.services if s.uses_fwmark],
                            {s.name: s.fwmark for s in cfg.services if s.fwmark},
                            (state or PaskState()).fwmarks)


def reconcile(cfg, b, state=None):
    """One pask-apply run against fake backends; returns (plan, result, new state)."""
    state = state or PaskState()
    marks = fwmarks_for(cfg, state)
    desired = expand(cfg, marks)
    out = run_reconcile(desired, observe(desired, b), state, marks, b)
    assert not out.remaining.changed, out.remaining
    return out.plan, out.result, out.state


def test_apply_then_plan_again_is_empty_and_writes_nothing():
    b = fake_backends()
    cfg = config(svc(), svc("dns", "10.99.100.2", 53, proto="udp", mode="both-nat",
                            snat_ip="10.99.2.1"))
    plan, result, state = reconcile(cfg, b)
    assert result is not None and result.ok and plan.changed
    writes = kernel_writes(b)
    plan2, result2, _ = reconcile(cfg, b, state)
    assert plan2.ops == () and kernel_writes(b) == writes


def test_foreign_service_survives_every_apply():
    b = fake_backends()
    b.ipvs.apply([Op("add", "service", "f", None, IpvsService(FOREIGN, "wlc")),
                  Op("add", "dest", "f", None, IpvsDest(FOREIGN, "10.99.9.9", 80))])
    _, _, state = reconcile(config(svc()), b)
    _, _, state = reconcile(config(), b, state)   # every pask service removed
    seen = b.ipvs.observe()
    assert list(seen.services) == [FOREIGN] and len(seen.dests) == 1


def test_hand_made_drift_is_repaired():
    b = fake_backends()
    cfg = config(svc(servers=[rs("10.99.2.11", weight=2)]))
    _, _, state = reconcile(cfg, b)
    key = ServiceKey.virtual("tcp", "10.99.100.1", 80)
    d = b.ipvs.observe().dests
    (dkey,) = d
    b.ipvs.apply([Op("set", "dest", "x", d[dkey], replace(d[dkey], weight=9)),
                  Op("add", "dest", "x", None, IpvsDest(key, "10.99.2.66", 80))])
    plan, result, _ = reconcile(cfg, b, state)
    assert sorted((op.action, op.kind) for op in plan.ops) == [("delete", "dest"), ("set", "dest")]
    assert {x.weight for x in b.ipvs.observe().dests.values()} == {2}


def test_failed_step_rolls_back_what_ran_before_it():
    b = fake_backends()
    cfg = config(svc(servers=[rs("10.99.2.11"), rs("10.99.2.12")]))
    desired = expand(cfg, {})
    plan = diff(desired, observe(desired, b))
    # Someone adds one of the dests behind our back, between observe and apply:
    # the kernel answers EEXIST for that one op.
    key = ServiceKey.virtual("tcp", "10.99.100.1", 80)
    b.ipvs.apply([Op("add", "service", "k", None, IpvsService(key, "rr"))])
    before_ops = len(plan.ops)
    result = execute(plan, b)
    assert not result.ok and before_ops
    assert result.errors[0].errno == errno.EEXIST
    assert result.rolled_back  # what had been applied is undone


def test_preflight_names_the_missing_scheduler_module_before_any_change():
    b = fake_backends(available_schedulers={"rr", "wrr", "sh", "mh"})
    desired = expand(config(svc(sched="twos")), {})
    problems = preflight(desired, b)
    assert any("ip_vs_twos" in p and "'twos'" in p and "web" in p for p in problems)
    assert kernel_writes(b) == 0


def test_filters_get_stable_fwmarks_across_runs_and_reorders():
    a = svc("a", filters=[include(src="10.99.1.0/24")])
    bsvc = svc("b", "10.99.100.2", filters=[exclude(src="10.99.1.9/32"), include(protocol=None)])
    b = fake_backends()
    _, _, state = reconcile(config(a, bsvc), b)
    marks = dict(state.fwmarks)
    _, _, state2 = reconcile(config(bsvc, a), b, state)
    assert state2.fwmarks == marks and len(set(marks.values())) == 2


def test_scale_plan_then_noop_is_empty():
    b = fake_backends()
    cfg = many(64, 8)
    plan, _, state = reconcile(cfg, b)
    assert sum(op.kind == "dest" for op in plan.ops) == 64 * 8
    plan2, _, _ = reconcile(cfg, b, state)
    assert plan2.ops == ()


# -- property: whatever the config, apply then plan again is empty -------------------

modes = st.sampled_from(["dest-nat", "both-nat", "l2-dsr", "l3-dsr", "lan-to-lan"])
scheds = st.sampled_from(["rr", "wrr", "lc", "wlc", "sh", "sh-port", "dh", "sed", "nq", "mh"])


@st.composite
def configs(draw):
    n = draw(st.integers(0, 5))
    services = []
    for i in range(n):
        mode = draw(modes)
        port = draw(st.sampled_from([80, 443, 8080]))
        ips = draw(st.lists(st.integers(2, 60), min_size=0, max_size=5, unique=True))
        servers = [rs(f"10.99.2.{x}", port, draw(st.integers(0, 10)),
                      draw(st.sampled_from(["enabled", "disabled", "backup"]))) for x in ips]
        filters = draw(st.sampled_from([(), (include(src="10.99.1.0/24"),),
                                        (exclude(src="10.99.1.5/32"), include())]))
        persistence = draw(st.sampled_from([None, (300, "255.255.255.255"), (60, "255.255.255.0")]))
        extra = {}
        if mode == "both-nat":
            extra["snat_ip"] = "10.99.2.1"
        if mode == "lan-to-lan":
            extra["local_networks"] = ["10.99.2.0/24"]
        services.append(svc(f"s{i}", f"10.99.100.{i + 1}", port, sched=draw(scheds), mode=mode,
                            servers=servers, filters=filters, persistence=persistence, **extra))
    return config(*services)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=configs(), second=configs())
def test_property_apply_converges_from_any_previous_config(first, second):
    b = fake_backends()
    b.ipvs.apply([Op("add", "service", "f", None, IpvsService(FOREIGN, "wlc"))])
    _, r1, state = reconcile(first, b)
    _, r2, state = reconcile(second, b, state)
    assert (r1 is None or r1.ok) and (r2 is None or r2.ok)
    again = diff(expand(second, fwmarks_for(second, state)),
                 observe(expand(second, fwmarks_for(second, state)), b), state)
    assert again.ops == ()
    assert FOREIGN in b.ipvs.observe().services
