"""diff(desired, observed): ordering, ownership, drift, drain — pure, no kernel."""


from pask_ipvs.objects import (
    DestKey, DestStats, Desired, IpvsDest, IpvsObserved, IpvsService, LinkObserved, NftObserved, NftTable, Observed, ServiceKey, VipAddress,
)
from pask_ipvs.plan import PHASES, Op, Plan, diff, diff_dests
from pask_ipvs.state import PaskState

WEB = ServiceKey.virtual("tcp", "10.99.100.1", 80)
DNS = ServiceKey.virtual("udp", "10.99.100.2", 53)
FOREIGN = ServiceKey.virtual("tcp", "10.99.50.1", 80)
VIP = VipAddress("pask0", "10.99.100.1", 32)


def dest(key, addr, port=80, weight=1, fwd="masq"):
    return IpvsDest(key, addr, port, fwd, weight)


def desired_web(*dests, sched="rr"):
    d = Desired(vip_interface="pask0", vips=frozenset([VIP]), sysctls={"net.ipv4.ip_forward": "1"})
    d.services[WEB] = IpvsService(WEB, sched)
    d.owners[WEB] = "web"
    for x in dests:
        d.dests[x.key] = x
    return d


def observed(services=(), dests=(), vips=frozenset([VIP]), link=True, sysctls=None, stats=None):
    ipvs = IpvsObserved({s.key: s for s in services}, {d.key: d for d in dests}, {}, stats or {})
    return Observed(ipvs=ipvs, link=LinkObserved("pask0", "dummy", True) if link else None,
                    vips=frozenset(vips), sysctls=sysctls or {"net.ipv4.ip_forward": "1"})


def kinds(plan: Plan):
    return [(op.action, op.kind) for op in plan.ops]


def test_empty_kernel_gets_everything_in_safe_order():
    d = desired_web(dest(WEB, "10.99.2.11"), dest(WEB, "10.99.2.12"))
    plan = diff(d, observed(vips=(), link=False, sysctls={"net.ipv4.ip_forward": "0"}))
    assert kinds(plan) == [("set", "sysctl"), ("add", "link"), ("add", "address"),
                           ("add", "service"), ("add", "dest"), ("add", "dest")]
    assert all(op.service == "web" for op in plan.ops if op.kind in ("service", "dest"))


def test_pasks_dummy_link_down_is_set_up_and_a_foreign_one_left_alone():
    from pask_ipvs.render.text import op_line
    d = desired_web(dest(WEB, "10.99.2.11"))
    have = observed([IpvsService(WEB, "rr")], [dest(WEB, "10.99.2.11")])
    have.link = LinkObserved("pask0", "dummy", False)
    plan = diff(d, have)
    assert kinds(plan) == [("set", "link")]
    assert op_line(plan.ops[0]) == "~ link pask0 down -> up"
    have.link = LinkObserved("pask0", "bridge", False)     # not a link pask made: not its to raise
    assert diff(d, have).ops == ()


def test_matching_kernel_means_empty_plan():
    d = desired_web(dest(WEB, "10.99.2.11"))
    plan = diff(d, observed([IpvsService(WEB, "rr")], [dest(WEB, "10.99.2.11")]))
    assert plan.ops == () and not plan.changed


def test_changed_weight_and_scheduler_are_edited_in_place():
    d = desired_web(dest(WEB, "10.99.2.11", weight=3), sched="wrr")
    plan = diff(d, observed([IpvsService(WEB, "rr")], [dest(WEB, "10.99.2.11", weight=1)]))
    assert kinds(plan) == [("set", "service"), ("set", "dest")]
    assert plan.ops[1].before.weight == 1 and plan.ops[1].after.weight == 3


def test_foreign_service_and_its_dests_are_never_touched():
    d = desired_web()
    o = observed([IpvsService(WEB, "rr"), IpvsService(FOREIGN, "wlc")], [dest(FOREIGN, "10.99.9.9")])
    assert diff(d, o).ops == ()


def test_hand_added_dest_on_owned_service_is_drift_and_removed():
    d = desired_web(dest(WEB, "10.99.2.11"))
    o = observed([IpvsService(WEB, "rr")], [dest(WEB, "10.99.2.11"), dest(WEB, "10.99.2.66")])
    plan = diff(d, o)
    assert kinds(plan) == [("delete", "dest")] and plan.ops[0].before.addr == "10.99.2.66"


def test_service_removed_from_config_is_deleted_only_if_pask_owned_it():
    d = Desired(vip_interface="pask0")
    o = observed([IpvsService(WEB, "rr"), IpvsService(FOREIGN, "rr")], [dest(WEB, "10.99.2.11")],
                 vips=())
    state = PaskState(services={"web": WEB})
    plan = diff(d, o, state)
    assert kinds(plan) == [("delete", "service")]  # its dests go with it; foreign stays
    assert plan.ops[0].before.key == WEB and plan.ops[0].service == "web"
    assert diff(d, o, PaskState()).ops == ()


def test_changed_key_is_create_then_delete():
    new = ServiceKey.virtual("tcp", "10.99.100.1", 8080)
    d = Desired(vip_interface="pask0", vips=frozenset([VIP]))
    d.services[new] = IpvsService(new, "rr")
    d.owners[new] = "web"
    d.dests[DestKey(new, "10.99.2.11", 80)] = dest(new, "10.99.2.11")
    o = observed([IpvsService(WEB, "rr")], [dest(WEB, "10.99.2.11")])
    plan = diff(d, o, PaskState(services={"web": WEB}))
    assert kinds(plan) == [("add", "service"), ("add", "dest"), ("delete", "service")]


def test_adds_come_before_deletes_and_nft_swaps_between():
    d = desired_web(dest(WEB, "10.99.2.12"))
    d.nft = NftTable.from_commands([{"add": {"table": {"family": "inet", "name": "pask"}}}])
    o = observed([IpvsService(WEB, "rr")], [dest(WEB, "10.99.2.11")],
                 vips=[VIP, VipAddress("pask0", "10.99.100.9", 32)])
    plan = diff(d, o)
    assert kinds(plan) == [("add", "dest"), ("replace", "nft"), ("delete", "dest"),
                           ("delete", "address")]
    assert [op.phase for op in plan.ops] == sorted(op.phase for op in plan.ops)


def test_nft_replaced_when_content_differs_or_hand_edited_and_deleted_when_unneeded():
    table = NftTable.from_commands([{"add": {"table": {"family": "inet", "name": "pask"}}}])
    d = desired_web()
    d.nft = table
    base = observed([IpvsService(WEB, "rr")])
    base.nft = NftObserved(table.digest, "L1")
    assert diff(d, base, PaskState(nft_listing_digest="L1")).ops == ()
    base.nft = NftObserved(table.digest, "L2-edited")
    (op,) = diff(d, base, PaskState(nft_listing_digest="L1")).ops
    assert (op.action, op.reason) == ("replace", "drift")
    base.nft = NftObserved("old-digest", "L1")
    assert kinds(diff(d, base)) == [("replace", "nft")]
    d.nft = None
    assert kinds(diff(d, base)) == [("delete", "nft")]


def test_address_on_pask_interface_not_used_by_any_service_leaves():
    d = desired_web()
    o = observed([IpvsService(WEB, "rr")], vips=[VIP, VipAddress("pask0", "10.99.100.7", 32)])
    (op,) = diff(d, o).ops
    assert (op.action, op.kind, op.before.addr) == ("delete", "address", "10.99.100.7")


def test_drain_keeps_busy_removed_dest_at_weight_zero_until_idle_or_timeout():
    d = desired_web(dest(WEB, "10.99.2.11"))
    gone = dest(WEB, "10.99.2.12", weight=5)
    busy = {gone.key: DestStats(active_conns=3)}
    o = observed([IpvsService(WEB, "rr")], [dest(WEB, "10.99.2.11"), gone], stats=busy)
    plan = diff(d, o, now=100.0, drain_timeout=30)
    (op,) = plan.ops
    assert (op.action, op.reason, op.after.weight) == ("set", "drain", 0)
    assert plan.draining == {gone.key: 100.0}
    # next run, weight already 0, still busy, within the timeout: nothing to do
    o.ipvs.dests[gone.key] = gone._replace(weight=0)
    state = PaskState(services={"web": WEB}, draining={gone.key: 100.0})
    again = diff(d, o, state, now=110.0, drain_timeout=30)
    assert again.ops == () and again.draining == {gone.key: 100.0}
    # past the timeout: delete
    (op,) = diff(d, o, state, now=131.0, drain_timeout=30).ops
    assert op.action == "delete"
    # idle: delete at once
    o.ipvs.dest_stats[gone.key] = DestStats()
    (op,) = diff(d, o, state, now=111.0, drain_timeout=30).ops
    assert op.action == "delete"


def test_without_drain_timeout_a_removed_dest_is_deleted_at_once():
    d = desired_web()
    gone = dest(WEB, "10.99.2.12")
    o = observed([IpvsService(WEB, "rr")], [gone], stats={gone.key: DestStats(active_conns=9)})
    assert kinds(diff(d, o)) == [("delete", "dest")]


def test_diff_dests_touches_only_the_named_services():
    d = desired_web(dest(WEB, "10.99.2.11", weight=0))
    d.services[DNS] = IpvsService(DNS, "rr")
    d.dests[DestKey(DNS, "10.99.2.11", 53)] = dest(DNS, "10.99.2.11", 53, weight=9)
    o = observed([IpvsService(WEB, "rr"), IpvsService(DNS, "rr")],
                 [dest(WEB, "10.99.2.11"), dest(DNS, "10.99.2.11", 53)])
    plan = diff_dests(d, o, [WEB])
    assert [(op.action, op.after.weight, op.reason) for op in plan.ops] == [("set", 0, "health")]


def test_inverse_ops_undo():
    a = Op("add", "dest", "k", None, dest(WEB, "10.99.2.11"))
    assert a.inverse().action == "delete" and a.inverse().before == a.after
    s = Op("set", "dest", "k", dest(WEB, "10.99.2.11", weight=1), dest(WEB, "10.99.2.11", weight=2))
    assert s.inverse().after.weight == 1
    assert Op("replace", "nft", "t", None, None).inverse() is None


def test_phases_cover_every_op_kind_once():
    assert len(set(PHASES)) == len(PHASES)


def test_the_plans_dest_labels_are_dest_label_whatever_the_families():
    from pask_ipvs.objects import DestKey, ServiceKey
    from pask_ipvs.plan import _DestLabels, dest_label

    four, six, mark = (ServiceKey.virtual("tcp", "10.99.0.1", 80),
                       ServiceKey.virtual("udp", "fd00::1", 53), ServiceKey.mark(7, 6))
    keys = [DestKey(four, "10.99.1.1", 8080), DestKey(four, "fd00::5", 80), DestKey(six, "fd00::2", 53),
            DestKey(mark, "fd00::3", 0), DestKey(four, "10.99.1.2", 8080), DestKey(mark, "10.99.1.3", 0)]
    label = _DestLabels()
    assert [label(k) for k in keys] == [dest_label(k) for k in keys]
    assert label(keys[1]) == "10.99.0.1:80/tcp -> [fd00::5]:80"


def test_ops_are_values_and_invert():
    from pask_ipvs.plan import Op

    op = Op("add", "dest", "x", None, 1, service="web")
    assert op == Op("add", "dest", "x", after=1, service="web") and hash(op) == hash(Op(*op))
    assert op.inverse() == Op("delete", "dest", "x", 1, None, "rollback", "web")
    assert op.inverse().inverse() == Op("add", "dest", "x", None, 1, "rollback", "web")
    assert Op("set", "dest", "x", 1, 2).inverse() == Op("set", "dest", "x", 2, 1, "rollback")
    assert Op("replace", "nft", "t").inverse() is None and Op("set", "engine", "k").inverse() is None


def test_plan_counts_every_action_in_their_order():
    from pask_ipvs.plan import Op, Plan

    ops = (Op("add", "dest", "a"), Op("delete", "dest", "b"), Op("add", "service", "c"),
           Op("replace", "nft", "t"), Op("add", "dest", "d"))
    assert list(Plan(ops).counts().items()) == [("add", 3), ("set", 0), ("delete", 1), ("replace", 1)]
    assert Plan().counts() == {"add": 0, "set": 0, "delete": 0, "replace": 0}
