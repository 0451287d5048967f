"""The real IPVS backend: generic netlink on a stdlib socket, batched.

Why not pyroute2 here: one pyroute2 IPVS call costs ~200 µs and 34k objects
would take minutes; packing with ipvs_codec and sending hundreds of messages
per sendmsg() takes seconds (docs/kernel-facts.md "Programming IPVS fast"). The
kernel runs every message of a buffer, goes on after a failed one and acks
every failure even without NLM_F_ACK, so a batch asks for an ack on its last
message only and failures are matched to ops by sequence number.
"""

from __future__ import annotations

import errno as errno_mod
import os
import socket
import struct
import subprocess
import threading
from typing import Callable, Iterable, Mapping, Sequence

from .. import forked
from ..objects import IpvsDest, IpvsObserved, IpvsService, ServiceKey, SyncDaemon
from . import ipvs_codec as wire, ipvs_layout as layout, ipvs_scan as scan, netlink as nl
from .base import BackendError
from .modules import kernel_module_names

DEFAULT_BATCH = 256              # messages per sendmsg (docs/kernel-facts.md "Programming IPVS fast": 64..512 all fast)
DEFAULT_DUMP_WORKERS = 1         # sockets dumping dests in parallel (see bench/ipvs_codec_bench.py)
DEFAULT_DIGEST_WORKERS = 1 # sockets scanning dest dumps at once (2-4 measured no faster in the VM)
SERVICES_PER_DUMP_WORKER = 64    # below this many services per socket, one socket is enough
PARALLEL_MIN_OPS = 4096          # an apply of this many ops or more: some sent by a forked child
PARALLEL_MIN_SERVICES = 256      # service digests of this many services or more: some by a child
CHILD_SHARE = 45                 # percent of the ops or services given to it (it also opens a socket)
RCVBUF_BYTES = 16 << 20          # room for a whole batch of error acks (~1 KiB of skb each)
SNDBUF_BYTES = 4 << 20           # one sendmsg carries a whole batch
RECV_CHUNK = 1 << 20             # a dump reply skb is at most a few pages; acks are 36 bytes
REPLY_TIMEOUT_S = 30             # SO_RCVTIMEO: the kernel answers in ms; this only stops a hang
MODPROBE_TIMEOUT_S = 30
SO_SNDBUFFORCE = 32              # asm-generic/socket.h (not exported by Python's socket)
SO_RCVBUFFORCE = 33
SEQ_MASK = 0xFFFFFFFF            # nlmsg_seq is a u32
_NLMSG_FLAGS_OFFSET = 6          # nlmsghdr: u32 len, u16 type, u16 flags
_TIMEVAL = struct.Struct("@ll")


def _open_socket() -> socket.socket:
    """A NETLINK_GENERIC socket with large buffers and short error acks.

    Blocking, with a kernel receive timeout (SO_RCVTIMEO) instead of Python's
    settimeout(): the latter adds a poll() before every recv(), and syscalls
    are what a big dump is made of."""
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, nl.NETLINK_GENERIC)
    try:
        sock.bind((0, 0))
        for force, plain, size in ((SO_RCVBUFFORCE, socket.SO_RCVBUF, RCVBUF_BYTES),
                                   (SO_SNDBUFFORCE, socket.SO_SNDBUF, SNDBUF_BYTES)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, force, size)   # root: beyond rmem_max
            except PermissionError:
                sock.setsockopt(socket.SOL_SOCKET, plain, size)
        sock.setsockopt(nl.SOL_NETLINK, nl.NETLINK_CAP_ACK, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, _TIMEVAL.pack(REPLY_TIMEOUT_S, 0))
    except BaseException:
        sock.close()
        raise
    return sock


class _Conn:
    """One netlink socket with its own sequence numbers and receive buffer."""

    def __init__(self) -> None:
        self.sock = _open_socket()
        self.buf = bytearray(RECV_CHUNK)
        self._seq = 0

    def reserve(self, count: int) -> int:
        """Reserve ``count`` consecutive sequence numbers; returns the first."""
        first = (self._seq + 1) & SEQ_MASK
        self._seq = (self._seq + count) & SEQ_MASK
        return first

    def close(self) -> None:
        self.sock.close()

    def recv(self) -> int:
        try:
            return self.sock.recv_into(self.buf)
        except BlockingIOError:   # SO_RCVTIMEO expired
            raise OSError(errno_mod.ETIMEDOUT, "no reply from the kernel") from None

    def request(self, data: bytes, seq: int) -> nl.Header:
        """Send one request and return the header of its reply (OSError on an error ack)."""
        self.sock.send(data)
        while True:
            n = self.recv()
            for hdr in nl.iter_messages(self.buf, n):
                if hdr.seq != seq:
                    continue
                if hdr.type == nl.NLMSG_ERROR:
                    _raise_if_error(self.buf, hdr)
                    continue
                return hdr

    def dump(self, data: bytes, seq: int,
             on_message: Callable[[bytearray, nl.Header], None]) -> None:
        """Send one dump request; on_message(buf, header) for each reply until NLMSG_DONE."""
        self.sock.send(data)
        buf = self.buf
        while True:
            n = self.recv()
            for hdr in nl.iter_messages(buf, n):
                if hdr.seq != seq:
                    continue
                if hdr.type == nl.NLMSG_DONE:
                    return
                if hdr.type == nl.NLMSG_ERROR:
                    _raise_if_error(buf, hdr)
                    return
                on_message(buf, hdr)


def _raise_if_error(buf: bytearray, hdr: nl.Header) -> None:
    ack = nl.decode_ack(buf, hdr)
    if ack.errno:
        raise OSError(ack.errno, os.strerror(ack.errno))


def resolve_family(conn: _Conn) -> int:
    """The IPVS generic netlink family id. Like ipvsadm, loads ip_vs once when the
    family is missing (a fresh machine has not loaded it yet); ENOENT after that
    means this kernel has no IPVS."""
    for attempt in range(2):
        seq = conn.reserve(1)
        try:
            hdr = conn.request(nl.encode_get_family(seq, wire.IPVS_GENL_NAME), seq)
            return nl.decode_family_id(conn.buf, hdr)
        except OSError as exc:
            if exc.errno == errno_mod.ENOENT and attempt == 0 and _modprobe("ip_vs"):
                continue
            raise BackendError(f"IPVS generic netlink family not found ({exc.strerror}); "
                               "this kernel has no usable ip_vs module", exc.errno or 0) from exc
    raise AssertionError("unreachable")


def _modprobe(module: str) -> bool:
    """True when ``modprobe module`` succeeded (no modprobe, no module: False)."""
    try:
        return subprocess.run(["modprobe", "-q", module], capture_output=True,
                              timeout=MODPROBE_TIMEOUT_S).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class IpvsNetlink:
    """IpvsBackend on the kernel. Sockets open on first use; close() releases them.

    ``batch_size`` messages go in one sendmsg; ``ack_every`` asks the kernel to
    ack each message instead of only the last of a batch (slower, same result);
    ``dump_workers`` sockets read dests in parallel threads.
    """

    def __init__(self, *, batch_size: int = DEFAULT_BATCH, ack_every: bool = False,
                 dump_workers: int = DEFAULT_DUMP_WORKERS,
                 digest_workers: int = DEFAULT_DIGEST_WORKERS,
                 sys_module_dir: str = "/sys/module", modules_dir: str | None = None):
        self.batch_size = max(1, batch_size)
        self.ack_every = ack_every
        self.dump_workers = max(1, dump_workers)
        self.digest_workers = max(1, digest_workers)
        self.sys_module_dir = sys_module_dir
        self.modules_dir = modules_dir or f"/lib/modules/{os.uname().release}"
        self._conn: _Conn | None = None
        self._encoder: wire.IpvsEncoder | None = None
        self._extra: list[_Conn] = []
        self._scanner = scan.DestConfigScanner()
        self.parallel_min = PARALLEL_MIN_OPS
        self.parallel_min_services = PARALLEL_MIN_SERVICES
        self._new_conn: Callable[[], _Conn] = _Conn     # a forked child's own socket

    # plumbing -----------------------------------------------------------

    def _main(self) -> tuple[_Conn, wire.IpvsEncoder]:
        if self._conn is None or self._encoder is None:
            conn = _Conn()
            try:
                family = resolve_family(conn)
            except BaseException:
                conn.close()
                raise
            self._conn, self._encoder = conn, wire.IpvsEncoder(family)
        return self._conn, self._encoder

    def close(self) -> None:
        for conn in [self._conn, *self._extra]:
            if conn is not None:
                conn.close()
        self._conn, self._encoder, self._extra = None, None, []

    def __enter__(self) -> "IpvsNetlink":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # observe --------------------------------------------------------------

    def observe(self, stats: bool = False) -> IpvsObserved:
        """One service dump, then one dest dump per service."""
        out = self._services(stats)
        self._add_dests(out, list(out.services), stats)
        return out

    def _services(self, stats: bool) -> IpvsObserved:
        """Every service (no dests), from one dump."""
        conn, enc = self._main()
        out = IpvsObserved()

        def on_service(buf: bytearray, hdr: nl.Header) -> None:
            svc, svc_stats = wire.decode_service(buf, hdr, stats)
            out.services[svc.key] = svc
            if svc_stats is not None:
                out.service_stats[svc.key] = svc_stats

        seq = conn.reserve(1)
        try:
            conn.dump(enc.get_services(seq), seq, on_service)
        except OSError as exc:
            raise BackendError(f"IPVS service dump failed: {exc.strerror}", exc.errno or 0) from exc
        return out

    def service_digests(self) -> dict[ServiceKey, bytes] | None:
        """observe()'s ``service_digests`` at a fraction of its cost: the services are decoded,
        but each dest dump only goes through DestConfigScanner's regex (no Python step
        per dest). None when a service went away meanwhile. The digests are in the
        kernel's order of services. With ``parallel_min_services`` services or more, a
        forked child digests some of them on a socket of its own (forked.py)."""
        services = self._services(False).services
        keys = list(services)
        mine, theirs = keys, keys[len(keys):]
        child = None
        if len(keys) >= self.parallel_min_services:
            cut = len(keys) - len(keys) * CHILD_SHARE // 100
            mine, theirs = keys[:cut], keys[cut:]
            child = forked.start(self._digests_in_child, services, theirs)
            if child is None:
                mine, theirs = keys, []
        try:
            out = self._digests_of(services, mine)
        except BaseException:
            if child is not None:
                child.abandon()
            raise
        if child is not None:
            try:
                got = child.result()
            except forked.ChildFailed:
                got = self._digests_of(services, theirs)
            if out is not None:
                out = None if got is None else {**out, **got}    # type: ignore[dict-item]
        return None if out is None else {key: out[key] for key in keys}

    def _digests_in_child(self, services: Mapping[ServiceKey, IpvsService],
                          keys: list[ServiceKey]) -> dict[ServiceKey, bytes] | None:
        """A forked child's share of service_digests, on sockets of its own (the parent's
        answers go to the parent's sockets: the child never touches them)."""
        self._conn, self._extra = self._new_conn(), []
        try:
            return self._digests_of(services, keys)
        finally:
            self.close()

    def _digests_of(self, services: Mapping[ServiceKey, IpvsService],
                    keys: list[ServiceKey]) -> dict[ServiceKey, bytes] | None:
        """The digests of these services (None when one went away meanwhile)."""
        _, enc = self._main()
        out: dict[ServiceKey, bytes] = {}
        gone: list[ServiceKey] = []

        def work(c: _Conn, indexes: range) -> None:
            for i in indexes:
                key = keys[i]
                try:
                    found, complete = self._dest_dump(c, enc, key, nl.dump_finished)
                except OSError as exc:
                    raise BackendError(f"IPVS dest dump of {key} failed: {exc.strerror}",
                                       exc.errno or 0) from exc
                if not complete:
                    gone.append(key)
                    return
                out[key] = scan.service_digest(services[key], found)

        if keys:
            self._on_sockets(self.digest_workers, len(keys), work)
        return None if gone else out

    def expected_digests(self, services: Mapping[ServiceKey, IpvsService],
                         dests: Iterable[IpvsDest]) -> dict[ServiceKey, bytes] | None:
        """What service_digests() gives for a kernel holding exactly ``services`` with
        ``dests``, each service's added in the order given (so listed newest first), made
        without reading the kernel: each dest encoded the way this kernel's
        dest replies carry it (the layout DestConfigScanner learned from the first reply
        it saw). None before any reply was seen, or when the layout has attributes pask
        cannot write; a service whose dests cannot all be encoded is left out."""
        encode = self._scanner.encoder()
        if encode is None:
            return None
        return scan.expected_digests(services, dests, encode)

    def _on_sockets(self, workers: int, count: int,
                    work: Callable[[_Conn, range], None]) -> None:
        """work(socket, indexes) over ``count`` items split across up to ``workers``
        sockets, from threads: dumps cannot share a socket, and the kernel fills a dump
        inside send()/recv(), which release the GIL. The first failure is raised here."""
        conn, _ = self._main()
        workers = min(workers, max(1, count // SERVICES_PER_DUMP_WORKER))
        while len(self._extra) < workers - 1:
            self._extra.append(_Conn())
        conns = [conn, *self._extra[:workers - 1]]
        failures: list[BaseException] = []

        def run(first: int, c: _Conn) -> None:
            try:
                work(c, range(first, count, len(conns)))
            except BaseException as exc:   # re-raised in the caller's thread
                failures.append(exc)

        threads = [threading.Thread(target=run, args=(i, c), daemon=True)
                   for i, c in enumerate(conns) if i]
        for t in threads:
            t.start()
        run(0, conns[0])
        for t in threads:
            t.join()
        if failures:
            raise failures[0]

    def observe_services(self, keys: Iterable[ServiceKey], stats: bool = False) -> IpvsObserved:
        """Only these services: one GET_SERVICE request per key (answered ESRCH when the
        kernel has no such service: it is left out), then one dest dump per service found.
        The cost is that of the keys asked for, not of the whole table."""
        out = IpvsObserved()
        keys = list(dict.fromkeys(keys))         # each key once, in the order given
        if not keys:
            return out                           # nothing to read: not even a socket
        conn, enc = self._main()
        for key in keys:
            seq = conn.reserve(1)
            try:
                hdr = conn.request(enc.get_service(key, seq), seq)
            except OSError as exc:
                if exc.errno in (errno_mod.ESRCH, errno_mod.ENOENT):   # no such service
                    continue
                raise BackendError(f"IPVS read of service {key} failed: {exc.strerror}",
                                   exc.errno or 0) from exc
            svc, svc_stats = wire.decode_service(conn.buf, hdr, stats)
            out.services[svc.key] = svc
            if svc_stats is not None:
                out.service_stats[svc.key] = svc_stats
        self._add_dests(out, list(out.services), stats)
        return out

    def _add_dests(self, out: IpvsObserved, keys: list[ServiceKey], stats: bool) -> None:
        """Dests (and stats) of ``keys`` into ``out``, with each service digest; the
        service digests are dropped (None) unless the scanner found every dest decoded."""
        for key, (dests, dest_stats, found) in zip(keys, self._dump_dests(keys, stats)):
            out.dests.update(dests)              # C-speed: reuses the stored hashes
            out.dest_stats.update(dest_stats)
            if out.service_digests is not None:
                if len(found) == len(dests):
                    out.service_digests[key] = scan.service_digest(out.services[key], found)
                else:
                    out.service_digests = None

    def _dest_dump(self, c: _Conn, enc: wire.IpvsEncoder, key: ServiceKey,
                   until: Callable[[bytearray, int, int], bool | None]) -> tuple[list[bytes], bool]:
        """One service's dest dump on ``c``: the request sent, replies received until
        ``until(buf, nbytes, seq)`` says the dump is done (True) or the service is gone
        (None), each buffer's configuration bytes found by the learned scanner on the
        way. Returns (those bytes, False if the service was gone). OSError: the kernel's."""
        scanner = self._scanner
        seq = c.reserve(1)
        found: list[bytes] = []
        c.sock.send(enc.get_dests(key, seq))
        while True:
            n = c.recv()
            if scanner.pattern is None:
                scanner.learn(c.buf, n, enc.family)
            found += scanner.scan(c.buf, n)
            finished = until(c.buf, n, seq)
            if finished or finished is None:
                return found, finished is not None

    def _dump_dests(self, keys: list[ServiceKey], stats: bool) -> list[tuple[dict, dict, list]]:
        """Each service's (dests, dest stats, dest configuration bytes), in ``keys`` order,
        from ``dump_workers`` sockets."""
        _, enc = self._main()
        results: list[tuple[dict, dict, list]] = [({}, {}, []) for _ in keys]

        def work(c: _Conn, indexes: range) -> None:
            decoder = layout.DestDecoder()
            for i in indexes:
                key = keys[i]
                dests, dest_stats, found = results[i]

                def decoded(buf, n: int, seq: int) -> bool:
                    return decoder.decode_into(buf, n, seq, key, dests, dest_stats if stats else None)

                try:
                    found += self._dest_dump(c, enc, key, decoded)[0]
                except OSError as exc:
                    if exc.errno != errno_mod.ESRCH:   # ESRCH: service deleted meanwhile
                        raise BackendError(f"IPVS dest dump of {key} failed: {exc.strerror}",
                                           exc.errno or 0) from exc

        self._on_sockets(self.dump_workers, len(keys), work)
        return results

    # apply ----------------------------------------------------------------

    def apply(self, ops: Sequence[object]) -> list[BackendError]:
        """Encode every op, send them in batches, return one error per failed op (in op order).

        A big apply (``parallel_min`` ops or more: a cold start at scale) gives the ops of
        some services to a forked child with a socket of its own (forked.py): encoding is
        most of an apply's cost, and the kernel takes two sockets' batches side by side.
        The ops of one service stay in one process, in their order; services do not
        depend on each other. A child that dies leaves the outcome of its ops unknown:
        each is reported so (ENOBUFS, retryable), as an op whose ack was dropped."""
        if not ops:
            return []                        # nothing to write: not even a socket
        conn, _ = self._main()
        first_seq = conn.reserve(len(ops))
        mine: Sequence[int] = range(len(ops))
        child = None
        if len(ops) >= self.parallel_min:
            mine, theirs = split_by_service(ops, CHILD_SHARE)
            if theirs:
                child = forked.start(self._apply_in_child, ops, theirs, first_seq)
                if child is None:
                    mine = range(len(ops))
        try:
            failed = self._apply_share(conn, ops, mine, first_seq)
        except BaseException:
            if child is not None:            # the run fails here: no writes behind its back
                child.abandon()
            raise
        if child is not None:
            try:
                answers = child.result()
            except forked.ChildFailed as exc:
                # it may have sent some of its share: each op's outcome is unknown, reported
                # as such (retryable, like an op whose ack was dropped), not guessed or resent
                answers = [(i, f"{describe_op(ops[i])}: outcome unknown, the process sending "
                               f"it failed ({exc})", errno_mod.ENOBUFS) for i in theirs]
            if answers is None:              # it could not open a socket: nothing was sent
                failed += self._apply_share(conn, ops, theirs, first_seq)
            else:
                failed += [(index, BackendError(message, code, ops[index]))
                           for index, message, code in answers]     # type: ignore[union-attr]
        failed.sort(key=lambda item: item[0])
        return [err for _, err in failed]

    def _apply_in_child(self, ops: Sequence[object], indexes: list[int],
                        first_seq: int) -> list[tuple[int, str, int]] | None:
        """A forked child's share on a socket of its own; its failures as plain values.
        None when it has no socket (nothing sent: the parent sends the share)."""
        try:
            conn = self._new_conn()
        except OSError:
            return None
        try:
            return [(index, str(err), err.errno)
                    for index, err in self._apply_share(conn, ops, indexes, first_seq)]
        finally:
            conn.close()

    def _apply_share(self, conn: _Conn, ops: Sequence[object], indexes: Sequence[int],
                     first_seq: int) -> list[tuple[int, BackendError]]:
        """Send ``ops[i]`` for each i of ``indexes`` (in that order) on ``conn``."""
        _, enc = self._main()
        flags = nl.NLM_F_REQUEST | (nl.NLM_F_ACK if self.ack_every else 0)
        failed: list[tuple[int, BackendError]] = []          # (op index, error)
        batch = self.batch_size
        at, count = 0, len(indexes)
        while at < count:
            # Encoded a batch at a time: the messages of a cold apply (34k, ~7 MB with their
            # list) are never all in memory at once.
            chunk: list[tuple[int, bytes]] = []              # (op index, message)
            while at < count and len(chunk) < batch:
                index = indexes[at]
                op = ops[index]
                try:
                    chunk.append((index, enc.op(op, (first_seq + index) & SEQ_MASK, flags)))
                except ValueError as exc:    # the kernel would answer EINVAL; do not send it
                    failed.append((index, BackendError(f"{describe_op(op)}: {exc} (EINVAL)",
                                                       errno_mod.EINVAL, op)))
                at += 1
            if chunk and self._send_batch(conn, ops, first_seq, chunk, failed):
                batch = max(1, batch // 4)   # acks were dropped: smaller batches from now on
        return failed

    def _send_batch(self, conn: _Conn, ops: Sequence[object], first_seq: int,
                    chunk: list[tuple[int, bytes]], failed: list[tuple[int, BackendError]]) -> bool:
        """Send one batch in one sendmsg and collect its error acks.

        Only the last message asks for an ack (unless ack_every): its ack ends the
        batch, and the kernel acks every failure anyway. Returns True when the
        receive buffer overflowed (ENOBUFS) or no final ack came: then each op
        without an answer is reported as ENOBUFS (retryable; it may or may not
        have been applied) rather than guessed."""
        in_batch = {index for index, _ in chunk}
        last_index = chunk[-1][0]
        last = bytearray(chunk[-1][1])
        nl.U16.pack_into(last, _NLMSG_FLAGS_OFFSET,
                           nl.U16.unpack_from(last, _NLMSG_FLAGS_OFFSET)[0] | nl.NLM_F_ACK)
        data = b"".join([m for _, m in chunk[:-1]] + [bytes(last)])
        try:
            conn.sock.sendall(data)
        except OSError as exc:
            failed.extend((i, BackendError(f"{describe_op(ops[i])}: send failed: {exc.strerror}",
                                           exc.errno or 0, ops[i])) for i, _ in chunk)
            return False
        answered: set[int] = set()
        overflow = False
        while True:
            try:
                n = conn.sock.recv_into(conn.buf, 0, socket.MSG_DONTWAIT if overflow else 0)
            except BlockingIOError:
                # after an overflow: all queued acks read; else SO_RCVTIMEO expired
                overflow = True
                break
            except OSError as exc:
                if exc.errno != errno_mod.ENOBUFS:
                    raise
                overflow = True             # some acks were dropped; drain what is left
                continue
            for hdr in nl.iter_messages(conn.buf, n):
                if hdr.type != nl.NLMSG_ERROR:
                    continue
                index = (hdr.seq - first_seq) & SEQ_MASK
                if index not in in_batch:
                    continue                # stale reply from an earlier request
                answered.add(index)
                code = nl.decode_ack(conn.buf, hdr).errno
                if code:
                    failed.append((index, BackendError(
                        f"{describe_op(ops[index])}: {errno_text(code)}", code, ops[index])))
            if last_index in answered and not overflow:
                return False
        for index, _ in chunk:
            if index not in answered:
                failed.append((index, BackendError(
                    f"{describe_op(ops[index])}: outcome unknown, netlink acks were dropped",
                    errno_mod.ENOBUFS, ops[index])))
        return True

    # connection sync ------------------------------------------------------

    def observe_sync_daemons(self) -> frozenset[SyncDaemon]:
        conn, enc = self._main()
        out: set[SyncDaemon] = set()
        seq = conn.reserve(1)
        try:
            conn.dump(enc.get_daemons(seq), seq, lambda buf, hdr: out.add(wire.decode_daemon(buf, hdr)))
        except OSError as exc:
            raise BackendError(f"IPVS sync daemon dump failed: {exc.strerror}", exc.errno or 0) from exc
        return frozenset(out)

    def start_sync_daemon(self, daemon: SyncDaemon) -> None:
        self._daemon_request(wire.IPVS_CMD_NEW_DAEMON, daemon, "start")

    def stop_sync_daemon(self, daemon: SyncDaemon) -> None:
        self._daemon_request(wire.IPVS_CMD_DEL_DAEMON, daemon, "stop")

    def _daemon_request(self, cmd: int, daemon: SyncDaemon, verb: str) -> None:
        conn, enc = self._main()
        seq = conn.reserve(1)
        conn.sock.send(enc.daemon(cmd, daemon, seq))
        while True:
            n = conn.recv()
            for hdr in nl.iter_messages(conn.buf, n):
                if hdr.seq == seq and hdr.type == nl.NLMSG_ERROR:
                    code = nl.decode_ack(conn.buf, hdr).errno
                    if code:
                        raise BackendError(f"{verb} IPVS sync daemon {daemon}: {errno_text(code)}",
                                           code)
                    return

    # schedulers -----------------------------------------------------------

    def missing_schedulers(self, names: Iterable[str]) -> dict[str, str]:
        """Scheduler -> module for each one this kernel neither has loaded, built in,
        nor can load (ip_vs_<name> in /sys/module, modules.builtin or modules.dep)."""
        missing: dict[str, str] = {}
        known: set[str] | None = None
        for name in sorted(set(names)):
            module = f"ip_vs_{name}"
            if os.path.isdir(os.path.join(self.sys_module_dir, module)):
                continue
            if known is None:
                known = self._kernel_modules()
            if module not in known:
                missing[name] = module
        return missing

    def _kernel_modules(self) -> set[str]:
        return kernel_module_names(self.modules_dir)


def split_by_service(ops: Sequence[object], share: int) -> tuple[list[int], list[int]]:
    """The indexes of ``ops`` in two shares, the second about ``share`` percent of them:
    whole services (all the ops of one service in one share), each share in op order."""
    groups: dict[object, list[int]] = {}
    for index, op in enumerate(ops):
        value = op.after if op.after is not None else op.before     # type: ignore[attr-defined]
        key = getattr(value, "service", None) if op.kind == "dest" else getattr(value, "key", None)  # type: ignore[attr-defined]
        groups.setdefault(key, []).append(index)
    keep = len(ops) - len(ops) * share // 100
    mine: list[int] = []
    theirs: list[int] = []
    for indexes in groups.values():
        (mine if len(mine) < keep else theirs).extend(indexes)
    mine.sort()
    theirs.sort()
    return mine, theirs


def describe_op(op: object) -> str:
    """'add dest 10.99.0.1:80/tcp -> 10.99.1.1:80' for error messages (shared with the fake)."""
    return f"{getattr(op, 'action', '?')} {getattr(op, 'kind', '?')} {getattr(op, 'key', op)}"


def errno_text(code: int) -> str:
    """'File exists (EEXIST)': the words and the name people grep for."""
    return f"{os.strerror(code)} ({errno_mod.errorcode.get(code, code)})"
