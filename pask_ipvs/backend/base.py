"""The kernel behind interfaces: the only seam between pask's pure core and the kernel.

Real implementations live in this package (ipvs.py, nft.py, addr.py, sysctl.py)
and are the only code importing pyroute2 / nftables or running ip; fakes (fake.py) behave
like the kernel (same errno on conflicts, all-or-nothing nft replace).
"""

from __future__ import annotations

import errno as _errno
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Protocol, Sequence

from ..objects import (
    Engine, EngineObserved, IpvsDest, IpvsObserved, IpvsService, KernelModule, LinkObserved,
    NftObserved, NftTable, ServiceKey, SyncDaemon, VipAddress,
)


class BackendError(Exception):
    """A kernel operation failed. ``errno`` is the kernel's (EEXIST, ENOENT, ...) when known."""

    def __init__(self, message: str, errno: int = 0, op: object = None):
        super().__init__(message)
        self.errno = errno
        self.op = op

    @property
    def retryable(self) -> bool:
        return self.errno in (_errno.EBUSY, _errno.EAGAIN, _errno.ENOBUFS, _errno.EINTR)


class IpvsBackend(Protocol):
    def observe(self, stats: bool = False) -> IpvsObserved:
        """The whole IPVS table (every service, pask's or not). Stats only when asked."""

    def observe_services(self, keys: Iterable[ServiceKey], stats: bool = False) -> IpvsObserved:
        """Only the services ``keys`` name, with their dests (stats only when asked).
        A key the kernel does not hold is simply absent from the result. Costs what
        the keys cost, not the whole table: verify reads back what an apply wrote."""

    def service_digests(self) -> dict[ServiceKey, bytes] | None:
        """Service -> the digest observe() puts in ``service_digests``, read without decoding
        every dest (the no-op fast path); None when this kernel cannot be digested."""

    def expected_digests(self, services: Mapping[ServiceKey, IpvsService],
                         dests: Iterable[IpvsDest]) -> dict[ServiceKey, bytes] | None:
        """Service -> the digest service_digests() gives for a kernel that holds exactly
        ``services`` with ``dests``, each service's dests added in the order given (the
        kernel lists them newest first; verify compares the two instead of decoding).
        None when this backend cannot make them; a service it cannot vouch for is left out.
        Call after service_digests(): the kernel backend learns the reply layout there."""

    def apply(self, ops: Sequence[object]) -> list[BackendError]:
        """Run service/dest ops in order (batched). The kernel goes on after a failed
        message, so every op is attempted; returns one error per failed op (with ``.op``)."""

    def observe_sync_daemons(self) -> frozenset[SyncDaemon]:
        """The IPVS connection-sync threads running in this network namespace."""

    def start_sync_daemon(self, daemon: SyncDaemon) -> None: ...

    def stop_sync_daemon(self, daemon: SyncDaemon) -> None: ...

    def missing_schedulers(self, names: Iterable[str]) -> dict[str, str]:
        """Kernel scheduler names that this kernel cannot load -> the module name missing."""


class NftBackend(Protocol):
    def observe(self) -> NftObserved | None:
        """``inet pask`` as the kernel holds it, or None when the table does not exist."""

    def check(self, table: NftTable) -> None:
        """Ask libnftables whether ``table`` would load (dry run); raise BackendError if not."""

    def replace(self, table: NftTable) -> NftObserved:
        """Replace ``inet pask`` whole in one transaction (all or nothing); return what is now there."""

    def delete(self) -> None:
        """Delete ``inet pask`` (no error if it is already gone)."""


class AddrBackend(Protocol):
    def observe(self, interface: str) -> tuple[LinkObserved | None, frozenset[VipAddress]]:
        """The interface (None if missing) and its addresses."""

    def add_link(self, name: str) -> None:
        """Create a dummy interface ``name`` and set it up (EEXIST-safe)."""

    def apply(self, ops: Sequence[object]) -> list[BackendError]:
        """Address add/delete ops in one batch; every op attempted, one error per failed op.
        Adding an address that is there, or deleting one that is gone, is not an error."""


class SysctlBackend(Protocol):
    def read(self, keys: Iterable[str]) -> dict[str, str]:
        """Current values; a key the kernel does not have is left out."""

    def write(self, key: str, value: str) -> None: ...


class ModuleBackend(Protocol):
    def observe(self, names: Iterable[str]) -> dict[str, KernelModule]:
        """Those of ``names`` that are loaded, each with its parameters as loaded."""

    def missing(self, names: Iterable[str]) -> list[str]:
        """Those of ``names`` this kernel neither has loaded nor can load."""

    def load(self, module: KernelModule) -> None:
        """modprobe it with its parameters."""

    def reload(self, module: KernelModule) -> None:
        """Unload it and load it with these parameters; BackendError (EBUSY) while in use."""


class EngineBackend(Protocol):
    """Daemons pask runs from files it renders (keepalived, conntrackd)."""

    def observe(self, engines: Iterable[Engine]) -> dict[str, EngineObserved]:
        """Whether each runs, and its files as they are on disk."""

    def start(self, engine: Engine) -> None:
        """Write its files, start it, return once it runs."""

    def reload(self, engine: Engine) -> None:
        """Write its files and make the running daemon read them (SIGHUP or a restart)."""

    def stop(self, engine: Engine) -> None: ...

    def missing(self, names: Iterable[str]) -> dict[str, str]:
        """Engine -> the Debian package to install, for each whose program is missing."""


@dataclass
class Backends:
    ipvs: IpvsBackend
    nft: NftBackend
    addr: AddrBackend
    sysctl: SysctlBackend
    extra: dict = field(default_factory=dict)
    modules: ModuleBackend | None = None    # None: a kernel whose modules pask may not touch
    engines: EngineBackend | None = None    # None: this backend cannot run daemons (ha: refused)
