"""pask-healthd's picture of the IPVS table, indexed by service.

The daemon reads the whole table once (at start, after an error) and keeps the
picture current with its own writes and with reads of single services. The
index by service makes those cost the services they touch, not the 33k dests
of a 1024 x 32 table: a transition or a reload that changes one server stays
cheap however big the config is.
"""

from __future__ import annotations

from typing import Iterable

from ..objects import DestKey, IpvsObserved, Observed, ServiceKey
from ..plan import ADD, DELETE, SET, Op


class KernelView:
    def __init__(self, ipvs: IpvsObserved):
        self.ipvs = ipvs
        self._dests: dict[ServiceKey, set[DestKey]] = {}
        for dkey in ipvs.dests:
            self._dests.setdefault(dkey.service, set()).add(dkey)

    def has(self, key: ServiceKey) -> bool:
        return key in self.ipvs.services

    def service_digest(self, key: ServiceKey) -> bytes | None:
        """The service's digest as last read (None: unknown, e.g. written since)."""
        fps = self.ipvs.service_digests
        return None if fps is None else fps.get(key)

    def replace(self, fresh: IpvsObserved, keys: Iterable[ServiceKey]) -> None:
        """Every trace of the services ``keys`` replaced by ``fresh``, a read of just
        those services (a key ``fresh`` lacks has left the kernel)."""
        ipvs = self.ipvs
        for key in keys:
            ipvs.services.pop(key, None)
            ipvs.service_stats.pop(key, None)
            for dkey in self._dests.pop(key, ()):
                ipvs.dests.pop(dkey, None)
                ipvs.dest_stats.pop(dkey, None)
            if ipvs.service_digests is not None:
                ipvs.service_digests.pop(key, None)
        ipvs.services.update(fresh.services)
        ipvs.service_stats.update(fresh.service_stats)
        ipvs.dests.update(fresh.dests)
        ipvs.dest_stats.update(fresh.dest_stats)
        for dkey in fresh.dests:
            self._dests.setdefault(dkey.service, set()).add(dkey)
        if ipvs.service_digests is not None:
            if fresh.service_digests is None:
                ipvs.service_digests = None
            else:
                ipvs.service_digests.update(fresh.service_digests)

    def of(self, keys: Iterable[ServiceKey]) -> Observed:
        """Just these services and their dests (what diff_dests compares them with)."""
        ipvs = self.ipvs
        keys = [k for k in keys if k in ipvs.services]
        return Observed(ipvs=IpvsObserved(
            services={k: ipvs.services[k] for k in keys},
            dests={d: ipvs.dests[d] for k in keys for d in self._dests.get(k, ())}))

    def written(self, ops: Iterable[Op]) -> None:
        """The daemon's own dest writes, done: the kernel now holds them. The services
        written lose their digest (unknown until read again)."""
        ipvs = self.ipvs
        for op in ops:
            if op.action in (ADD, SET):
                dest = op.after
                ipvs.dests[dest.key] = dest
                self._dests.setdefault(dest.service, set()).add(dest.key)
            elif op.action == DELETE:
                dest = op.before
                ipvs.dests.pop(dest.key, None)
                self._dests.get(dest.service, set()).discard(dest.key)
            else:
                continue
            if ipvs.service_digests is not None:
                ipvs.service_digests.pop(dest.service, None)
