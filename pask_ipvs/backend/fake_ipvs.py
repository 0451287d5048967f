"""An in-memory IPVS table that behaves like the kernel, for unit tests and offline plans.

Same protocol as IpvsNetlink, same errno for each conflict (measured on
Debian's 6.1 kernel; tests/kernel_cases.py ipvs_conflicts() is the table that
the unit tests hold the fake to and integration/test_ipvs_backend.py holds the
kernel to):

| request                                        | errno  |
|------------------------------------------------|--------|
| add a service that exists                      | EEXIST |
| set / delete a missing service                 | ESRCH  |
| add / set / delete a dest of a missing service | ESRCH  |
| add a dest that exists                         | EEXIST |
| set / delete a missing dest                    | ENOENT |
| unknown scheduler (module missing)             | ENOENT |
| lower threshold above upper threshold          | ERANGE |
| IPv6 netmask outside 1..128                    | EINVAL |
| dest of another family, not tunnelled          | EINVAL |

Like the kernel it goes on after a failed op. Requests the real backend
could not even encode fail here the same way (EINVAL), because the fake runs
the same encoder over each op first. Not modelled: routing (the kernel also
answers EINVAL for IPv4 dests in a namespace whose lo is down).
"""

from __future__ import annotations

import errno
import socket
from typing import Iterable, Mapping, Sequence

from ..objects import (
    FWD_MASQ, FWD_ROUTE, FWD_TUNNEL, DestKey, DestStats, IpvsDest, IpvsObserved, IpvsService,
    ServiceKey, Stats, SyncDaemon, family_of,
)
from . import ipvs_codec as wire, ipvs_scan as scan, netlink as nl
from .base import BackendError
from .ipvs import describe_op, errno_text

# Schedulers in mainline Linux (twos since 6.2); the modules of kernel 6.1 lack twos.
KERNEL_SCHEDULERS = frozenset(
    {"rr", "wrr", "lc", "wlc", "lblc", "lblcr", "dh", "sh", "sed", "nq", "fo", "ovf", "mh", "twos"})
LINUX_6_1_SCHEDULERS = KERNEL_SCHEDULERS - {"twos"}
SCHEDNAME_MAXLEN = 16            # IP_VS_SCHEDNAME_MAXLEN, including the NUL
NO_SCHEDULER = "none"            # the kernel accepts "none": a service that schedules nothing


_IPVSADM_PROTO = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
_IPVSADM_FWD = {FWD_MASQ: "-m", FWD_ROUTE: "-g", FWD_TUNNEL: "-i"}


class FakeIpvs:
    """IpvsBackend in memory. ``writes`` counts kernel objects written (successful
    add/set/delete ops) so a test can assert that a no-op apply writes nothing;
    ``observe_calls`` and ``observe_services_calls`` count reads, so a test can
    assert what a verify read."""

    def __init__(self, *, available_schedulers: Iterable[str] = KERNEL_SCHEDULERS):
        self.available_schedulers = frozenset(available_schedulers)
        self.services: dict[ServiceKey, IpvsService] = {}
        self.dests: dict[ServiceKey, dict[DestKey, IpvsDest]] = {}
        self.service_stats: dict[ServiceKey, Stats] = {}
        self.dest_stats: dict[DestKey, DestStats] = {}
        self.writes = 0
        self.applied: list[object] = []          # the ops that succeeded, in order
        self.observe_calls = 0                   # whole-table reads
        self.observe_services_calls: list[list[ServiceKey]] = []   # the keys of each partial read
        self.service_digest_calls = 0
        self.expected_digest_calls = 0
        self.sync_daemons: dict[str, SyncDaemon] = {}   # state -> the running thread
        self.interfaces: frozenset[str] | None = None   # links a daemon may use (None: any)
        self._encoder = wire.IpvsEncoder(family=0)

    # IpvsBackend ------------------------------------------------------------

    def observe(self, stats: bool = False) -> IpvsObserved:
        self.observe_calls += 1
        out = IpvsObserved()
        for key in self.services:
            self._read_service(out, key, stats)
        return out

    def observe_services(self, keys: Iterable[ServiceKey], stats: bool = False) -> IpvsObserved:
        """Only these services; one the table does not hold is left out (the kernel: ESRCH)."""
        keys = list(dict.fromkeys(keys))
        self.observe_services_calls.append(keys)
        out = IpvsObserved()
        for key in keys:
            if key in self.services:
                self._read_service(out, key, stats)
        return out

    def service_digests(self) -> dict[ServiceKey, bytes] | None:
        """What observe().service_digests would be, the way the kernel backend makes it
        cheaply (``service_digest_calls`` counts these reads)."""
        self.service_digest_calls += 1
        return {key: self._service_digest(key) for key in self.services}

    def expected_digests(self, services: Mapping[ServiceKey, IpvsService],
                         dests: Iterable[IpvsDest]) -> dict[ServiceKey, bytes] | None:
        """What service_digests() would give for a table holding exactly these, each
        service's dests added in the order given (the fake lists the newest first, as the
        kernel does). As the kernel backend makes it: a service with a dest of another
        family than its own is left out (the kernel's scanned bytes lack the family)."""
        self.expected_digest_calls += 1
        return scan.expected_digests(services, dests, _expected_dest_configs)

    def _service_digest(self, key: ServiceKey) -> bytes:
        return scan.service_digest(self.services[key], [
            _dest_config(d) for d in self.dests[key].values()])

    def apply(self, ops: Sequence[object]) -> list[BackendError]:
        errors = []
        for op in ops:
            code = self._apply_one(op)
            if code:
                errors.append(BackendError(f"{describe_op(op)}: {errno_text(code)}", code, op))
            else:
                self.writes += 1
                self.applied.append(op)
        return errors

    def missing_schedulers(self, names: Iterable[str]) -> dict[str, str]:
        return {name: f"ip_vs_{name}" for name in sorted(set(names))
                if name not in self.available_schedulers and name != NO_SCHEDULER}

    def observe_sync_daemons(self) -> frozenset[SyncDaemon]:
        return frozenset(self.sync_daemons.values())

    def start_sync_daemon(self, daemon: SyncDaemon) -> None:
        """As ip_vs_sync.c: one thread per state (EEXIST), on an existing link (ENODEV),
        a sync id of 0..255 (EINVAL)."""
        if daemon.state not in ("master", "backup") or not 0 <= daemon.syncid <= 255:
            code = errno.EINVAL
        elif daemon.state in self.sync_daemons:
            code = errno.EEXIST
        elif self.interfaces is not None and daemon.interface not in self.interfaces:
            code = errno.ENODEV
        else:
            self.sync_daemons[daemon.state] = daemon
            self.writes += 1
            return
        raise BackendError(f"start IPVS sync daemon {daemon}: {errno_text(code)}", code)

    def stop_sync_daemon(self, daemon: SyncDaemon) -> None:
        if daemon.state not in self.sync_daemons:
            code = errno.ESRCH
            raise BackendError(f"stop IPVS sync daemon {daemon}: {errno_text(code)}", code)
        del self.sync_daemons[daemon.state]
        self.writes += 1

    # test helpers -----------------------------------------------------------

    def seed(self, services: Iterable[IpvsService] = (), dests: Iterable[IpvsDest] = ()) -> None:
        """Put objects in place as if someone else had (not counted in ``writes``)."""
        for svc in services:
            self.services[svc.key] = svc
            self.dests.setdefault(svc.key, {})
        for dest in dests:
            self.dests[dest.service][dest.key] = dest

    def set_conns(self, key: DestKey, active: int, inactive: int = 0, persist: int = 0) -> None:
        old = self.dest_stats.get(key, DestStats())
        self.dest_stats[key] = old._replace(active_conns=active, inact_conns=inactive,
                                            persist_conns=persist)

    def set_stats(self, key: ServiceKey | DestKey, stats: Stats) -> None:
        if isinstance(key, DestKey):
            self.dest_stats[key] = self.dest_stats.get(key, DestStats())._replace(stats=stats)
        else:
            self.service_stats[key] = stats

    def dump(self) -> str:
        """The table as ``ipvsadm -Sn`` prints it (its order: fwmark, family, protocol,
        address, port; thresholds are not printed, as ipvsadm does not print them)."""
        lines = []
        for key in sorted(self.services, key=_service_order):
            svc = self.services[key]
            name = _ipvsadm_service(key)
            line = f"-A {name} -s {svc.scheduler}"
            if "persistent" in svc.flags:
                line += f" -p {svc.timeout}"
                full = wire.IPV6_BITS if key.af == 6 else wire.IPV4_BITS
                if svc.netmask != full:
                    mask = (str(svc.netmask) if key.af == 6 else
                            socket.inet_ntoa(nl.U32.pack(wire.netmask_to_wire(4, svc.netmask))))
                    line += f" -M {mask}"
            if "one-packet" in svc.flags:
                line += " -o"
            sched_flags = sorted(f for f in svc.flags if f.startswith(("sh-", "mh-")))
            if sched_flags:
                line += " -b " + ",".join(sched_flags)
            lines.append(line)
            for dest in sorted(self.dests[key].values(), key=_dest_order):
                host = f"[{dest.addr}]" if family_of(dest.addr) == 6 else dest.addr
                fwd = _IPVSADM_FWD.get(dest.fwd, dest.fwd)
                line = f"-a {name} -r {host}:{dest.port} {fwd} -w {dest.weight}"
                if dest.fwd == FWD_TUNNEL:
                    line += " --tun-type ipip"
                lines.append(line)
        return "".join(line + "\n" for line in lines)

    def _read_service(self, out: IpvsObserved, key: ServiceKey, stats: bool) -> None:
        out.services[key] = self.services[key]
        out.service_digests[key] = self._service_digest(key)
        if stats:
            out.service_stats[key] = self.service_stats.get(key, Stats())
        for dkey, dest in self.dests[key].items():
            out.dests[dkey] = dest
            if stats:
                out.dest_stats[dkey] = self.dest_stats.get(dkey, DestStats())

    # the kernel's checks, in its order ---------------------------------------

    def _apply_one(self, op: object) -> int:
        """Apply one op; return 0 or the errno the kernel answers."""
        try:
            self._encoder.op(op, 0)        # same refusal as the real backend's encoder
        except ValueError:
            return errno.EINVAL
        kind, action = op.kind, op.action   # type: ignore[attr-defined]
        value = op.before if action == "delete" else op.after   # type: ignore[attr-defined]
        if kind == "service":
            return self._service(action, value)
        return self._dest(action, value)

    def _service(self, action: str, svc: IpvsService) -> int:
        have = self.services.get(svc.key)
        if action == "add" and have is not None:
            return errno.EEXIST
        if action != "add" and have is None:
            return errno.ESRCH
        if action == "delete":
            del self.services[svc.key]
            for dkey in self.dests.pop(svc.key, {}):
                self.dest_stats.pop(dkey, None)
            self.service_stats.pop(svc.key, None)
            return 0
        if len(svc.scheduler.encode()) >= SCHEDNAME_MAXLEN:
            return errno.EINVAL          # netlink policy: longer than the kernel's name field
        if svc.scheduler not in self.available_schedulers and svc.scheduler != NO_SCHEDULER:
            return errno.ENOENT
        if svc.key.af == 6 and not 1 <= svc.netmask <= wire.IPV6_BITS:
            return errno.EINVAL
        # store what the kernel would report back (flags normalised through the wire bits)
        stored = svc._replace(flags=wire.flags_from_wire(
            svc.scheduler, wire.flags_to_wire(svc.scheduler, svc.flags)))
        self.services[svc.key] = stored
        self.dests.setdefault(svc.key, {})
        return 0

    def _dest(self, action: str, dest: IpvsDest) -> int:
        dests = self.dests.get(dest.service)
        if dests is None:
            return errno.ESRCH
        dest_af = family_of(dest.addr)
        if action != "delete" and dest_af != dest.service.af and dest.fwd != FWD_TUNNEL:
            return errno.EINVAL
        if action != "delete" and dest.l_threshold > dest.u_threshold:
            return errno.ERANGE
        have = dests.get(dest.key)
        if action == "add":
            if have is not None:
                return errno.EEXIST
            # the kernel links a new dest at the head of the service's list (list_add_rcu),
            # and dumps the list in order: the newest dest comes first
            self.dests[dest.service] = {dest.key: dest, **dests}
            self.dest_stats.pop(dest.key, None)
            return 0
        if have is None:
            return errno.ENOENT
        if action == "delete":
            del dests[dest.key]
            self.dest_stats.pop(dest.key, None)
        else:
            dests[dest.key] = dest
        return 0


def _dest_config(d: IpvsDest) -> bytes:
    """The fake's stand-in for a dest reply's configuration bytes: every field but the service."""
    return repr(tuple(d)[1:]).encode()


def _expected_dest_configs(af: int, dests: list[IpvsDest]) -> list[bytes]:
    """_dest_config of desired dests of an IPv``af`` service; refuses (ValueError) what the
    kernel backend's encoder refuses to vouch for: a dest of another family."""
    for d in dests:
        if family_of(d.addr) != af:
            raise ValueError(f"{d.key}: an IPv{family_of(d.addr)} dest of an IPv{af} service")
    return [_dest_config(d) for d in dests]


def _ipvsadm_service(key: ServiceKey) -> str:
    if key.fwmark:
        return f"-f {key.fwmark}" + (" -6" if key.af == 6 else "")
    host = f"[{key.addr}]" if key.af == 6 else key.addr
    return f"{_IPVSADM_PROTO.get(key.protocol, key.protocol)} {host}:{key.port}"


def _service_order(key: ServiceKey) -> tuple:
    proto = wire.PROTO_TO_WIRE.get(key.protocol, 0)
    return (key.fwmark, key.af, proto, _addr_bytes(key.addr), key.port)


def _dest_order(dest: IpvsDest) -> tuple:
    return (_addr_bytes(dest.addr), dest.port)


def _addr_bytes(addr: str) -> bytes:
    if not addr:
        return b""
    return socket.inet_pton(socket.AF_INET6 if family_of(addr) == 6 else socket.AF_INET, addr)
