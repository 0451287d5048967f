"""observe -> plan -> execute -> verify against fakes that behave like the kernel."""

import errno
import math
from dataclasses import replace

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from builders import config, exclude, include, many, rs, svc
from pask_ipvs.apply import execute, preflight
from pask_ipvs.backend.fake import fake_backends, kernel_writes
from pask_ipvs.desired import expand
from pask_ipvs.fwmarks import fwmarks_for as allocate
from pask_ipvs.objects import DestKey, IpvsDest, IpvsService, ServiceKey
from pask_ipvs.observe import (observe, observe_after, observe_ipvs_by_digests, observe_to_plan,
                               touched_services)
from pask_ipvs.pipeline import reconcile as run_reconcile
from pask_ipvs.plan import Op, diff
from pask_ipvs.state import PaskState
from pask_ipvs.verify import verify

FOREIGN = ServiceKey.virtual("tcp", "10.99.50.1", 80)


def fwmarks_for(cfg, state=None):
    return allocate(cfg, (state or PaskState()).fwmarks)


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
    b.ipvs.apply([Op("set", "dest", "x", d[dkey], d[dkey]._replace(weight=9)),
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


# -- verify reads back what the apply wrote, not the whole table ----------------------

def _reweigh(cfg, index: int, weight: int):
    """cfg with the first real server of service ``index`` at another weight."""
    services = list(cfg.services)
    s = services[index]
    services[index] = replace(s, real_servers=(replace(s.real_servers[0], weight=weight),)
                              + s.real_servers[1:])
    return replace(cfg, services=tuple(services))


def _run(cfg, b, state, **kw):
    """One pask-apply run made from a whole-table observe, then reconcile; reads counted from here."""
    b.ipvs.observe_calls, b.ipvs.observe_services_calls = 0, []
    b.ipvs.service_digest_calls = b.ipvs.expected_digest_calls = 0
    marks = fwmarks_for(cfg, state)
    desired = expand(cfg, marks)
    observed = observe(desired, b, stats=kw.get("drain_timeout", 0) > 0)
    return run_reconcile(desired, observed, state, marks, b, **kw)


def test_verify_after_one_weight_change_reads_only_that_service():
    b = fake_backends()
    cfg = many(16, 4)
    _, _, state = reconcile(cfg, b)
    out = _run(_reweigh(cfg, 5, 7), b, state)
    (op,) = out.plan.ops
    assert (op.action, op.kind, op.after.weight) == ("set", "dest", 7)
    assert b.ipvs.observe_calls == 1                       # the run's own read, before the plan
    assert b.ipvs.observe_services_calls == [[op.after.service]]
    assert out.result.ok and not out.remaining.changed


def test_verify_of_a_change_outside_ipvs_reads_no_ipvs_service():
    b = fake_backends()
    cfg = many(8, 2)
    _, _, state = reconcile(cfg, b)
    b.sysctl.values["net.ipv4.ip_forward"] = "0"           # drift outside IPVS
    out = _run(cfg, b, state)
    assert [op.kind for op in out.plan.ops] == ["sysctl"]
    assert b.ipvs.observe_calls == 1 and b.ipvs.observe_services_calls == []
    assert not out.remaining.changed


def test_verify_reports_drift_in_a_touched_service(monkeypatch):
    """A write the kernel took differently (here: every weight set lands one higher)
    is what verify exists for, and the partial read must still see it."""
    b = fake_backends()
    cfg = many(16, 4)
    _, _, state = reconcile(cfg, b)
    real_apply = b.ipvs.apply

    def apply_off_by_one(ops):
        errors = real_apply(ops)
        for op in ops:
            if (op.kind, op.action) == ("dest", "set"):
                d = op.after
                b.ipvs.dests[d.service][d.key] = d._replace(weight=d.weight + 1)
        return errors

    monkeypatch.setattr(b.ipvs, "apply", apply_off_by_one)
    out = _run(_reweigh(cfg, 3, 9), b, state)
    assert out.result.ok and b.ipvs.observe_calls == 1 and len(b.ipvs.observe_services_calls) == 1
    (drift,) = out.remaining.ops
    assert (drift.action, drift.kind, drift.before.weight, drift.after.weight) == ("set", "dest", 10, 9)


def test_verify_sees_a_touched_service_that_is_gone():
    """A service deleted by the apply drops out of the partial read (the kernel's ESRCH);
    one deleted although the plan only changed a weight in it is drift."""
    b = fake_backends()
    cfg = many(16, 2)
    _, _, state = reconcile(cfg, b)
    smaller = replace(cfg, services=cfg.services[1:])
    out = _run(smaller, b, state)
    assert [op.action for op in out.plan.ops if op.kind in ("service", "dest")] == ["delete"]
    assert len(b.ipvs.observe_services_calls) == 1 and not out.remaining.changed
    state = out.state

    real_apply = b.ipvs.apply

    def apply_and_lose_the_service(ops):
        errors = real_apply(ops)
        key = ops[0].after.service
        real_apply([Op("delete", "service", str(key), b.ipvs.services[key], None)])
        return errors

    b.ipvs.apply = apply_and_lose_the_service
    out = _run(_reweigh(smaller, 0, 5), b, state)
    assert b.ipvs.observe_calls == 1
    assert {(op.action, op.kind) for op in out.remaining.ops} == {("add", "service"), ("add", "dest")}


@pytest.mark.parametrize("touched", [5, 16])
def test_verify_of_a_big_plan_reads_the_whole_table(touched):
    b = fake_backends()
    cfg = many(16, 2)
    _, _, state = reconcile(cfg, b)
    changed = cfg
    for i in range(touched):                   # 5 of 16 is more than a quarter
        changed = _reweigh(changed, i, 3)
    out = _run(changed, b, state)
    assert len(touched_services(out.plan.ops)) == touched
    # the whole table by digests: every service matched, nothing decoded
    assert b.ipvs.observe_calls == 1 and b.ipvs.observe_services_calls == []
    assert b.ipvs.service_digest_calls == b.ipvs.expected_digest_calls == 1
    assert not out.remaining.changed


def test_verify_of_a_cold_apply_reads_the_whole_table_by_digests():
    b = fake_backends()
    out = _run(many(8, 2), b, PaskState())
    assert out.plan.changed and not out.remaining.changed
    assert b.ipvs.observe_calls == 1 and b.ipvs.observe_services_calls == []
    assert b.ipvs.service_digest_calls == 1
    # what verify hands on (the no-op fast path digests it) is what a full read gives
    assert out.observed.ipvs == b.ipvs.observe()
    assert out.observed.ipvs.service_digests == b.ipvs.service_digests()


def _cold_apply_with(b, monkeypatch, spoil):
    """A cold apply of many(8, 4) whose IPVS writes ``spoil(fake)`` changes behind pask's
    back; returns (outcome, the plan a full read-back would have left, the run's reads:
    (whole-table reads, digest reads, partial reads))."""
    real_apply = b.ipvs.apply

    def apply_then_spoil(ops):
        errors = real_apply(ops)
        spoil(b.ipvs)
        return errors

    monkeypatch.setattr(b.ipvs, "apply", apply_then_spoil)
    cfg = many(8, 4)
    out = _run(cfg, b, PaskState())
    reads = (b.ipvs.observe_calls, b.ipvs.service_digest_calls, b.ipvs.observe_services_calls)
    desired = expand(cfg, fwmarks_for(cfg, PaskState()))
    return out, diff(desired, observe(desired, b), out.state), reads


def _second_service(fake):
    return sorted(fake.services)[1]


def _drop_a_dest(fake):
    dests = fake.dests[_second_service(fake)]
    del dests[next(iter(dests))]


def _reweigh_a_dest(fake):
    dests = fake.dests[_second_service(fake)]
    dkey = next(iter(dests))
    dests[dkey] = dests[dkey]._replace(weight=dests[dkey].weight + 5)


def _add_a_dest(fake):
    key = _second_service(fake)
    fake.dests[key][DestKey(key, "10.99.9.9", 80)] = IpvsDest(key, "10.99.9.9", 80)


def _change_a_scheduler(fake):
    key = _second_service(fake)
    fake.services[key] = fake.services[key]._replace(scheduler="lc")


def _drop_a_service(fake):
    key = _second_service(fake)
    del fake.services[key], fake.dests[key]


@pytest.mark.parametrize("spoil", [_drop_a_dest, _reweigh_a_dest, _add_a_dest, _change_a_scheduler,
                                   _drop_a_service], ids=lambda f: f.__name__[1:])
def test_verify_by_digests_reports_what_a_full_read_back_reports(spoil, monkeypatch):
    """A digest that differs is decoded (that service alone) and diffed: the report is the
    full read-back's, op for op."""
    b = fake_backends()
    out, full, (whole, digests, partial) = _cold_apply_with(b, monkeypatch, spoil)
    assert out.result.ok and full.changed
    assert out.remaining.ops == full.ops
    assert not out.verified
    assert whole == 1 and digests == 1          # the run's own read (empty), then digests
    key = sorted(out.state.services.values())[1]
    # the spoilt service alone is decoded (one the kernel lost has no digest: it is just missing)
    assert partial == ([] if spoil is _drop_a_service else [[key]])


def test_verify_by_digests_decodes_a_foreign_service_and_leaves_it_alone(monkeypatch):
    foreign = ServiceKey.virtual("tcp", "10.99.200.1", 80)

    def add_foreign(fake):
        if foreign not in fake.services:
            fake.seed([IpvsService(foreign, "wlc")], [IpvsDest(foreign, "10.99.9.9", 80)])

    b = fake_backends()
    out, full, (_, _, partial) = _cold_apply_with(b, monkeypatch, add_foreign)
    assert out.verified and not full.changed
    assert partial == [[foreign]]
    assert out.observed.ipvs == b.ipvs.observe()


def test_verify_reads_the_whole_table_when_the_backend_cannot_digest(monkeypatch):
    b = fake_backends()
    monkeypatch.setattr(b.ipvs, "expected_digests", lambda services, dests: None)
    out = _run(many(8, 2), b, PaskState())
    assert out.plan.changed and out.verified
    assert b.ipvs.observe_calls == 2 and b.ipvs.observe_services_calls == []


def test_verify_by_digests_decodes_a_service_with_dests_of_the_other_family():
    """The kernel's scanned bytes do not carry a dest's family: such a service is decoded."""
    mixed = svc("mixed", "10.99.100.9", 80, mode="l3-dsr",
                servers=[rs("fd00::9", 80), rs("10.99.2.9", 80)])
    cfg = replace(many(8, 2), services=many(8, 2).services + (mixed,))
    b = fake_backends()
    out = _run(cfg, b, PaskState())
    assert out.verified
    assert b.ipvs.observe_services_calls == [[ServiceKey.virtual("tcp", "10.99.100.9", 80)]]
    assert out.observed.ipvs == b.ipvs.observe()


def test_verify_rereads_draining_services_for_their_connections():
    """A dest draining at weight 0 has no op in the next plan, yet its connection
    count decides the next op: verify reads its service too, with counters."""
    b = fake_backends()
    cfg = replace(many(8, 2), drain_timeout=600)
    _, _, state = reconcile(cfg, b)
    first = cfg.services[0]
    gone = replace(first, real_servers=first.real_servers[1:])
    cfg2 = replace(cfg, services=(gone,) + cfg.services[1:])
    key = ServiceKey.virtual("tcp", first.vip, first.port)
    dkey = DestKey(key, first.real_servers[0].address, first.real_servers[0].port)
    b.ipvs.set_conns(dkey, 3)
    out = _run(cfg2, b, state, drain_timeout=600)
    (op,) = out.plan.ops
    assert (op.action, op.reason, op.after.weight) == ("set", "drain", 0)
    assert not out.remaining.changed and dkey in out.state.draining
    # next run: the draining dest needs no op, another service changes
    out = _run(_reweigh(cfg2, 4, 6), b, out.state, drain_timeout=600)
    (op,) = out.plan.ops
    assert op.after.service != key and dkey in out.plan.draining
    assert b.ipvs.observe_services_calls == [sorted({key, op.after.service})]
    assert not out.remaining.changed


def test_verify_leaves_the_callers_observation_as_it_was():
    b = fake_backends()
    cfg = many(16, 2)
    _, _, state = reconcile(cfg, b)
    marks = fwmarks_for(cfg, state)
    desired = expand(_reweigh(cfg, 2, 4), marks)
    before = observe(desired, b)
    kept = (dict(before.ipvs.services), dict(before.ipvs.dests))
    plan = diff(desired, before, state)
    assert execute(plan, b).ok
    remaining, after = verify(desired, b, state, before=before, ops=plan.ops)
    assert not remaining.changed and after == observe(desired, b)
    assert (before.ipvs.services, before.ipvs.dests) == kept


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


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=configs(), second=configs(), stats=st.booleans())
def test_property_partial_read_after_apply_equals_a_full_observe(first, second, stats):
    """Whatever ran (adds, sets, deletes of services and dests, nft, addresses), the
    observation patched with the touched services equals reading everything again."""
    b = fake_backends()
    b.ipvs.apply([Op("add", "service", "f", None, IpvsService(FOREIGN, "wlc")),
                  Op("add", "dest", "f", None, IpvsDest(FOREIGN, "10.99.9.9", 80))])
    _, _, state = reconcile(first, b)
    marks = fwmarks_for(second, state)
    desired = expand(second, marks)
    before = observe(desired, b, stats=stats)
    plan = diff(desired, before, state)
    assert execute(plan, b).ok
    b.ipvs.observe_calls = 0
    after = observe_after(desired, b, before, plan.ops, stats=stats, max_fraction=math.inf)
    assert b.ipvs.observe_calls == 0                  # partial, however much was touched
    assert after == observe(desired, b, stats=stats)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=configs(), second=configs())
def test_property_the_table_by_digests_equals_a_full_observe(first, second):
    """Whatever the kernel holds (here: another config's table and a foreign service) and
    whatever is desired, the table read by digests is the one observe() decodes: objects
    and digests; only the counters of matched services are not read."""
    b = fake_backends()
    b.ipvs.apply([Op("add", "service", "f", None, IpvsService(FOREIGN, "wlc")),
                  Op("add", "dest", "f", None, IpvsDest(FOREIGN, "10.99.9.9", 80))])
    _, _, state = reconcile(first, b)
    desired = expand(second, fwmarks_for(second, state))
    got = observe_ipvs_by_digests(desired, b)
    full = b.ipvs.observe()
    assert got == full and got.service_digests == full.service_digests
    assert list(got.services) == list(full.services)          # in the kernel's order

    def listing(observed):           # each service's dests as the kernel lists them
        out = {}
        for dkey in observed.dests:
            out.setdefault(dkey.service, []).append(dkey)
        return out
    assert listing(got) == listing(full)


def test_outcome_is_verified_only_when_the_apply_succeeded_and_nothing_remains():
    from pask_ipvs.apply import ApplyResult
    from pask_ipvs.backend.base import BackendError
    from pask_ipvs.plan import Plan
    from pask_ipvs.verify import Outcome

    drift = Plan((Op("set", "sysctl", "net.ipv4.ip_forward", "0", "1"),))
    failed = ApplyResult(errors=[BackendError("refused")])
    assert Outcome(Plan(), None, Plan(), PaskState()).verified
    assert Outcome(drift, ApplyResult(), Plan(), PaskState()).verified
    assert not Outcome(drift, ApplyResult(), drift, PaskState()).verified
    assert not Outcome(drift, failed, Plan(), PaskState()).verified


def test_a_run_pauses_the_cyclic_gc_and_gives_it_back(tmp_path):
    """apply_config makes 10^5 long-lived objects at scale and no cyclic garbage: the
    collector is off while it runs, and on again after (also after an error)."""
    import gc

    from builders import yaml_config
    from pask_ipvs.pipeline import ApplyRequest, apply_config

    cfg = tmp_path / "pask.yaml"
    cfg.write_text(yaml_config(4))
    seen = []
    b = fake_backends()
    real_read = b.ipvs.service_digests           # the plan's first read of the kernel
    b.ipvs.service_digests = lambda: seen.append(gc.isenabled()) or real_read()

    class Out:
        def info(self, msg): pass
        def progress(self, msg): pass
        def error(self, msg): pass

    request = ApplyRequest(config=str(cfg), state_file=str(tmp_path / "state.json"),
                           health_file=str(tmp_path / "health.json"))
    assert gc.isenabled()
    report = apply_config(request, lambda: b, Out())
    assert report["verified"] and seen and not any(seen) and gc.isenabled()
    cfg.write_text("services: [")
    assert apply_config(request, lambda: b, Out())["errors"] and gc.isenabled()


@settings(max_examples=100, deadline=None)
@given(kinds=st.lists(st.sampled_from(["service", "dest", "address", "sysctl", "nft", "link"]),
                      max_size=30))
def test_groups_are_the_runs_of_ops_for_one_backend(kinds):
    from itertools import groupby

    from pask_ipvs.apply import _backend_of, _groups

    ops = [Op("add", kind, f"{kind}{i}") for i, kind in enumerate(kinds)]
    assert _groups(ops) == [list(g) for _, g in groupby(ops, key=_backend_of)]
    assert [op for g in _groups(ops) for op in g] == ops


# -- the plan's read by digests (observe_to_plan, what pipeline._plan reads) ------------

def _plan_run(cfg, b, state, **kw):
    """One run as pipeline.py makes it: observe_to_plan, then reconcile; reads counted."""
    b.ipvs.observe_calls, b.ipvs.observe_services_calls = 0, []
    b.ipvs.service_digest_calls = b.ipvs.expected_digest_calls = 0
    marks = fwmarks_for(cfg, state)
    desired = expand(cfg, marks)
    observed = observe_to_plan(desired, b, stats=kw.get("drain_timeout", 0) > 0,
                               also={dkey.service for dkey in state.draining})
    return run_reconcile(desired, observed, state, marks, b, **kw)


def test_one_weight_edited_decodes_only_its_service():
    b = fake_backends()
    cfg = many(16, 4)
    _, _, state = reconcile(cfg, b)
    out = _plan_run(_reweigh(cfg, 5, 7), b, state)
    (op,) = out.plan.ops
    assert (op.action, op.kind, op.after.weight) == ("set", "dest", 7)
    # the plan's read: digests, that one service decoded; verify's: that service again
    assert b.ipvs.observe_calls == 0 and b.ipvs.service_digest_calls == 1
    assert b.ipvs.observe_services_calls == [[op.after.service], [op.after.service]]
    assert out.result.ok and not out.remaining.changed and b.ipvs.writes > 0


@pytest.mark.parametrize("drift", ["weight", "dest gone", "dest added", "service gone",
                                   "scheduler", "foreign service"])
def test_the_plans_read_by_digests_sees_drift_in_an_unchanged_service(drift):
    """The config changed one service; another, unchanged in the config, was changed by
    hand: its digest differs, it is decoded, and the plan repairs it as a full read would."""
    b = fake_backends()
    cfg = many(16, 4)
    _, _, state = reconcile(cfg, b)
    fake = b.ipvs
    keys = list(fake.services)                      # the config's order (the order applied)
    key, changed = keys[9], keys[2]
    dkey, dest = next(iter(fake.dests[key].items()))
    if drift == "weight":
        fake.dests[key][dkey] = dest._replace(weight=dest.weight + 5)
    elif drift == "dest gone":
        del fake.dests[key][dkey]
    elif drift == "dest added":
        extra = dest._replace(addr="10.99.250.250")
        fake.dests[key][extra.key] = extra
    elif drift == "service gone":
        del fake.services[key], fake.dests[key]
    elif drift == "scheduler":
        fake.services[key] = fake.services[key]._replace(scheduler="wlc")
    else:
        key = FOREIGN
        fake.apply([Op("add", "service", "f", None, IpvsService(FOREIGN, "wlc")),
                    Op("add", "dest", "f", None, IpvsDest(FOREIGN, "10.99.9.9", 80))])
    edited = _reweigh(cfg, 2, 7)
    desired = expand(edited, fwmarks_for(edited, state))
    full_plan = diff(desired, observe(desired, b), state)
    out = _plan_run(edited, b, state)
    assert out.plan.ops == full_plan.ops and b.ipvs.observe_calls == 0
    # decoded: the edited service, and the drifted one unless it is gone from the kernel
    decoded = b.ipvs.observe_services_calls[0]
    assert sorted(decoded) == sorted([changed] if drift == "service gone" else [changed, key])
    assert out.result.ok and not out.remaining.changed
    # the edit, and the repair: none for a foreign service (left alone); a service gone comes
    # back with its 4 dests
    assert len(out.plan.ops) == {"foreign service": 1, "service gone": 6}.get(drift, 2)
    assert FOREIGN in b.ipvs.services or drift != "foreign service"
    assert diff(desired, observe(desired, b), out.state).ops == ()


def test_the_plans_read_by_digests_sees_a_removed_service_to_delete():
    b = fake_backends()
    cfg = many(8, 2)
    _, _, state = reconcile(cfg, b)
    smaller = replace(cfg, services=cfg.services[1:])
    out = _plan_run(smaller, b, state)
    assert [(op.action, op.kind) for op in out.plan.ops if op.kind in ("service", "dest")] \
        == [("delete", "service")]
    assert b.ipvs.observe_calls == 0 and len(b.ipvs.observe_services_calls[0]) == 1
    assert len(b.ipvs.services) == 7 and not out.remaining.changed


def test_a_cold_plan_on_an_empty_kernel_encodes_nothing():
    b = fake_backends()
    out = _plan_run(many(8, 2), b, PaskState())
    assert out.plan.changed and not out.remaining.changed
    # the plan's digest read found nothing: no expected digests made, nothing decoded; verify's read
    # is the whole table by digests
    assert b.ipvs.service_digest_calls == 2 and b.ipvs.expected_digest_calls == 1
    assert b.ipvs.observe_calls == 0 and b.ipvs.observe_services_calls == []


@pytest.mark.parametrize("broken", ["service_digests", "expected_digests"])
def test_the_plans_read_falls_back_to_the_whole_table(broken, monkeypatch):
    b = fake_backends()
    cfg = many(8, 2)
    _, _, state = reconcile(cfg, b)
    if broken == "service_digests":
        monkeypatch.setattr(b.ipvs, "service_digests", lambda: None)
    else:
        monkeypatch.setattr(b.ipvs, "expected_digests", lambda services, dests: None)
    edited = _reweigh(cfg, 3, 9)
    desired = expand(edited, fwmarks_for(edited, state))
    full_plan = diff(desired, observe(desired, b), state)
    out = _plan_run(edited, b, state)
    assert b.ipvs.observe_calls >= 1 and out.plan.ops == full_plan.ops and len(out.plan.ops) == 1
    assert out.result.ok and not out.remaining.changed


def test_the_plans_read_decodes_draining_services_for_their_counters():
    """A dest draining (weight 0, connections open) since an earlier run: its service is
    unchanged and its digest may match, but its counters decide whether it goes now."""
    b = fake_backends()
    cfg = replace(many(4, 3), drain_timeout=600)
    _, _, state = reconcile(cfg, b)
    first = cfg.services[1]
    gone = first.real_servers[0]
    key = sorted(b.ipvs.services)[1]
    dkey = next(k for k in b.ipvs.dests[key] if k.addr == gone.address)
    b.ipvs.set_conns(dkey, 3)
    fewer = replace(cfg, services=(cfg.services[0], replace(first, real_servers=first.real_servers[1:]),
                                   *cfg.services[2:]))
    out = _plan_run(fewer, b, state, drain_timeout=600)
    assert [(op.action, op.reason) for op in out.plan.ops] == [("set", "drain")]
    state = out.state
    assert dkey in state.draining
    # the same config again: still busy, nothing to do, but the service is read for its counters
    out = _plan_run(fewer, b, state, drain_timeout=600)
    assert out.plan.ops == () and b.ipvs.observe_services_calls == [[key]]
    assert dkey in out.state.draining
    b.ipvs.set_conns(dkey, 0)                           # connections ended: it goes
    out = _plan_run(fewer, b, out.state, drain_timeout=600)
    assert [(op.action, op.kind) for op in out.plan.ops] == [("delete", "dest")]
    assert not out.remaining.changed


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(first=configs(), second=configs(), stats=st.booleans(), spoil=st.integers(0, 40))
def test_property_the_plan_from_digests_equals_the_plan_from_a_full_observe(first, second, stats,
                                                                              spoil):
    """Any previous table (another config's, a foreign service, a dest changed by hand),
    any desired state: the plan made from observe_to_plan is observe()'s plan, op for op."""
    b = fake_backends()
    b.ipvs.apply([Op("add", "service", "f", None, IpvsService(FOREIGN, "wlc")),
                  Op("add", "dest", "f", None, IpvsDest(FOREIGN, "10.99.9.9", 80))])
    _, _, state = reconcile(first, b)
    dests = [d for table in b.ipvs.dests.values() for d in table.values()]
    if dests:                                       # a hand edit somewhere
        d = dests[spoil % len(dests)]
        b.ipvs.dests[d.service][d.key] = d._replace(weight=d.weight + 1 + spoil)
    desired = expand(second, fwmarks_for(second, state))
    full = observe(desired, b, stats=stats)
    got = observe_to_plan(desired, b, stats=stats)
    assert diff(desired, got, state, drain_timeout=stats * 600).ops == \
        diff(desired, full, state, drain_timeout=stats * 600).ops
    assert got.ipvs.services == full.ipvs.services and got.ipvs.dests == full.ipvs.dests
    assert got.ipvs.service_digests == full.ipvs.service_digests
    assert got.nft == full.nft and got.vips == full.vips and got.sysctls == full.sysctls


def test_the_config_digest_stands_for_the_text():
    """pask-apply keeps the config's ConfigDigest, not its text: the inputs digest is the
    same either way, and a digest made with other code is refused."""
    from pask_ipvs.state import ConfigDigest

    state = PaskState(services={"web": ServiceKey.virtual("tcp", "10.99.100.1", 80)})
    text = "version: 1\nservices: []\n"
    digest = ConfigDigest(b"code", text)
    assert state.inputs_digest(b"code", digest, b"{}") == state.inputs_digest(b"code", text, b"{}")
    assert state.inputs_digest(b"code", digest, b"{}") == state.inputs_digest(b"code", digest, b"{}")
    assert state.inputs_digest(b"code", ConfigDigest(b"code", text + "#\n"), b"{}") != \
        state.inputs_digest(b"code", text, b"{}")
    with pytest.raises(ValueError):
        state.inputs_digest(b"other code", digest, b"{}")


def test_a_lean_reconcile_lets_a_big_plan_go_before_verify():
    """lean_above (what pask-apply passes): a plan of more ops that applied cleanly is
    kept as its size and counts; verify reads what it would have read, and verifies."""
    from pask_ipvs.backend.base import BackendError
    from pask_ipvs.plan import PlanSummary

    b = fake_backends()
    cfg = many(8, 2)
    desired = expand(cfg, fwmarks_for(cfg))
    full = diff(desired, observe(desired, b), PaskState())
    out = run_reconcile(desired, observe(desired, b), PaskState(), fwmarks_for(cfg), b,
                        plan=full, lean_above=5)
    assert isinstance(out.plan, PlanSummary) and out.plan.ops == ()
    assert len(out.plan) == len(full) > 5 and out.plan.changed
    assert out.plan.counts() == full.counts()
    assert out.result.ok and out.result.applied == [] and out.verified
    assert diff(desired, observe(desired, b), out.state).ops == ()
    # small plans, and those that failed, are kept whole
    edited = _reweigh(cfg, 2, 9)
    d2 = expand(edited, fwmarks_for(edited, out.state))
    small = run_reconcile(d2, observe(d2, b), out.state, fwmarks_for(edited, out.state), b,
                          lean_above=5)
    assert type(small.plan) is not PlanSummary and len(small.plan.ops) == 1
    b2 = fake_backends()
    b2.ipvs.apply = lambda ops: [BackendError("refused", errno.EPERM, ops[0])]
    failed = run_reconcile(desired, observe(desired, b2), PaskState(), fwmarks_for(cfg), b2,
                           lean_above=5)
    assert not failed.result.ok and type(failed.plan) is not PlanSummary and failed.plan.ops
