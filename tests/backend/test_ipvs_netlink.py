"""IpvsNetlink's reads without a kernel: a socket stand-in answers IPVS requests
the way net/netfilter/ipvs/ip_vs_ctl.c does (GET_SERVICE dump and single get,
GET_DEST dump), from a FakeIpvs table, with the codec's own message layout.
The real kernel is exercised by integration/test_ipvs_backend.py."""

from __future__ import annotations

import errno
from collections import deque

import pytest

from pask_ipvs.backend import ipvs as ipvs_mod
from pask_ipvs.backend import ipvs_codec as w, ipvs_scan as scan, netlink as nl
from pask_ipvs.backend.base import BackendError
from pask_ipvs.backend.fake_ipvs import FakeIpvs
from pask_ipvs.backend.ipvs import IpvsNetlink
from pask_ipvs.objects import IpvsDest, IpvsObserved, IpvsService, ServiceKey

FAMILY = 0x25

T = ServiceKey.virtual("tcp", "10.99.0.1", 80)
U = ServiceKey.virtual("udp", "10.99.0.2", 53)
V6 = ServiceKey.virtual("tcp", "fd00::10", 443)
M7 = ServiceKey.mark(7)
MISSING = ServiceKey.virtual("tcp", "10.99.0.99", 80)

TABLE = [
    IpvsService(T, "rr"),
    IpvsDest(T, "10.99.1.1", 8080, "masq", 3, 10, 2),
    IpvsDest(T, "10.99.1.2", 80, "route", 0),
    IpvsService(U, "sh", frozenset({"sh-port", "persistent"}), 300, 24),
    IpvsDest(U, "10.99.1.4", 53, "route", 5),
    IpvsService(V6, "lc", frozenset(), 0, 128),
    IpvsDest(V6, "fd00::1", 443, "masq", 2),
    IpvsService(M7, "wlc"),
    IpvsDest(M7, "10.99.1.1", 0, "tunnel", 4),
]


def _done(seq: int) -> bytes:
    return nl.NLMSG_HDR.pack(nl.NLMSG_HDR.size + 4, nl.NLMSG_DONE, nl.NLM_F_MULTI, seq, 0) + bytes(4)


def _error(seq: int, code: int) -> bytes:
    body = nl.NLMSGERR.pack(-code) + nl.NLMSG_HDR.pack(nl.MSG_HDR.size, FAMILY, nl.NLM_F_REQUEST, seq, 0)
    return nl.NLMSG_HDR.pack(nl.NLMSG_HDR.size + len(body), nl.NLMSG_ERROR, 0x100, seq, 0) + body


def _key_of(data: bytes, hdr: nl.Header) -> ServiceKey:
    a = nl.parse_attrs(data, *nl.parse_attrs(data, hdr.start + nl.GENL_HDR.size,
                                           hdr.end)[w.IPVS_CMD_ATTR_SERVICE])
    af = w.AF_FROM_WIRE[nl.U16.unpack_from(data, a[w.IPVS_SVC_ATTR_AF][0])[0]]
    if w.IPVS_SVC_ATTR_FWMARK in a:
        return ServiceKey.mark(nl.U32.unpack_from(data, a[w.IPVS_SVC_ATTR_FWMARK][0])[0], af)
    s, _ = a[w.IPVS_SVC_ATTR_ADDR]
    proto = w.PROTO_FROM_WIRE[nl.U16.unpack_from(data, a[w.IPVS_SVC_ATTR_PROTOCOL][0])[0]]
    port = int.from_bytes(data[a[w.IPVS_SVC_ATTR_PORT][0]:a[w.IPVS_SVC_ATTR_PORT][0] + 2], "big")
    return ServiceKey(proto, w.addr_from_wire(af, data[s:s + 16]), port, 0, af)


class KernelSocket:
    """A netlink socket whose far end is ``table``. Each request's answer is one recv()."""

    def __init__(self, table: FakeIpvs, fail: dict[ServiceKey, int] | None = None):
        self.table = table
        self.fail = fail or {}                     # key -> errno its GET_SERVICE answers
        self.enc = w.IpvsEncoder(FAMILY)
        self.replies: deque[bytes] = deque()
        self.requests: list[tuple[int, int, ServiceKey | None]] = []   # (cmd, flags, key)

    def send(self, data: bytes) -> int:
        for hdr in nl.iter_messages(data, len(data)):
            cmd = data[hdr.start]
            key = _key_of(data, hdr) if hdr.end > hdr.start + nl.GENL_HDR.size else None
            self.requests.append((cmd, hdr.flags, key))
            self.replies.append(self._answer(cmd, hdr.flags, hdr.seq, key))
        return len(data)

    def _service_msg(self, svc: IpvsService, flags: int, seq: int) -> bytes:
        return nl.message(FAMILY, flags, seq, w.IPVS_CMD_NEW_SERVICE, w.IPVS_GENL_VERSION,
                         nl.nla_nest(w.IPVS_CMD_ATTR_SERVICE, w.service_attrs(svc)))

    def _answer(self, cmd: int, flags: int, seq: int, key: ServiceKey | None) -> bytes:
        services = self.table.services
        dump = flags & nl.NLM_F_DUMP == nl.NLM_F_DUMP
        if cmd == w.IPVS_CMD_GET_SERVICE and dump:
            return b"".join([self._service_msg(s, nl.NLM_F_MULTI, seq) for s in services.values()]
                            + [_done(seq)])
        if cmd == w.IPVS_CMD_GET_SERVICE:           # ip_vs_genl_get_cmd
            if key in self.fail:
                return _error(seq, self.fail[key])
            if key not in services:
                return _error(seq, errno.ESRCH)
            return self._service_msg(services[key], 0, seq)
        if cmd == w.IPVS_CMD_GET_DEST and dump:     # ip_vs_genl_dump_dests: no service, no dests
            return b"".join([self.enc.dest(w.IPVS_CMD_NEW_DEST, d, seq, nl.NLM_F_MULTI)
                             for d in self.table.dests.get(key, {}).values()] + [_done(seq)])
        return _error(seq, errno.EOPNOTSUPP)

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        if not self.replies:
            raise BlockingIOError
        data = self.replies.popleft()
        buf[:len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


def backend_on(sock: KernelSocket) -> IpvsNetlink:
    backend = IpvsNetlink()
    conn = ipvs_mod._Conn.__new__(ipvs_mod._Conn)      # no real socket: the stand-in
    conn.sock, conn.buf, conn._seq = sock, bytearray(ipvs_mod.RECV_CHUNK), 0
    backend._conn, backend._encoder = conn, w.IpvsEncoder(FAMILY)
    return backend


@pytest.fixture
def table() -> FakeIpvs:
    fake = FakeIpvs()
    fake.seed([v for v in TABLE if isinstance(v, IpvsService)],
              [v for v in TABLE if isinstance(v, IpvsDest)])
    return fake


def test_the_stand_in_answers_a_whole_observe_like_the_fake(table):
    assert backend_on(KernelSocket(table)).observe() == table.observe()


@pytest.mark.parametrize("stats", [False, True])
def test_observe_services_reads_those_keys_only(table, stats):
    sock = KernelSocket(table)
    backend = backend_on(sock)
    seen = backend.observe_services([M7, T, MISSING, V6, T], stats=stats)
    assert seen == table.observe_services([M7, T, V6], stats=stats)
    whole = table.observe(stats=stats)
    assert seen.services == {k: whole.services[k] for k in (M7, T, V6)}
    assert seen.dests == {k: d for k, d in whole.dests.items() if k.service in (M7, T, V6)}
    assert (len(seen.service_stats), len(seen.dest_stats)) == ((3, 4) if stats else (0, 0))
    # one single GET_SERVICE per distinct key, one dest dump per service found: nothing else
    assert sock.requests == (
        [(w.IPVS_CMD_GET_SERVICE, nl.NLM_F_REQUEST, k) for k in (M7, T, MISSING, V6)]
        + [(w.IPVS_CMD_GET_DEST, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, k) for k in (M7, T, V6)])


def test_observe_services_of_missing_keys_is_empty(table):
    sock = KernelSocket(table, fail={U: errno.ENOENT})
    assert backend_on(sock).observe_services([MISSING, U]) == IpvsObserved()
    assert [cmd for cmd, _, _ in sock.requests] == [w.IPVS_CMD_GET_SERVICE] * 2


def test_observe_services_reports_other_errors(table):
    sock = KernelSocket(table, fail={U: errno.EPERM})
    with pytest.raises(BackendError) as exc:
        backend_on(sock).observe_services([T, U])
    assert exc.value.errno == errno.EPERM and str(U) in str(exc.value)


def test_observe_services_of_no_keys_touches_no_socket():
    backend = IpvsNetlink()
    assert backend.observe_services([]) == IpvsObserved()
    assert backend._conn is None


# -- fingerprints ----------------------------------------------------------------------

def test_fingerprint_reads_what_observe_digests(table):
    sock = KernelSocket(table)
    backend = backend_on(sock)
    observed = backend.observe()
    assert set(observed.service_digests) == set(table.services)
    sock.requests.clear()
    assert backend.service_digests() == observed.service_digests
    # one service dump, then one dest dump per service: nothing else
    assert [cmd for cmd, _, _ in sock.requests] == [w.IPVS_CMD_GET_SERVICE] + \
        [w.IPVS_CMD_GET_DEST] * len(table.services)


def test_fingerprint_changes_with_the_service_that_changed(table):
    backend = backend_on(KernelSocket(table))
    before = backend.service_digests()
    dest = next(iter(table.dests[U].values()))
    table.dests[U][dest.key] = IpvsDest(U, dest.addr, dest.port, dest.fwd, dest.weight + 1)
    after = backend.service_digests()
    assert after[U] != before[U]
    assert {k: v for k, v in after.items() if k != U} == {k: v for k, v in before.items() if k != U}
    assert backend.observe().service_digests == after


def test_fingerprint_of_a_service_gone_meanwhile_is_none(table):
    sock = KernelSocket(table)
    backend = backend_on(sock)
    real_answer = sock._answer

    def vanish(cmd, flags, seq, key):
        if cmd == w.IPVS_CMD_GET_DEST and key == U:
            return _error(seq, errno.ESRCH)
        return real_answer(cmd, flags, seq, key)
    sock._answer = vanish
    assert backend.service_digests() is None


def test_observe_drops_fingerprints_when_the_scanner_misses_a_dest(table, monkeypatch):
    backend = backend_on(KernelSocket(table))
    real_scan = scan.DestConfigScanner.scan
    monkeypatch.setattr(scan.DestConfigScanner, "scan", lambda self, buf, n: real_scan(self, buf, n)[1:])
    observed = backend.observe()
    assert observed.service_digests is None
    assert observed == table.observe()            # the objects themselves are still read


def test_the_fake_fingerprints_like_its_observe(table):
    assert table.service_digests() == table.observe().service_digests
    assert table.observe_services([T, MISSING]).service_digests == {T: table.service_digests()[T]}


def test_expected_digests_are_what_the_kernel_digests_once_a_reply_was_seen(table):
    backend = backend_on(KernelSocket(table))
    # in the order they would have been added for each service's list to read as it does
    dests = [d for ds in table.dests.values() for d in reversed(ds.values())]
    assert backend.expected_digests(table.services, dests) is None     # no layout learned yet
    have = backend.service_digests()
    assert backend.expected_digests(table.services, dests) == have
    assert table.expected_digests(table.services, dests) == table.service_digests()   # the fake too
    # a dest missing, a weight changed, a dest too many: that service's digest differs
    first = next(iter(table.dests[T].values()))
    for changed in ([d for d in dests if d != first],
                    [d._replace(weight=d.weight + 1) if d == first else d for d in dests],
                    dests + [first._replace(addr="10.99.1.77")]):
        want = backend.expected_digests(table.services, changed)
        assert want[T] != have[T] and {k: v for k, v in want.items() if k != T} == \
            {k: v for k, v in have.items() if k != T}


# -- a big apply: some services' ops sent by a forked child ---------------------------------

FAIL_ADDR = "10.99.9.9"            # a dest at this address is answered EEXIST by AckSocket


class AckSocket:
    """A netlink socket that acks writes: EEXIST for a dest at FAIL_ADDR, else an ack where
    one was asked for. Each message it takes is logged to a file (pid, seq), so that a
    forked child's share is seen by the test."""

    def __init__(self, log: str):
        self.log = log
        self.replies: deque[bytes] = deque()

    def send(self, data) -> int:
        import os
        import socket
        marker = socket.inet_aton(FAIL_ADDR)
        with open(self.log, "a") as f:
            for hdr in nl.iter_messages(data, len(data)):
                f.write(f"{os.getpid()} {hdr.seq}\n")
                if marker in bytes(data[hdr.start:hdr.end]):
                    self.replies.append(_error(hdr.seq, errno.EEXIST))
                elif hdr.flags & nl.NLM_F_ACK:
                    self.replies.append(_error(hdr.seq, 0))
        return len(data)

    sendall = send

    def recv_into(self, buf: bytearray, nbytes: int = 0, flags: int = 0) -> int:
        if not self.replies:
            raise BlockingIOError
        data = b"".join(self.replies)
        self.replies.clear()
        buf[:len(data)] = data
        return len(data)

    def close(self) -> None:
        pass


def _conn_on(sock) -> ipvs_mod._Conn:
    conn = ipvs_mod._Conn.__new__(ipvs_mod._Conn)
    conn.sock, conn.buf, conn._seq = sock, bytearray(ipvs_mod.RECV_CHUNK), 0
    return conn


def _big_plan(services: int = 20, dests: int = 5):
    from builders import op_add as add
    ops, keys = [], []
    for i in range(services):
        key = ServiceKey.virtual("tcp", f"10.99.0.{i + 1}", 80)
        ops.append(add(IpvsService(key, "rr")))
        for j in range(dests):
            addr = FAIL_ADDR if (i, j) in ((3, 2), (15, 4)) else f"10.99.1.{j + 1}"
            ops.append(add(IpvsDest(key, addr, 8080, "masq", 1)))
        keys += [key] * (1 + dests)
    return ops, keys


@pytest.fixture
def forking(children_on, tmp_path):
    """A backend on AckSockets (its child's too) that forks from 2 ops; the log of sends."""
    log = str(tmp_path / "sent")
    backend = IpvsNetlink(batch_size=16)
    backend._conn, backend._encoder = _conn_on(AckSocket(log)), w.IpvsEncoder(FAMILY)
    backend._new_conn = lambda: _conn_on(AckSocket(log))
    backend.parallel_min = 2

    def sent() -> list[tuple[int, int]]:
        with open(log) as f:
            return [tuple(map(int, line.split())) for line in f]
    return backend, sent


def test_a_big_apply_sends_whole_services_from_a_child(forking):
    import os
    backend, sent = forking
    ops, keys = _big_plan()
    errors = backend.apply(ops)
    # failures of both shares, each on its own op, in op order
    failing = [i for i, op in enumerate(ops) if op.kind == "dest" and op.after.addr == FAIL_ADDR]
    assert [(id(e.op), e.errno) for e in errors] == [(id(ops[i]), errno.EEXIST) for i in failing]
    assert FAIL_ADDR in str(errors[0]) and "EEXIST" in str(errors[0])
    log = sent()
    seqs = sorted(seq for _, seq in log)
    assert seqs == list(range(seqs[0], seqs[0] + len(ops)))          # every op sent once
    pids = {pid for pid, _ in log}
    assert len(pids) == 2 and os.getpid() in pids
    by_service: dict = {}
    for pid, seq in log:
        by_service.setdefault(keys[seq - seqs[0]], set()).add(pid)
    assert all(len(p) == 1 for p in by_service.values())             # a service: one process
    for pid in pids:                                                  # each in op order
        mine = [seq for p, seq in log if p == pid]
        assert mine == sorted(mine)
    child_ops = sum(1 for pid, _ in log if pid != os.getpid())
    assert 0.3 * len(ops) < child_ops < 0.6 * len(ops)


def test_a_child_without_a_socket_leaves_its_share_to_the_parent(forking):
    import os
    backend, sent = forking

    def no_socket():
        raise OSError(errno.EMFILE, "Too many open files")
    backend._new_conn = no_socket
    ops, _ = _big_plan()
    errors = backend.apply(ops)
    assert [e.errno for e in errors] == [errno.EEXIST, errno.EEXIST]
    log = sent()
    assert {pid for pid, _ in log} == {os.getpid()} and len(log) == len(ops)


def test_a_child_that_dies_leaves_its_shares_outcome_unknown(forking, monkeypatch):
    """It may have sent any part of its share: each of those ops is reported with an
    unknown outcome (retryable), none is sent again; the parent's share is as ever."""
    import os
    backend, sent = forking
    parent = os.getpid()
    real = IpvsNetlink._apply_share

    def dies_halfway(self, conn, ops, indexes, first_seq):
        if os.getpid() != parent:
            real(self, conn, ops, indexes[:len(indexes) // 2], first_seq)
            os._exit(5)
        return real(self, conn, ops, indexes, first_seq)
    monkeypatch.setattr(IpvsNetlink, "_apply_share", dies_halfway)
    ops, _ = _big_plan()
    errors = backend.apply(ops)
    log = sent()
    parents = {seq - 1 for pid, seq in log if pid == parent}     # op index = seq - first seq (1)
    children = {seq - 1 for pid, seq in log if pid != parent}
    theirs = set(range(len(ops))) - parents
    assert children and children < theirs                       # half of its share was sent
    unknown = [e for e in errors if e.errno == errno.ENOBUFS]
    assert {id(e.op) for e in unknown} == {id(ops[i]) for i in theirs}
    assert all(e.retryable and "outcome unknown" in str(e) for e in unknown)
    conflicts = [e for e in errors if e.errno == errno.EEXIST]
    assert len(conflicts) == 1 and id(conflicts[0].op) in {id(ops[i]) for i in parents}
    assert [id(e.op) for e in errors] == [id(op) for op in ops if id(op) in {id(e.op) for e in errors}]


def test_a_parent_that_fails_ends_its_child(forking, monkeypatch):
    """The parent's share raises (its socket broke): the run fails there, and the child
    is ended and reaped, not left writing behind its back."""
    from pask_ipvs import forked
    backend, _ = forking
    children = []
    real_start = forked.start
    monkeypatch.setattr(forked, "start", lambda fn, *a: children.append(real_start(fn, *a)) or children[-1])

    def broken(buf, nbytes=0, flags=0):
        raise OSError(errno.EIO, "Input/output error")
    backend._conn.sock.recv_into = broken
    ops, _ = _big_plan()
    with pytest.raises(OSError):
        backend.apply(ops)
    assert len(children) == 1
    with pytest.raises(ChildProcessError):
        __import__("os").waitpid(children[0].pid, __import__("os").WNOHANG)


def test_a_small_apply_forks_nothing(forking):
    import os
    backend, sent = forking
    backend.parallel_min = 1000
    ops, _ = _big_plan()
    assert len(backend.apply(ops)) == 2
    assert {pid for pid, _ in sent()} == {os.getpid()}


def test_split_by_service_keeps_services_whole_and_in_order():
    ops, keys = _big_plan(services=10, dests=9)
    mine, theirs = ipvs_mod.split_by_service(ops, 45)
    assert sorted(mine + theirs) == list(range(len(ops)))
    assert mine == sorted(mine) and theirs == sorted(theirs)
    assert not {keys[i] for i in mine} & {keys[i] for i in theirs}
    assert len(theirs) == 40 and len(mine) == 60           # whole services of 10 ops: 4 and 6
    assert ipvs_mod.split_by_service(ops[:10], 45) == (list(range(10)), [])   # one service


def _forking_digests(table, child_sock=None):
    """A backend whose service_digests gives the last services to a forked child, whose
    own socket is ``child_sock`` (a KernelSocket on the same table, by default)."""
    backend = backend_on(KernelSocket(table))
    backend.parallel_min_services = 2
    backend._new_conn = lambda: _conn_on(child_sock or KernelSocket(table))
    return backend


def test_fingerprint_with_a_child_equals_one_process_in_the_kernels_order(table, children_on):
    want = backend_on(KernelSocket(table)).service_digests()
    backend = _forking_digests(table)
    sock = backend._conn.sock
    got = backend.service_digests()
    assert got == want and list(got) == list(table.services)
    # the parent dumped the first services' dests only: the child the others
    dumped = [key for cmd, _, key in sock.requests if cmd == w.IPVS_CMD_GET_DEST]
    assert dumped == list(table.services)[:len(dumped)] and 0 < len(dumped) < len(table.services)


def test_fingerprint_of_a_service_gone_in_the_childs_share_is_none(table, children_on):
    child_sock = KernelSocket(table)
    real_answer = child_sock._answer

    def vanish(cmd, flags, seq, key):
        if cmd == w.IPVS_CMD_GET_DEST and key == M7:      # the last service: the child's
            return _error(seq, errno.ESRCH)
        return real_answer(cmd, flags, seq, key)
    child_sock._answer = vanish
    backend = _forking_digests(table, child_sock)
    assert backend.service_digests() is None
