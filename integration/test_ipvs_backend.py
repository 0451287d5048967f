"""IpvsNetlink against the real kernel (run inside the IPVS VM, as root).

Each test runs in a fresh network namespace: IPVS tables are per namespace, so
every test starts from an empty table (and an empty destination trash) and
nothing is flushed. Needs no fixtures from other files:

    integration/run integration/test_ipvs_backend.py
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import re
import socket
import subprocess
import time

import pytest

from pask_ipvs.backend import ipvs as ipvs_mod
from pask_ipvs.backend.fake_ipvs import LINUX_6_1_SCHEDULERS, FakeIpvs
from pask_ipvs.backend.ipvs import IpvsNetlink
from kernel_cases import ipvs_conflicts
from pask_ipvs.objects import DestStats, IpvsDest, IpvsObserved, IpvsService, ServiceKey
from builders import op_add as add, op_delete as delete, op_set as setop

CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _require_ipvs_host() -> None:
    """Fail (never skip) with a clear reason when this is not the IPVS VM."""
    if os.geteuid() != 0:
        pytest.fail("integration/test_ipvs_backend.py needs root (run it in the IPVS VM)")
    if not os.path.isdir("/proc/sys/net/ipv4/vs") and not os.path.isdir("/sys/module/ip_vs"):
        pytest.fail("this kernel has no IPVS: run it with integration/run, which boots "
                    "the test VM (integration/vm-run)")


@pytest.fixture
def netns():
    """Move this thread into a new, empty network namespace for one test, then back."""
    _require_ipvs_host()
    home = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
    try:
        if _libc.unshare(CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            pytest.fail(f"unshare(CLONE_NEWNET): {os.strerror(err)}")
        # lo up: until then the namespace has no IPv4 local routing table, and the
        # kernel refuses every IPv4 dest with EINVAL (its address-type check fails)
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
        yield
    finally:
        _libc.setns(home, CLONE_NEWNET)
        os.close(home)


@pytest.fixture
def ipvs(netns):
    backend = IpvsNetlink()
    yield backend
    backend.close()


def ipvsadm(*args: str) -> str:
    return subprocess.run(["ipvsadm", *args], check=True, capture_output=True, text=True).stdout


def dump_of(seen: IpvsObserved) -> str:
    fake = FakeIpvs()
    fake.seed(seen.services.values(), seen.dests.values())
    return fake.dump()


T = ServiceKey.virtual("tcp", "10.99.0.1", 80)
U = ServiceKey.virtual("udp", "10.99.0.2", 53)
Z = ServiceKey.virtual("tcp", "10.99.0.3", 0)
S = ServiceKey.virtual("sctp", "10.99.0.4", 9)
V6 = ServiceKey.virtual("tcp", "fd00::10", 443)
M7 = ServiceKey.mark(7)
M8 = ServiceKey.mark(8, 6)

MIX = [
    IpvsService(T, "rr"),
    IpvsDest(T, "10.99.1.1", 8080, "masq", 3, 10, 2),
    IpvsDest(T, "10.99.1.2", 80, "route", 0),
    IpvsDest(T, "10.99.1.3", 80, "tunnel", 1),
    IpvsService(U, "sh", frozenset({"sh-port", "sh-fallback", "persistent"}), 300, 24),
    IpvsDest(U, "10.99.1.4", 53, "route", 5),
    IpvsService(Z, "mh", frozenset({"mh-port", "persistent"}), 60, 32),
    IpvsDest(Z, "10.99.1.5", 0, "route", 1),
    IpvsService(S, "wlc", frozenset({"one-packet"})),
    IpvsService(V6, "lc", frozenset(), 0, 128),
    IpvsDest(V6, "fd00::1", 443, "masq", 2),
    IpvsService(M7, "sh", frozenset({"sh-port", "one-packet"})),
    IpvsDest(M7, "10.99.1.1", 0, "route", 4),
    IpvsService(M8, "rr", frozenset({"persistent"}), 100, 64),
    IpvsDest(M8, "fd00::9", 443, "tunnel", 5, 100, 50),
]


def expected(values) -> IpvsObserved:
    fake = FakeIpvs()
    assert fake.apply([add(v) for v in values]) == []
    return fake.observe()


# --------------------------------------------------------------------------

def test_mix_applies_and_observes_like_ipvsadm(ipvs):
    assert ipvs.apply([add(v) for v in MIX]) == []
    seen = ipvs.observe()
    assert seen == expected(MIX)
    # the kernel's own tool prints the same table as observe() read
    assert dump_of(seen) == ipvsadm("-Sn")
    # thresholds are not in -S output: check them in ipvsadm's threshold listing
    listing = ipvsadm("-Ln", "--thresholds")
    assert re.search(r"10\.99\.1\.1:8080\s+10\s+2\s", listing), listing
    assert re.search(r"\[fd00::9\]:443\s+100\s+50\s", listing), listing


def test_observe_matches_pyroute2(ipvs):
    assert ipvs.apply([add(v) for v in MIX]) == []
    seen = ipvs.observe()
    assert _read_with_pyroute2() == (
        {(k, s.scheduler, s.timeout) for k, s in seen.services.items()},
        {(d.service, d.addr, d.port, d.fwd, d.weight, d.u_threshold, d.l_threshold)
         for d in seen.dests.values()},
    )


def test_observe_services_reads_what_observe_reads_for_those_keys(ipvs):
    """GET_SERVICE of single keys (ip_vs_genl_get_cmd: ESRCH when missing) plus their
    dest dumps give exactly observe()'s objects for those services, and nothing else."""
    assert ipvs.apply([add(v) for v in MIX]) == []
    whole = ipvs.observe()
    missing = ServiceKey.virtual("tcp", "10.99.0.99", 80)
    keys = (T, M8)
    part = ipvs.observe_services([T, missing, M8])
    assert part.services == {k: whole.services[k] for k in keys}
    assert part.dests == {k: d for k, d in whole.dests.items() if k.service in keys}
    assert part.dest_stats == {} and part.service_stats == {}
    assert ipvs.observe_services([missing, ServiceKey.mark(99)]) == IpvsObserved()
    with_stats = ipvs.observe_services([U, V6], stats=True)
    assert set(with_stats.service_stats) == {U, V6}
    assert set(with_stats.dest_stats) == {k for k in whole.dests if k.service in (U, V6)}
    # the same socket goes on working after the ESRCH answers
    assert ipvs.observe() == whole


def test_expected_digests_are_the_kernels_own(ipvs):
    """Verify by digest (observe.observe_ipvs_by_digests) stands on this: every desired
    service encoded by the layout learned from this kernel's dest replies digests exactly
    as the kernel's own replies do, and a changed dest changes only its service's digest.
    M8 holds an IPv6 dest of an IPv6 fwmark service; T a tunnel dest (its tunnel settings
    at the kernel's defaults); U and Z no dest or one; thresholds on T and M8."""
    services = {v.key: v for v in MIX if isinstance(v, IpvsService)}
    dests = [v for v in MIX if isinstance(v, IpvsDest)]
    assert ipvs.apply([add(v) for v in MIX]) == []
    have = ipvs.service_digests()
    want = ipvs.expected_digests(services, dests)
    assert want is not None and have is not None
    assert want == have
    assert ipvs.observe().service_digests == have
    t_dest = next(d for d in dests if d.service == T and d.fwd == "tunnel")
    assert ipvs.apply([setop(t_dest, t_dest._replace(weight=9))]) == []
    after = ipvs.service_digests()
    assert after[T] != want[T] and {k: v for k, v in after.items() if k != T} == \
        {k: v for k, v in want.items() if k != T}
    assert ipvs.expected_digests(services, [t_dest._replace(weight=9) if d == t_dest else d
                                            for d in dests]) == after


def test_a_cold_apply_is_verified_by_digests_without_decoding(netns, tmp_path):
    """The whole pipeline on the kernel: a cold apply of 64 services leaves nothing to
    decode in verify (every digest matched), and verify still finds a dest lost meanwhile."""
    from builders import config, many
    from pask_ipvs.backend.fake import fake_backends
    from pask_ipvs.desired import expand
    from pask_ipvs.fwmarks import fwmarks_for
    from pask_ipvs.observe import observe
    from pask_ipvs.pipeline import reconcile
    from pask_ipvs.state import PaskState

    backend = IpvsNetlink()
    try:
        b = fake_backends()
        b.ipvs = backend
        read = []
        real_observe_services = backend.observe_services
        backend.observe_services = lambda keys, stats=False: read.append(list(keys)) or \
            real_observe_services(keys, stats)
        cfg = config(*many(64, 4).services, vip_interface=None)
        marks = fwmarks_for(cfg, {})
        desired = expand(cfg, marks)
        out = reconcile(desired, observe(desired, b), PaskState(), marks, b)
        assert out.result.ok and out.verified and read == []
        assert out.observed.ipvs == backend.observe()
    finally:
        backend.close()


def _read_with_pyroute2():
    """Services and dests read through pyroute2 (an independent decoder); fwd read from
    the raw attribute (docs/kernel-facts.md "pyroute2 trap: fwd_method")."""
    from pyroute2 import IPVS, IPVSService
    protos = {6: "tcp", 17: "udp", 132: "sctp"}
    fwds = {0: "masq", 2: "tunnel", 3: "route"}
    services, dests = set(), set()
    with IPVS() as sock:
        for msg in sock.service("dump"):
            attrs = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
            af = 6 if attrs.get_attr("IPVS_SVC_ATTR_AF") == socket.AF_INET6 else 4
            mark = attrs.get_attr("IPVS_SVC_ATTR_FWMARK") or 0
            if mark:
                key = ServiceKey.mark(mark, af)
                query = IPVSService(af=attrs.get_attr("IPVS_SVC_ATTR_AF"), fwmark=mark)
            else:
                key = ServiceKey.virtual(protos[attrs.get_attr("IPVS_SVC_ATTR_PROTOCOL")],
                                         attrs.get_attr("IPVS_SVC_ATTR_ADDR"),
                                         attrs.get_attr("IPVS_SVC_ATTR_PORT"))
                query = IPVSService(af=attrs.get_attr("IPVS_SVC_ATTR_AF"),
                                    protocol=attrs.get_attr("IPVS_SVC_ATTR_PROTOCOL"),
                                    addr=attrs.get_attr("IPVS_SVC_ATTR_ADDR"),
                                    port=attrs.get_attr("IPVS_SVC_ATTR_PORT"))
            services.add((key, attrs.get_attr("IPVS_SVC_ATTR_SCHED_NAME"),
                          attrs.get_attr("IPVS_SVC_ATTR_TIMEOUT")))
            for dmsg in sock.dest("dump", service=query):
                d = dmsg.get_attr("IPVS_CMD_ATTR_DEST")
                dests.add((key, str(ipaddress.ip_address(d.get_attr("IPVS_DEST_ATTR_ADDR"))),
                           d.get_attr("IPVS_DEST_ATTR_PORT"),
                           fwds[d.get_attr("IPVS_DEST_ATTR_FWD_METHOD") & 7],
                           d.get_attr("IPVS_DEST_ATTR_WEIGHT"),
                           d.get_attr("IPVS_DEST_ATTR_U_THRESH"),
                           d.get_attr("IPVS_DEST_ATTR_L_THRESH")))
    return services, dests


def test_conflicts_answer_the_errnos_the_fake_uses(ipvs):
    svc, dest = IpvsService(T, "rr"), IpvsDest(T, "10.99.1.1", 80)
    assert ipvs.apply([add(svc), add(dest)]) == []
    got = {}
    for name, (op, _code) in ipvs_conflicts(svc, dest).items():
        errors = ipvs.apply([op])
        assert len(errors) == 1 and errors[0].op is op, (name, errors)
        got[name] = errors[0].errno
    assert got == {name: code for name, (_op, code) in ipvs_conflicts(svc, dest).items()}
    assert ipvs.observe() == expected([svc, dest])


@pytest.mark.parametrize("batch_size,ack_every", [(8, False), (8, True), (256, False)])
def test_conflict_mid_batch_fails_only_that_op(netns, batch_size, ack_every):
    ipvs = IpvsNetlink(batch_size=batch_size, ack_every=ack_every)
    svc = IpvsService(T, "rr")
    ds = [IpvsDest(T, f"10.99.1.{i}", 80) for i in range(1, 41)]
    ops = [add(svc)] + [add(d) for d in ds]
    ops.insert(10, add(ds[3]))             # mid-batch duplicate: EEXIST
    ops.insert(15, add(ds[4]))             # last message of the 2nd batch of 8 (the acked one)
    ops.insert(30, delete(IpvsDest(T, "10.99.9.9", 80)))   # ENOENT
    errors = ipvs.apply(ops)
    assert [(e.op, e.errno) for e in errors] == [
        (ops[10], errno.EEXIST), (ops[15], errno.EEXIST), (ops[30], errno.ENOENT)]
    assert "10.99.1.4" in str(errors[0]) and "EEXIST" in str(errors[0])
    assert ipvs.observe() == expected([svc, *ds])
    ipvs.close()


def test_dropped_acks_are_reported_not_guessed(netns):
    """A receive buffer too small for a batch of error acks (ENOBUFS): every op still
    gets exactly one answer; the ones whose ack was lost are ENOBUFS (retryable)."""
    ipvs = IpvsNetlink(batch_size=1000)
    svcs = [IpvsService(ServiceKey.virtual("tcp", f"10.99.3.{i}", 80), "rr") for i in range(1, 201)]
    assert ipvs.apply([add(s) for s in svcs]) == []
    conn, _ = ipvs._main()
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)   # kernel minimum
    dup = [add(s) for s in svcs]
    errors = ipvs.apply(dup)
    assert sorted(id(e.op) for e in errors) == sorted(id(op) for op in dup)
    codes = {e.errno for e in errors}
    assert errno.ENOBUFS in codes and codes <= {errno.EEXIST, errno.ENOBUFS}
    assert all(e.retryable for e in errors if e.errno == errno.ENOBUFS)
    assert ipvs.batch_size == 1000
    # the socket is still usable afterwards
    conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
    extra = IpvsService(ServiceKey.virtual("tcp", "10.99.4.1", 80), "rr")
    assert ipvs.apply([add(extra)]) == []
    assert len(ipvs.observe().services) == 201
    ipvs.close()


def test_settings_round_trip_through_the_kernel(ipvs):
    """Every scheduler flag, persistence and forwarding method, changed in place with SET."""
    svc = IpvsService(T, "rr")
    dest = IpvsDest(T, "10.99.1.1", 80)
    assert ipvs.apply([add(svc), add(dest)]) == []
    steps = [
        IpvsService(T, "sh", frozenset({"sh-port"})),
        IpvsService(T, "sh", frozenset({"sh-fallback", "persistent"}), 1800, 16),
        IpvsService(T, "mh", frozenset({"mh-port", "mh-fallback"})),
        IpvsService(T, "mh", frozenset({"mh-fallback", "one-packet"})),
        IpvsService(T, "wrr", frozenset({"persistent"}), 5, 0),
        IpvsService(T, "rr"),
    ]
    for new in steps:
        assert ipvs.apply([setop(svc, new)]) == []
        assert ipvs.observe().services == {T: new}
        svc = new
    for fwd, weight in (("route", 0), ("tunnel", 7), ("masq", 1)):
        new = IpvsDest(T, "10.99.1.1", 80, fwd, weight, 9, 3)
        assert ipvs.apply([setop(dest, new)]) == []
        assert ipvs.observe().dests == {new.key: new}
        dest = new
    v6 = IpvsService(V6, "sh", frozenset({"persistent", "sh-port"}), 60, 48)
    assert ipvs.apply([add(v6), setop(v6, v6._replace(netmask=128))]) == []
    assert ipvs.observe().services[V6].netmask == 128
    assert "-M" not in ipvsadm("-Sn").split("[fd00::10]:443", 1)[1].splitlines()[0]


def test_delete_ops(ipvs):
    assert ipvs.apply([add(v) for v in MIX]) == []
    removed_dest = IpvsDest(T, "10.99.1.2", 80, "route", 0)
    assert ipvs.apply([delete(removed_dest), delete(IpvsService(U, "sh"))]) == []
    left = [v for v in MIX if v != removed_dest
            and getattr(v, "key", None) != U and getattr(v, "service", None) != U]
    assert ipvs.observe() == expected(left)


def test_stats_and_connections_decode(ipvs):
    """Real TCP through IPVS on loopback: counters and active connections come back,
    and agree with ipvsadm's listing."""
    subprocess.run(["ip", "addr", "add", "10.99.0.1/32", "dev", "lo"], check=True)
    subprocess.run(["ip", "addr", "add", "10.99.0.2/32", "dev", "lo"], check=True)
    listener = socket.socket()
    listener.bind(("10.99.0.2", 8080))
    listener.listen(4)
    svc = IpvsService(T, "rr", frozenset({"persistent"}), 60, 32)
    dest = IpvsDest(T, "10.99.0.2", 8080, "masq")
    assert ipvs.apply([add(svc), add(dest)]) == []
    client = socket.create_connection(("10.99.0.1", 80), timeout=5)
    server, _ = listener.accept()
    client.sendall(b"x" * 1000)
    assert len(server.recv(1000)) > 0
    # 6.1 sums the per-CPU counters in its rate estimator, every 2 s: wait for one round
    deadline = time.monotonic() + 10
    while True:
        seen = ipvs.observe(stats=True)
        if seen.dest_stats[dest.key].stats.inbytes >= 1000 or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    ds = seen.dest_stats[dest.key]
    assert (ds.active_conns, ds.inact_conns, ds.persist_conns) == (1, 0, 1)  # + the template
    assert ds.stats.conns == 1 and ds.stats.inpkts >= 2 and ds.stats.inbytes >= 1000
    assert seen.service_stats[T].conns == 1
    assert seen.service_stats[T].inbytes == ds.stats.inbytes
    listing = ipvsadm("-Ln", "--stats", "--exact")
    row = re.search(r"->\s+10\.99\.0\.2:8080\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)", listing)
    assert row, listing
    assert (int(row[1]), int(row[2]), int(row[4])) == (ds.stats.conns, ds.stats.inpkts, ds.stats.inbytes)
    assert re.search(r"10\.99\.0\.2:8080\s+Masq\s+1\s+1\s+0", ipvsadm("-Ln")), ipvsadm("-Ln")
    persistent = ipvsadm("-Ln", "--persistent-conn")
    assert re.search(r"10\.99\.0\.2:8080\s+1\s+1\s+1\s+0", persistent), persistent
    assert ipvs.observe().dest_stats == {}          # not read unless asked
    for s in (client, server, listener):
        s.close()


def test_scale_1024_by_4(ipvs, monkeypatch):
    from pask_ipvs import forked
    children = []
    real_start = forked.start
    monkeypatch.setattr(forked, "start", lambda fn, *a: children.append(fn.__name__) or real_start(fn, *a))
    svcs = [IpvsService(ServiceKey.virtual("tcp", f"10.99.{16 + i // 256}.{i % 256}", 80), "rr")
            for i in range(1024)]
    dests = [IpvsDest(s.key, f"10.99.200.{j}", 8080, "masq", j) for s in svcs for j in range(1, 5)]
    t0 = time.perf_counter()
    assert ipvs.apply([add(s) for s in svcs] + [add(d) for d in dests]) == []
    t1 = time.perf_counter()
    seen = ipvs.observe()
    t2 = time.perf_counter()
    assert len(seen.services) == 1024 and len(seen.dests) == 4096
    assert seen == expected(svcs + dests)
    # some services were written, and digested, by a forked child on its own socket
    assert ipvs.service_digests() == seen.service_digests
    if len(os.sched_getaffinity(0)) > 1:      # the VM has 2 vCPUs
        assert children == ["_apply_in_child", "_digests_in_child"]
    print(f"1024x4: apply {t1 - t0:.2f}s observe {t2 - t1:.2f}s")
    assert t1 - t0 < 20 and t2 - t1 < 20          # generous: TCG; the bench measures properly
    # a no-op: nothing to apply, and a second observe reads the same
    assert ipvs.apply([]) == [] and ipvs.observe() == seen
    # with counters (the decoder's learned layout for stats): same table, idle counters
    with_stats = ipvs.observe(stats=True)
    assert with_stats.dests == seen.dests and with_stats.services == seen.services
    assert set(with_stats.dest_stats) == set(seen.dests)
    assert set(with_stats.dest_stats.values()) == {DestStats()}
    assert len(with_stats.service_stats) == 1024


def test_missing_schedulers_on_this_kernel(ipvs):
    release = os.uname().release
    assert release.startswith("6.1."), release
    assert ipvs.missing_schedulers(["rr", "sh", "mh", "twos"]) == {"twos": "ip_vs_twos"}
    assert ipvs.missing_schedulers(LINUX_6_1_SCHEDULERS) == {}
    (err,) = ipvs.apply([add(IpvsService(T, "twos"))])
    assert err.errno == errno.ENOENT


def test_family_lookup_is_cached_and_sockets_close(netns):
    backend = IpvsNetlink(dump_workers=3)
    svcs = [IpvsService(ServiceKey.virtual("udp", f"10.99.5.{i}", 53), "rr") for i in range(200)]
    assert backend.apply([add(s) for s in svcs]) == []
    family = backend._encoder.family
    assert len(backend.observe().services) == 200
    assert backend._encoder.family == family
    backend.close()
    assert backend._conn is None
    assert isinstance(ipvs_mod.describe_op(add(svcs[0])), str)
