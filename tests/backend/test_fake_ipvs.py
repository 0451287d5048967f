"""FakeIpvs behaves like the kernel: same errnos (measured on Linux 6.1 in the VM,
table in kernel_cases.ipvs_conflicts), goes on after a failure, counts writes,
dumps like ``ipvsadm -Sn``, reports settable stats."""

from __future__ import annotations

import errno

import pytest

from pask_ipvs.backend.base import BackendError, IpvsBackend
from pask_ipvs.backend.fake_ipvs import LINUX_6_1_SCHEDULERS, FakeIpvs
from pask_ipvs.objects import DestKey, DestStats, IpvsDest, IpvsService, ServiceKey, Stats
from kernel_cases import ipvs_conflicts
from builders import op_add as add, op_delete as delete, op_set as setop

VIP = ServiceKey.virtual("tcp", "10.99.0.1", 80)
SVC = IpvsService(VIP, "rr")
DEST = IpvsDest(VIP, "10.99.1.1", 80)

# What Linux 6.1 answered in the VM (integration/test_ipvs_backend.py checks the
# kernel against ipvs_conflicts(); this pins the table itself).
MEASURED_ON_6_1 = {
    "add existing service": errno.EEXIST,
    "set missing service": errno.ESRCH,
    "delete missing service": errno.ESRCH,
    "add dest to missing service": errno.ESRCH,
    "delete dest of missing service": errno.ESRCH,
    "add existing dest": errno.EEXIST,
    "set missing dest": errno.ENOENT,
    "delete missing dest": errno.ENOENT,
    "unknown scheduler": errno.ENOENT,
    "lower threshold above upper": errno.ERANGE,
    "ipv6 netmask 0": errno.EINVAL,
    "ipv6 netmask 129": errno.EINVAL,
    "ipv6 dest in ipv4 service, not tunnelled": errno.EINVAL,
}


@pytest.fixture
def fake() -> FakeIpvs:
    f = FakeIpvs()
    assert f.apply([add(SVC), add(DEST)]) == []
    return f


def test_is_an_ipvs_backend():
    backend: IpvsBackend = FakeIpvs()
    assert backend.observe().services == {}


def test_table_is_what_the_kernel_answered():
    table = {name: code for name, (_op, code) in ipvs_conflicts(SVC, DEST).items()}
    assert table == MEASURED_ON_6_1


@pytest.mark.parametrize("name", sorted(MEASURED_ON_6_1))
def test_conflict_errno_matches_kernel(fake, name):
    op, code = ipvs_conflicts(SVC, DEST)[name]
    before = fake.observe()
    writes = fake.writes
    (err,) = fake.apply([op])
    assert isinstance(err, BackendError)
    assert err.errno == code and err.op is op
    assert errno.errorcode[code] in str(err)
    assert fake.writes == writes
    assert fake.observe() == before


def test_goes_on_after_a_failure_and_reports_each(fake):
    d2, d3 = IpvsDest(VIP, "10.99.1.2", 80), IpvsDest(VIP, "10.99.1.3", 80)
    ops = [add(d2), add(DEST), add(d3), delete(IpvsDest(VIP, "10.99.1.9", 80))]
    errors = fake.apply(ops)
    assert [(e.op, e.errno) for e in errors] == [(ops[1], errno.EEXIST), (ops[3], errno.ENOENT)]
    assert set(fake.observe().dests) == {DEST.key, d2.key, d3.key}
    assert fake.writes == 2 + 2
    assert fake.applied[-2:] == [ops[0], ops[2]]


def test_set_changes_settings(fake):
    new_svc = IpvsService(VIP, "sh", frozenset({"persistent", "sh-port"}), 300, 24)
    new_dest = IpvsDest(VIP, "10.99.1.1", 80, "tunnel", 0, 10, 2)
    assert fake.apply([setop(SVC, new_svc), setop(DEST, new_dest)]) == []
    seen = fake.observe()
    assert seen.services[VIP] == new_svc and seen.dests[DEST.key] == new_dest


def test_delete_service_takes_its_dests(fake):
    fake.set_conns(DEST.key, 1)
    assert fake.apply([delete(SVC)]) == []
    seen = fake.observe(stats=True)
    assert seen.services == {} and seen.dests == {} and seen.dest_stats == {}
    assert fake.apply([add(SVC)]) == []
    assert fake.observe().dests == {}


def test_no_op_writes_nothing(fake):
    writes = fake.writes
    assert fake.apply([]) == []
    fake.observe(stats=True)
    fake.dump()
    assert fake.writes == writes


def test_stats_only_when_asked(fake):
    fake.set_conns(DEST.key, 3, 4, 1)
    fake.set_stats(VIP, Stats(conns=9))
    fake.set_stats(DEST.key, Stats(inpkts=5))
    assert fake.observe().dest_stats == {} and fake.observe().service_stats == {}
    seen = fake.observe(stats=True)
    assert seen.dest_stats[DEST.key] == DestStats(3, 4, 1, Stats(inpkts=5))
    assert seen.dest_stats[DEST.key].connections == 7
    assert seen.service_stats[VIP] == Stats(conns=9)


def test_readded_dest_starts_with_zero_counters(fake):
    fake.set_conns(DEST.key, 3, 4)
    fake.apply([delete(DEST), add(DEST)])
    assert fake.observe(stats=True).dest_stats[DEST.key] == DestStats()


def test_unencodable_op_fails_like_the_real_backend(fake):
    bad = add(IpvsService(ServiceKey.virtual("tcp", "10.99.0.2", 80), "mh", frozenset({"sh-port"})))
    (err,) = fake.apply([bad])
    assert err.errno == errno.EINVAL


def test_available_schedulers_and_missing_schedulers():
    fake = FakeIpvs(available_schedulers=LINUX_6_1_SCHEDULERS)
    assert fake.missing_schedulers(["rr", "sh", "mh", "twos"]) == {"twos": "ip_vs_twos"}
    (err,) = fake.apply([add(IpvsService(VIP, "twos"))])
    assert err.errno == errno.ENOENT
    assert FakeIpvs().missing_schedulers(["twos"]) == {}


def test_mixed_family_dest_only_when_tunnelled(fake):
    v6 = IpvsDest(VIP, "fd00::5", 80, "tunnel")
    assert fake.apply([add(v6)]) == []
    assert fake.observe().dests[v6.key] == v6


def test_seed_is_not_a_write():
    fake = FakeIpvs()
    fake.seed([SVC], [DEST])
    assert fake.writes == 0
    assert fake.observe().dests == {DEST.key: DEST}


def test_dump_looks_like_ipvsadm_save():
    """The same table ipvsadm -Sn printed on the 6.1 VM (docs/kernel-facts.md "ipvsadm -Sn format")."""
    fake = FakeIpvs()
    t = ServiceKey.virtual("tcp", "10.99.0.1", 80)
    u = ServiceKey.virtual("udp", "10.99.0.2", 53)
    z = ServiceKey.virtual("tcp", "10.99.0.3", 0)
    s = ServiceKey.virtual("sctp", "10.99.0.4", 9)
    v6 = ServiceKey.virtual("tcp", "fd00::10", 443)
    m7, m8 = ServiceKey.mark(7), ServiceKey.mark(8, 6)
    ops = [add(x) for x in (
        IpvsService(t, "rr"),
        IpvsDest(t, "10.99.1.1", 8080, "masq", 3, 10, 2),
        IpvsDest(t, "10.99.1.2", 80, "route", 0),
        IpvsDest(t, "10.99.1.3", 80, "tunnel", 1),
        IpvsService(u, "sh", frozenset({"sh-port", "sh-fallback", "persistent"}), 300, 24),
        IpvsService(z, "mh", frozenset({"mh-port", "persistent"}), 60, 32),
        IpvsService(m7, "wlc", frozenset({"one-packet"})),
        IpvsService(m8, "rr", frozenset({"persistent"}), 100, 64),
        IpvsDest(m8, "fd00::1", 80),
        IpvsService(v6, "lc", netmask=128),
        IpvsService(s, "rr"),
    )]
    assert fake.apply(ops) == []
    assert fake.dump() == (
        "-A -t 10.99.0.1:80 -s rr\n"
        "-a -t 10.99.0.1:80 -r 10.99.1.1:8080 -m -w 3\n"
        "-a -t 10.99.0.1:80 -r 10.99.1.2:80 -g -w 0\n"
        "-a -t 10.99.0.1:80 -r 10.99.1.3:80 -i -w 1 --tun-type ipip\n"
        "-A -t 10.99.0.3:0 -s mh -p 60 -b mh-port\n"
        "-A -u 10.99.0.2:53 -s sh -p 300 -M 255.255.255.0 -b sh-fallback,sh-port\n"
        "-A --sctp-service 10.99.0.4:9 -s rr\n"
        "-A -t [fd00::10]:443 -s lc\n"
        "-A -f 7 -s wlc -o\n"
        "-A -f 8 -6 -s rr -p 100 -M 64\n"
        "-a -f 8 -6 -r [fd00::1]:80 -m -w 1\n"
    )


def test_observe_returns_a_snapshot(fake):
    seen = fake.observe()
    fake.apply([delete(DEST)])
    assert DEST.key in seen.dests
    assert DestKey(VIP, "10.99.1.1", 80) not in fake.observe().dests


def test_observe_services_reads_only_those_keys(fake):
    other = ServiceKey.virtual("udp", "10.99.0.2", 53)
    missing = ServiceKey.virtual("tcp", "10.99.0.99", 80)
    fake.apply([add(IpvsService(other, "wlc")), add(IpvsDest(other, "10.99.1.2", 53))])
    fake.set_conns(DEST.key, 2)
    seen = fake.observe_services([VIP, missing], stats=True)
    whole = fake.observe(stats=True)
    assert seen.services == {VIP: SVC} and seen.dests == {DEST.key: DEST}
    assert seen.dest_stats == {DEST.key: whole.dest_stats[DEST.key]}
    assert seen.service_stats == {VIP: whole.service_stats[VIP]}
    assert fake.observe_services([missing]).services == {}
    assert fake.observe_services([VIP]).dest_stats == {}            # stats only when asked
    assert fake.observe_services_calls == [[VIP, missing], [missing], [VIP]]
